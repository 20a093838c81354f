"""What the processes of a torchrun job must agree on before they go on together.

Each process checks its own files: on several nodes a path may hold another file, or none. A
process that stopped alone at such a check would leave the others waiting in their next collective
(until torch's timeout: 30 min with gloo), so every check is shared: an error any process meets is
raised in all of them, naming the process and host it came from, and the checkpoint and store they
read must be the same ones. Alone (no process group), each helper is the plain check.

An error met before joining would leave the others waiting to join: torchrun's agent stops the
other processes of its own node, but the node holding the rendezvous store waits for a process of
another node until torch's timeout. So the processes meet first, in that store (`meet`): each says
its error and the backend it would join with, and all raise the first error before any joins.
torchrun's process numbers are read in alexkit/launcher.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Callable, TypeVar

import torch.distributed as dist
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

from alexkit.errors import AlexkitError, alike, refused, why
from alexkit.launcher import launched
from alexkit.progress import counted

T = TypeVar("T")


def _together() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def _gather(value) -> list:
    """Every process's `value`, in rank order."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def agree(error: AlexkitError | None) -> None:
    """Raise in every process the first error (by rank) that any process met; None: none met here."""
    if not _together():
        if error is not None:
            raise error
        return
    _raise_first(_gather(_said(error)), dist.get_rank(), error)


def _said(error: AlexkitError | None) -> list | None:
    return None if error is None else [str(error), error.exit_code, socket.gethostname()]


def _raise_first(said: list, rank: int, error: AlexkitError | None) -> None:
    """Raise the first error (by rank) in `said` (each process's _said), naming the process it came
    from where that is another than `rank`."""
    for other, one in enumerate(said):
        if one is not None:
            text, exit_code, host = one
            raise _everywhere(text if other == rank else f"{text} (said by process {other} on {host})",
                              exit_code) from error


def _everywhere(text: str, exit_code: int = AlexkitError.exit_code) -> AlexkitError:
    """An error that every process raises at once: the command line lets the first process of each node
    alone print it."""
    error = alike(AlexkitError(text))
    error.exit_code = exit_code
    return error


def _met(check: Callable[[], T]) -> tuple[T | None, AlexkitError | None]:
    """(check(), None), or (None, the error it met): an AlexkitError, or an OSError about a file as one."""
    try:
        return check(), None
    except AlexkitError as exc:
        return None, exc
    except OSError as exc:
        if not exc.filename:
            raise
        return None, refused(exc, "check that path (its folder, permissions) or choose another")


def on_every_rank(check: Callable[[], T]) -> T:
    """check() in this process, its error raised in every process (see agree)."""
    result, error = _met(check)
    agree(error)
    return result


def before_joining(check: Callable[[], T]) -> tuple[T | None, AlexkitError | None]:
    """check() before this process joins the others. Alone, as it is; under torchrun (WORLD_SIZE > 1)
    its error is handed back, for `meet` (through placement.setup) to raise in every process: a
    process that stopped before joining would leave the others waiting to join."""
    if launched() == 1:
        return check(), None
    return _met(check)


def join(backend: str | None, rank: int, world_size: int, error: AlexkitError | None, device: str) -> None:
    """Join torchrun's process group with `backend` once `meet` found no error in any process (and
    the same backend in all); `error`: this process's, None if it met none (then `backend` is set);
    `device`: the --device it was given."""
    try:  # as init_process_group's own rendezvous, but bounded by MEET_WAIT (without torchrun process 0
        # holds the store and waits here for every other process to connect)
        store, rank, world_size = next(dist.rendezvous("env://", rank, world_size, timeout=MEET_WAIT))
    except ValueError as exc:  # MASTER_ADDR or MASTER_PORT unset: RANK and WORLD_SIZE were set by hand
        raise AlexkitError(f"{exc}; start the job with torchrun, which sets it") from exc
    except RuntimeError as exc:
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise PeerLost(f"the processes of this job did not all reach its store at {where} ({why(exc)}); see their own "
                       "errors, then run again") from exc  # fmt: skip
    meet(store, rank, world_size, backend, error, device)
    store.set_timeout((default_pg_nccl_timeout if backend == "nccl" else None) or default_pg_timeout)  # torch's own
    dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank, world_size=world_size)


MEET_WAIT = timedelta(minutes=10)  # for every process to reach meet: they start together, then read a checkpoint
POLL = 0.1  # s between looks at the store while waiting there: a check is one round trip to it


def meet(store: dist.Store, rank: int, world_size: int, backend: str | None, error: AlexkitError | None,
         device: str = "auto", wait: timedelta = MEET_WAIT) -> None:
    """Before joining: each process says, in the rendezvous `store`, the error it met (None: none), the
    backend it would join with and its --device, and reads what every other said. Then every process
    raises the first error by rank, or else one naming a process whose backend differs from process
    0's, or one naming the processes that said nothing within `wait`; if none raises, all may join.

    The keys are fixed, and the last process to read them deletes them: the store outlives the
    processes (a torchrun restart keeps it), and a later meeting must not read this one."""
    key = "alexkit/meet/{}".format
    store.set(key(rank), json.dumps([_said(error), backend, socket.gethostname(), device]))
    keys = [key(r) for r in range(world_size)]
    _wait_for_all(store, keys, rank == 0, wait)
    try:
        said = [json.loads(store.get(k)) for k in keys]
    except RuntimeError as exc:  # the store is gone with the process that held it
        raise peer_lost(exc, "run again") from exc
    if store.add(key("read"), 1) == world_size:
        for k in (*keys, key("read")):
            store.delete_key(k)
        store.set(key("all-read"), "")
    try:
        _raise_first([one[0] for one in said], rank, error)
        _same_backend([one[1:] for one in said])
    except AlexkitError:
        if rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # without torchrun's agent
            with contextlib.suppress(RuntimeError):  # process 0 holds the store: it leaves once all have read
                store.wait([key("all-read")], timedelta(seconds=60))
                store.delete_key(key("all-read"))
        raise


def _same_backend(said: list) -> None:
    """Raise if a process would join with another backend than process 0: (backend, host, device) each."""
    other = next((r for r, one in enumerate(said) if one[0] != said[0][0]), None)
    if other is None:
        return
    cuda, cpu = (0, other) if said[0][0] == "nccl" else (other, 0)
    (_, cuda_host, cuda_device), (_, cpu_host, cpu_device) = said[cuda], said[cpu]
    fix = (f"{cpu_host} finds no CUDA: fix its GPUs (nvidia-smi lists them), or pass --device cpu to all"
           if cpu_device == "auto" else "pass the same --device to all")  # fmt: skip
    raise _everywhere(f"process {cuda} on {cuda_host} would train on GPUs (--device {cuda_device}) and process {cpu} "
                      f"on {cpu_host} on the CPU (--device {cpu_device}), and a job's processes must all use GPUs or "
                      f"all the CPU; {fix}")  # fmt: skip


def _wait_for_all(store: dist.Store, keys: list[str], zero_came: bool, wait: timedelta) -> None:
    """Until every process has said its part (keys[r] for process r), or raise PeerLost naming the
    processes that did not within `wait`, or saying the store is gone. Process 0 says that error once
    for all (`everywhere`) where it came: where it waits too, or where it came and its node then
    stopped with the store. `zero_came`: this is process 0."""
    deadline = time.monotonic() + wait.total_seconds()
    try:
        while True:  # polled, not store.wait in slices: torch logs two lines to stderr for each wait that runs out
            zero_came = zero_came or store.check(keys[:1])  # (the check below raises where the store is gone)
            if store.check(keys):
                return
            if time.monotonic() >= deadline:
                missing = [r for r, k in enumerate(keys) if not store.check([k])]
                break
            time.sleep(POLL)
    except RuntimeError as exc:  # the store is gone with the process that held it
        error = peer_lost(exc, "run again")
        error.everywhere = zero_came
        raise error from exc
    if not missing:
        return
    which, whose = (f"process {missing[0]}", "its") if len(missing) == 1 else \
        (f"processes {', '.join(map(str, missing))}", "their")
    error = PeerLost(f"{which} of this job did not come within {wait.total_seconds():g} s (stopped before joining, or "
                     f"still starting); see {whose} own error, then run again")  # fmt: skip
    error.everywhere = zero_came
    raise error


@contextlib.contextmanager
def lost_peers_said(then: Callable[[], str]):
    """The block, then a barrier: a collective that fails for want of another process (which said its
    own error) is said as PeerLost, with `then()` as what to do. The barrier is here, not in teardown,
    so that a rank 0 that failed its last write is said that way too."""
    try:
        yield
        if _together():
            dist.barrier()
    except RuntimeError as exc:
        if _together() and lost_peer(exc):
            raise peer_lost(exc, then()) from exc
        raise


class PeerLost(AlexkitError):
    """A collective failed because another process stopped or its connection broke: exit code 1."""

    exit_code = 1


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective's failure for want of another process (gloo or NCCL)."""
    text = str(exc)  # gloo: "[.../gloo/transport/tcp/pair.cc:537] Read error ...: Connection reset by peer"
    return isinstance(exc, getattr(dist, "DistError", ())) or any(w in text for w in ("gloo", "NCCL", "Connection"))


def peer_lost(exc: BaseException, then: str) -> PeerLost:
    """The error for a collective that lost its peer: its cause without gloo's advice, and what to do."""
    cause = why(exc).split(". This is typically")[0]
    return PeerLost(f"another process of this job stopped or lost its connection ({cause}); see its own error, then {then}")


def _where(path: Path) -> str:
    return f"{socket.gethostname()}:{Path(path).resolve()}"


def _differ(values: list, what: str, fix: str) -> None:
    """Raise if the processes' (fingerprint, where) values differ: one line listing each where."""
    if len({fingerprint for fingerprint, _ in values}) > 1:
        groups: dict[str, list[str]] = {}
        for fingerprint, where in values:
            groups.setdefault(fingerprint, []).append(where)
        listed = "; ".join(", ".join(sorted(set(wheres))) for wheres in groups.values())
        raise _everywhere(f"the processes read different {what} ({listed}); {fix}")


def same_checkpoint_everywhere(ckpt: dict, path: Path, flag: str) -> None:
    """Every process read the same checkpoint: the same epoch, metrics and config, which two
    checkpoints of different weights never share. A training may replace a run's checkpoint, or
    start a newer run, while the processes start; or the nodes see different files at one path."""
    if not _together():
        return
    epoch = ckpt.get("epoch")
    mine = json.dumps([epoch, ckpt.get("metrics"), ckpt.get("config")], sort_keys=True, default=str)
    _differ(_gather((mine, f"{_where(path)} at epoch {epoch}")), "checkpoints",
            f"a training replaced it while they started, or the nodes see different files there: pass an absolute "
            f"{flag} on a file system all nodes share, and run again")  # fmt: skip


def same_folder_everywhere(folder: Path, flag: str) -> None:
    """Every process sees the run folder that process 0 made or resumes. On a disk of process 0's node
    alone, the others would train without a word, and a resume on another node would not find it."""
    if not _together():
        return
    seen = _gather((_sees(Path(folder)), socket.gethostname()))
    missing = [rank for rank, (there, _) in enumerate(seen) if not there]
    if missing:
        hosts = ", ".join(sorted({seen[rank][1] for rank in missing}))
        raise _everywhere(f"the run folder {folder} of process 0 on {seen[0][1]} is not there for {_processes(missing)} "
                          f"on {hosts}; pass {flag} a folder on a file system all nodes share")  # fmt: skip


def _sees(folder: Path, wait: float = 10.0) -> bool:
    """Whether this process sees `folder`, looking again for up to `wait` seconds: an NFS client that
    looked the path up before process 0 made it (every process resolves --out) may answer "no such
    entry" from its cache for a while; listing the parent folder asks the server afresh."""
    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError):
            os.listdir(folder.parent)
        if folder.is_dir() or time.monotonic() > deadline:
            return folder.is_dir()
        time.sleep(0.5)


def same_flags_everywhere(cfg, own: tuple[str, ...]) -> None:
    """Every process was given the same flags, but for the fields in `own` (the device, paths that
    other checks compare by what they hold). Nodes started by scripts of their own could otherwise
    train with different lrs or seeds without a word (only rank 0's weights are saved), or hang in a
    collective when their epochs differ."""
    if not _together():
        return
    mine = {k: v for k, v in asdict(cfg).items() if k not in own}
    given = _gather(mine)
    differ = [k for k in mine if len({json.dumps(g.get(k), default=str) for g in given}) > 1]
    if not differ:
        return
    name = differ[0]
    groups: dict[str, list[int]] = {}
    for rank, g in enumerate(given):
        groups.setdefault(json.dumps(g.get(name), default=str), []).append(rank)
    listed = "; ".join(f"{value} on {_processes(ranks)}" for value, ranks in groups.items())
    more = f" (and {counted(len(differ) - 1, 'other flag')})" if len(differ) > 1 else ""
    raise _everywhere(f"the processes were given different --{name.replace('_', '-')}: {listed}{more}; start every "
                      "process with the same command line")  # fmt: skip


def _processes(ranks: list[int]) -> str:
    """"process 1", "processes 0, 2, 4 and 5 others"."""
    if len(ranks) == 1:
        return f"process {ranks[0]}"
    shown = ", ".join(map(str, ranks[:3]))
    return f"processes {shown} and {counted(len(ranks) - 3, 'other')}" if len(ranks) > 3 else f"processes {shown}"


def same_store_everywhere(store) -> None:
    """Every process reads the same store: its settings, counts, statistics and classes. Nodes with
    their own copies at one path would otherwise train on different data, or fail in a collective."""
    if not _together():
        return
    splits = {name: [s.get("images"), s.get("per_class"), s.get("bytes")] for name, s in store.manifest.get("splits", {}).items()}
    digest = hashlib.sha256(json.dumps([store.manifest.get("settings"), splits, store.classes], sort_keys=True).encode())
    for array in (store.stats.mean_image, store.stats.eigval, store.stats.eigvec):  # not the .npz: its zip has dates
        digest.update(array.tobytes())
    _differ(_gather((digest.hexdigest(), _where(store.path))), "stores",
            "pass --data a store on a file system all nodes share, or the same copy on every node")
