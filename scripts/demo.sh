#!/usr/bin/env bash
# The whole job on the built-in sample dataset, in ./demo: sample -> prepare -> train -> eval --tta -> pictures.
# CPU-sized: 10 classes, images stored at 64 px (56 px crops) and a narrower AlexNet, because the paper's
# network trains at ~18 images/s on 2 CPU cores. `alexkit train`'s defaults remain the paper's network.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ALEXKIT="$ROOT/.venv/bin/alexkit"
step() { printf '\n== %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

mkdir -p demo && cd demo
rm -rf alexkit-store alexkit-runs eval-centre.json eval-tta.json pictures curves.png  # a stopped run's would look current
start=$SECONDS
# What doctor finds is not fatal (the steps below show what it means), but Ctrl-C or SIGTERM during it is:
# alexkit exits 130 or 143 from its own handler, not killed by the signal, so bash alone would go on.
step "environment" "$ALEXKIT" doctor || { code=$?; ((code < 128)) || exit "$code"; }
# The sample dataset is written once; a run of sample that was stopped (its staging folder left, or only
# some of its entries moved in) is written again: --overwrite replaces nothing but a sample dataset's files.
# The names of the folders a stopped sample leaves are sample's own, asked of it rather than copied here.
left=$("$ROOT/.venv/bin/python" -c 'from alexkit.datasets.sample_place import REPLACED, STAGING; print(STAGING, REPLACED)')
read -r staging replaced <<<"$left"
whole() { [ -f imagenet/ILSVRC2012_devkit_t12/data/meta.mat ] && [ -d imagenet/train ] && [ -d imagenet/val ] &&
          [ ! -e "imagenet/$staging" ] && [ ! -e "imagenet/$replaced" ]; }
whole || step "sample dataset (official ImageNet layout, 10 classes)" \
    "$ALEXKIT" sample imagenet --classes 10 --train-per-class 260 --val-per-class 30 --seed 0 --overwrite
step "prepare: 64 px store (paper: 256)" "$ALEXKIT" prepare imagenet --size 64
step "train: AlexNet at width 1/4, fc 512, 56 px crops (paper: full width, 224)" \
    "$ALEXKIT" train --epochs 14 --batch-size 64 --lr 0.02 --width 0.25 --fc-features 512 --init sturdy --patience 2
step "eval: centre crop" "$ALEXKIT" eval --json eval-centre.json
step "eval --tta: the paper's ten views" "$ALEXKIT" eval --tta --json eval-tta.json
step "pictures" "$ALEXKIT" show-batch --out pictures
step "curves" "$ALEXKIT" plot --out curves.png
printf '\ndemo finished in %d s; outputs in %s\n' $((SECONDS - start)) "$PWD"
