"""Progress for people, one way for every stage: a rich bar (count, rate, ETA and the stage's own
fields) when stdout is a terminal that can redraw it; otherwise a plain line at every tenth of the
work, and at least every 30 s, so logs of long runs stay readable (a bar cannot be drawn into a pipe,
a file or a dumb terminal, so "rich" is plain there too)."""

from __future__ import annotations

import sys
import time

from alexkit import stops


PROGRESS_MODES = ("auto", "rich", "plain", "none")  # --progress of train and eval; see Progress


def duration(seconds: float) -> str:
    """1h02m03s, 4m05s or 6s."""
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def counted(n: int, noun: str, nouns: str = "") -> str:
    """1 class, 2 classes, 1,000 images: `nouns` is the plural where adding an s is wrong."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def some(names: list[str], shown: int = 3) -> str:
    """The first `shown` of `names` (dot files last, as `ls` shows them) and how many more:
    "a, b, c and 2 others"."""
    names = sorted(names, key=lambda name: (name.startswith("."), name))
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {counted(more, 'other')}" if more > 0 else "")


def amount(size: float) -> str:
    """Bytes as 40.1 GB, or 33.6 MB below a gigabyte."""
    return f"{size / 1e9:,.1f} GB" if size >= 1e9 else f"{size / 1e6:,.1f} MB"


def warn(text: str) -> None:
    """A warning line on stderr (yellow on a terminal)."""
    line = text if text.upper().startswith("WARNING") else f"warning: {text}"
    if sys.stderr.isatty():
        from rich.console import Console

        from rich.markup import escape

        Console(stderr=True).print(f"[bold yellow]{escape(line)}[/]", markup=True, highlight=False)  # a path's [1] stays
    else:
        print(line, file=sys.stderr, flush=True)


def redraws() -> bool:
    """Whether stdout is a terminal on which rich redraws a bar in place: not a pipe or a file (isatty,
    whatever FORCE_COLOR says), and not a dumb terminal (TERM=dumb or unknown: Emacs' shell, some CI
    consoles), where rich's bar shows nothing until it ends and then, transient, only an empty line
    (rich's is_interactive, which TTY_INTERACTIVE=0 turns off too)."""
    if not sys.stdout.isatty():
        return False
    from rich.console import Console

    return Console().is_interactive


class Progress:
    """with Progress("train", total=steps, per_done=128, fields=("loss", "lr")) as p: p.update(done, rate=..., loss=...)

    `done` and `total` count whatever the stage counts (images, steps); each of them is `per_done`
    `unit`s (a step of 128 images: 128). `rate` is in `unit`/s and defaults to the pace since the first
    update, which carries the stage's start-up (a loader's first batch, a worker pool's first chunk), and
    over at least RATE_AFTER_S: no rate, and no ETA, is shown until there is one. The ETA is at the rate shown. Fields keep their last
    value, so a costly one (a loss that waits for the GPU) need not be passed every time. The bar says
    its figures as the plain lines do (1,792/10,009, ETA 1m05s). `mode`: "auto" (rich on a terminal that
    redraws, else plain), "rich" (the same: plain where no bar can be drawn), "plain" or "none".
    """

    PLAIN_EVERY_S = 30.0
    RATE_AFTER_S = 1.0  # the default rate is shown once this long has passed since the first update: work that
    # comes back in bursts (a worker pool's chunks of 8) would otherwise give the pace within one burst

    def __init__(self, title: str, total: int, *, unit: str = "images", per_done: int = 1, fields: tuple[str, ...] = (),
                 mode: str = "auto"):  # fmt: skip
        if mode in ("auto", "rich"):
            mode = "rich" if redraws() else "plain"
        self.title, self.total, self.unit, self.fields, self.mode = title, total, unit, fields, mode
        self.per_done = per_done
        self.bar, self.values = None, {name: "-" for name in fields}

    def __enter__(self) -> "Progress":
        self.last_line = time.perf_counter()
        self.origin: tuple[float, int] | None = None  # (time, done) at the first update: the default rate's start
        self.next_line = self.total / 10
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as Bar

            self.columns = (TextColumn("{task.description}", markup=False), BarColumn(),
                            TextColumn("{task.fields[figures]}", markup=False))  # fmt: skip
            # a Console of its own: the terminal as redraws() saw it (TERM, COLUMNS), not as rich's shared one first did
            self.bar = Bar(*self.columns, console=Console(), transient=True)
            self.task = self.bar.add_task(self.title, total=self.total, figures="")
            self._draw(0, None, "-")
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def update(self, done: int, rate: float | None = None, **fields) -> None:
        stops.check()  # a Ctrl-C that a native library dropped still stops the work
        now = time.perf_counter()
        self.values.update(fields)
        if self.origin is None:
            self.origin = (now, done)
        elif rate is None and done > self.origin[1] and now - self.origin[0] >= self.RATE_AFTER_S:
            rate = (done - self.origin[1]) * self.per_done / max(now - self.origin[0], 1e-9)
        pace = f"{rate:,.0f} {self.unit}/s" if rate is not None else None
        if done >= self.total:
            left = duration(0)
        else:  # at the rate shown: a start-up left out
            left = "-" if rate is None else duration((self.total - done) * self.per_done / max(rate, 1e-9))
        if self.bar is not None:
            self._draw(done, pace, left)
        elif self.mode == "plain" and (done >= self.next_line or done == self.total or now - self.last_line >= self.PLAIN_EVERY_S):
            self.next_line = done + self.total / 10
            self.last_line = now
            extra = "".join(f", {name} {value}" for name, value in self.values.items())
            try:
                print(f"{self.title}: {done:,}/{self.total:,} ({100 * done / max(self.total, 1):.0f}%) "
                      f"{pace + ', ' if pace else ''}ETA {left}{extra}", flush=True)  # fmt: skip
            except BrokenPipeError:  # stdout's reader has gone (`| head`): the work goes on, unshown, to
                self.mode = "none"  # what it saves before its own lines meet the closed pipe

    def _draw(self, done: int, pace: str | None, left: str) -> None:
        """The bar's line, fitted to the terminal's width now (a pane may be resized while it runs): the
        title, count and ETA always; the rate and fields where the line has room for them too; then the
        bar in what is left, up to 40 cells, or none where under 8 are left (a coarser bar tells less than
        the count beside it). Narrower than title, count and ETA, rich cuts each short with an ellipsis."""
        from rich.cells import cell_len

        extra = [f"{name} {value}" for name, value in self.values.items()]
        figures = " ".join([f"{done:,}/{self.total:,}", *([pace] if pace else []), *extra, f"ETA {left}"])
        width, title = self.bar.console.width, cell_len(self.title)
        if title + 1 + cell_len(figures) > width:
            figures = f"{done:,}/{self.total:,} ETA {left}"
        room = width - title - cell_len(figures) - 2  # cells for the bar, less a space either side of it
        self.columns[1].bar_width = min(room, 40)
        self.bar.columns = self.columns if room >= 8 else (self.columns[0], self.columns[2])
        self.bar.update(self.task, completed=done, figures=figures)


class Ticks:
    """A callable for the long parts of a stage that report (what, done, total, unit) as they go
    (listing class folders, indexing a tar): a Progress per part, shown only once the stage has
    lasted `after_s`, so that a small dataset's quick scan prints nothing. `with Ticks() as ticks:`
    closes the last bar at the end. `mode` as for Progress."""

    def __init__(self, after_s: float = 2.0, mode: str = "auto"):
        self.start, self.after_s, self.mode = time.perf_counter(), after_s, mode
        self.what, self.bar = None, None

    def __call__(self, what: str, done: int, total: int, unit: str) -> None:
        stops.check()
        if what != self.what:
            self.close()
            self.what, self.part_start = what, time.perf_counter()
        if self.bar is None and time.perf_counter() - self.start >= self.after_s:
            self.bar = Progress(what, total, unit=unit, mode=self.mode).__enter__()
            self.bar.origin = (self.part_start, 0)  # rate and ETA over the whole part, not from now
        if self.bar is not None:
            self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        self.what, self.bar = None, None

    def __enter__(self) -> "Ticks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
