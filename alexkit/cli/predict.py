"""`alexkit predict IMAGE...`: top-5 classes of image files with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    images: list[str] = typer.Argument(..., metavar="IMAGE", help="Image files, or folders of them."),  # text: "" is not "."
    checkpoint: Path = typer.Option(None, "--checkpoint", help="A .pt file or a run directory (its best.pt, else last.pt).", show_default="the latest run's best.pt or last.pt"),
    data: Path = typer.Option(None, "--data", help="Take the mean image and class names from this store.", show_default="the run directory's copies"),
    tta: bool = typer.Option(False, "--tta", help="Average the softmax over the paper's ten views."),
    top: int = typer.Option(5, "--top", help="How many classes to list per image."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto (CUDA if present), cpu, cuda or cuda:N."),
) -> None:
    """Classify images with the preprocessing of training: resize, centre crop, minus the mean image."""
    from alexkit.predict import PredictConfig, predict

    predict(PredictConfig(images=tuple(images), checkpoint=checkpoint, data=data, tta=tta, top_k=top, device=device))
