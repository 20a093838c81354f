"""`alexkit prepare SRC`: raw ImageNet (any layout) -> FFCV store + training statistics."""

from __future__ import annotations

import typer

from alexkit.paths import DEFAULT_STORE, usable_cores


# SRC and --out are taken as text, made Paths by PrepareConfig: typer would make "" the current folder.
def command(
    src: str = typer.Argument(
        ..., metavar="SRC", help="Dataset folder: class folders, the official tars or extracted tree + devkit, or Kaggle's download."
    ),
    out: str = typer.Option(DEFAULT_STORE, "--out", "-o", metavar="<path>",
                            help="Store folder to write (train/eval read it): a new or empty folder, or a store."),
    size: int = typer.Option(256, "--size", help="Stored side: shorter side resized to it, centre crop (256: the paper). Range: 16 to 1,024; train needs 42 or more."),
    format: str = typer.Option("jpg", "--format", metavar="jpg|raw", help="jpg (~31 KB per 256 px image on bench loader's photo-like images: ~40 GB at ImageNet's count) or raw (192 KB: ~260 GB, no decoding)."),
    quality: int = typer.Option(90, "--quality", help="JPEG quality, 1-100."),
    workers: int = typer.Option(usable_cores(), "--workers", "-j", help="Worker processes.", show_default="all usable cores"),
    force: bool = typer.Option(False, "--force", help="Rebuild the store from the source, in OUT/.prepare-new; the old store stays "
                               "whole and readable until the new one replaces it (needs room for both)."),
) -> None:
    """Write OUT/{train,val}.beton, stats.npz (mean image, RGB eigen-decomposition), classes.json, manifest.json.

    Undecodable files are skipped and listed in manifest.json.
    An interrupted run resumes (finished splits are kept), --force too; a finished store is left alone unless --force.
    """
    from alexkit.pipeline.prepare import PrepareConfig, prepare

    prepare(PrepareConfig(src=src, out=out, size=size, format=format, quality=quality, workers=workers, force=force))
