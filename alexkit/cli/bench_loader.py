"""`alexkit bench loader`: input pipeline images/s, alexkit's DALI graphs beside PIL and FFCV baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def command(
    store: Optional[Path] = typer.Option(None, "--store", help="A (small) store to read whole epochs of. Default: make photo-like JPEGs, prepare JPEG and raw stores."),
    source: Optional[Path] = typer.Option(None, "--source", help="With --store: the dataset the store was prepared from, for baseline (a) (without it, (a) is not run)."),
    work: Optional[Path] = typer.Option(None, "--work", help="Keep the made inputs here, reused next time (default: a temporary folder)."),
    images: int = typer.Option(1000, "--images", help="How many source images to make."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per batch."),
    epochs: int = typer.Option(5, "--epochs", help="Epochs per row; the first is a warm-up."),
    threads: Optional[int] = typer.Option(None, "--threads", help="DALI threads and baseline workers (default: cores + 1 DALI threads, one worker per core)."),
    prefetch: int = typer.Option(2, "--prefetch", help="Batches DALI prepares ahead."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also time (a) PIL + DataLoader and (b) FFCV's loader."),
    memory_epochs: int = typer.Option(10, "--memory-epochs", help="Epochs of alexkit's train loader alone, memory read after each."),
    json_text: Optional[str] = typer.Option(None, "--json", metavar="<path>", help="Also write the figures to this JSON file; - writes them to stdout (the report then goes to stderr)."),  # text: a Path makes ./- into -
) -> None:
    """Print images/s of the train, center and tencrop graphs, side by side with the baselines, and memory per epoch."""
    from alexkit.bench.loader import BenchLoaderConfig, bench_loader
    from alexkit.outputs import check_folder, check_output, lines_to_stderr, output_path, say_written, write_output

    json_out = output_path(json_text)
    if work is not None:
        check_folder(work, "--work")  # before the inputs are made
    cfg = BenchLoaderConfig(store=store, source=source, work=work, images=images, batch_size=batch_size, epochs=epochs,
                            threads=threads, prefetch=prefetch, baselines=baselines, memory_epochs=memory_epochs)  # fmt: skip
    if json_out is not None:  # before minutes of benchmark whose figures would be lost
        check_output(json_out, "--json")
        cfg.check_json(json_out)
    with lines_to_stderr(json_text):
        result = bench_loader(cfg)
    if json_out is not None:
        write_output(json_out, json.dumps(result, indent=1) + "\n")
        say_written(json_out)
