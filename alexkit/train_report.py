"""What a training measures of its own pace and tells people: images/s and the data wait per epoch,
the run's first line and each epoch's line (rank 0 prints them; alexkit/train.py runs the loop)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from alexkit.evaluate import TOP_K
from alexkit.model.placement import Placement
from alexkit.progress import duration

if TYPE_CHECKING:
    from alexkit.train import TrainConfig


class Rate:
    """Images/s of the steps after the first, and the share of their time spent waiting for the loader:
    the first step carries the epoch's start-up (the loader's graph build and first decode,
    torch.compile) and would hide the steady figures."""

    def __init__(self, batch: int):
        self.batch, self.since, self.steps, self.now = batch, None, 0, None
        self.waited, self.waited_all = 0.0, 0.0  # seconds waiting for batches: after the first step; in all

    def step(self, waited: float = 0.0) -> float | None:
        """Call after each step, with the seconds it waited for its batch; the rate so far, None after the first."""
        self.now = time.perf_counter()
        self.waited_all += waited
        if self.since is None:
            self.since = self.now
        else:
            self.steps += 1
            self.waited += waited
        return self.rate()

    def rate(self) -> float | None:
        return self.steps * self.batch / (self.now - self.since) if self.steps else None

    def wait_share(self) -> float | None:
        return self.waited / (self.now - self.since) if self.steps else None

    def start_up(self, started: float) -> float:
        """Seconds the first step (begun at `started`) took beyond a steady one: the loader's start of
        the epoch, and in a run's first epoch torch.compile; left out of the estimate of the epochs
        to come (their own start-ups, a second or so each, are small beside an epoch)."""
        if not self.steps:
            return 0.0
        return max(0.0, (self.since - started) - (self.now - self.since) / self.steps)


def timed(batches):
    """(batch, seconds the caller waited for it), batch after batch. The whole iterable is consumed
    as by a for loop, so a loader's end-of-epoch work still runs."""
    it = iter(batches)
    while True:
        asked = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch, time.perf_counter() - asked


def most_waited(clock: Rate, seconds: float, device: torch.device) -> float:
    """An epoch's data wait (a share of `clock`'s steps, or of all `seconds` for an epoch of one step);
    under torchrun the most of any process, since one that waits holds the others up at the all-reduce."""
    share = clock.wait_share()
    waits = torch.tensor([share if share is not None else clock.waited_all / seconds], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(waits, op=dist.ReduceOp.MAX)
    return waits.item()


def summary(row: dict, epochs_left: int, classes: int, start_up: float = 0.0) -> str:
    """One epoch's line; with epochs to go, how long they would take at this epoch's pace without its
    `start_up` seconds (at most: the plateau schedule may stop the run earlier). With 5 classes or
    fewer every label is among the top 5: no top-5 error is shown."""
    left = ""
    if epochs_left > 0:
        each = max(row["seconds"] - start_up, 0.0)
        left = f" | {epochs_left} epoch{'s' * (epochs_left != 1)} to go at most, {duration(each * epochs_left)}"
    top5 = f" top-5 err {row['val_top5_err']:.1%}" if classes > TOP_K else ""  # as eval's report
    return (f"epoch {row['epoch']}: lr {row['lr']:.2g} train loss {row['train_loss']:.3f} "
            f"top-1 err {row['train_top1_err']:.1%} | val top-1 err {row['val_top1_err']:.1%}{top5} "
            f"| {row['images_per_s']:,.0f} images/s, data wait {row['data_wait']:.0%}, {duration(row['seconds'])}{left}")  # fmt: skip


def stall_note(train_loss: float, classes: int, init: str) -> str | None:
    """After a run's first epoch: a training loss still at chance, ln(classes) or within 1% of it, with
    the paper's init is the stall that --init sturdy is for (README.md, "The network and the trainer")."""
    chance = math.log(classes) if classes > 1 else 0.0
    if init != "paper" or classes < 2 or train_loss < 0.99 * chance:
        return None
    return (f"note: the training loss ({train_loss:.3f}) is no better than chance, ln({classes}) = {chance:.3f}, after epoch 1: the paper's "
            "init leaves narrow nets (--width, --fc-features) there, and the full net with some seeds; if it stays, "
            "train anew with --init sturdy")  # fmt: skip


def flags(amp: bool, channels_last: bool, compiled: bool) -> str:
    """"bf16, channels-last, compiled", or "float32" when all three are off."""
    on = [name for name, flag in (("bf16", amp), ("channels-last", channels_last), ("compiled", compiled)) if flag]
    return ", ".join(on) if on else "float32"


def start_line(run_dir: Path, model: nn.Module, placement: Placement, flags: str, images: tuple[int, int],
                cfg: TrainConfig, lr: float, done: int) -> str:  # fmt: skip
    """What the run is about to do, in one line: where it writes, the net and where it runs, the data
    (`images`: train and val counts), the recipe (`lr`: the current one)."""
    params = sum(p.numel() for p in model.parameters())
    start = f"resuming after epoch {done}; " if done else ""
    return (f"run {run_dir}: {start}AlexNet of {params:,} parameters on {where(placement)} ({flags}); "
            f"{images[0]:,} train / {images[1]:,} val images; batch {cfg.batch_size}, lr {lr:g}, "
            f"at most {cfg.epochs} epoch{'s' * (cfg.epochs != 1)}")  # fmt: skip


def where(placement: Placement) -> str:
    """"cuda:0", "cuda:0 and cuda:1, a column each", "8 processes x 1 GPU with ddp", "2 processes on cpu with ddp"."""
    n, per, on_cuda = placement.world_size, len(placement.devices), placement.device.type == "cuda"
    if n > 1:
        each = f" x {per} GPU{'s' * (per != 1)}" if on_cuda else " on cpu"
        return f"{n} processes{each} with {placement.parallel}"
    if per == 2:
        return " and ".join(map(str, placement.devices)) + ", a column each" if on_cuda else "cpu, both columns"
    return str(placement.device)
