"""`alexkit show-batch`: PNGs of what the network is fed (training crops, the ten test views)."""

from __future__ import annotations

from pathlib import Path

import typer

from alexkit.cli.options import ranged
from alexkit.paths import DEFAULT_STORE
from alexkit.ranges import SEED, SHOW_BATCH_COUNT


def command(
    data: Path = typer.Option(DEFAULT_STORE, "--data", help="Store written by `alexkit prepare`."),
    out: Path = typer.Option(Path("alexkit-pictures"), "--out", help="Folder for train-batch.png and val-views.png."),
    count: int = ranged(16, "--count", "Training crops in the grid.", SHOW_BATCH_COUNT),
    val_index: int = typer.Option(0, "--val-index", help="Position in val.beton of the image whose ten views are drawn."),
    seed: int = ranged(0, "--seed", "Loader seed: the same seed draws the same crops, flips and lighting.", SEED),
) -> None:
    """Draw augmented training crops with class names, and the ten views of one val image."""
    from alexkit.show_batch import ShowBatchConfig, show_batch

    show_batch(ShowBatchConfig(data=data, out=out, count=count, val_index=val_index, seed=seed))
