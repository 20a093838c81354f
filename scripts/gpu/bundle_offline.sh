#!/usr/bin/env bash
# For a GPU machine without network access (Python 3.12, torch with CUDA 13, no DALI): run on a
# networked machine, in the repository root, then copy the parts over and unpack them there.
#   1. Downloads the cp312 x86-64 wheels of DALI 2.4 (CUDA 13.0) and every runtime requirement
#      that such a machine's image lacks (assumed present: torch, numpy, six, packaging, pyyaml,
#      typing-extensions, wheel, typer, rich, pillow, scipy, opencv-python-headless, pytest).
#   2. Builds .store/: photo-like JPEGs (train 1000 + val 250, ~500x375 sources, 10 classes) through
#      `alexkit prepare` at 256 px, JPEG q90.
#   3. Installs the wheels here into a cp312 tree, packs it with the store as one .tar.xz, splits
#      that into .whl1/ .whl2/ ... (each under CHUNK_MIB, for transfers with a size limit) and
#      prints the sizes and the number of parts. The GPU machine unpacks the joined parts into /tmp/dev
#      (site/ for PYTHONPATH, store/): no pip run there. See scripts/gpu/README.md.
# All outputs are ignored by git (/.whl*, /.store* in .gitignore; .whl-all/ keeps the downloaded
# wheels for reference and a plain pip install).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-.venv/bin/python}
CHUNK_MIB=${CHUNK_MIB:-60}   # per part
TRAIN=${TRAIN:-1000}
VAL=${VAL:-250}


# --- 1. wheels -------------------------------------------------------------------------------
# Requires-Dist of nvidia-dali-cuda130 2.4.0: astunparse, gast, six, optree, packaging, numpy, nvtx,
# makefun, libcst~=1.8, nvidia-nvimgcodec-cu13[all] (nvjpeg, nvjpeg2k, nvtiff, libnvcomp),
# nvidia-libnvcomp-cu13==5.3.0.16. six, packaging and numpy are assumed present; the rest is bundled.
# nvjpeg 13.0.x matches a CUDA 13.0 driver (580).
WHEELS=(
    nvidia-dali-cuda130==2.4.0
    nvidia-nvimgcodec-cu13==0.9.0.20
    nvidia-libnvcomp-cu13==5.3.0.16
    nvidia-nvjpeg==13.0.4.44
    nvidia-nvjpeg2k-cu13==0.11.0.51
    nvidia-nvtiff-cu13==0.8.0.82
    astunparse==1.6.3
    gast==0.7.0
    libcst==1.9.0
    makefun==1.16.0
    nvtx==0.2.17
    optree==0.20.0
)
mkdir -p .whl-all
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl-all "${WHEELS[@]}"
n_wheels=$(ls .whl-all/*.whl | wc -l)
[ "$n_wheels" -eq "${#WHEELS[@]}" ] || { echo "expected ${#WHEELS[@]} wheels in .whl-all, found $n_wheels" >&2; exit 1; }

# --- 2. the store ----------------------------------------------------------------------------
# `alexkit bench prepare`'s photo-like sources (~31 KB a JPEG at 256 px q90),
# TRAIN + VAL of them, the last VAL moved to val/ class folders, then `alexkit prepare`.
if [ ! -f .store/manifest.json ]; then
    rm -rf .store-src .store
    "$PY" - "$TRAIN" "$VAL" <<'PYEOF'
import sys
from pathlib import Path
from alexkit.bench.prepare import write_photo_like
from alexkit.paths import usable_cores

train, val = int(sys.argv[1]), int(sys.argv[2])
src = Path(".store-src")
for path in write_photo_like(src, train + val, workers=usable_cores()):
    if int(path.stem.split("_")[1]) >= train:  # by number: the list comes sorted by class folder
        dest = src / "val" / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.rename(dest)
PYEOF
    "$PY" -m alexkit prepare .store-src --out .store --size 256 --format jpg --quality 90
    rm -rf .store-src
fi

# --- 3. install here into a cp312 tree, add the store, one xz tar, in chunks --------------------
# xz packs the DALI libraries about a quarter smaller than the wheels' zip does (and the store's
# 8 MiB page padding to nothing); the GPU machine then only unpacks: site/ -> PYTHONPATH, store/.
# Trimmed: DALI's Python bindings for other Python versions.
rm -rf .whl-pack .whl[0-9]* .whl-part.* .whl-pack.tar.xz
"$PY" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --target .whl-pack/site .whl-all/*.whl
find .whl-pack/site/nvidia/dali -maxdepth 1 -name 'backend_impl.cpython-*.so' ! -name '*cpython-312-*' -delete
rm -rf .whl-pack/site/bin
[ -n "$(ls .whl-pack/site/nvidia/dali/backend_impl.cpython-312-*.so)" ]
cp -r .store .whl-pack/store
echo "packing $(du -sm .whl-pack | cut -f1) MiB with xz (about 2 minutes on 2 cores) ..."
tar -cf - -C .whl-pack site store | xz -6 -T0 > .whl-pack.tar.xz
split -b "${CHUNK_MIB}m" -d -a 1 .whl-pack.tar.xz .whl-part.
i=0
for part in .whl-part.*; do
    i=$((i + 1))
    mkdir -p ".whl$i"
    mv "$part" ".whl$i/part.$i"
done
rm -rf .whl-pack.tar.xz .whl-pack
# Checksums of every part travel with the last one: the machine checks that all arrived before unpacking.
(for d in .whl[0-9]*; do (cd "$d" && sha256sum part.*); done) > ".whl$i/SHA256SUMS"

echo "wheels (.whl-all, kept here for reference):"
ls -l .whl-all | awk 'NR > 1 {printf "  %8.1f MiB  %s\n", $5 / 2^20, $9}'
echo "chunks:"
du -sm .whl[0-9]* | sed 's/^/  /'
echo "store: $(du -sm --apparent-size .store | cut -f1) MiB in .store (packed into the chunks, unpacked to /tmp/dev/store)"
echo "working tree that travels (git ls-files + untracked, not ignored): $(git ls-files -co --exclude-standard -z | du -cm --files0-from=- | tail -1 | cut -f1) MiB"
echo "total: $(du -cm .whl[0-9]* | tail -1 | cut -f1) MiB; parts: $i"
