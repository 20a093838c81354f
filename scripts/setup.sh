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

# 2. The virtual environment.
PYTHON="${PYTHON:-python3}"
if ! .venv/bin/python -c "" >/dev/null 2>&1; then
    say "creating .venv with $($PYTHON --version)"
    rm -rf .venv
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then  # made without pip, or by a run that failed there
    .venv/bin/python -m ensurepip --upgrade >/dev/null
    .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
fi
PIP=(.venv/bin/python -m pip install -q)
# Cheap presence checks (find_spec, no heavy imports), so a second run takes a couple of seconds.
have() { .venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" "$@" 2>/dev/null; }

# 3. torch: a CPU build unless an NVIDIA GPU is present (never a multi-GB CUDA build on CPU machines).
CUDA_WARNING='import torch
if not torch.cuda.is_available():
    print(f"[setup] warning: torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU here; the NVIDIA "
          "driver may be older than that CUDA (nvidia-smi shows the CUDA the driver supports): install the torch "
          "build for your driver (pytorch.org/get-started), or update the driver; until then alexkit runs on the CPU")'
if ! have torch; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        say "NVIDIA GPU found: installing torch with CUDA"
        "${PIP[@]}" "torch>=2.11"
        # A driver older than the CUDA of that build leaves torch without the GPU: say so now, not at `train`.
        .venv/bin/python -c "$CUDA_WARNING" >&2
    else
        say "no NVIDIA GPU: installing a CPU build of torch"
        # torch==2.13.0 where the package index offers its CPU wheel (a dry run lists what would come:
        # the CUDA build brings nvidia-* packages); else PyTorch's CPU index. Never a CUDA download.
        plan=$(mktemp)
        if "${PIP[@]}" --dry-run --report "$plan" "torch==2.13.0" 2>/dev/null && ! grep -q '"name": "nvidia-' "$plan"; then
            "${PIP[@]}" "torch==2.13.0"
        else
            "${PIP[@]}" "torch>=2.11" --index-url https://download.pytorch.org/whl/cpu
        fi
        rm -f "$plan"
        .venv/bin/python -c "import torch; assert not torch.version.cuda, 'a CUDA build of torch was installed'"
    fi
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
say "ready: .venv/bin/alexkit (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"  # with +cpu/+cu130
