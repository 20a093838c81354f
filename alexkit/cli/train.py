"""`alexkit train`: train AlexNet on a prepared store; defaults are the paper's recipe and network."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from alexkit.errors import alike_everywhere
from alexkit.paths import DEFAULT_RUNS, DEFAULT_STORE, word
from alexkit.progress import talks


@dataclass(frozen=True)
class Range:
    """A flag's allowed values: said in its help, and checked as the command line is parsed, so that a
    value outside is a usage error naming the range and the command. TrainConfig checks the same
    ranges for callers from Python; tests/test_cli.py keeps the two alike."""

    low: float
    high: float = math.inf  # inf: no limit (a value must still be finite)
    above: bool = False  # low itself is out
    below: bool = False  # high itself is out

    def __str__(self) -> str:  # as TrainConfig says it
        low, high = (f"{x:,}" if isinstance(x, int) else f"{x}" for x in (self.low, self.high))
        if self.high == math.inf:
            return f"above {low}" if self.above else f"at least {low}"
        if self.above:
            return f"above {low}, {'below' if self.below else 'at most'} {high}"
        return f"from {low} to {'below ' if self.below else ''}{high}"

    def __call__(self, value: float) -> float:
        low_ok = value > self.low if self.above else value >= self.low
        high_ok = value < self.high if self.below else value <= self.high
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        if not (low_ok and high_ok):
            raise typer.BadParameter(f"{value} is out of range: {self}")
        return value


def ranged(default: float, flag: str, help: str, allowed: Range):
    """An option whose help ends with its range, refusing a value outside it as it is parsed."""
    return typer.Option(default, flag, help=f"{help} Range: {allowed}.", callback=allowed)


SEED_RANGE = Range(0, 2**32 - 1)  # torch's and DALI's seeds are 32-bit

# Options `alexkit bench train` shares with `alexkit train` (same names, defaults and help).
DEVICE = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK).")
AMP = typer.Option("auto", "--amp", help="bf16 autocast: auto (on for CUDA GPUs with bf16 tensor cores), on, off.")
CHANNELS_LAST = typer.Option("auto", "--channels-last", help="auto (on for CUDA), on, off.")
COMPILE = typer.Option("auto", "--compile", help="torch.compile: auto (on for CUDA), on, off.")
WIDTH = ranged(1.0, "--width", "Scale every conv's channels (0.25 for a quick CPU run).", Range(0, 8, above=True))
FC_FEATURES = ranged(4096, "--fc-features", "Width of fc6 and fc7.", Range(2, 4 * 4096))  # train.MAX_FC_FEATURES


def command(
    ctx: typer.Context,
    data: Path = typer.Option(DEFAULT_STORE, "--data", help="Store written by `alexkit prepare`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write: a new or empty one.",
                                         show_default=f"{DEFAULT_RUNS}/<YYYYmmdd-HHMMSS>"),  # fmt: skip
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run (its folder or a .pt) with its own "
                                          "settings, --epochs included; only --epochs, --data, --device, --parallel and "
                                          "--progress may differ from the run's, and another flag that differs is refused."),  # fmt: skip  # runs.RESUME_MAY_CHANGE
    epochs: int = ranged(90, "--epochs", "Epochs at most; training also stops after the last lr drop.", Range(1)),
    batch_size: int = ranged(128, "--batch-size", "Global batch, split over DDP processes.", Range(1)),
    lr: float = ranged(0.01, "--lr", "Initial learning rate; with --lr-scaling linear, the rate for a batch of 128.",
                       Range(0, above=True)),  # fmt: skip
    momentum: float = ranged(0.9, "--momentum", "SGD momentum (the paper's 0.9).", Range(0, 1, below=True)),
    weight_decay: float = ranged(5e-4, "--weight-decay", "SGD weight decay, on weights (the paper's 5e-4).", Range(0)),
    decay_biases: bool = typer.Option(False, "--decay-biases", help="Also decay biases (the paper's authors did not)."),
    lr_scaling: str = typer.Option("none", "--lr-scaling", help="none, or linear: lr * batch-size / 128."),
    warmup_epochs: int = ranged(0, "--warmup-epochs", "Ramp the lr up linearly over these epochs.", Range(0)),
    patience: int = ranged(5, "--patience", "Epochs without a better val top-1 error before lr / 10.", Range(1)),
    max_lr_drops: int = ranged(3, "--max-lr-drops", "lr drops before the next plateau ends training.", Range(0)),
    seed: int = ranged(0, "--seed", "Seed of the initial weights, dropout and the loader's crops, flips and lighting.",
                       SEED_RANGE),  # fmt: skip
    device: str = DEVICE,
    parallel: str = typer.Option("none", "--parallel",
                                 help="none; columns (the paper's two GPUs); ddp or ddp-columns under torchrun."),  # fmt: skip
    amp: str = AMP,
    channels_last: str = CHANNELS_LAST,
    compile: str = COMPILE,
    width: float = WIDTH,
    fc_features: int = FC_FEATURES,
    dropout: float = ranged(0.5, "--dropout", "Chance of zeroing each output of fc6 and fc7 in training.", Range(0, 1, below=True)),
    init: str = typer.Option("paper", "--init", help="paper, or sturdy (biases 0.1, gains kept at any width) when the paper's init stays at chance."),
    progress: str = typer.Option("auto", "--progress", help="Progress bars: auto, rich, plain or none (rank 0 only; epoch summaries always print)."),
) -> None:
    """Train AlexNet (two columns) with SGD as in the paper; writes config, metrics and checkpoints to a run directory.

    Many GPUs or nodes: torchrun --nproc-per-node=8 -m alexkit train --parallel ddp
    """
    from alexkit.train import TrainConfig, train

    with alike_everywhere():  # checks of the flags alone: each torchrun process meets them
        cfg = TrainConfig(
            data=data, out=out, resume=resume, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
            weight_decay=weight_decay, decay_biases=decay_biases, lr_scaling=lr_scaling, warmup_epochs=warmup_epochs,
            patience=patience, max_lr_drops=max_lr_drops, seed=seed, device=device, parallel=parallel, amp=amp,
            channels_last=channels_last, compile=compile, width=width, fc_features=fc_features, dropout=dropout,
            init=init, progress=progress,
        )  # fmt: skip
    # Resuming, the run's own settings hold except for the flags given here, even at their default.
    # (By the enum member's name: typer may bring click's ParameterSource or its own copy.)
    given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    run_dir = train(cfg, given)
    if talks():
        print(f"run: {run_dir}\nnext: alexkit eval --checkpoint {word(run_dir)} --tta")
