"""The error type for bad usage and bad input: a problem and its fix, printed on one line, exit code 2
(a path the system refuses, an OSError, is one line too, exit code 1: see cli/main.py)."""

import contextlib
import errno


class AlexkitError(Exception):
    """Bad usage or bad input. The message names the file or value and says how to fix it."""

    exit_code = 2


def why(exc: BaseException) -> str:
    """One line for a message: "EOFError: No data left in file"; an empty message (a zero-byte or
    cut-off file, typically) as "empty or cut off"."""
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0] if text else 'empty or cut off'}"


def alike(error: AlexkitError) -> AlexkitError:
    """Mark an error that every process of a torchrun job meets alike (it follows from the flags and the
    job's size alone): the command line lets the first process of each node print it, not all."""
    error.everywhere = True
    return error


@contextlib.contextmanager
def alike_everywhere():
    """alike() for every AlexkitError the block raises: a command's checks of its flags."""
    try:
        yield
    except AlexkitError as exc:
        alike(exc)
        raise


class PathRefused(AlexkitError):
    """A path the system refuses (permissions, a full disk, a read-only file system): exit code 1."""

    exit_code = 1


def refused(exc: OSError, fix: str, where: object = None) -> PathRefused:
    """An OSError about a file as a one-line error: the file (`where` if the OSError names none), what
    the system said, and the fix."""
    return PathRefused(f"{exc.filename or where}: {exc.strerror or exc}; {fix}")


def too_large(exc: OSError) -> str | None:
    """The fix for a write refused with EFBIG ("File too large"), or None for any other error. Free
    space does not help there: the file outgrew the per-file size limit (`ulimit -f`, RLIMIT_FSIZE)
    or the largest file its file system holds (4 GiB on FAT32)."""
    if exc.errno != errno.EFBIG:
        return None
    limit = file_size_limit()
    if limit is None:
        return ("write to a file system that holds files this large (FAT32 holds at most 4 GiB; the per-file size limit, "
                "`ulimit -f`, is unlimited here)")  # fmt: skip
    return f"raise the per-file size limit (`ulimit -f`: {limit[1]} here) or write to a file system that holds files this large"


def file_size_limit() -> tuple[int, str] | None:
    """This process's per-file size limit (`ulimit -f`, RLIMIT_FSIZE): (bytes, in words), or None
    where there is none."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    return limit, (f"{limit // 1024} KiB" if limit >= 1024 else f"{limit} bytes")  # (ulimit -f counts 1,024-byte blocks)


class OutOfMemory(AlexkitError):
    """The device ran out of memory: exit code 1, as for a full disk."""

    exit_code = 1


FREE_GPU = "free the GPU (nvidia-smi lists what holds it)"  # the first fix for running out of its memory


def out_of_memory(exc: Exception, at: str, fix: str) -> OutOfMemory:
    """torch's out-of-memory error as one line: what torch said, up to the memory free; `at` (the batch
    per process, the device), and `fix`."""
    said = ". ".join(str(exc).split(". ")[:3])  # "CUDA out of memory. Tried to allocate ... of which ... is free"
    return OutOfMemory(f"{said} (at {at}); {fix}")


class MissingDependency(AlexkitError):
    """An optional native piece (FFCV, DALI, CUDA) is not importable."""


def require(module: str, *, fix: str):
    """Import `module` or raise a one-line error naming it and the fix."""
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a native library failing to load
        raise MissingDependency(f"cannot import {module} ({exc.__class__.__name__}: {exc}); {fix}") from exc
