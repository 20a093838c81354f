"""Writing a command's outputs safely: a path it will write probed before the work (check_output for
a file, check_folder for a folder), so that a bad one is refused before hours are spent rather than
after, then written all or nothing (write_atomic; write_output for a file the user named), and the
temporaries those writes leave (temporaries), and the folders made for them, removed where empty
(remove_empty). An output option given `-` writes to stdout, the command's own lines going to
stderr meanwhile (output_path, lines_to_stderr), and is named `- (stdout)` in messages (shown).
"""

import contextlib
import re
import sys
from pathlib import Path
from typing import BinaryIO, Callable

from alexkit.errors import AlexkitError, PathRefused
from alexkit.paths import expand_home

STDOUT = "-"  # an output option's value (--json, --predictions) that writes to stdout


def output_path(text: str | None) -> Path | None:
    """The file an output option names: `-` is stdout, as /dev/stdout; any other text is a path with its
    `~` expanded. ./- (which a Path shortens to -) is the file named - here, kept with its folder, so
    that no message names it as the - of stdout."""
    if text is None:
        return None
    if text == STDOUT:
        return Path("/dev/stdout")
    path = expand_home(text)
    return path.absolute() if path == Path(STDOUT) else path


def shown(path: Path) -> str:
    """An output path as a message names it: /dev/stdout, which output_path makes of `-`, as the `-`
    typed, with what it is (a /dev/stdout typed is the same stream, and said alike)."""
    return "- (stdout)" if Path(path) == Path("/dev/stdout") else str(path)


@contextlib.contextmanager
def lines_to_stderr(*texts: str | None):
    """Where one of these output options is `-`, what the command prints for people (figures,
    progress, `wrote` lines) goes to stderr while it runs: stdout then holds that output alone, for
    a pipe (`alexkit eval --json - | jq`). write_output writes /dev/stdout into the real stdout."""
    if STDOUT not in texts:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def check_output(path: Path, flag: str) -> None:
    """A file that `flag` names, to be written later: refused now, before any work, if it is a folder,
    or its folder does not exist or cannot be written (permissions, a read-only file system)."""
    import os

    path = Path(path)
    fd = _stream_fd(path)
    if fd is not None:  # write_output writes into the stream
        try:
            os.fstat(fd)
        except OSError:
            raise AlexkitError(f"{flag} {shown(path)}: that stream is not open in this process; choose a file") from None
        return
    path = _through_link(path, flag)  # written through (write_output): the file it leads to is replaced
    if path.is_dir():
        raise AlexkitError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():  # a pipe or a device: written to as it is (write_output)
        if not os.access(path, os.W_OK):
            raise PathRefused(f"{flag} {path}: cannot write to it (permission denied); choose another path")
        return
    if not path.parent.is_dir():
        what = "is a file" if path.parent.exists() else "does not exist"
        raise AlexkitError(f"{flag} {path}: its folder {path.parent} {what}; create it or choose another path")
    _check_writable(path.parent, flag, path)


def _check_writable(folder: Path, flag: str, path: Path) -> None:
    """Refuse `flag` `path` now if no file can be made in `folder` (permissions, a read-only file system)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):  # what write_atomic will do there: create a file
            pass
    except OSError as exc:
        raise PathRefused(f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc}); choose another path") from exc


def check_folder(path: Path, flag: str, *, writable: bool = False) -> None:
    """A folder that `flag` names, to be made or written in: refused now if it, or a folder above it,
    is a file (the system would say "Not a directory" once the work is done), or a link to nothing
    (mkdir would say "File exists"); where it is still to be made, also if no folder can be made in
    the nearest folder above it that exists (/proc, /sys, a read-only file system, permissions: the
    system's own words, /proc's "No such file or directory" say, would not name the flag or why);
    with `writable`, also if no file can be made in it."""
    import os

    for above in (Path(path), *Path(path).parents):
        if above.is_symlink() and not above.exists():
            where = "is a link" if above == Path(path) else f"is under {above}, a link"
            raise AlexkitError(f"{flag} {path} {where} to {os.readlink(above)}, which does not exist; make that folder, "
                               "or remove the link")  # fmt: skip
        if above.exists():
            if not above.is_dir():
                where = "is a file" if above == Path(path) else f"is under {above}, which is a file"
                raise AlexkitError(f"{flag} {path} {where}; give a folder")
            if above != Path(path):
                _check_creatable(above, flag, path)
            elif writable:
                _check_writable(above, flag, path)
            return


def _check_creatable(folder: Path, flag: str, path: Path) -> None:
    """Refuse `flag` `path`, still to be made, now if no folder can be made in `folder`, the nearest that exists."""
    import os
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".alexkit-check-", dir=folder))  # what mkdir(parents=True) will do there
    except OSError as exc:
        raise PathRefused(f"{flag} {path} cannot be created: no folder can be made in {folder} "
                          f"({exc.strerror or exc}); choose another path") from exc  # fmt: skip


def write_atomic(path: Path, data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (text, bytes, or a function that writes to a binary file, such as a torch.save)
    to `path` all or nothing: a temporary file, fsync, rename, fsync of the folder. A reader (or a
    run interrupted at any moment) sees the old file or the new one, never half. Each writer has
    its own temporary (.NAME.HOST-PID-RANDOM.partial), so two processes writing one file at once
    leave one whole version of it, never a mix; those of writers killed on this host go first.
    (A link at `path` is replaced, not written through: a run or store of links to another one's
    files must not rewrite those. Files the user names go through write_output.)"""
    import os
    import secrets
    import socket

    path = Path(path)
    _remove_dead_temporaries(path)
    tmp = path.with_name(f"{partial_prefix(path)}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        with open(tmp, "x" if isinstance(data, str) else "xb") as f:
            if callable(data):
                _write_through(data, f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        if exc.filename not in (None, str(tmp)):  # about another file (one `data` reads, say)
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc  # the path asked for, not the temporary
    except BaseException:
        _discard(tmp)
        raise
    fsync_folder(path.parent)


def _discard(tmp: Path) -> None:
    """Remove write_atomic's temporary, made or not, keeping the error being raised: on a read-only
    file system unlink fails (EROFS) even for a file that is not there, naming the temporary."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def write_output(path: Path, data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write a file the user named (--json, --predictions, plot's --out) as write_atomic does, except
    that /dev/stdout, /dev/stderr and /dev/fd/N are written into the stream they stand for (after
    what was printed, appending where the shell appends: reopening them would truncate a file they
    were redirected to), a pipe or device as it is (replacing it would destroy it), and a link
    through to its target, which is replaced while the link stays."""
    import os

    path = Path(path)
    if is_stream(path):
        fd = _stream_fd(path)
        sys.stdout.flush()
        sys.stderr.flush()
        with (os.fdopen(os.dup(fd), "wb") if fd is not None else open(path, "ab")) as f:
            if callable(data):
                _write_through(data, f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        return
    write_atomic(_through_link(path, "the file"), data)


def say_written(path: Path) -> None:
    """The `wrote PATH` line for a file write_output wrote; none for a stream (is_stream): its reader
    has what was written, and the line would follow it there (after the CSV, say)."""
    if not is_stream(path):
        print(f"wrote {path}", flush=True)


def is_stream(path: Path) -> bool:
    """Whether write_output writes into `path` as it is (/dev/stdout, /dev/fd/N, a pipe, a device)
    rather than replacing a file: no file to name in a `wrote` line."""
    path = Path(path)
    return _stream_fd(path) is not None or (path.exists() and not path.is_file())


def _stream_fd(path: Path) -> int | None:
    """The descriptor of this process that /dev/stdout, /dev/stderr, /dev/fd/N or /proc/self/fd/N names, else None."""
    text = str(path)
    if text in ("/dev/stdout", "/dev/stderr"):
        return 1 if text == "/dev/stdout" else 2
    named = re.fullmatch(r"/dev/fd/(\d+)|/proc/self/fd/(\d+)", text)
    return int(named[1] or named[2]) if named else None


def _through_link(path: Path, flag: str) -> Path:
    """The file a link at `path` leads to (`path` itself if it is none); an error for a link loop."""
    if not path.is_symlink():
        return path
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # a loop: RuntimeError up to Python 3.12, OSError (ELOOP) after
        raise AlexkitError(f"{flag} {path} is a link that leads round in a loop; remove it or choose another path") from exc


def remove_empty(folders: list[Path]) -> None:
    """Remove each of `folders` (a command's own, made for its output: the deepest first) where it is
    empty; one that is not holds something put there meanwhile, not the command's alone. A `..`
    among them is no folder made: rmdir fails there, and the next is tried."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            continue


def fsync_folder(folder: Path) -> None:
    """Make the renames into `folder` durable: until its entry is synced, a power cut can undo them."""
    import os

    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_through(write: Callable[[BinaryIO], None], f: BinaryIO) -> None:
    """write(f), where an OSError of f's (a full disk) stays an OSError: torch.save reports one as a
    RuntimeError ("unexpected pos ...") that names neither the file nor the cause."""
    failed: list[OSError] = []

    class Recording:
        def __getattr__(self, name):
            return getattr(f, name)

        def write(self, b):
            try:
                return f.write(b)
            except OSError as exc:
                failed.append(exc)
                raise

    try:
        write(Recording())
    except OSError:
        raise
    except Exception as exc:
        if failed:
            raise failed[0] from exc
        raise


def partial_prefix(path: Path) -> str:
    """How write_atomic's temporaries for `path` begin."""
    return f".{Path(path).name}."


def temporaries(path: Path) -> list[Path]:
    """write_atomic's temporaries for `path` now present (a writer's, or one a killed writer left)."""
    import glob

    return list(Path(path).parent.glob(f"{glob.escape(partial_prefix(path))}*.partial"))


def _remove_dead_temporaries(path: Path) -> None:
    """write_atomic's temporaries for `path` whose writer was a process of this host that is gone
    (killed while writing) and that nothing has written to for a minute (a live writer in another
    PID namespace with this host name looks gone); another host's cannot be checked and stay."""
    import os
    import socket
    import time

    host = socket.gethostname()
    for tmp in temporaries(path):
        writer = tmp.name[len(partial_prefix(path)) : -len(".partial")].rsplit("-", 2)
        if len(writer) != 3 or writer[0] != host or not writer[1].isdigit():
            continue
        try:
            if time.time() - tmp.stat().st_mtime < 60:
                continue
        except FileNotFoundError:
            continue
        try:
            os.kill(int(writer[1]), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # it exists, under another user
            pass
