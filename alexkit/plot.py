"""`alexkit plot`: one picture (.png, .pdf or .svg) of training curves (loss, top-1/top-5 error,
lr) from runs' metrics.jsonl, with matplotlib.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from alexkit.errors import AlexkitError, require
from alexkit.outputs import check_output, say_written, write_output
from alexkit.paths import DEFAULT_RUNS, checkpoint_in, is_run, latest_run_noted, word


PLOT_FORMATS = (".png", ".pdf", ".svg")


@dataclass(frozen=True)
class PlotConfig:
    runs: tuple[Path, ...] = field(default_factory=tuple)  # run directories; empty: the latest run
    out: Path = Path("alexkit-curves.png")  # .png, .pdf or .svg

    def __post_init__(self):
        if Path(self.out).suffix.lower() not in PLOT_FORMATS:
            raise AlexkitError(f"--out {self.out}: name a {', '.join(PLOT_FORMATS)} file")
        check_output(self.out, "--out")
        from alexkit.pipeline.store import store_holding

        store = store_holding(self.out)  # as eval's outputs: a store's folder holds prepare's files only
        if store is not None:
            raise AlexkitError(f"--out {self.out} is in the folder of the store {store}; name another file")


def read_metrics(run: Path) -> list[dict]:
    """The per-epoch records of RUN/metrics.jsonl, in file order."""
    path = Path(run) / "metrics.jsonl"
    if not Path(run).is_dir():
        what = "is a file, not a run folder" if Path(run).exists() else "does not exist"
        raise AlexkitError(f"{run} {what}; pass run folders written by `alexkit train` (or their metrics.jsonl)")
    ckpt = checkpoint_in(run, ("last.pt", "best.pt"))  # last.pt first: train --resume goes on from it
    if not path.is_file():
        if ckpt is not None:  # a run that lost the file: its checkpoint records every epoch's line
            raise AlexkitError(f"{path} does not exist; {_written_again(run, ckpt)}")
        if is_run(run):
            raise AlexkitError(f"{path} does not exist: run {run} has no finished epoch yet; plot after the first epoch ends")
        raise AlexkitError(f"{path} does not exist; pass run folders written by `alexkit train`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AlexkitError(f"{path} is not text (byte {exc.start} is no UTF-8); it is not the metrics.jsonl `alexkit train` "
                           f"writes: `alexkit train --resume {word(run)}` rewrites it from last.pt") from exc  # fmt: skip
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlexkitError(f"{path} line {n} is not JSON ({exc.msg}); `alexkit train --resume {word(run)}` rewrites "
                                   "the file from last.pt (add --epochs N, N the epochs done, to train no further)") from exc  # fmt: skip
            if not isinstance(record, dict) or "epoch" not in record:
                raise AlexkitError(f"{path} line {n} is not an epoch record of `alexkit train` (no \"epoch\")")
            records.append(record)
    if not records and ckpt is not None:  # an epoch was saved, and its line not written (a full disk)
        raise AlexkitError(f"{path} holds no epochs, though {ckpt.name} does; {_written_again(run, ckpt)}")
    if not records:
        raise AlexkitError(f"{path} holds no epochs yet; plot after the first epoch ends")
    return records


def _written_again(run: Path, ckpt: Path) -> str:
    """How a run's metrics.jsonl is written again from its checkpoint, which records every epoch's line."""
    again = word(run) if ckpt.name == "last.pt" else word(ckpt)  # only best.pt left: train goes on from it
    return (f"`alexkit train --resume {again}` writes it again from {ckpt.name} (add --epochs N, N the epochs done, "
            "to train no further)")  # fmt: skip


def _no_epoch_yet(run: Path) -> bool:
    """A run folder whose training has not finished an epoch: no metrics.jsonl yet, or an empty one
    (one with a checkpoint but a missing or empty metrics.jsonl lost its lines: read_metrics says how
    to write them again)."""
    if checkpoint_in(run) is not None:
        return False
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        return not metrics.read_text().strip()
    return is_run(run)


PANELS = [  # (title, [(metrics key, line style, label suffix)], y scale)
    ("training loss", [("train_loss", "-", "")], "linear"),
    ("top-1 error", [("val_top1_err", "-", " val"), ("train_top1_err", ":", " train")], "linear"),
    ("top-5 error (val)", [("val_top5_err", "-", "")], "linear"),
    ("learning rate", [("lr", "-", "")], "log"),
]


def curves(data: list[tuple[Path, list[dict]]]):
    """The matplotlib Figure that plot writes, of (run, its epoch records) pairs."""
    # (Not `pip install 'alexkit[plot]'`: that works only where alexkit was installed from the checkout.)
    require("matplotlib", fix="install it with `pip install matplotlib` (in alexkit's checkout: `pip install -e '.[plot]'`)")
    from matplotlib.figure import Figure  # not pyplot: no display, no global figure to close
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    shown = [_named(run) for run, _ in data]
    names = [run.name for run in shown]
    if len(set(names)) < len(names):  # A/run and B/run: the legend needs more of the path
        names = [str(run) for run in shown]
    fig = Figure(figsize=(11, 7.5), constrained_layout=True)
    axes = fig.subplots(2, 2)
    for ax, (title, series, yscale) in zip(axes.flat, PANELS):
        for colour, (run, records) in enumerate(data):
            for key, style, suffix in series:
                pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, style, color=f"C{colour}", marker="." if len(pts) < 30 else None,
                            label=f"{names[colour]}{suffix}")  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
        ax.set_yscale(yscale)
        if yscale == "linear":  # losses and errors are >= 0: a flat 0 (top-5 of <= 5 classes) is drawn 0..4%, not -4..4%
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        if "error" in title:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    fig.suptitle(", ".join(map(str, shown)))
    return fig


def _named(run: Path) -> Path:
    """`run` as given, or resolved where it ends in no name of its own: `.` (plot . or plot
    metrics.jsonl from inside the run) has the name "", and `..` the name ".."."""
    return run.resolve() if run.name in ("", "..") else run


def plot(cfg: PlotConfig) -> Path:
    """Write one picture (.png, .pdf or .svg) with four panels (loss, top-1, top-5, lr) against epoch; one colour per run."""
    runs = list(cfg.runs)
    if not runs:
        run = latest_run_noted(("best.pt", "last.pt"), "no finished epoch")  # a new run in its first epoch: said, as eval says it
        if run is None:
            raise AlexkitError(f"no run with a finished epoch under {DEFAULT_RUNS}/; pass run directories: alexkit plot RUN...")
        runs = [run]
    data = []
    for r in map(Path, runs):
        if len(runs) > 1 and _no_epoch_yet(r):  # a run just started: the others are still worth a picture
            print(f"skipped {r}: it has no finished epoch yet", file=sys.stderr)
            continue
        data.append((r, read_metrics(r)))
    if not data:
        raise AlexkitError(f"none of {', '.join(map(str, runs))} has a finished epoch yet; plot after the first epoch ends")
    fig = curves(data)
    write_output(cfg.out, lambda f: fig.savefig(f, format=Path(cfg.out).suffix[1:].lower(), dpi=100))
    say_written(cfg.out)
    return cfg.out
