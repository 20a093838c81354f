"""Benchmarks that print images/s side by side (`alexkit bench ...`); timings never live in tests.

What they share: the CPU time of a process and its workers, and pipelines timed whole epochs at a
time, taking turns (Runner, interleaved).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from alexkit.errors import AlexkitError


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process (all threads), of its child processes that have
    ended and been reaped, and of its live ones (DataLoader workers; read from /proc). A pipeline's
    CPU time is the difference of two readings."""
    import multiprocessing
    import os
    import resource

    ticks = 0
    for child in multiprocessing.active_children():  # reaps the ended ones: they count below
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    me, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ended.ru_utime + ended.ru_stime + ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Runner:
    """One pipeline on one store: `epoch(e)` returns an iterable over that epoch's batches."""

    pipeline: str
    store: str
    mode: str
    epoch: Callable[[int], Iterable]
    rates: list[float] = field(default_factory=list)  # images/s per epoch (wall clock)
    cpu: list[float] = field(default_factory=list)  # CPU seconds per image, all threads and worker processes


def interleaved(runners: list[Runner], epochs: int) -> Iterator[Runner]:
    """Run every runner for `epochs` epochs, one epoch each in turn; each runner is yielded as its
    last epoch ends, so that its row can be printed before the next runner's last epoch."""
    for e in range(epochs):
        for r in runners:
            start, start_cpu, count = time.perf_counter(), cpu_seconds(), 0
            for batch in r.epoch(e):
                count += len(batch[0])
            if not count:
                raise AlexkitError(f"{r.pipeline} on {r.store} ({r.mode}) gave no batch: fewer images than --batch-size; lower it")
            r.rates.append(count / (time.perf_counter() - start))
            r.cpu.append((cpu_seconds() - start_cpu) / count)
            if e == epochs - 1:
                yield r
