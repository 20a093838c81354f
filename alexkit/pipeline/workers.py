"""prepare's worker processes: each converts chunks of samples (read, decode, resize, crop,
encode, statistics); results come back in order, and a file that crashes its worker costs only
that file. Nothing here writes the store: the parent alone does (see build.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

from alexkit.datasets import Sample, read_sample_bytes
from alexkit.stops import blocked, ignored
from alexkit.errors import refused
from alexkit.pipeline import imageops

CHUNK = 64  # samples per task: large enough to amortise the hand-over, small enough to balance


class ConvertJob(NamedTuple):
    """What a worker makes of every sample of a split (pickled to it with each chunk)."""

    size: int  # stored side, px
    format: str  # "jpg" or "raw"
    quality: int  # JPEG quality (unused for raw)
    with_stats: bool  # also sum the pixels for stats.npz (the train split)


def chunks(samples: tuple[Sample, ...], workers: int) -> Iterator[list[tuple[int, Sample]]]:
    """[(index, sample)] lists; smaller than CHUNK for small splits, so every worker gets work."""
    step = max(1, min(CHUNK, len(samples) // (4 * workers)))
    for start in range(0, len(samples), step):
        yield list(enumerate(samples[start : start + step], start))


def convert_chunk(chunk: list[tuple[int, Sample]], job: ConvertJob, messages_into: str | None = None):
    """In a worker: convert each sample; a failure of one file's bytes (undecodable, say) is caught and
    becomes its skip reason, while a file that cannot be read stops the run (_read). What the decoder
    prints goes to `messages_into` (a file by name) or an anonymous one (imageops.DecoderMessages).

    Returns ([(index, stored bytes or RGB array, None or what the decoder printed about it) or
    (index, None, reason)], PixelSums or None).
    """
    sums = imageops.PixelSums(job.size) if job.with_stats else None
    results = []
    with imageops.DecoderMessages(messages_into) as messages:
        for index, sample in chunk:
            data = _read(sample)
            try:
                stored, rgb = imageops.convert(data, job.size, job.format, job.quality)
            except Exception as exc:  # anything one file's bytes can do: bad bytes, decoder errors, memory
                messages.take()  # the reason says it
                results.append((index, None, imageops.skip_reason(exc, data)))
                continue
            if sums is not None:
                sums.add(rgb)
            results.append((index, stored, messages.take()))
    return results, sums


def _read(sample: Sample) -> bytes:
    """The sample's bytes. A file the system will not read (permissions, a failing disk) stops the run
    rather than being skipped: whatever made it unreadable may have hit many more, and a quietly
    smaller dataset is worse than a stop (which keeps the splits already finished)."""
    try:
        return read_sample_bytes(sample)
    except OSError as exc:
        raise refused(exc, "make it readable (its permissions, or copy it again) and run prepare again (finished "
                      "splits are kept)", sample.path) from None  # fmt: skip


def _init_worker(parent: int) -> None:
    # Ctrl-C is the parent's to handle, and SIGTERM (sent to every process of a batch job): a worker it
    # ended would count as a crash. Both were blocked by _start until now.
    ignored(signal.SIGINT, signal.SIGTERM)
    if sys.platform.startswith("linux"):
        import ctypes

        try:  # die with the parent, even on kill -9 (PR_SET_PDEATHSIG = 1)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    imageops.quiet_worker()


class Workers:
    """Worker processes converting chunks of samples, results handed back in order.

    At most 2 x workers + 1 chunks are in flight, so memory does not grow with the dataset. If a
    worker dies (a native decoder crash, the OOM killer), the pool is restarted and the chunk
    it held is redone one file at a time in fresh processes, so only the culprit is skipped.
    """

    def __init__(self, workers: int):
        self.workers = workers
        # fork: workers start in milliseconds and inherit the imported modules.
        self.context = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        imageops.load_libraries()  # once here (torch: ~1 s), not per worker; OpenCV made fork-safe
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        with blocked(signal.SIGINT, signal.SIGTERM):  # until _init_worker ignores them
            pool = ProcessPoolExecutor(
                self.workers, mp_context=self.context, initializer=_init_worker, initargs=(os.getpid(),)
            )
            pool.submit(int).result()  # start every worker now, before a progress thread exists
        return pool

    def _restart(self) -> None:
        # A worker died. The pool's own clean-up sends the others SIGTERM, which they ignore
        # (_init_worker), and waits for them: one blocked handing back a result too large for the
        # pipe, which the pool no longer reads, would be waited for for ever. SIGKILL ends them.
        for worker in list((getattr(self.pool, "_processes", None) or {}).values()):  # the pool's own, no other child
            worker.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = self._start()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, chunks: Iterator[list], job: ConvertJob) -> Iterator[tuple[list, imageops.PixelSums | None]]:
        """Yield `convert_chunk(chunk, job)` for every chunk, in order."""
        pending: deque = deque()
        while True:
            while len(pending) < 2 * self.workers + 1 and (chunk := next(chunks, None)) is not None:
                pending.append((chunk, self.pool.submit(convert_chunk, chunk, job)))
            if not pending:
                return
            chunk, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                self._restart()
                result = self._one_by_one(chunk, job)
                pending = deque((c, self.pool.submit(convert_chunk, c, job)) for c, _ in pending)
            yield result

    def _one_by_one(self, chunk: list, job: ConvertJob) -> tuple[list, imageops.PixelSums | None]:
        """The chunk a worker died on, a file per task: only the culprit is skipped, its reason with
        what the crash printed (glibc's "free(): invalid pointer", say), read from a file of our own."""
        results, sums = [], imageops.PixelSums(job.size) if job.with_stats else None
        with tempfile.NamedTemporaryFile(prefix="alexkit-decoder-") as printed:
            for item in chunk:
                try:
                    part, part_sums = self.pool.submit(convert_chunk, [item], job, printed.name).result()
                except BrokenProcessPool:
                    self._restart()
                    said = imageops.one_line(Path(printed.name).read_bytes())
                    reason = "the decoder crashed its worker process" + (f" ({said})" if said else "")
                    part, part_sums = [(item[0], None, reason[: imageops.REASON_CHARS])], None
                results += part
                if sums is not None and part_sums is not None:
                    sums.merge(part_sums)
        return results, sums
