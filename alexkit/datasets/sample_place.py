"""Placing the built-in sample dataset in DIR: `write_sample_dataset(out)` checks `out`, has the
dataset drawn (sample.py) into a staging folder inside it, and moves its entries into place.

The dataset is written into `out` itself (a link followed, `.` or a mount point too), staged in
out/.sample-partial and its entries moved into place at the end, so that a stopped run leaves `out` as
it was. An earlier sample dataset's entries (--overwrite) go to out/.sample-replaced as the new ones
come in, and are removed last. A run killed between those renames can leave the new devkit beside
the old val images, so find_dataset refuses a DIR that still holds either folder. One run writes in
DIR at a time (a lock on the folder itself, _only_writer): a second is refused, and so is a run into
a DIR that `alexkit prepare` is reading (it holds the same lock shared, `reading`). Only what sample
writes is replaced or removed: `out` and a stopped run's folders are checked by the names they hold,
an earlier dataset also by the mark in its meta.mat.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from alexkit import stops
from alexkit.datasets.sample import DEVKIT_DATA, MAX_CLASSES, SAMPLE_MARK, write_tree
from alexkit.errors import AlexkitError
from alexkit.outputs import check_folder, remove_empty
from alexkit.paths import word
from alexkit.progress import some
from alexkit.ranges import SAMPLE, check_ranges

ENTRIES = ("ILSVRC2012_devkit_t12", "train", "val")  # in the order they move in: the devkit's meta.mat marks a sample dataset
STAGING = ".sample-partial"  # in DIR: the new dataset, written here whole before its entries move into DIR
REPLACED = ".sample-replaced"  # in DIR: an earlier sample dataset's entries, moved here as the new ones come, then removed
SAY_REMOVING = 1000  # files: a removal of at least this many is said first (on a slow disk it takes a while)
# Every path a sample dataset holds, relative to its folder: folders, files. A class folder's number
# (k, from 1 to MAX_CLASSES) is checked apart.
_FOLDERS = re.compile(r"train|val|ILSVRC2012_devkit_t12(/data)?|train/n99(?P<k>\d{6})")
_FILES = re.compile(r"train/(n99(?P<k>\d{6}))/\1_[1-9]\d*\.JPEG|val/ILSVRC2012_val_\d{8}\.JPEG"
                    r"|ILSVRC2012_devkit_t12/data/(meta\.mat|ILSVRC2012_validation_ground_truth\.txt)")


def write_sample_dataset(
    out: Path,
    *,
    num_classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 20,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the sample dataset (sample.py) into `out` (see the module docstring); return `out`.

    `out` must be absent or empty, or, with overwrite=True, hold an earlier sample dataset and nothing
    else. `progress(done, total)` is called after each image. A run that stops leaves `out` as it was
    (a folder it made itself removed), or, stopped while tidying, names what is left.
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise AlexkitError(f"--classes {num_classes}: the sample dataset has 1 to {MAX_CLASSES} classes")
    check_ranges(("--train-per-class", train_per_class, SAMPLE["train_per_class"]),
                 ("--val-per-class", val_per_class, SAMPLE["val_per_class"]))  # fmt: skip
    if seed < 0:
        raise AlexkitError(f"--seed {seed}: must be 0 or more")
    out = Path(out).absolute()  # named in full in messages
    if ".." in out.parts:  # build/../data with no build/ yet: checked as nothing there, it is ./data once mkdir makes build/
        out = Path(os.path.realpath(out))
    check_folder(out, "DIR")  # refused before any folder is made (the rest is checked under the lock, below)
    made = [p for p in (out, *out.parents) if not os.path.lexists(p)]  # out and the folders above it this call makes
    staging, written, staged, moved, replaced_files = out / STAGING, [0], False, False, 0

    def step(done: int, total: int) -> None:
        written[0] = done
        if progress:
            progress(done, total)

    try:
        out.mkdir(parents=True, exist_ok=True)
        with _only_writer(out):
            try:
                replaced_files, leftovers = _check_destination(out, overwrite)
                for leftover, files in leftovers.items():  # a stopped run's (checked above: sample's files alone)
                    _remove(leftover, "a stopped run's files", out, files)
                try:
                    staging.mkdir()  # fails where another run has made one since the check: not this run's to remove
                    staged = True
                    write_tree(staging, num_classes, train_per_class, val_per_class, seed, step)
                except OSError as exc:  # named by the folder asked for, not the staging one
                    raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
                with stops.held(signal.SIGINT, signal.SIGTERM):  # a few renames: a Ctrl-C waits for them
                    _move_in(staging, out)
                    moved = True
            except BaseException:
                if staged and not moved:  # out as it was: what this run staged goes
                    _remove(staging, "the partial dataset", out, written[0])
                raise
            finally:
                if moved:  # the new dataset is in place, stopped or not
                    _remove(out / REPLACED, "the earlier sample dataset", out, replaced_files)
    except _Busy:  # refused before anything is removed: `out` may be the other run's, made just now
        raise
    except BaseException:  # the folders this run made, where they are empty (before the lock too: a Ctrl-C there)
        remove_empty(made)
        raise
    return out


class _Busy(AlexkitError):
    """Another `alexkit sample` holds DIR's lock, or an `alexkit prepare` reading DIR does."""


@contextlib.contextmanager
def _only_writer(out: Path):
    """Hold an exclusive flock on the folder `out` itself while the block runs: two runs staging in the
    one out/STAGING would remove or move each other's files, and a prepare reading `out` (`reading`)
    would store the new images under the old labels. The folder's own descriptor is locked, not
    a file in it, so that `out` holds nothing but the dataset (find_dataset and --overwrite check it by
    the names it holds) and a stopped run leaves nothing to tidy: the lock goes with the process. Where
    the file system refuses a lock on a folder (NFS may), the block runs unlocked, as it did before."""
    import fcntl

    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:  # a shared lock is had where prepares alone hold it, not where another sample does
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                raise _Busy(f"{out} is being written by another `alexkit sample`; wait for it to end, "
                                   "or choose another folder") from None  # fmt: skip
            raise _Busy(f"{out} is being read by `alexkit prepare`; wait for it to end, or choose another folder") from None
        except OSError:  # ENOLCK, EBADF, ENOSYS: no lock to be had, nor can another run hold one
            pass
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def reading(src: Path):
    """Hold a shared flock on the dataset folder `src` itself while the block runs (prepare, from its
    scan to its last split): val labels are read from the devkit at the scan and the images long
    after, so an `alexkit sample --overwrite` into `src` meanwhile (_only_writer) is refused rather
    than mixing its images with the old ones and the old labels. AlexkitError where a sample run
    holds it. Where the folder cannot be opened, or its file system refuses a lock on a folder, the
    block runs unlocked, as sample does (read-only mounts still lock: the lock is the kernel's)."""
    import fcntl

    try:
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # not a folder, or not readable: the scan says what is wrong
        fd = None
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlexkitError(f"{src} is being written by `alexkit sample`; wait for it to end") from None
        except OSError:  # ENOLCK, EBADF, ENOSYS
            pass
        yield
    finally:
        os.close(fd)


def _move_in(staging: Path, out: Path) -> None:
    """Move the complete dataset in `staging` into `out`, entry by entry, each entry of an earlier one
    going to out/REPLACED just before: the devkit first, so that `out` holds a sample's meta.mat from
    the first rename on (a run killed between two renames is a sample dataset a rerun can replace)."""
    for name in ENTRIES:
        if os.path.lexists(out / name):
            (out / REPLACED).mkdir(exist_ok=True)
            os.replace(out / name, out / REPLACED / name)
        os.replace(staging / name, out / name)
    staging.rmdir()


def _remove(folder: Path, what: str, out: Path, files: int) -> None:
    """Remove `folder`, one of sample's own in `out` (if there): said first when it holds many files,
    and what is left named when a second Ctrl-C (or an error) cuts the removal short."""
    if not os.path.lexists(folder):
        return
    if files >= SAY_REMOVING:
        print(f"removing {what} ({files:,} files in {folder}) ...", file=sys.stderr, flush=True)
    try:
        shutil.rmtree(folder)
    except BaseException:
        if os.path.lexists(folder):  # a rerun into a dataset (the earlier or the new one) needs --overwrite
            again = "alexkit sample --overwrite" if any(os.path.lexists(out / name) for name in ENTRIES) else "alexkit sample"
            print(f"{folder} is left, partly removed: remove it, or run `{again}` into {word(out)} again, which "
                  "removes it first", file=sys.stderr, flush=True)  # fmt: skip
        raise


def _check_destination(out: Path, overwrite: bool) -> tuple[int, dict[Path, int]]:
    """Refuse `out` unless the dataset may be written into it. Returns how many files of an earlier
    sample dataset it holds (to be replaced), and a stopped run's staging or replaced folders with how
    many files each holds (to be removed first). Names are checked, not contents: all that `out` holds
    must be paths sample writes, in those folders or not."""
    check_folder(out, "DIR")  # a file, a path under one, a link to nothing
    if not out.exists():
        return 0, {}
    leftovers = {}
    for leftover in (out / STAGING, out / REPLACED):
        if not os.path.lexists(leftover):
            continue
        foreign, leftovers[leftover] = _not_sample(leftover) if leftover.is_dir() and not leftover.is_symlink() else (leftover, 0)
        if foreign is not None:  # not a folder of sample's: not sample's to remove
            what = "it is not a folder sample made" if foreign == leftover else f"{foreign} is not a file sample writes"
            raise AlexkitError(f"{leftover} is a name `alexkit sample` keeps for its own files, but {what}; move that out of "
                               f"{out}, or choose another folder")  # fmt: skip
    found = sorted(p.name for p in out.iterdir() if p.name not in (STAGING, REPLACED))
    if not found:
        return 0, leftovers
    if not overwrite:
        raise AlexkitError(
            f"{out} is not empty; choose another folder, or pass --overwrite to replace an earlier sample dataset"
        )
    foreign = [name for name in found if name not in ENTRIES]
    if foreign:
        raise AlexkitError(
            f"{out} holds files other than a sample dataset ({some(foreign)}); choose another folder"
        )
    meta = out / DEVKIT_DATA / "meta.mat"  # a real extracted ImageNet has these three names too
    if not os.path.lexists(meta) and (out / REPLACED / DEVKIT_DATA / "meta.mat").is_file():
        meta = out / REPLACED / DEVKIT_DATA / "meta.mat"  # a run killed between its devkits' two renames (_move_in)
    head = meta.open("rb").read(len(SAMPLE_MARK)) if meta.is_file() else b""
    if head != SAMPLE_MARK:
        raise AlexkitError(f"{out} is not a sample dataset ({meta} was not written by `alexkit sample`); choose another folder")
    foreign, files = _not_sample(out, skip=(STAGING, REPLACED))
    if foreign is not None:
        raise AlexkitError(f"{out} holds {foreign}, which `alexkit sample` does not write, and --overwrite would delete "
                           "it; move it out, or choose another folder")  # fmt: skip
    return files, leftovers


def _not_sample(root: Path, skip: tuple[str, ...] = ()) -> tuple[Path | None, int]:
    """(the first path under `root` that `alexkit sample` does not write, a link included, or None; how
    many files root holds), by names alone. `skip`: names at the top to leave out."""
    files, folders = 0, [""]
    while folders:
        folder = folders.pop()
        with os.scandir(root / folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = f"{folder}/{entry.name}".lstrip("/")
                if path in skip:
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                known = (_FOLDERS if is_dir else _FILES).fullmatch(path)
                if entry.is_symlink() or not known or (known["k"] is not None and not 1 <= int(known["k"]) <= MAX_CLASSES):
                    return root / path, files
                if is_dir:
                    folders.append(path)
                else:
                    files += 1
    return None, files
