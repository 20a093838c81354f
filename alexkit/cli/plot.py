"""`alexkit plot RUN...`: training curves of one or more runs in one picture (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    runs: list[Path] = typer.Argument(None, metavar="RUN", help="Run directories (or their metrics.jsonl).", show_default="the latest run"),
    out: Path = typer.Option(Path("alexkit-curves.png"), "--out", help="Picture to write: .png, .pdf or .svg."),
) -> None:
    """Plot loss, top-1/top-5 error and learning rate per epoch from metrics.jsonl; several runs share the axes."""
    from alexkit.plot import PlotConfig, plot

    plot(PlotConfig(runs=tuple(map(run_of, runs or ())), out=out))


def run_of(path: Path) -> Path:
    """The run folder a RUN argument names: itself, or the folder of a metrics.jsonl; a folder of runs
    is refused with the latest of them, as eval does."""
    from alexkit.errors import AlexkitError
    from alexkit.paths import latest_run

    if path.name == "metrics.jsonl" and path.is_file():
        return path.parent
    inner = latest_run(path, having=("metrics.jsonl",)) if path.is_dir() and not (path / "metrics.jsonl").exists() else None
    if inner is not None:
        raise AlexkitError(f"{path} is a folder of runs, not a run; pass some of them, e.g. the latest: {inner}")
    return path
