"""`alexkit doctor`: what is installed and whether each native piece really works here."""

from __future__ import annotations

import typer


def command() -> None:
    """Versions of Python, torch, DALI, FFCV, numba, numpy, pillow, OpenCV, SciPy, typer, rich; whether the native pieces work here."""
    from alexkit.cli.main import MIN_COLUMNS
    from alexkit.doctor import checks

    rows, problems, gpus = checks()
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich itself missing: plain lines, so that the problems below still show
        for name, detail, ok in rows:
            print(f"{name:36s} {detail}  {'ok' if ok else 'MISSING'}")
    else:
        table = Table(title="alexkit doctor", show_header=False)
        for name, detail, ok in rows:
            table.add_row(name, str(detail), "[green]ok[/green]" if ok else "[red]MISSING[/red]")
        console = Console()
        console.width = max(console.width, MIN_COLUMNS)  # narrower, every cell would be cut to "pyt…"
        console.print(table)
    if problems:
        for p in problems:
            typer.echo(f"error: {p}", err=True)
        raise typer.Exit(2)
    typer.echo("all required pieces work" + ("" if gpus else " (CPU only: training runs, slowly)"))
