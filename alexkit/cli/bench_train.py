"""`alexkit bench train`: training images/s, synthetic on-device input vs the real pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from alexkit.cli.options import AMP, CHANNELS_LAST, COMPILE, FC_FEATURES, WIDTH
from alexkit.paths import DEFAULT_STORE


def command(
    data: Optional[Path] = typer.Option(None, "--data", help="Store for the real-pipeline row.",
                                        show_default=f"{DEFAULT_STORE} if it holds a store, else the synthetic row only"),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per step."),
    steps: int = typer.Option(50, "--steps", help="Steps per timed window."),
    repeats: int = typer.Option(3, "--repeats", help="Timed windows; the median is reported."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed steps first (compilation, cuDNN autotuning)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto (CUDA if present), cpu, cuda or cuda:N."),
    amp: str = AMP,
    channels_last: str = CHANNELS_LAST,
    compile: str = COMPILE,
    width: float = WIDTH,
    fc_features: int = FC_FEATURES,
) -> None:
    """Measure training images/s with synthetic on-device batches and with the real loader, side by side."""
    from alexkit.bench.train import BenchTrainConfig, bench_train

    bench_train(BenchTrainConfig(data=data, batch_size=batch_size, steps=steps, repeats=repeats, warmup=warmup,
                                 device=device, amp=amp, channels_last=channels_last, compile=compile, width=width,
                                 fc_features=fc_features))  # fmt: skip
