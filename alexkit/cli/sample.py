"""`alexkit sample DIR`: write the built-in synthetic dataset, laid out like the official ImageNet."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import typer


def command(
    out: Path = typer.Argument(
        Path("alexkit-sample"), metavar="DIR", help="Folder to create; must be absent or empty."
    ),
    classes: int = typer.Option(10, "--classes", help="Number of classes (1-224)."),
    train_per_class: int = typer.Option(100, "--train-per-class", help="Train images per class."),
    val_per_class: int = typer.Option(20, "--val-per-class", help="Val images per class."),
    seed: int = typer.Option(0, "--seed", help="Same seed and sizes give the same bytes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier sample dataset in DIR."),
) -> None:
    """Write a small synthetic ImageNet look-alike (train/<wnid>/, flat val/, devkit) for demos and tests."""
    from alexkit.datasets.sample import class_name, class_specs, write_sample_dataset

    start = time.perf_counter()
    with _progress() as progress:
        write_sample_dataset(
            out,
            num_classes=classes,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            seed=seed,
            overwrite=overwrite,
            progress=progress,
        )
    seconds = time.perf_counter() - start
    megabytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    names = ", ".join(class_name(spec) for spec in class_specs(classes)[:5]) + (", ..." if classes > 5 else "")
    print(
        f"wrote {classes * train_per_class:,} train + {classes * val_per_class:,} val images of {classes} classes "
        f"({names}) to {out} ({megabytes:.1f} MB, {seconds:.1f} s)"
    )
    print(
        f"layout: official extracted ImageNet: {out}/train/<wnid>/*.JPEG, {out}/val/ILSVRC2012_val_*.JPEG, "
        f"{out}/ILSVRC2012_devkit_t12/data/{{meta.mat, ILSVRC2012_validation_ground_truth.txt}}"
    )
    print(f"next: alexkit prepare {out}")


@contextmanager
def _progress():
    """Yield progress(done, total): a rich bar with images/s and ETA on a terminal, else a line per quarter."""
    if not sys.stdout.isatty():

        def plain(done: int, total: int) -> None:
            if done == total or done % max(total // 4, 1) == 0:
                print(f"sample: {done:,}/{total:,} images", flush=True)

        yield plain
        return
    from rich.progress import MofNCompleteColumn, Progress, ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed or 0:.0f} images/s")

    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), Rate(), transient=True) as bar:
        task = bar.add_task("writing images", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
