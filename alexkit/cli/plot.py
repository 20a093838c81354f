"""`alexkit plot RUN...`: training curves of one or more runs in one picture (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    runs: list[Path] = typer.Argument(None, metavar="RUN...", help="Run directories.", show_default="the latest run"),
    out: Path = typer.Option(Path("alexkit-curves.png"), "--out", help="Picture to write: .png, .pdf or .svg."),
) -> None:
    """Plot loss, top-1/top-5 error and learning rate per epoch from metrics.jsonl; several runs share the axes."""
    from alexkit.pictures import PlotConfig, plot

    plot(PlotConfig(runs=tuple(runs or ()), out=out))
