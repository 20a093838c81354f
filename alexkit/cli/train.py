"""`alexkit train`: train AlexNet on a prepared store; defaults are the paper's recipe and network."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from alexkit.cli.options import AMP, CHANNELS_LAST, COMPILE, DEVICE, FC_FEATURES, WIDTH, ranged
from alexkit.errors import alike_everywhere
from alexkit.launcher import talks
from alexkit.paths import DEFAULT_RUNS, DEFAULT_STORE, word
from alexkit.ranges import TRAIN


def command(
    ctx: typer.Context,
    data: Path = typer.Option(DEFAULT_STORE, "--data", help="Store written by `alexkit prepare`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write: a new or empty one, or one a run left before its first epoch ended.",
                                         show_default=f"{DEFAULT_RUNS}/<YYYYmmdd-HHMMSS>"),  # fmt: skip
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run (its folder or a .pt) with its own "
                                          "settings, --epochs included; only --epochs, --data, --device, --parallel (within the run's column layout) and "
                                          "--progress may differ from the run's, and another flag that differs is refused."),  # fmt: skip  # resume.RESUME_MAY_CHANGE
    epochs: int = ranged(90, "--epochs", "Epochs at most; training also stops at the plateau after the last lr drop.", TRAIN["epochs"]),
    batch_size: int = ranged(128, "--batch-size", "Global batch, split over DDP processes.", TRAIN["batch_size"]),
    lr: float = ranged(0.01, "--lr", "Initial learning rate; with --lr-scaling linear, the rate for a batch of 128.",
                       TRAIN["lr"]),  # fmt: skip
    momentum: float = ranged(0.9, "--momentum", "SGD momentum (the paper's 0.9).", TRAIN["momentum"]),
    weight_decay: float = ranged(5e-4, "--weight-decay", "SGD weight decay, on weights (the paper's 5e-4).", TRAIN["weight_decay"]),
    decay_biases: bool = typer.Option(False, "--decay-biases", help="Also decay biases (the paper's authors did not)."),
    lr_scaling: str = typer.Option("none", "--lr-scaling", metavar="RULE", help="none, or linear: lr * batch-size / 128."),
    warmup_epochs: int = ranged(0, "--warmup-epochs", "Ramp the lr up linearly over these epochs.", TRAIN["warmup_epochs"]),
    patience: int = ranged(5, "--patience", "Epochs without a better val top-1 error before lr / 10.", TRAIN["patience"]),
    max_lr_drops: int = ranged(3, "--max-lr-drops", "lr drops before the next plateau ends training.", TRAIN["max_lr_drops"]),
    seed: int = ranged(0, "--seed", "Seed of the initial weights, dropout and the loader's crops, flips and lighting.",
                       TRAIN["seed"]),  # fmt: skip
    device: str = DEVICE,
    parallel: str = typer.Option("none", "--parallel", metavar="MODE",
                                 help="none; columns (the paper's two GPUs); ddp or ddp-columns under torchrun."),  # fmt: skip
    amp: str = AMP,
    channels_last: str = CHANNELS_LAST,
    compile: str = COMPILE,
    width: float = WIDTH,
    fc_features: int = FC_FEATURES,
    dropout: float = ranged(0.5, "--dropout", "Chance of zeroing each output of fc6 and fc7 in training.", TRAIN["dropout"]),
    init: str = typer.Option("paper", "--init", metavar="KIND", help="paper, or sturdy (biases 0.1, gains kept at any width) when the paper's init stays at chance."),
    progress: str = typer.Option("auto", "--progress", metavar="MODE", help="Progress bars: auto, rich, plain or none (rank 0 only; epoch summaries always print)."),
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
