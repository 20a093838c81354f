"""Checkpoints: the file `alexkit train` writes after every epoch and train/eval/predict read back.

A checkpoint is a dict of plain values and state_dicts, loadable with torch.load(..., weights_only=True):
format_version, model (the unwrapped AlexNet's state_dict), model_args, optimizer, scheduler, epoch,
config, metrics, rng (every generator's state, for an exact resume), world_size. It is written to a
temporary name and renamed (outputs.write_atomic). Reading one checks the CRC-32 of every record
torch.save stored (torch.load does not), so bytes changed inside the weights are refused as damage.
load_model builds the network a checkpoint describes, for eval and predict.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from alexkit.errors import AlexkitError, file_size_limit, refused, why
from alexkit.outputs import write_atomic
from alexkit.progress import amount, counted
from alexkit.stops import held

CHECKPOINT_FORMAT = 1
ZIP_START = b"PK\x03\x04"  # the first bytes of every file torch.save writes (a zip archive)
# What a checkpoint holds beside its tensors (zip records, RNG states, config, metrics): 25 KB for
# a net of 161,187 parameters after 2 epochs; an allowance on the safe side, as it only sizes a warning.
CHECKPOINT_EXTRA = 1 << 16


def save_checkpoint(path: Path, ckpt: dict, is_best: bool) -> None:
    """last.pt, and best.pt when is_best, each written atomically (write_atomic: fsync, rename);
    serialized once. best.pt first, last.pt a copy of it: a kill in between leaves last.pt one
    epoch behind, which the resume trains again, never a best.pt behind the best epoch. Ctrl-C and
    SIGTERM wait for the end of the save (held)."""
    first = path / ("best.pt" if is_best else "last.pt")
    with held(signal.SIGINT, signal.SIGTERM):
        write_atomic(first, lambda f: torch.save(ckpt, f))
        if is_best:
            with open(first, "rb") as best:
                write_atomic(path / "last.pt", lambda f: shutil.copyfileobj(best, f))


def checkpoint_bytes(model: torch.nn.Module, momentum: bool) -> int:
    """About the size of a checkpoint of `model`: its state_dict's tensors, SGD's momentum buffer of
    each parameter (with momentum), and CHECKPOINT_EXTRA (the paper's net: about 488 MB)."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return state + (params if momentum else 0) + CHECKPOINT_EXTRA


def room_warnings(run_dir: Path, size: int, copies: int) -> list[str]:
    """Warnings where checkpoints of about `size` bytes may not fit, so that a run stops at the end of
    an epoch and loses it: free space in `run_dir` below `copies` of them (at the peak best.pt, last.pt
    and write_atomic's temporary of the one being written), less the best.pt and last.pt there now (a
    resumed run's); a per-file size limit (`ulimit -f`) below one. Warnings, not errors: free space
    changes while a run lasts."""
    said = []
    there = sum((run_dir / name).stat().st_size for name in ("best.pt", "last.pt") if (run_dir / name).is_file())
    need, free = copies * size - there, shutil.disk_usage(run_dir).free
    if free < need:
        which = "best.pt and last.pt" if copies == 2 else "best.pt, last.pt and the temporary of the one being written"
        beside = f" beside the {amount(there)} there now" if there else ""
        said.append(f"{run_dir} has {amount(free)} free; its checkpoints ({which}, about {amount(size)} each) need about "
                    f"{amount(need)}{beside}: on a full disk the run stops as it saves an epoch, and loses that epoch")  # fmt: skip
    limit = file_size_limit()
    if limit is not None and limit[0] < size:
        said.append(f"the per-file size limit (`ulimit -f`: {limit[1]}) is below a checkpoint's size (about "
                    f"{amount(size)}): saving an epoch will fail, and lose it; raise the limit first")  # fmt: skip
    return said


def read_checkpoint(path: Path) -> dict:
    """The checkpoint dict in `path` (on the CPU), checked to be one `alexkit train` wrote. The file is
    opened once: its CRCs are checked in the file that was loaded, even if another is renamed over it
    meanwhile (a training saving its next epoch)."""
    try:
        f = open(path, "rb")
    except OSError as exc:  # permissions; a folder
        raise refused(exc, "pass a best.pt/last.pt written by `alexkit train`", path) from exc
    with f:
        head, size = f.read(4), f.seek(0, 2)
        f.seek(0)
        try:
            with warnings.catch_warnings():  # torch warns of a pickle that is no torch.save archive: the error below says it
                warnings.simplefilter("ignore")
                ckpt = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:
            said = why(exc).split(". ")[0]  # torch goes on for lines about weights_only or its zip reader
            if head == ZIP_START[: len(head)] and not _another_zip(f):  # torch.save's zip, or its start: cut off or broken
                raise AlexkitError(f"checkpoint {path} is truncated or damaged ({counted(size, 'byte')}; {said}); copy it again from "
                                   "where it was written, or pass another best.pt/last.pt written by `alexkit train`") from exc  # fmt: skip
            raise AlexkitError(f"cannot load checkpoint {path}: not a file torch.save wrote, or damaged from its start ({said}); "
                               "pass a best.pt/last.pt written by `alexkit train`") from exc  # fmt: skip
        failed = failed_crc(f) if head == ZIP_START else None  # torch's legacy format has no CRCs (and is no alexkit file)
    if failed:
        raise AlexkitError(f"checkpoint {path} is damaged ({failed}); copy it again from where it was written, or pass "
                           "another best.pt/last.pt written by `alexkit train`")  # fmt: skip
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != CHECKPOINT_FORMAT or "model_args" not in ckpt:
        found = ckpt.get("format_version") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise AlexkitError(f"{path} is not an alexkit checkpoint of format {CHECKPOINT_FORMAT} (found {found}); "
                           "pass a best.pt/last.pt written by `alexkit train`")  # fmt: skip
    return ckpt


def _another_zip(file: Path | BinaryIO) -> bool:
    """Whether `file` is a whole zip archive without the data.pkl of every torch.save (a stats.npz, say)."""
    try:
        with zipfile.ZipFile(file) as archive:
            return not any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def failed_crc(file: Path | BinaryIO) -> str | None:
    """What in the zip archive torch.save wrote fails its check, or None. torch.save stores a CRC-32 of
    every record but torch.load never checks them, so a checkpoint with bytes changed inside a tensor
    loads as weights nobody trained. Reading the records again takes less time than the load."""
    try:
        with zipfile.ZipFile(file) as archive:  # a file object given stays open
            for record in archive.infolist():
                if record.CRC == 0 and record.file_size:  # written with torch.serialization.set_crc32_options(False)
                    continue
                try:
                    with archive.open(record) as f:
                        while f.read(1 << 24):
                            pass
                except (zipfile.BadZipFile, EOFError, ValueError, zlib.error):
                    return f"record {record.filename} fails its CRC-32 check"
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        return f"its zip directory: {why(exc)}"
    return None


def seed_all(seed: int) -> None:
    """Seed every generator a checkpoint records (rng_state), so that two runs of one seed save the same states."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict:
    """torch, CUDA, NumPy and Python RNG states as tensors and plain values (weights_only loads them)."""
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],  # not started by a CPU run
                numpy=[np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                python=random.getstate())  # fmt: skip


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_initialized():  # a run on CUDA has started it by now; a CPU run needs none
        # One state per GPU the saving process saw; a machine with fewer GPUs takes the first ones.
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def load_model(path: Path):
    """(model in eval mode on CPU, checkpoint dict) from a file written by `alexkit train`."""
    from alexkit.model import build_from_checkpoint

    ckpt = read_checkpoint(path)
    try:
        model = build_from_checkpoint(ckpt)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:  # weights that do not fit their model_args
        raise AlexkitError(f"{path}: its weights do not fit its model_args ({misfit(exc)}); "
                           "pass a best.pt/last.pt written by `alexkit train`") from exc  # fmt: skip
    broken = next((name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()), None)
    if broken is not None:  # training stops at a non-finite loss, so only a file changed since holds these
        raise AlexkitError(f"{path}: its weights are not all finite ({broken} holds NaN or inf); pass another "
                           "best.pt/last.pt written by `alexkit train`")  # fmt: skip
    return model.eval(), ckpt


def misfit(exc: Exception) -> str:
    """The first concrete line of a load_state_dict error, whose own first line ("Error(s) in loading
    state_dict for AlexNet:") names no weight: "conv1.weight is [96, 3, 11, 11] in the file but [48, 3,
    11, 11] by its model_args, and 15 more", or 'Missing key(s) in state_dict: "fc8.weight"'."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [exc.__class__.__name__]
    concrete = lines[1:] if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1 else lines
    shapes = (r"size mismatch for (\S+): copying a param with shape torch.Size\((.*?)\) from checkpoint, "
              r"the shape in current model is torch.Size\((.*?)\)\.")
    first = re.fullmatch(shapes, concrete[0])
    said = f"{first[1]} is {first[2]} in the file but {first[3]} by its model_args" if first else concrete[0].rstrip(". ")
    if len(said) > 200:  # a long list of keys
        said = said[:200] + "..."
    return said + (f", and {len(concrete) - 1} more" if len(concrete) > 1 else "")
