"""Resuming a run: which checkpoint a run continues from, the config it continues with (its own, but
for the few flags a resume may change), and what to tell someone whose run stopped.

Resuming is exact at epoch boundaries with the same number of processes (see train.py); the run's
files themselves are runs.py's, the checkpoint file checkpoints.py's.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from alexkit.errors import FREE_GPU, AlexkitError
from alexkit.paths import checkpoint_in, word
from alexkit.progress import counted
from alexkit.runs import moved_store, recorded

if TYPE_CHECKING:
    from alexkit.train import TrainConfig


# Fields a resumed run may change; any other flag given with --resume must match the run's own.
RESUME_MAY_CHANGE = ("resume", "epochs", "data", "device", "parallel", "progress")


def flags_given(cfg: TrainConfig, given: Collection[str] | None) -> Collection[str]:
    """The fields named on the command line (`given`), or for a caller without one (None), those of
    `cfg` not at their default."""
    if given is not None:
        return given
    defaults = type(cfg)()
    return [f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(defaults, f.name)]


def resumed_config(cfg: TrainConfig, saved: dict, given: Collection[str] | None, run: Path) -> TrainConfig:
    """The resumed run's config, with the fields named in `given` taken from `cfg` (None: those not
    at their default).

    Only RESUME_MAY_CHANGE fields may differ from the run's own; any other flag that differs is an
    error, not silently ignored. Without --data, a store gone because the folder holding it and the
    runs moved is looked for beside the runs folder (moved_store).
    """
    defaults, merged, given = type(cfg)(), {}, flags_given(cfg, given)
    for f in fields(cfg):
        mine, theirs = getattr(cfg, f.name), saved.get(f.name, getattr(defaults, f.name))  # older runs: the default
        theirs = Path(theirs) if f.name in ("data", "out", "resume") and theirs is not None else theirs
        if f.name not in given or mine == theirs:
            merged[f.name] = theirs
        elif f.name in RESUME_MAY_CHANGE:
            merged[f.name] = mine
        elif f.name == "out":
            raise AlexkitError(f"--out {mine}: a resumed run stays in its own folder ({cfg.resume}); drop --out")
        else:
            flag = "--" + f.name.replace("_", "-")
            raise AlexkitError(f"{flag} {mine} differs from the resumed run's {theirs}; drop {flag} or start a new run")
    if "data" not in given and merged["data"] is not None:
        merged["data"] = moved_store(str(merged["data"]), run) or merged["data"]
    if merged["parallel"].endswith("columns") != saved["parallel"].endswith("columns"):
        raise AlexkitError(f"--parallel {merged['parallel']}: the run was trained with --parallel {saved['parallel']}, "
                           "whose optimizer state is laid out differently; resume with or without columns as it was")  # fmt: skip
    return type(cfg)(**merged)


def resume_ddp_under_torchrun(parallel: str, run: Path, n: int | None, asked: TrainConfig,
                               given: Collection[str] | None) -> AlexkitError:
    """A ddp run resumed by one process, not told --parallel: the torchrun line that resumes it, with
    the flags given here that a resume may change, or --parallel for one process."""
    kept = [f for f in RESUME_MAY_CHANGE if f not in ("resume", "parallel") and f in flags_given(asked, given)]
    flags = "".join(f" --{f} {word(getattr(asked, f))}" for f in kept)
    by, on_one = ((f" by {counted(n, 'process', 'processes')}", f"on one node: torchrun --nproc-per-node={n}") if n
                  else ("", "torchrun"))  # fmt: skip
    return AlexkitError(f"{run} was trained with --parallel {parallel}{by}; resume it under torchrun as it was started "
                        f"({on_one} -m alexkit train --resume {word(asked.resume)}{flags}), or in this one process with "
                        f"--parallel {'columns' if parallel == 'ddp-columns' else 'none'}")  # fmt: skip


def go_on_from(run_dir: Path) -> Path | None:
    """The checkpoint a stopped run goes on from: its last.pt, or its best.pt alone (where epoch 1's
    last.pt could not be written, a full disk say, or a branch copied off a run); None before either."""
    return checkpoint_in(run_dir, ("last.pt", "best.pt"))


def how_to_go_on(parallel: str, run_dir: Path) -> str:
    """After a run stopped: how to continue it from go_on_from's checkpoint (the same command again is
    refused where a best.pt is there), or "run again" before it has one."""
    ckpt = go_on_from(run_dir)
    if ckpt is None:
        return "run again"
    resume = word(run_dir) if ckpt.name == "last.pt" else word(ckpt)
    if parallel.startswith("ddp"):  # one process alone would be refused (resume_ddp_under_torchrun)
        return f"continue with torchrun started as this job was, running `-m alexkit train --resume {resume}`"
    return f"continue with `alexkit train --resume {resume}`"


def less_memory(cfg: TrainConfig, run_dir: Path, then: str) -> str:
    """What to do after running out of GPU memory: a run with a checkpoint goes on only with its own
    --batch-size (the global batch), so less memory per GPU means more processes, or a new run."""
    if go_on_from(run_dir) is None:
        return f"{FREE_GPU} or lower --batch-size, then {then}"
    ddp = "ddp-columns" if cfg.parallel.endswith("columns") else "ddp"
    more = "on more processes" if cfg.parallel.startswith("ddp") else f"under torchrun with --parallel {ddp} on more GPUs"
    return (f"{FREE_GPU}, then {then}; a resumed run keeps its --batch-size "
            f"{cfg.batch_size}, so for less memory per GPU resume it {more} (N processes take {cfg.batch_size} / N images "
            "each), or start a new run with a lower --batch-size")  # fmt: skip


def world_size_of(ckpt: dict, run: Path) -> int | None:
    """How many processes trained a checkpoint's epochs: in the checkpoint, or (older runs) in the
    run folder's config.json; None if neither says."""
    if "world_size" in ckpt:
        return ckpt["world_size"]
    return recorded(run, "resolved", "world_size")


def check_resumable(ckpt_path: Path) -> None:
    """Resuming continues a run in its own directory from its last.pt: from an earlier checkpoint
    of the run (best.pt) it would overwrite the epochs after it."""
    last = ckpt_path.parent / "last.pt"
    if ckpt_path.name != "last.pt" and last.is_file():
        if ckpt_path.suffix != ".pt":  # config.json, say: no checkpoint at all
            raise AlexkitError(f"--resume {ckpt_path} is no checkpoint; a run continues from its last.pt: pass --resume "
                               f"{word(ckpt_path.parent)}")  # fmt: skip
        raise AlexkitError(f"--resume {ckpt_path}: a run continues from its last.pt, and resuming from {ckpt_path.name} would "
                           f"overwrite the epochs after it; pass --resume {word(ckpt_path.parent)}, or copy {ckpt_path} "
                           f"into a new folder NEW and branch off with --resume NEW/{ckpt_path.name}")  # fmt: skip
