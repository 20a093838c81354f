#!/usr/bin/env bash
# Idempotent set-up: system libraries for FFCV, .venv, torch (CPU build when no NVIDIA GPU), alexkit.
# A second run with everything in place only checks and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }

# 1. System libraries FFCV compiles against, and what compiles it (Debian/Ubuntu names): FFCV has no
#    wheel, pip builds its C++ extension; Debian's python3 makes venvs only with python3-venv.
missing=()
for pkg in pkg-config libturbojpeg0-dev libopencv-dev g++ python3-dev python3-venv; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "[setup] missing system packages: ${missing[*]}; as root: apt-get install ${missing[*]}, then run make setup again" >&2
            exit 1
        }
        sudo="sudo"
    fi
    say "installing ${missing[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The virtual environment, with Python >= 3.10 (alexkit's requires-python). A .venv is made anew when
#    its python does not run or is older, or when it was made in another folder (the repo moved or was
#    copied): its scripts start the python named by their first line, in that other .venv or nowhere.
PYTHON="${PYTHON:-python3}"
new_enough() { "$1" -I -c "import sys; sys.exit(sys.version_info < (3, 10))" >/dev/null 2>&1; }
venv_problem() {  # why .venv cannot be kept, or nothing
    .venv/bin/python -I -c "" >/dev/null 2>&1 || { echo "its python does not run"; return; }
    new_enough .venv/bin/python \
        || { echo "it holds $(.venv/bin/python -V 2>&1), older than 3.10"; return; }
    if [ -f .venv/bin/alexkit ]; then
        made_in=$(head -n 1 .venv/bin/alexkit); made_in=${made_in#\#!}
        # (pip writes a /bin/sh stub instead for a path too long for a #! line.)
        [ "$made_in" = /bin/sh ] || [ "$(dirname -- "$made_in")" -ef .venv/bin ] \
            || echo "it was made in $(dirname -- "$(dirname -- "$(dirname -- "$made_in")")")"
    fi
}
problem=$(venv_problem)
if [ -n "$problem" ]; then
    if ! new_enough "$PYTHON"; then
        found=$("$PYTHON" --version 2>&1 | head -n 1) && found="is $found" || found="is not found"
        echo "[setup] error: alexkit needs Python >= 3.10, and $PYTHON $found; name one that is: PYTHON=python3.11 make setup" >&2
        exit 1
    fi
    [ -e .venv ] && say "making .venv anew: $problem"
    say "creating .venv with $("$PYTHON" --version)"
    rm -rf .venv
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then  # made without pip, or by a run that failed there
    .venv/bin/python -m ensurepip --upgrade >/dev/null
    .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
fi
PIP=(.venv/bin/python -m pip install -q)
# Cheap presence checks (find_spec, no heavy imports), so a second run takes a couple of seconds; -I: not
# from the current folder (the repo root, where ./alexkit is found whether or not it is installed).
have() { .venv/bin/python -I -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" "$@" 2>/dev/null; }

# 3. torch: a CPU build unless an NVIDIA GPU is present (never a multi-GB CUDA build on CPU machines).
gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
if ! have torch; then
    if gpu; then
        say "NVIDIA GPU found: installing torch with CUDA"
        "${PIP[@]}" "torch>=2.11"
    else
        say "no NVIDIA GPU: installing a CPU build of torch"
        # torch==2.13.0 (the README's figures) where the package index offers its CPU wheel (a dry run lists
        # what would come: the CUDA build brings nvidia-* packages); else from PyTorch's CPU index, which
        # has 2.13.0+cpu. Never a CUDA download.
        plan=$(mktemp)
        if "${PIP[@]}" --dry-run --report "$plan" "torch==2.13.0" 2>/dev/null && ! grep -q '"name": "nvidia-' "$plan"; then
            "${PIP[@]}" "torch==2.13.0"
        else
            "${PIP[@]}" "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
        fi
        rm -f "$plan"
        .venv/bin/python -c "import torch; assert not torch.version.cuda, 'a CUDA build of torch was installed'"
    fi
fi
# With a GPU, torch must be able to use it, on every run (a .venv kept from before keeps its torch): a CPU
# build (installed where no GPU was seen), or a driver older than the build's CUDA, is said now, not at `train`.
GPU_CHECK='import torch
if torch.version.cuda is None:
    print(f"[setup] warning: an NVIDIA GPU is here but torch {torch.__version__} is a CPU build, so alexkit runs on the "
          "CPU; for the CUDA build: .venv/bin/python -m pip uninstall -y torch && make setup")
elif not torch.cuda.is_available():
    print(f"[setup] warning: torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU here; the NVIDIA "
          "driver may be older than that CUDA (nvidia-smi shows the CUDA the driver supports): install the torch "
          "build for your driver (pytorch.org/get-started), or update the driver; until then alexkit runs on the CPU")'
if gpu; then
    .venv/bin/python -I -c "$GPU_CHECK" >&2
fi

# 4. alexkit itself (editable) with its test extras; FFCV builds from source here (~1 min, once).
stamp=.venv/.alexkit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! have alexkit ffcv nvidia.dali typer rich PIL scipy pytest; then
    say "installing alexkit and its dependencies (FFCV builds from source the first time)"
    "${PIP[@]}" -e ".[test]"
    touch "$stamp"
fi
# FFCV's compiled extension must link against the system libraries (dlopen it, without importing ffcv).
.venv/bin/python -c "import ctypes, glob, importlib.util as u; [d] = u.find_spec('ffcv').submodule_search_locations; [so] = glob.glob(d + '/_libffcv*.so'); ctypes.CDLL(so)" \
    || { echo "[setup] FFCV's native library does not load: apt-get install pkg-config libturbojpeg0-dev libopencv-dev, then rm .venv/.alexkit-installed and run make setup again" >&2; exit 1; }
# The console script itself must start: a .venv whose #! lines name another folder's python passes the
# checks above once alexkit is installed again, and `have` finds packages, not a command that runs.
if ! err=$(.venv/bin/alexkit --help 2>&1 >/dev/null); then
    echo "[setup] error: .venv/bin/alexkit does not start (${err##*$'\n'}); rm -rf .venv && make setup" >&2
    exit 1
fi
say "ready: .venv/bin/alexkit (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"  # with +cpu/+cu130
