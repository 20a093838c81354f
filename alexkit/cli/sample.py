"""`alexkit sample DIR`: write the built-in synthetic dataset, laid out like the official ImageNet."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from alexkit.cli.options import ranged
from alexkit.paths import word
from alexkit.progress import Progress, counted
from alexkit.ranges import SAMPLE


def command(
    out: Path = typer.Argument(
        Path("alexkit-sample"), metavar="DIR", help="Folder to write the dataset into (made if absent); must be empty, or hold an earlier sample dataset with --overwrite."
    ),
    classes: int = typer.Option(10, "--classes", help="Number of classes (1-224)."),
    train_per_class: int = ranged(100, "--train-per-class", "Train images per class.", SAMPLE["train_per_class"]),
    val_per_class: int = ranged(20, "--val-per-class", "Val images per class.", SAMPLE["val_per_class"]),
    seed: int = typer.Option(0, "--seed", help="Same seed and sizes give the same bytes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier sample dataset in DIR."),
) -> None:
    """Write a small synthetic ImageNet look-alike (train/<wnid>/, flat val/, devkit) for demos and tests."""
    from alexkit.datasets.sample import class_name, class_specs
    from alexkit.datasets.sample_place import write_sample_dataset

    start = time.perf_counter()
    total = classes * (train_per_class + val_per_class)
    with Progress("sample", total) as bar:
        write_sample_dataset(
            out,
            num_classes=classes,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            seed=seed,
            overwrite=overwrite,
            progress=lambda done, _total: bar.update(done),
        )
    seconds = time.perf_counter() - start
    megabytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    names = ", ".join(class_name(spec) for spec in class_specs(classes)[:5]) + (", ..." if classes > 5 else "")
    print(
        f"wrote {classes * train_per_class:,} train + {classes * val_per_class:,} val images of {counted(classes, 'class', 'classes')} "
        f"({names}) to {out} ({megabytes:.1f} MB, {seconds:.1f} s)"
    )
    print(
        f"layout: official extracted ImageNet: {out}/train/<wnid>/*.JPEG, {out}/val/ILSVRC2012_val_*.JPEG, "
        f"{out}/ILSVRC2012_devkit_t12/data/{{meta.mat, ILSVRC2012_validation_ground_truth.txt}}"
    )
    print(f"next: alexkit prepare {word(out)}")
