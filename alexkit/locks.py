"""One writer per folder: the flocks that keep a second `alexkit prepare` or `alexkit train` out of the
store or run folder one is writing (only_writer), let readers of a store keep its writer out while they
read (shared_reader), and tell whether another process holds one (held_by_another).
"""

import contextlib
from pathlib import Path

from alexkit.errors import AlexkitError, PathRefused


class NoLocks(PathRefused):
    """The file system refused a lock (not: another process holds it)."""


class BeingRead(AlexkitError):
    """only_writer: readers (shared_reader) hold the lock, no writer."""


@contextlib.contextmanager
def only_writer(lock: Path, busy: str, being_read: str | None = None):
    """Hold an exclusive flock on the file `lock` (made if needed) while the block runs; if another
    process holds it, AlexkitError(busy), or BeingRead(being_read) where only readers do. The lock
    goes with the file's closing, also when the process dies. Yields the open lock file (for flock
    to make the lock shared for a while, as prepare --force does while it builds)."""
    import fcntl

    with open(lock, "a+") as f:  # readable too: NFS refuses a shared lock on a write-only file
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if being_read is not None and _lock_shared(f):
                raise BeingRead(being_read) from None
            raise AlexkitError(busy) from None
        except OSError as exc:  # ENOLCK, ENOSYS: e.g. NFS without its lock service, Lustre without -o flock
            raise NoLocks(f"cannot lock {lock}: {exc.strerror or exc}; its file system offers no file locks: "
                          "use a folder on one that does (a local disk, or NFS with locking)") from exc
        yield f


def held_by_another(lock: Path) -> bool:
    """Whether another process holds the file `lock` with only_writer now: a shared flock tried without
    waiting, on the file only if it exists (none is made), and let go at once. False where the file
    system has no locks."""
    import fcntl

    try:
        f = open(lock, "rb")  # read-only: a shared lock needs no write access, on NFS too
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # ENOLCK, ENOSYS
            return False
        return False


def _lock_shared(f) -> bool:
    import fcntl

    try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def shared_reader(lock: Path, busy: str, wait_s: float = 5.0):
    """Hold a shared flock on the file `lock` (made if missing beside a manifest.json) while the block
    runs, so that its writer (only_writer) cannot start meanwhile. A writer holding it is waited for
    up to `wait_s` (one that finds nothing to do lets go at once), then AlexkitError(busy). Best
    effort: where the file can be neither made nor opened, or the file system has no locks, the
    block runs unlocked."""
    import fcntl
    import os
    import time

    fd = None
    if (Path(lock).parent / "manifest.json").is_file():  # a store copied without its lock file: made again
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o666)
            os.fchmod(fd, 0o666)  # its prepare, maybe another user's, must open it for writing too
        except OSError:
            pass
    if fd is None:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:  # none, and a folder this user cannot write in (or not a store)
            yield
            return
    with os.fdopen(fd, "rb") as f:  # (yielded: prepare --force beside readers turns it exclusive at its end)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise AlexkitError(busy) from None
                time.sleep(0.05)
            except OSError:
                break
        yield f
