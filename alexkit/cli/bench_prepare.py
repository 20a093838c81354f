"""`alexkit bench prepare [SRC]`: prepare images/s beside a one-process PIL converter and FFCV's writer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from alexkit.paths import usable_cores



def command(
    src: Optional[Path] = typer.Argument(None, metavar="SRC", help="Dataset to take images from; without it, photo-like JPEGs are made."),
    images: int = typer.Option(1000, "--images", "-n", help="Images per route."),
    workers: int = typer.Option(usable_cores(), "--workers", "-j", help="Processes for (b) and (c).", show_default="all usable cores"),
    size: int = typer.Option(256, "--size", help="Stored image side."),
    quality: int = typer.Option(90, "--quality", help="JPEG quality."),
    repeats: int = typer.Option(3, "--repeats", help="Runs per route, interleaved; the median is reported."),
) -> None:
    """Images/s of (a) one-process PIL, (b) FFCV's DatasetWriter, (c) alexkit prepare, on the same images and cores."""
    from alexkit.bench.prepare import BenchPrepareConfig, bench_prepare

    bench_prepare(BenchPrepareConfig(src=src, images=images, workers=workers, size=size, quality=quality, repeats=repeats))
