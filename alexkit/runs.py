"""Run directories: what `alexkit train` writes and train/eval/predict read back (how a run is
resumed: resume.py).

A run directory holds config.json, metrics.jsonl (one line per epoch), last.pt and best.pt (the
checkpoints: checkpoints.py), and copies of the store's stats.npz and classes.json, so a run can be
used without its store. A new run goes into a new or empty folder, or one a run left before its
first epoch ended.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from alexkit.errors import AlexkitError, refused
from alexkit.launcher import started, talks
from alexkit.locks import NoLocks, held_by_another, only_writer
from alexkit.outputs import check_folder, temporaries, write_atomic
from alexkit.paths import DEFAULT_RUNS, DEFAULT_STORE, checkpoint_in, is_run, latest_run, latest_run_noted, word
from alexkit.pipeline.store import CLASSES, MANIFEST, STATS, Stats, read_classes
from alexkit.pipeline.storedir import read_json
from alexkit.progress import counted, some
from alexkit.ranks import agree, same_folder_everywhere


def run_dir(resume: Path | None, out: Path | None, is_main: bool) -> Path:
    """The resumed run's directory, `out`, or a new DEFAULT_RUNS/<YYYYmmdd-HHMMSS>: rank 0's choice,
    as an absolute path, in every process (on several nodes a relative path means another folder on each)."""
    name, error = [""], None
    if is_main:
        try:
            name = [str(_choose_run_dir(resume, out).absolute())]
        except OSError as exc:  # DEFAULT_RUNS under a file, say
            error = refused(exc, "choose another --out", DEFAULT_RUNS)
    agree(error)
    if dist.is_initialized():
        dist.broadcast_object_list(name, src=0)
    return Path(name[0])  # claim_run checks, holding the folder's lock, that it holds no run yet


def _choose_run_dir(resume: Path | None, out: Path | None) -> Path:
    if resume is not None:
        return resume if resume.is_dir() else resume.parent
    if out:
        return out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = DEFAULT_RUNS / stamp, 1
    while True:  # claimed by making it: two runs within a second get -2, -3, ..., sorting after the first
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = DEFAULT_RUNS / f"{stamp}-{n}"


@contextlib.contextmanager
def claim_run(run_dir: Path, is_main: bool, ckpt: dict | None):
    """Rank 0 holds RUN/.train.lock while the run lasts (two trainings in one folder would mix their
    files) and, holding it, checks that the folder is as this run found it: no run in it yet, or
    for a resumed run the checkpoint it resumes from (last.pt, or the file --resume names, a lone
    best.pt say) unchanged. Every rank learns the outcome, so none goes on into the collectives
    alone. A folder that was empty and still holds nothing else is removed on failure.
    ckpt: the resumed checkpoint, with its "path" and "stat" (size, mtime_ns) when it was read."""
    with contextlib.ExitStack() as stack:
        fresh, error = False, None
        if is_main:
            busy = f"another `alexkit train` is writing {run_dir}; wait for it to end" + ("" if ckpt else ", or choose another --out")
            try:
                if ckpt is None:  # (a resumed run's folder holds its checkpoint)
                    check_folder(run_dir, "--out")
                fresh = not run_dir.exists() or not any(run_dir.iterdir())
                if not fresh and ckpt is None and not (run_dir / "last.pt").exists():  # (a run: said below)
                    _check_only_runs_files(run_dir)  # before its lock file goes in
                run_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(only_writer(run_dir / ".train.lock", busy))
                moved_on = _moved_on(run_dir, ckpt)
                if moved_on:
                    raise AlexkitError(moved_on)
                _mend(run_dir)
            except AlexkitError as exc:
                error = exc
                if fresh and isinstance(exc, NoLocks):  # no other training can hold a lock there: the folder is ours
                    shutil.rmtree(run_dir, ignore_errors=True)
            except OSError as exc:  # --out under a file, a folder this user cannot write in; last.pt gone meanwhile
                fix = "check it and resume again" if ckpt else "choose another --out"
                error = refused(exc, fix, run_dir)
            except BaseException:  # Ctrl-C or SIGTERM while claiming: a folder made for this run goes, as below
                if fresh and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".train.lock"}:
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
        agree(error)
        try:
            same_folder_everywhere(run_dir, "--resume" if ckpt else "--out")  # not only process 0's disk
            yield
        except BaseException:
            if fresh and {p.name for p in run_dir.iterdir()} <= {".train.lock"}:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


RUN_FILES = ("last.pt", "best.pt", "config.json", "metrics.jsonl", STATS, CLASSES)  # what train writes in a run


def _mend(run_dir: Path) -> None:
    """Remove the temporaries of a training killed while writing (its lock is ours now)."""
    for name in RUN_FILES:
        for tmp in [*temporaries(run_dir / name), run_dir / f"{name}.partial"]:
            tmp.unlink(missing_ok=True)


def _check_only_runs_files(run_dir: Path) -> None:
    """A new run goes into a new or empty folder, or one a run left before its first epoch ended."""
    others = [p.name for p in run_dir.iterdir() if p.name not in (*RUN_FILES, ".train.lock") and p.suffix != ".partial"]
    if others:  # a store, a dataset, the working folder: the run's files would land among them
        raise AlexkitError(f"--out {run_dir} holds what is not a run's ({some(others)}); pick a new or empty folder")


def _moved_on(run_dir: Path, ckpt: dict | None) -> str | None:
    """What makes the run folder no longer the one this run started from, or None."""
    if ckpt is None:
        if (run_dir / "last.pt").exists():
            return f"{run_dir} already holds a run; continue it with --resume {word(run_dir)} or pick another --out"
        if (run_dir / "best.pt").exists():  # last.pt removed, or a best.pt copied in to branch off from
            return (f"{run_dir} already holds a run's best.pt; go on from it with --resume {word(run_dir / 'best.pt')} "
                    "or pick another --out")  # fmt: skip
        epochs = _epochs_recorded(run_dir)
        if epochs:  # its checkpoints removed: a new run would overwrite the only record of its epochs
            return (f"{run_dir} holds the metrics.jsonl of a run of {counted(epochs, 'epoch')}, whose checkpoints are gone; "
                    "pick another --out")  # fmt: skip
        return None
    stat = ckpt["path"].stat()
    if (stat.st_size, stat.st_mtime_ns) != ckpt["stat"]:
        return f"{ckpt['path']} changed while this run was starting (another training of {run_dir} went on); resume again"
    return None


def write_run_files(path: Path, config: dict, store, metrics: list) -> None:
    """config.json (plus package versions, git commit, argv), the store's stats and classes, and
    metrics.jsonl as of the checkpoint resumed from."""
    path.mkdir(parents=True, exist_ok=True)
    versions = {}
    # Pillow and OpenCV decode, resize and encode the images: the demo's figures depend on their versions.
    for package in ("alexkit", "numpy", "pillow", "opencv-python", "ffcv", "nvidia-dali-cuda130"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["torch"] = torch.__version__  # with its build tag (+cpu, +cu130): the metadata of PyPI's CUDA wheels has none
    versions["cuda"] = torch.version.cuda  # None for a CPU build
    config = dict(config, versions=versions, python=sys.version.split()[0], git_commit=_git_commit(), argv=sys.argv,
                  store_settings=store.manifest.get("settings"))  # fmt: skip
    write_atomic(path / "config.json", json.dumps(config, indent=2) + "\n")
    for name in (STATS, CLASSES):  # a resumed run's were checked equal (check_same_store)
        write_atomic(path / name, (store.path / name).read_bytes())
    write_metrics(path, metrics)


def write_metrics(path: Path, metrics: list[dict], *, only_if_different: bool = False) -> bool:
    """RUN/metrics.jsonl, one line per epoch, rewritten whole (never a torn last line). With
    only_if_different, left as it is when it already says so. Returns whether it was written."""
    text = "".join(json.dumps(m) + "\n" for m in metrics)
    if only_if_different:
        try:
            if (path / "metrics.jsonl").read_text() == text:
                return False
        except (OSError, ValueError):
            pass
    write_atomic(path / "metrics.jsonl", text)
    return True


def _git_commit(package: Path = Path(__file__).resolve().parent) -> str | None:
    """The commit of alexkit's own checkout (`package` is its alexkit/ folder), "<hash>-dirty" when its
    tracked files differ from it; None without git or for an installed copy (one inside a .venv in the
    user's own repo would name the user's commit)."""

    def git(*args: str) -> str | None:  # --no-optional-locks: status takes no index.lock a git commit there would meet
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=package, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() / "alexkit" != package.resolve():
            return None
        head, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not head or changes is None:
        return None
    return head + ("-dirty" if changes else "")


def check_compatible(model_args: dict, ckpt_path: Path, *, size: int, num_classes: int, source: str) -> None:
    """Images of `size` px (cut to crop_size(size)) and `num_classes` classes, from `source` (a store or
    a run's copies of its stats), must be what the checkpoint (its model_args) was trained for."""
    from alexkit.pipeline.constants import crop_size

    crop = crop_size(size)
    if model_args["input_size"] != crop:
        raise AlexkitError(f"checkpoint {ckpt_path} takes {model_args['input_size']}px crops but {source} holds {size}px images "
                           f"({crop}px crops); pass --data with the store it was trained on")  # fmt: skip
    if model_args["num_classes"] != num_classes:
        raise AlexkitError(f"checkpoint {ckpt_path} has {model_args['num_classes']} classes but {source} has {num_classes}; "
                           f"pass --data with the store it was trained on")  # fmt: skip


def check_same_store(run: Path, store, ckpt_path: Path, model_args: dict) -> None:
    """Resuming, evaluating or predicting may read the store from elsewhere (--data), but it must be
    the store the run was trained on: the same crop and classes, and the same class table and mean
    image as the run's copies where `run` holds them."""
    check_compatible(model_args, ckpt_path, size=store.size, num_classes=store.num_classes, source=f"store {store.path}")
    fix = f"pass --data with the store that {run} was trained on"
    if (run / CLASSES).is_file() and read_classes(run / CLASSES) != store.classes:
        raise AlexkitError(f"store {store.path} has other classes than {run / CLASSES}; {fix}")
    if (run / STATS).is_file():
        mean = Stats.load(run / STATS).mean_image
        if mean.shape != store.stats.mean_image.shape or np.abs(mean - store.stats.mean_image).max() > 0.01:
            raise AlexkitError(f"store {store.path} has another mean image than {run / STATS}; {fix}")
    was, now = recorded(run, "store_settings"), store.manifest.get("settings")
    if isinstance(was, dict) and isinstance(now, dict) and was != now and talks():  # same images, stored otherwise
        changed = ", ".join(f"{k} {now.get(k)} where the run's had {was.get(k)}" for k in sorted({*was, *now}) if was.get(k) != now.get(k))
        print(f"note: store {store.path} holds the run's images stored otherwise ({changed}): what follows sees other "
              "pixels than the run has so far", file=sys.stderr)  # fmt: skip


def moved_store(named: str, run: Path) -> Path | None:
    """Where the store a run was trained on is now, if it is gone because the folder that held both
    moved: PROJECT/NAME beside PROJECT/alexkit-runs/RUN, NAME the recorded store's folder name (said
    on stderr). None if `named` is there, or unless the new place holds a store, the run folder holds
    copies of the store's classes and mean image (check_same_store compares them), and the run
    folder's config records the same store (its files are this run's)."""
    candidate = Path(run).resolve().parent.parent / Path(named).name
    needed = [candidate / MANIFEST, run / CLASSES, run / STATS]
    if Path(named).is_dir() or candidate == Path(named) or not all(p.is_file() for p in needed):
        return None
    if recorded(run, "config", "data") != named:
        return None
    if talks():
        print(f"note: {run} was trained on {named}, which is not there; reading {candidate}, the store of that name "
              "beside its runs folder, once it matches the run's copies of its classes and mean image", file=sys.stderr)  # fmt: skip
    return candidate


def recorded(run: Path, *keys: str):
    """What RUN/config.json holds under `keys` (recorded(run, "config", "data"): the store), or None
    where the file, or a key on the way, is missing or unreadable."""
    value = read_json(run / "config.json")
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def store_of(ckpt: dict, ckpt_path: Path, data: Path | None) -> Path:
    """`data` if given, else the store named by the checkpoint's training config (or, that folder
    having moved with its runs, the store beside them: runs.moved_store), else DEFAULT_STORE."""
    if data is not None:
        return Path(data)
    named = (ckpt.get("config") or {}).get("data")
    if named and not Path(named).is_dir():
        moved = moved_store(named, ckpt_path.parent)
        if moved is None:
            raise AlexkitError(f"{ckpt_path} was trained on the store {named}, which is not there (from here); pass --data with its place")
        return moved
    return Path(named) if named else DEFAULT_STORE


def find_checkpoint(path: Path | None, prefer: tuple[str, ...] = ("best.pt", "last.pt")) -> Path:
    """The checkpoint file: `path` itself, a run directory's first of `prefer`, or the latest run's."""
    if path is None:
        run = latest_run_noted(prefer, "no checkpoint", talks())
        if run is None:
            raise AlexkitError(f"no run with a checkpoint under {DEFAULT_RUNS}/; train one with `alexkit train` (a run "
                               "writes last.pt at the end of its first epoch) or pass --checkpoint PATH")  # fmt: skip
        path = run
    path = Path(path)
    resuming = "best.pt" not in prefer
    if path.is_dir():
        found = checkpoint_in(path, prefer)
        epochs = 0 if found else _epochs_recorded(path)  # read once, for the messages below
        if not found:
            _said_if_training(path, prefer, resuming)
        if not found and resuming and (path / "best.pt").is_file():
            how = (f"{path} has best.pt but no last.pt (nor a run's config.json)" if not is_run(path)
                   else f"run {path} has best.pt but no last.pt, which is gone (its metrics.jsonl records "
                        f"{counted(epochs, 'epoch')})" if epochs
                   else f"run {path} has best.pt but no last.pt: it was stopped while saving its first epoch")  # fmt: skip
            raise AlexkitError(f"{how}; go on from best.pt: alexkit train --resume {word(path / 'best.pt')}")
        if not found and is_run(path) and epochs:
            raise AlexkitError(f"run {path} has no {' or '.join(prefer)}: its checkpoints are gone (its metrics.jsonl "
                               f"records {counted(epochs, 'epoch')}), so there is nothing to go on from; "
                               "train anew with another --out")  # fmt: skip
        if not found and is_run(path):
            raise AlexkitError(f"run {path} has no {' or '.join(prefer)}: it stopped before its first epoch ended; "
                               f"{_train_again(path)}")
        inner = latest_run(path, having=prefer) if not found else None
        if inner is not None:
            raise AlexkitError(f"{path} is a folder of runs, not a run; pass one of them, e.g. the latest: {inner}")
        if not found:
            raise AlexkitError(f"run directory {path} has no {' or '.join(prefer)}; pass a .pt file written by `alexkit train`")
        path = found
    if not path.is_file():
        if path.name in ("best.pt", "last.pt"):
            _said_if_training(path.parent, (path.name,), resuming)
        shared = "; under torchrun every node must see it: on a file system all nodes share" if started() > 1 else ""
        raise AlexkitError(f"checkpoint {path} does not exist; pass a run directory or a .pt file{shared}")
    return path


def _epochs_recorded(run: Path) -> int:
    """The lines of RUN/metrics.jsonl (0 where it cannot be read)."""
    try:
        return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        return 0


def _train_again(run: Path) -> str:
    """How to train a run again that stopped before its first epoch ended: the `alexkit train` line that
    started it (its config.json's argv) with its store and its folder as absolute paths (the line may
    have named them relative to another working folder, or not at all); where config.json does not
    say, a line to complete."""
    argv, data = recorded(run, "argv"), recorded(run, "config", "data")
    if not isinstance(argv, list) or "train" not in argv or data is None or any(str(a).startswith("--resume") for a in argv):
        return f"train it again with `alexkit train --out {word(run)}` and the flags it had"  # (a resume's line has not them)
    args, ddp = [str(a) for a in argv[argv.index("train") + 1 :]], str(recorded(run, "config", "parallel")).startswith("ddp")
    kept, skip = [], False
    for a in args:  # all but --data and --out
        if skip or a in ("--data", "--out") or a.startswith(("--data=", "--out=")):
            skip = not skip and a in ("--data", "--out")  # their value follows
            continue
        kept.append(shlex.quote(a))
    line = " ".join(["train", *kept, "--data", word(data), "--out", word(run.absolute())])
    return f"train it again under torchrun as it was started, running `-m alexkit {line}`" if ddp else f"train it again: `alexkit {line}`"


def _said_if_training(run: Path, names: tuple[str, ...], resuming: bool) -> None:
    """A run with none of `names` yet whose .train.lock another process holds is in its first epoch:
    an error that says so (not that it stopped, nor that the file does not exist)."""
    if held_by_another(run / ".train.lock"):
        then = (f"it is still training; resume it once that training has ended: alexkit train --resume {word(run)}" if resuming
                else "wait for that, then run this command again")  # fmt: skip
        raise AlexkitError(f"run {run} is still in its first epoch (an `alexkit train` holds its .train.lock) and writes "
                           f"its {' and '.join(names)} when that epoch ends; {then}")  # fmt: skip


