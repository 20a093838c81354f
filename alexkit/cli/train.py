"""`alexkit train`: train AlexNet on a prepared store; defaults are the paper's recipe and network."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from alexkit.errors import alike_everywhere
from alexkit.paths import DEFAULT_RUNS, DEFAULT_STORE, word
from alexkit.progress import talks

# Options `alexkit bench train` shares with `alexkit train` (same names, defaults and help).
DEVICE = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda, cuda:N.")
AMP = typer.Option("auto", "--amp", help="bf16 autocast: auto (on for CUDA GPUs with bf16 tensor cores), on, off.")
CHANNELS_LAST = typer.Option("auto", "--channels-last", help="auto (on for CUDA), on, off.")
COMPILE = typer.Option("auto", "--compile", help="torch.compile: auto (on for CUDA), on, off.")
WIDTH = typer.Option(1.0, "--width", help="Scale every conv's channels, up to 8 (0.25 for a quick CPU run).")
FC_FEATURES = typer.Option(4096, "--fc-features", help="Width of fc6 and fc7.")


def command(
    ctx: typer.Context,
    data: Path = typer.Option(DEFAULT_STORE, "--data", help="Store written by `alexkit prepare`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory.",
                                         show_default=f"{DEFAULT_RUNS}/<YYYYmmdd-HHMMSS>"),  # fmt: skip
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run (its directory or a .pt); its own "
                                          "settings hold (--epochs included) except the flags given."),
    epochs: int = typer.Option(90, "--epochs", help="Epochs at most; training also stops after the last lr drop."),
    batch_size: int = typer.Option(128, "--batch-size", help="Global batch, split over DDP processes."),
    lr: float = typer.Option(0.01, "--lr", help="Initial learning rate; with --lr-scaling linear, the rate for a batch of 128."),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(5e-4, "--weight-decay"),
    decay_biases: bool = typer.Option(False, "--decay-biases", help="Also decay biases (the paper's authors did not)."),
    lr_scaling: str = typer.Option("none", "--lr-scaling", help="none, or linear: lr * batch-size / 128."),
    warmup_epochs: int = typer.Option(0, "--warmup-epochs", help="Ramp the lr up linearly over these epochs."),
    patience: int = typer.Option(5, "--patience", help="Epochs without a better val top-1 error before lr / 10."),
    max_lr_drops: int = typer.Option(3, "--max-lr-drops", help="lr drops before the next plateau ends training."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE,
    parallel: str = typer.Option("none", "--parallel",
                                 help="none; columns (the paper's two GPUs); ddp or ddp-columns under torchrun."),  # fmt: skip
    amp: str = AMP,
    channels_last: str = CHANNELS_LAST,
    compile: str = COMPILE,
    width: float = WIDTH,
    fc_features: int = FC_FEATURES,
    dropout: float = typer.Option(0.5, "--dropout"),
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
