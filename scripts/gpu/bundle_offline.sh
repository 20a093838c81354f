#!/usr/bin/env bash
# For a GPU machine without network access (Python 3.12, torch with CUDA 13, no DALI): run on a
# networked machine, in the repository root, then copy the parts over and unpack them there.
#   1. Downloads the cp312 x86-64 wheels of DALI 2.4 (CUDA 13.0) and every runtime requirement
#      that such a machine's image lacks (assumed present: torch, numpy, six, packaging, pyyaml,
#      wheel, pillow, scipy, opencv-python-headless, pytest), and typer 0.29 with its requirements
#      (alexkit's commands need typer.TyperException, which typer before 0.27.2 lacks; the image's
#      typer and rich versions are not known, and it has no pydantic).
#   2. Installs them here into a cp312 tree, packs it with xz, splits that into .whl1/ .whl2/ ...
#      (each under CHUNK_MIB, for transfers with a size limit) and prints the sizes and the number
#      of parts. The GPU machine unpacks the joined parts into /tmp/dev/site (for PYTHONPATH): no
#      pip run there. The store is not packed: check.py builds it there (scripts/gpu/make_store.py).
#      See scripts/gpu/README.md.
# All outputs are ignored by git (/.whl* in .gitignore; .whl-all/ keeps the downloaded wheels for
# reference and a plain pip install).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-.venv/bin/python}
CHUNK_MIB=${CHUNK_MIB:-60}   # per part

# --- 1. wheels -------------------------------------------------------------------------------
# Requires-Dist of nvidia-dali-cuda130 2.4.0: astunparse, gast, six, optree, packaging, numpy, nvtx,
# makefun, libcst~=1.8, nvidia-nvimgcodec-cu13[all] (nvjpeg, nvjpeg2k, nvtiff, libnvcomp),
# nvidia-libnvcomp-cu13==5.3.0.16. six, packaging and numpy are assumed present; the rest is bundled.
# nvjpeg 13.0.x matches a CUDA 13.0 driver (580).
# Requires-Dist of typer 0.29.2 (its click is built in): pydantic>=2.5.3, shellingham>=1.3.0,
# rich>=13.8.0, annotated-doc>=0.0.2; of pydantic 2.14.4: pydantic-core==2.50.5, annotated-types>=0.6.0,
# typing-extensions>=4.16.0, typing-inspection>=0.4.4; of rich 15.0.0: markdown-it-py>=2.2.0 (mdurl~=0.1),
# pygments>=2.13.0,<3 (a rich before 13 there came with commonmark instead).
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
    typer==0.29.2
    pydantic==2.14.4
    pydantic-core==2.50.5
    annotated-types==0.8.0
    annotated-doc==0.0.7
    typing-extensions==4.16.0
    typing-inspection==0.4.5
    shellingham==1.5.4
    rich==15.0.0
    markdown-it-py==4.3.0
    mdurl==0.1.2
    pygments==2.21.0
)
mkdir -p .whl-all
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl-all "${WHEELS[@]}"
n_wheels=$(ls .whl-all/*.whl | wc -l)
[ "$n_wheels" -eq "${#WHEELS[@]}" ] || { echo "expected ${#WHEELS[@]} wheels in .whl-all, found $n_wheels" >&2; exit 1; }

# --- 2. install here into a cp312 tree, one xz tar, in chunks ----------------------------------
# xz packs the DALI libraries about a quarter smaller than the wheels' zip does; the GPU machine
# then only unpacks: site/ -> PYTHONPATH. Trimmed: DALI's and nvImageCodec's Python bindings for
# other Python versions, the scripts in bin/, and nvCOMP's command-line tool and C headers.
rm -rf .whl-pack .whl[0-9]* .whl-part.* .whl-pack.tar.xz
"$PY" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --target .whl-pack/site .whl-all/*.whl
find .whl-pack/site/nvidia -name '*.cpython-3*.so' ! -name '*.cpython-312-*' -print -delete | sed 's/^/  dropped /'
rm -rf .whl-pack/site/bin .whl-pack/site/nvidia/libnvcomp/bin .whl-pack/site/nvidia/libnvcomp/include
for lib in dali/backend_impl dali/python_function_plugin nvimgcodec/nvimgcodec_impl; do
    ls .whl-pack/site/nvidia/$lib.cpython-312-*.so >/dev/null   # the ones Python 3.12 loads are kept
done
echo "packing $(du -sm .whl-pack | cut -f1) MiB with xz (about 2 minutes on 2 cores) ..."
tar -cf - -C .whl-pack site | xz -6 -T0 > .whl-pack.tar.xz
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
# Each call carries one part folder and the working tree: together at most 64 MiB.
tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
echo "parts (each travels with the working tree, $(awk -v b="$tree" 'BEGIN {printf "%.1f", b / 2^20}') MiB):"
for d in .whl[0-9]*; do
    bytes=$(du -cb "$d" | tail -1 | cut -f1)
    awk -v d="$d" -v b="$bytes" -v t="$tree" 'BEGIN {printf "  %-6s %5.1f MiB, %5.1f MiB with the tree\n", d, b / 2^20, (b + t) / 2^20}'
    [ $((bytes + tree)) -le $((64 * 2**20)) ] || { echo "$d and the working tree exceed 64 MiB: lower CHUNK_MIB" >&2; exit 1; }
done
echo "parts: $i"
