"""How a command stops on Ctrl-C or SIGTERM: the handlers the command line sets (alexkit/cli/main.py)
record each signal here and raise; long loops call `check`, blocks that must not be cut hold them,
and worker processes leave them to their parent (`blocked` while they start, then `ignored`).

A Ctrl-C raised while a native library runs Python code of its own (llvmlite's callbacks, while
numba imports or compiles) is printed there and dropped: the command went on as if none had come.
The record survives the drop, so the next `check` (each progress update) raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time

INTERRUPTED: list[int] = []  # Ctrl-Cs the command line's handler took while a command ran
TERMINATED: list[int] = []  # SIGTERMs, likewise
_LAST: list[float] = []  # when the last of them came (time.monotonic())
_ENDED: list[bool] = []  # the command has returned or raised (`ended`)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `docker stop`, a batch system's time limit), taken as Ctrl-C is: a command
    removes what it had half written and says how to go on, then exits with 143 (128 + SIGTERM)."""


def taken(record: list[int], signum: int) -> bool:
    """Record a signal in INTERRUPTED or TERMINATED; whether to raise it. Not when this thread is
    already stopping from a signal less than a second before, handling the exception it raised or
    what that became (click's Abort, an exit): `timeout -s INT` sends its signal twice, to the command
    and to its process group, and the second must not cut the first's clean-up short. A later one
    (a clean-up that hangs) raises, and so does one after a Ctrl-C that a native library dropped.
    Once the command has ended (see `ended`), the second of two signals less than a second apart
    is recorded whether or not an exception is being handled."""
    now = time.monotonic()
    again = bool(_LAST) and now - _LAST[-1] < 1.0 and (sys.exc_info()[1] is not None or bool(_ENDED))
    record.append(signum)
    _LAST[:] = [now]
    return not again


def ended() -> None:
    """The command has returned or raised: from now on a signal less than a second after the one before
    is recorded, not raised, and main() ends as `came` says (a later one still raises: a clean-up that
    hangs, a DALI pipeline's shutdown say, can be cut short). Typer turns a command's KeyboardInterrupt into exit code 130 and returns it,
    so no exception is being handled while that return frees the command's objects (DALI's pipelines
    shut down in their __del__) and main() prints "interrupted": `timeout -s INT`'s second signal,
    taken there, raised a KeyboardInterrupt that Python printed as "Exception ignored in ... __del__"
    with its traceback, or that nothing caught, the process then dying by SIGINT (-2 to a caller)
    instead of exiting 130."""
    _ENDED[:] = [True]


def came() -> bool:
    """Whether a Ctrl-C or SIGTERM has come while this command ran (raised, held or dropped)."""
    return bool(INTERRUPTED or TERMINATED)


def forget() -> None:
    """Clear the records: the command that took them has ended."""
    INTERRUPTED.clear()
    TERMINATED.clear()
    _LAST.clear()
    _ENDED.clear()


def check() -> None:
    """Raise the stop that a Ctrl-C or SIGTERM asked for, if one came: a long loop's steps call this,
    so that one dropped on its way (see the module docstring) still stops the command."""
    if TERMINATED:
        raise Terminated()
    if INTERRUPTED:
        raise KeyboardInterrupt


@contextlib.contextmanager
def held(*signals: int):
    """The block runs to its end, and `signals` that came meanwhile are raised after it, to the
    handlers set outside it. A KeyboardInterrupt inside torch.save leaves its zip writer half done,
    and torch then raises a RuntimeError of its own ("unexpected pos ...") in place of the interrupt;
    one inside numba's compiler is dropped (see the module docstring). Only the main thread can hold
    signals. Nested, the inner block's signals are held on to the end of the outer one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: came.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: one set outside Python
        for sig in dict.fromkeys(came):  # each once, in the order they came, to the handlers now back
            signal.raise_signal(sig)


@contextlib.contextmanager
def blocked(*signals: int):
    """`signals` blocked in this thread while the block runs: worker processes forked meanwhile are born
    with them blocked, so that none dies of a Ctrl-C (sent to the whole process group) or prints its
    traceback before its initializer ignores them (`ignored`). The mask is put back after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def ignored(*signals: int) -> None:
    """In a worker born inside `blocked`: ignore `signals` from now on (the parent handles them, and
    ends its workers itself), and let them through the mask again."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signals))
