"""`alexkit eval`: top-1/top-5 error of a checkpoint on the val split, centre crop or ten views."""

from __future__ import annotations

from pathlib import Path

import typer

from alexkit.errors import alike_everywhere


def command(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="A .pt file or a run directory (its best.pt, else last.pt).", show_default="the latest run's best.pt or last.pt"),
    data: Path = typer.Option(None, "--data", help="Store to evaluate on.", show_default="the checkpoint's store, else alexkit-store"),
    tta: bool = typer.Option(False, "--tta", help="The paper's ten views (4 corners + centre, each mirrored), softmax averaged."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per batch and process (ten-crop feeds 10 views each)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto (CUDA if present), cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)."),
    json_path: str = typer.Option(None, "--json", metavar="<path>", help="Write the results with per-class figures as JSON; - writes it to stdout (the figures then go to stderr)."),  # text: a Path makes ./- into -
    predictions: str = typer.Option(None, "--predictions", metavar="<path>", help="Write a CSV: index, label, top1..top5, p1..p5 per val image; - writes it to stdout (the figures then go to stderr)."),
    progress: str = typer.Option("auto", "--progress", metavar="MODE", help="Progress bar: auto, rich, plain or none (rank 0 only; the figures always print)."),
) -> None:
    """Evaluate a checkpoint on the store's val split; every image counts once, also under torchrun."""
    from alexkit.evaluate import EvalConfig, evaluate
    from alexkit.outputs import lines_to_stderr, output_path

    with alike_everywhere():  # checks of the flags alone (files are checked later, under torchrun)
        cfg = EvalConfig(checkpoint=checkpoint, data=data, tta=tta, batch_size=batch_size, device=device,
                         json_path=output_path(json_path), predictions_path=output_path(predictions), progress=progress)  # fmt: skip
    with lines_to_stderr(json_path, predictions):
        evaluate(cfg)
