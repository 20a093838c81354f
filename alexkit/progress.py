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
    `unit`s (a step of 128 images: 128). `rate` is in `unit`/s and defaults to done * per_done /
    elapsed seconds; the plain lines' ETA is at that rate. Fields keep their last value, so a costly one (a loss that
    waits for the GPU) need not be passed every time. `mode`: "auto" (rich on a terminal that redraws, else plain),
    "rich" (the same: plain where no bar can be drawn), "plain" or "none".
    """

    PLAIN_EVERY_S = 30.0

    def __init__(self, title: str, total: int, *, unit: str = "images", per_done: int = 1, fields: tuple[str, ...] = (),
                 mode: str = "auto"):  # fmt: skip
        if mode in ("auto", "rich"):
            mode = "rich" if redraws() else "plain"
        self.title, self.total, self.unit, self.fields, self.mode = title, total, unit, fields, mode
        self.per_done = per_done
        self.bar, self.values = None, {name: "-" for name in fields}

    def __enter__(self) -> "Progress":
        self.started = self.last_line = time.perf_counter()
        self.next_line = self.total / 10
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            extra = " ".join(f"{name} {{task.fields[{name}]}}" for name in self.fields)
            # a Console of its own: the terminal as redraws() saw it (TERM, COLUMNS), not as rich's shared one first did
            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[rate]} " + extra), TextColumn("ETA"), TimeRemainingColumn(),
                           console=Console(), transient=True)  # fmt: skip
            self.task = self.bar.add_task(self.title, total=self.total, rate="", **self.values)
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
        if rate is None:
            rate = done * self.per_done / max(now - self.started, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=done, rate=f"{rate:,.0f} {self.unit}/s", **fields)
        elif self.mode == "plain" and (done >= self.next_line or done == self.total or now - self.last_line >= self.PLAIN_EVERY_S):
            self.next_line = done + self.total / 10
            self.last_line = now
            eta = (self.total - done) * self.per_done / max(rate, 1e-9)  # at the rate shown: a start-up left out
            extra = "".join(f", {name} {value}" for name, value in self.values.items())
            try:
                print(f"{self.title}: {done:,}/{self.total:,} ({100 * done / max(self.total, 1):.0f}%) {rate:,.0f} {self.unit}/s, "
                      f"ETA {duration(eta)}{extra}", flush=True)  # fmt: skip
            except BrokenPipeError:  # stdout's reader has gone (`| head`): the work goes on, unshown, to
                self.mode = "none"  # what it saves before its own lines meet the closed pipe


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
            self.bar.started = self.part_start  # rate and ETA over the whole part, not from now
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
