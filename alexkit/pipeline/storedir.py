"""A store folder's files, apart from converting images into them (build.py): which names belong
to a store (or to prepare itself: its lock, its temporaries, a rebuild's folder), its JSON records,
clearing a split, and a `prepare --force` rebuild: the new store built in OUT/.prepare-new (by a
function prepare.py hands in) under the locks that keep the old store whole and readable, then moved
over the old one, one atomic rename per file."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from alexkit.errors import AlexkitError, PathRefused
from alexkit.locks import only_writer, shared_reader
from alexkit.outputs import fsync_folder, write_atomic
from alexkit.pipeline.store import CLASSES, LOCK, MANIFEST, SPLITS, STAGING, STATS
from alexkit.progress import some

STORE_FILES = (MANIFEST, STATS, CLASSES, *(f"{n}{end}" for n in SPLITS for end in (".beton", ".done.json")))
PROBE = ".alexkit-write-test-"  # + PID: the file with which prepare finds out whether OUT can be written


def remove_if_only_lock(out: Path) -> None:
    """Remove `out` (made by this process, or a --force's folder no process holds) if it holds nothing
    but the lock file, or nothing."""
    try:
        if [p.name for p in out.iterdir()] in ([LOCK], []):
            (out / LOCK).unlink(missing_ok=True)
            out.rmdir()
    except OSError:  # another prepare opened a lock file of its own meanwhile: the folder is theirs
        pass


def rebuild_beside_readers(out: Path, build: Callable[[Path], dict]) -> dict:
    """rebuild, while trainings or evaluations read the finished store in `out`: the new store is built
    holding out's lock shared, as they do, and moved in only once they have ended."""
    with shared_reader(out / LOCK, f"`alexkit prepare` is writing {out}; wait for it to end, or choose another --out") as lock:
        if lock is None:  # a lock file this user cannot open: nothing can be moved in either
            raise PathRefused(f"cannot open {out / LOCK} for the rebuild; choose an --out folder you can write to")
        return rebuild(out, build, lock)


def rebuild(out: Path, build: Callable[[Path], dict], lock) -> dict:
    """A --force where `out` holds a store, finished or not: build(out/.prepare-new) writes the new one
    there while the old one stays whole; then it is moved in (move_in). `lock`: out's lock file, held
    exclusive or shared. Returns the new store's manifest."""
    import fcntl

    staging = out / STAGING
    try:
        staging.mkdir(exist_ok=True)
    except FileExistsError:  # a file of that name: not the rebuild's
        raise AlexkitError(f"{staging} is a file, where a --force rebuild builds the new store; remove it") from None
    with only_writer(staging / LOCK, f"another `alexkit prepare --force` is rebuilding {out}; wait for it to end"):
        try:
            for tmp in staging.glob(".*.partial"):
                tmp.unlink()
            # Shared from here, as a training holds it: the old store stays readable for hours of conversion.
            relock(lock, fcntl.LOCK_SH, f"another `alexkit prepare` took {out} meanwhile; run again once it ends")
            manifest = build(staging)
            # (flock turns a shared lock exclusive by letting go first: a failure here leaves none, and the
            # process stops next; a probing prepare holding it for a moment can cause one, said as readers)
            relock(lock, fcntl.LOCK_EX, f"the new store is complete in {staging}, but {out} is being read (by `alexkit "
                                         f"train`, `eval`, `predict`, `show-batch` or a bench); run this command again "
                                         "once they end to put it in place "
                                         "(nothing is converted again)")  # fmt: skip
            move_in(staging, out)
        except BaseException:
            remove_if_only_lock(staging)  # a rebuild that failed before writing anything leaves no folder
            raise
    shutil.rmtree(staging)  # its lock file and nothing else: every store file was moved out (OUT's lock is ours)
    return manifest


def relock(lock, how: int, busy: str) -> None:
    """Turn the lock held on the open file `lock` into `how` (fcntl.LOCK_SH or LOCK_EX) without waiting."""
    import fcntl

    try:
        fcntl.flock(lock, how | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AlexkitError(busy) from None


def move_in(staging: Path, out: Path) -> None:
    """Replace the store in `out` by the complete one in `staging`, one atomic rename per file: out's
    manifest.json goes first (unfinished from then on), a split's done-record before its files and
    comes back after them, manifest.json last. Each step is skipped once done: a prepare stopped here
    finishes the move on its next run."""
    splits = read_json(staging / MANIFEST)["splits"]
    remove(out / MANIFEST)
    for name in SPLITS:
        done, files = f"{name}.done.json", [f"{name}.beton", *([STATS] if name == "train" else [])]
        if name not in splits:  # the new source has no such split (val): the old one's must not stay
            remove(out / done)
            remove(out / f"{name}.beton")
        elif (staging / done).exists():  # not moved yet: its record is the last of its files to move
            remove(out / done)  # an old record must never vouch for a new file, nor a new one for an old
            for file in files:
                _rename(staging / file, out / file)
            _rename(staging / done, out / done)
    _rename(staging / CLASSES, out / CLASSES)
    fsync_folder(out)  # every file above is in place before the manifest vouches for them
    _rename(staging / MANIFEST, out / MANIFEST)
    fsync_folder(out)


def _rename(src: Path, dst: Path) -> None:
    """os.replace, if `src` is still there (a move resumed after an interruption finds some moved)."""
    if src.exists():
        dst.with_name(dst.name + ".partial").unlink(missing_ok=True)  # the .beton writer's, left by an old interrupted run
        os.replace(src, dst)


def not_a_store(out: Path) -> str:
    """A few names of what `out` holds if it is a folder with files but none of a store's, nor of prepare's
    own (its lock, temporaries, a rebuild): "" for a new folder, an empty one, or a store, even unfinished."""
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError:  # none, or not listable: the write probe says what is wrong
        return ""
    if not names or any(_ours(name) and name not in (STATS, CLASSES) for name in names):  # (a run holds copies of those)
        return ""
    return some(names)


def _ours(name: str) -> bool:
    """A name in OUT that a store or prepare itself puts there: a store file, the lock, a rebuild's folder,
    a temporary (the .beton writer's NAME.partial, write_atomic's .NAME.*.partial, the write probe)."""
    if name in (*STORE_FILES, LOCK, STAGING) or name.startswith(PROBE):
        return True
    return name.endswith(".partial") and any(name.startswith((f"{f}.", f".{f}.")) for f in STORE_FILES)


def read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj) -> None:
    write_atomic(path, dumps(obj))


def dumps(obj) -> str:
    """Indented JSON, with lists of numbers (per-class counts) kept on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[[-+.\deE,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"


def clear(out: Path, keep: tuple[str, ...]) -> None:
    """Remove the files of every split not in `keep` (and the statistics, unless train is kept)."""
    for name in SPLITS:
        if name not in keep:
            remove(out / f"{name}.done.json")
            remove(out / f"{name}.beton")
    if "train" not in keep:
        remove(out / STATS)


def remove(path: Path) -> None:
    """A store file, and the .beton writer's temporary beside it (write_atomic clears its own)."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".partial").unlink(missing_ok=True)
