"""Progress lines: what a person reads in a log or a pipe."""

from __future__ import annotations

import io
import itertools
import re
import sys
import time

from alexkit.progress import Progress, counted, duration


def test_plain_lines_count_rate_and_eta_in_the_unit_of_the_work(capsys, monkeypatch):
    """Steps counted, images reported: a step of 16 images done in about 0.01 s is ~1,600 images/s. The
    first step carries the start-up: no rate and no ETA until the second."""
    monkeypatch.setattr(Progress, "RATE_AFTER_S", 0.0)  # a rate from the second update on
    with Progress("epoch 1/2", 4, per_done=16, fields=("loss",), mode="plain") as bar:
        bar.update(1, loss="2.300")
        bar.update(2)
        bar.update(4, rate=1234.0)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0] == "epoch 1/2: 1/4 (25%) ETA -, loss 2.300"
    second = re.fullmatch(r"epoch 1/2: 2/4 \(50%\) ([\d,]+) images/s, ETA \d+s, loss 2\.300", lines[1])
    assert second is not None, lines[1]
    assert int(second.group(1).replace(",", "")) > 16  # images/s, not steps/s
    assert lines[2].startswith("epoch 1/2: 4/4 (100%) 1,234 images/s, ETA 0s")


def test_no_rate_from_a_burst_of_updates(capsys):
    """Updates that come in a burst (a worker pool's chunk) give no rate: 6 images in a few microseconds
    had been shown as tens of thousands of images/s, with an ETA of 0s. A second on, the pace is shown."""
    with Progress("photo-like JPEGs", 16, mode="plain") as bar:
        bar.update(2)
        bar.update(8)
        time.sleep(Progress.RATE_AFTER_S)
        bar.update(10)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["photo-like JPEGs: 2/16 (12%) ETA -", "photo-like JPEGs: 8/16 (50%) ETA -"]
    rate = re.fullmatch(r"photo-like JPEGs: 10/16 \(62%\) ([\d,]+) images/s, ETA \d+s", lines[2])
    assert rate is not None and int(rate.group(1)) <= 8, lines[2]  # 8 images in just over a second


def test_rich_into_a_pipe_is_plain_and_none_is_silent(capsys):
    with Progress("eval", 2, mode="rich") as bar:  # pytest's stdout is not a terminal
        bar.update(2)
    assert capsys.readouterr().out.startswith("eval: 2/2 (100%)")
    with Progress("eval", 2, mode="none") as bar:
        bar.update(2)
    assert capsys.readouterr().out == ""


class Terminal(io.StringIO):
    """What a terminal is sent: rich sees a tty (and TERM, COLUMNS from the environment)."""

    def isatty(self):
        return True


def test_a_dumb_terminal_gets_plain_lines_for_auto_and_rich(monkeypatch):
    """TERM=dumb (Emacs' shell) cannot redraw a bar: rich's would show nothing and leave an empty line."""
    monkeypatch.setenv("TERM", "dumb")
    for mode in ("auto", "rich"):
        out = Terminal()
        monkeypatch.setattr(sys, "stdout", out)
        with Progress("sample", 2, mode=mode) as bar:
            bar.update(1)
            bar.update(2)
        assert out.getvalue().startswith("sample: 1/2 (50%)"), (mode, out.getvalue())
        assert out.getvalue().splitlines()[-1].startswith("sample: 2/2 (100%)"), (mode, out.getvalue())


FIELDS = {"loss": "4.321", "lr": "0.01", "skipped": "0"}  # what train and prepare pass


def drawn(monkeypatch, columns: int, updates: list[tuple[int, float]], *args, **kwargs) -> str:
    """The last line that Progress(*args, **kwargs) drew on a terminal `columns` wide before it went (a
    transient bar clears itself), updated at (done, seconds since it began) each time."""
    from alexkit import progress

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", str(columns))
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    with Progress(*args, mode="rich", **kwargs) as bar:
        for done, seconds in updates:
            now[0] = seconds
            bar.update(done, **{name: FIELDS[name] for name in kwargs.get("fields", ())})
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # styles
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "\r", text)  # cursor moves, line clears
    return [frame for frame in re.split(r"[\r\n]", text) if frame.strip()][-1].rstrip()


def test_the_bar_says_its_figures_as_the_plain_lines_do(monkeypatch):
    """Thousands separated, the ETA as 18s, and at the first update, which carries the start-up (a
    loader's first batch, torch.compile), no rate: it would be the start-up's (1 image/s)."""
    for updates, expected in (([(1, 20.0)], "1/30,000 loss 4.321 ETA -"),
                              ([(1, 20.0), (3001, 22.0)], "3,001/30,000 1,500 images/s loss 4.321 ETA 18s")):  # fmt: skip
        line = drawn(monkeypatch, 200, updates, "train", 30_000, fields=("loss",))
        assert re.fullmatch(r"train [━╸╺]+ " + re.escape(expected), line), line


def test_a_narrow_terminal_keeps_the_title_count_and_eta(monkeypatch):
    """ImageNet's figures: train's step 1,792 of 10,009 at 3,000 images/s, prepare's image 1,055 of
    1,281,167 at 1,000 images/s. At 40 columns the bar, rate and fields give way to the title, count
    and ETA (rich had cut those: `epoch … 24 images/s loss 1.378 lr 0… E…`); at 80 and 100 all show."""
    epoch = [(1, 30.0), (1792, 30.0 + 1791 * 128 / 3000)], "epoch 12/90", 10_009
    images = [(1, 1.0), (1055, 2.054)], "train", 1_281_167
    assert drawn(monkeypatch, 40, *epoch, per_done=128, fields=("loss", "lr")) == "epoch 12/90 1,792/10,009 ETA 5m51s"
    assert drawn(monkeypatch, 40, *images, fields=("skipped",)) == "train 1,055/1,281,167 ETA 21m20s"
    for columns in (80, 100):
        line = drawn(monkeypatch, columns, *epoch, per_done=128, fields=("loss", "lr"))
        assert re.fullmatch(r"epoch 12/90 [━╸╺]+ 1,792/10,009 3,000 images/s loss 4\.321 lr 0\.01 ETA 5m51s", line), line
        assert len(line) <= columns
        line = drawn(monkeypatch, columns, *images, fields=("skipped",))
        assert re.fullmatch(r"train [━╸╺]+ 1,055/1,281,167 1,000 images/s skipped 0 ETA 21m20s", line), line


def test_duration():
    assert [duration(s) for s in (6, 245, 3723)] == ["6s", "4m05s", "1h02m03s"]


def test_counted():
    assert [counted(n, "image") for n in (0, 1, 2, 1000)] == ["0 images", "1 image", "2 images", "1,000 images"]
    assert counted(1, "class", "classes") == "1 class" and counted(3, "class", "classes") == "3 classes"


def test_ticks_show_a_long_part_and_keep_a_quick_scan_quiet(capsys, monkeypatch):
    from alexkit.progress import Ticks

    monkeypatch.setattr(Progress, "RATE_AFTER_S", 0.0)  # the rate at once, as after a part's first second

    quick = Ticks()  # a small dataset's scan is over long before 2 s
    for done in range(1, 11):
        quick("listing train/", done, 10, "classes")
    quick.close()
    assert capsys.readouterr().out == ""
    slow = Ticks(after_s=0)  # as if the scan had already lasted 2 s
    for done in range(1, 11):
        slow("listing train/", done, 10, "classes")
    slow("indexing ILSVRC2012_img_train.tar", 147_000, 147_000, "MB")  # a new part: a new bar
    slow.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("listing train/: 1/10 (10%)") and "classes/s, ETA" in lines[0]
    assert lines[-2].startswith("listing train/: 10/10 (100%)")
    assert lines[-1].startswith("indexing ILSVRC2012_img_train.tar: 147,000/147,000 (100%)") and "MB/s" in lines[-1]
    with Ticks(after_s=0, mode="none") as silent:  # a torchrun process other than rank 0
        silent("validation 1/90", 10, 10, "images")
    assert capsys.readouterr().out == ""


def test_plain_lines_come_at_each_tenth_with_the_rate_and_eta_of_the_work(monkeypatch, capsys):
    """25 steps of 8 images, one a second: a line at each tenth (steps 3, 6, ...) and the last; 8
    images/s; the ETA is the time left at this pace."""
    from alexkit import progress

    clock = itertools.count()  # time.perf_counter itself: one second more at each read
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    with Progress("epoch 1/1", 25, per_done=8, mode="plain") as bar:  # starts at t=0
        for done in range(1, 26):
            bar.update(done)  # at t=done
    lines = capsys.readouterr().out.splitlines()
    assert [int(re.match(r"epoch 1/1: (\d+)/25", line)[1]) for line in lines] == [3, 6, 9, 12, 15, 18, 21, 24, 25]
    assert lines[3] == "epoch 1/1: 12/25 (48%) 8 images/s, ETA 13s"


def test_the_plain_eta_is_at_the_rate_shown_which_may_leave_a_start_up_out(monkeypatch, capsys):
    """A training passes the rate of its steady steps (the first step carries the loader's start and
    torch.compile): the ETA beside it is at that rate, not at the average since the start."""
    from alexkit import progress

    monkeypatch.setattr(progress.time, "perf_counter", lambda: 30.0)  # 30 s since the start, most of it start-up
    with Progress("epoch 1/90", 100, per_done=10, mode="plain") as bar:
        monkeypatch.setattr(progress.time, "perf_counter", lambda: 60.0)
        bar.update(10, rate=50.0)  # 90 steps of 10 images left at 50 images/s
    assert capsys.readouterr().out == "epoch 1/90: 10/100 (10%) 50 images/s, ETA 18s\n"


def test_a_warning_on_a_terminal_keeps_its_square_brackets(monkeypatch):
    """On a terminal a warning is printed through rich: a path's [exp 1] is text, not markup to drop."""
    from alexkit.progress import warn

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("COLUMNS", "200")
    warn("/tmp/runs[exp 1]/x has 1.0 MB free")
    assert "warning: /tmp/runs[exp 1]/x has 1.0 MB free" in err.getvalue(), repr(err.getvalue())
