"""The allowed values of numeric flags, written once. The configs check them for callers from Python;
the command line checks the same Range objects as it parses (cli/options.ranged: train, bench train,
sample, show-batch), so that a value outside is a usage error naming the command. No torch here:
`alexkit train --help` shows the ranges instantly."""

from __future__ import annotations

import math
from dataclasses import dataclass

from alexkit.errors import AlexkitError


@dataclass(frozen=True)
class Range:
    low: float
    high: float = math.inf  # inf: no limit (a value must still be finite)
    above: bool = False  # low itself is out
    below: bool = False  # high itself is out
    why: str = ""  # said after the range, in brackets

    def __contains__(self, value: float) -> bool:
        low_ok = value > self.low if self.above else value >= self.low
        high_ok = value < self.high if self.below else value <= self.high
        return math.isfinite(value) and low_ok and high_ok

    def __str__(self) -> str:  # "from 0 to below 1", "at least 1", "above 0, at most 8"
        low, high = (f"{x:,}" if isinstance(x, int) else f"{x}" for x in (self.low, self.high))
        if self.high == math.inf:
            said = f"above {low}" if self.above else f"at least {low}"
        elif self.above:
            said = f"above {low}, {'below' if self.below else 'at most'} {high}"
        else:
            said = f"from {low} to {'below ' if self.below else ''}{high}"
        return f"{said} ({self.why})" if self.why else said


def check_ranges(*checks: tuple[str, float, Range]) -> None:
    """Each check (flag, value, its range): the first value outside is one line naming the flag, the
    value and the range ("--steps 0 is out of range: at least 1")."""
    for flag, value, allowed in checks:
        if value not in allowed:
            raise AlexkitError(f"{flag} {value} is out of range: {allowed}")


AT_LEAST_1 = Range(1)
# `alexkit sample`'s images per class, up to the most an ImageNet class has (1,300 train images): more
# synthetic images of one class teach nothing new, and a mistyped extra zero would write for hours.
SAMPLE = {"train_per_class": Range(1, 1300, why="the most an ImageNet class has"),
          "val_per_class": Range(0, 1300, why="the same bound as train")}  # fmt: skip
SEED = Range(0, 2**32 - 1)  # torch's and DALI's seeds are 32-bit
SHOW_BATCH_COUNT = Range(1, 256)  # training crops in show-batch's grid: one batch, drawn whole
MAX_FC_FEATURES = 4 * 4096  # fc6 and fc7 up to 4x the paper's (fc7 alone then holds 268M weights)

# TrainConfig's numeric fields; `alexkit train` and `bench train` check their flags with these.
TRAIN = {
    "epochs": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "lr": Range(0, above=True),
    "momentum": Range(0, 1, below=True),
    "weight_decay": Range(0),
    "warmup_epochs": Range(0),
    "patience": AT_LEAST_1,
    "max_lr_drops": Range(0),
    "seed": SEED,
    "width": Range(0, 8, above=True),
    "fc_features": Range(2, MAX_FC_FEATURES),
    "dropout": Range(0, 1, below=True),
}
