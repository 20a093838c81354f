"""What is installed and whether each native piece (FFCV's library, DALI's CPU and GPU pipelines)
really works here: the checks behind `alexkit doctor`."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import platform
import sys

Row = tuple[str, str, bool]  # (name, detail, ok)


def _version(module: str, dist: str | None = None) -> tuple[str | None, str]:
    """(version, "") when `module` imports, else (None, why). The version comes from the distribution."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        return None, f"{exc.__class__.__name__}: {exc}"
    try:
        return version(dist or module), ""
    except PackageNotFoundError:
        return getattr(mod, "__version__", "installed"), ""


def _import_fix(dist: str, module: str, err: str) -> str:
    """The line that says how to mend the package `dist` whose `module` does not import (`err`: why)."""
    if "libGL" in err:  # opencv-python on a server without a display's libraries
        return f"{dist} does not import ({err}): apt-get install libgl1 libglib2.0-0, then run alexkit doctor again"
    missing = err.startswith("ModuleNotFoundError") and f"'{module.split('.')[0]}'" in err
    return f"{dist} is missing: run `make setup` (or pip install -e .)" if missing else \
        f"{dist} does not import ({err}): run `make setup` again (or reinstall {dist})"  # fmt: skip


def _at_least(version: str, wanted: tuple[int, ...]) -> bool:
    """Whether a version string ("2.11.0+cu130", "2.4.1") is at least `wanted` (its leading numbers)."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers) >= wanted


def _dali_cpu_pipeline() -> str:
    """Build and run a one-operator CPU pipeline (device_id=None): proves DALI works without a GPU."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: [np.arange(6, dtype=np.uint8).reshape(1, 2, 3)] * 2, batch=True, layout="HWC")
        return fn.flip(x, horizontal=1)

    p = pipe()
    p.build()
    (out,) = p.run()
    assert np.asarray(out[0])[0, 0].tolist() == [3, 4, 5]
    return "runs a CPU pipeline"


def _dali_gpu_pipeline() -> str:
    """Decode a small JPEG with the mixed (nvJPEG) decoder on GPU 0."""
    import io

    import numpy as np
    from nvidia.dali import fn, pipeline_def
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buf, "JPEG", quality=95)
    data = np.frombuffer(buf.getvalue(), dtype=np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=0)
    def pipe():
        enc = fn.external_source(source=lambda: [data], batch=True)
        return fn.decoders.image(enc, device="mixed")

    p = pipe()
    p.build()
    (out,) = p.run()
    shape = tuple(out.as_cpu()[0].shape())
    assert shape == (24, 32, 3), shape
    return "mixed JPEG decoder runs on GPU 0"


def checks() -> tuple[list[Row], list[str], int]:
    """(rows to show, problems with their fixes, the number of CUDA GPUs)."""
    rows: list[Row] = []
    problems: list[str] = []
    rows.append(("python", f"{sys.version.split()[0]} ({platform.machine()})", sys.version_info >= (3, 10)))
    if sys.version_info < (3, 10):
        problems.append("alexkit needs Python 3.10 or newer")
    for name, module, dist in [("numpy", "numpy", "numpy"), ("pillow", "PIL", "pillow"), ("typer", "typer", "typer"),
                               ("rich", "rich", "rich"), ("opencv", "cv2", "opencv-python"), ("scipy", "scipy.io", "scipy")]:  # fmt: skip
        ver, err = _version(module, dist)
        rows.append((name, ver or err, ver is not None))
        if ver is None:
            problems.append(_import_fix(dist, module, err))
    torch_ver, err = _version("torch")
    rows.append(("torch", torch_ver or err, torch_ver is not None and _at_least(torch_ver, (2, 11))))
    if torch_ver is None:
        problems.append(_import_fix("torch", "torch", err))
    elif not _at_least(torch_ver, (2, 11)):
        problems.append(f"torch {torch_ver} is older than 2.11, which alexkit needs: pip install 'torch>=2.11' (`make setup` "
                        "keeps a torch that imports)")  # fmt: skip
    _check_ffcv(rows, problems)
    numba_ver, err = _version("numba")  # comes with FFCV; optional for alexkit's own graphs
    absent = importlib.util.find_spec("numba") is None
    rows.append(("numba (one-pass CPU kernels)", numba_ver or (f"{'not installed' if absent else err}: CPU graphs run DALI's "
                                                               "operators only (slower, see the README)"), True))  # fmt: skip
    dali_ver = _check_dali(rows, problems)
    n = 0  # CUDA GPUs
    if torch_ver is not None:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
        cuda = f"{n} GPU{'s' * (n != 1)}: {names} (CUDA {torch.version.cuda})" if n else f"not available (torch CUDA build: {torch.version.cuda or 'none, CPU build'})"
        rows.append(("cuda", cuda, True))
        if n and dali_ver is not None:
            try:
                rows.append(("dali gpu pipeline", _dali_gpu_pipeline(), True))
            except Exception as exc:
                rows.append(("dali gpu pipeline", f"fails: {exc}", False))
                problems.append(f"DALI's GPU pipeline fails ({exc}); nvidia-dali-cuda130 needs an NVIDIA driver for CUDA 13 (nvidia-smi "
                                "shows the CUDA the driver supports): update the driver, or run with --device cpu until then")  # fmt: skip
    return rows, problems, n


def _check_ffcv(rows: list[Row], problems: list[str]) -> None:
    """FFCV: the version whose .beton format alexkit reads and writes, and its native library."""
    ffcv_ver, err = _version("ffcv")
    rows.append(("ffcv", ffcv_ver or err, ffcv_ver == "1.0.2"))
    if ffcv_ver is None:  # its native library is not reached then: the import's own error is the one to fix
        problems.append(_import_fix("ffcv", "ffcv", err))
    elif ffcv_ver != "1.0.2":  # alexkit reads and writes its .beton format itself
        problems.append(f"ffcv {ffcv_ver} is not the 1.0.2 whose .beton format alexkit reads and writes: pip install "
                        "ffcv==1.0.2 (`make setup` keeps an ffcv that imports)")  # fmt: skip
    else:
        native, err = _version("ffcv.libffcv", "ffcv")
        rows.append(("ffcv native library", "loads" if native else err, native is not None))
        if native is None:
            problems.append("FFCV's native library does not load: apt-get install pkg-config libturbojpeg0-dev libopencv-dev, then `make setup`")


def _check_dali(rows: list[Row], problems: list[str]) -> str | None:
    """DALI: the 2.4 release, and a CPU pipeline that runs; its version, or None where it does not import."""
    dali_ver, err = _version("nvidia.dali", "nvidia-dali-cuda130")
    dali_ok = dali_ver is not None and _at_least(dali_ver, (2, 4)) and not _at_least(dali_ver, (2, 5))
    rows.append(("nvidia-dali", dali_ver or err, dali_ok))
    if dali_ver is None:
        problems.append("DALI is missing: pip install nvidia-dali-cuda130 (or `make setup`)")
    elif not dali_ok:
        problems.append(f"nvidia-dali {dali_ver} is not the 2.4 release alexkit uses: pip install "
                        "'nvidia-dali-cuda130>=2.4,<2.5' (`make setup` keeps a DALI that imports)")  # fmt: skip
    else:
        try:
            rows.append(("dali cpu pipeline", _dali_cpu_pipeline(), True))
        except Exception as exc:
            rows.append(("dali cpu pipeline", f"fails: {exc}", False))
            problems.append(f"DALI cannot run a CPU pipeline ({exc}); reinstall nvidia-dali-cuda130")
    return dali_ver
