"""What torchrun says in the environment of each process it starts (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE), read here and nowhere else. No torch: the command line asks before any import.

Two kinds of reader. The strict ones (from_launcher, launched) are for the code that acts on the
numbers: a value that is no number, or WORLD_SIZE without RANK (left set in a shell), is one line
naming it. The lenient ones (talks, first_on_node, started) only decide who prints or whether a
command may run at all; they never raise, so that an error is never swallowed while it is reported,
and a bad value is left for a strict reader to name."""

from __future__ import annotations

import os

from alexkit.errors import AlexkitError, alike


def from_launcher(name: str, default: int, least: int = 0) -> int:
    """The whole number torchrun puts in the environment variable `name`, `default` where it is unset;
    anything else is one line naming it."""
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.strip().isdigit() or int(value) < least:
        raise alike(AlexkitError(f"{name}={value!r} in the environment is not {'a count of processes' if least else 'a process number'}; "
                                 f"unset it (torchrun sets it for the processes it starts)"))  # fmt: skip
    return int(value)


def launched() -> int:
    """How many processes torchrun started for this job (its WORLD_SIZE), 1 when run alone: known
    before any process joins the others."""
    world = from_launcher("WORLD_SIZE", 1, least=1)
    if world > 1 and "RANK" not in os.environ:  # left in the shell, say: every process would take itself for rank 0
        raise alike(AlexkitError(f"WORLD_SIZE={world} is set but RANK is not, and torchrun sets both; unset WORLD_SIZE, "
                                 "or start the job with torchrun"))  # fmt: skip
    return world


def under_torchrun() -> bool:
    """Whether torchrun (or a launcher like it) started this process: it sets RANK and WORLD_SIZE."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def started() -> int:
    """WORLD_SIZE where it is a number above 1, else 1 (lenient: launched() names a bad value)."""
    world = os.environ.get("WORLD_SIZE", "1")
    return int(world) if world.isdigit() and int(world) > 1 else 1


def talks() -> bool:
    """Whether this process talks to people: alone, or rank 0 of a torchrun job (so that it holds
    before the process group exists)."""
    return os.environ.get("RANK", "0") == "0"


def first_on_node() -> bool:
    """Whether this process is its node's first (LOCAL_RANK 0), or alone; a LOCAL_RANK that is no
    number counts as first, so that an error is never silent."""
    local_rank = os.environ.get("LOCAL_RANK", "0")
    return not local_rank.isdigit() or int(local_rank) == 0
