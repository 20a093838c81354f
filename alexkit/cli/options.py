"""Options that several commands share (same names, defaults and help), and `ranged`, the option
whose help ends with its range."""

from __future__ import annotations

import math

import typer

from alexkit.ranges import TRAIN, Range


def ranged(default: float, flag: str, help: str, allowed: Range):
    """An option whose help ends with its range, refusing a value outside it as the command line is
    parsed, so that the error is a usage error naming the command (the config would refuse it too)."""

    def check(value: float) -> float:
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        if value not in allowed:
            raise typer.BadParameter(f"{value} is out of range: {allowed}")
        return value

    check.allowed = allowed  # for tests/test_cli.py
    return typer.Option(default, flag, help=f"{help} Range: {allowed}.", callback=check)


# `alexkit train`'s --device; `alexkit bench train` has its own, whose help leaves out torchrun.
DEVICE = typer.Option("auto", "--device", metavar="DEVICE", help="auto (CUDA if present), cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK).")

# Options of `alexkit train` that `alexkit bench train` shares.
AMP = typer.Option("auto", "--amp", metavar="MODE", help="bf16 autocast: auto (on for CUDA GPUs with bf16 tensor cores), on, off.")
CHANNELS_LAST = typer.Option("auto", "--channels-last", metavar="MODE", help="auto (on for CUDA), on, off.")
COMPILE = typer.Option("auto", "--compile", metavar="MODE", help="torch.compile: auto (on for CUDA), on, off.")
WIDTH = ranged(1.0, "--width", "Scale every conv's channels (0.25 for a quick CPU run).", TRAIN["width"])
FC_FEATURES = ranged(4096, "--fc-features", "Width of fc6 and fc7.", TRAIN["fc_features"])
