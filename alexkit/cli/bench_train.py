"""`alexkit bench train`: training images/s, synthetic on-device input vs the real pipeline."""

from __future__ import annotations

from pathlib import Path

import typer

from alexkit.paths import DEFAULT_STORE


def command(
    data: Path = typer.Option(DEFAULT_STORE, "--data", help="Store for the real-pipeline row (absent: synthetic only)."),
    batch_size: int = typer.Option(128, "--batch-size"),
    steps: int = typer.Option(50, "--steps", help="Steps per timed window."),
    repeats: int = typer.Option(3, "--repeats", help="Timed windows; the median is reported."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed steps first (compilation, cuDNN autotuning)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    amp: str = typer.Option("auto", "--amp", help="bf16 autocast: auto (on for CUDA), on, off."),
    channels_last: str = typer.Option("auto", "--channels-last", help="auto (on for CUDA), on, off."),
    compile: str = typer.Option("auto", "--compile", help="torch.compile: auto (on for CUDA), on, off."),
    width: float = typer.Option(1.0, "--width", help="Network width (0.25 for a quick CPU figure)."),
    fc_features: int = typer.Option(4096, "--fc-features"),
) -> None:
    """Measure training images/s with synthetic on-device batches and with the real loader, side by side."""
    from alexkit.bench.train import BenchTrainConfig, bench_train

    bench_train(BenchTrainConfig(data=data, batch_size=batch_size, steps=steps, repeats=repeats, warmup=warmup,
                                 device=device, amp=amp, channels_last=channels_last, compile=compile, width=width,
                                 fc_features=fc_features))  # fmt: skip
