"""`alexkit bench prepare`: a tiny run of the three routes, and the table's arithmetic. No test
asserts a speed."""

import numpy as np

from alexkit.bench.prepare import PHOTO_SIZES, BenchPrepareConfig, bench_prepare, photo_like
from alexkit.paths import usable_cores


def test_photo_like_images_have_photo_statistics():
    img = photo_like(np.random.default_rng(0), 120, 90)
    assert img.shape == (90, 120, 3) and img.dtype == np.uint8
    assert 20 < img.std() < 90  # neither flat nor saturated noise


def test_making_photo_like_jpegs_says_how_many_where_then_its_progress(tmp_path, capsys):
    """Making them (half a minute or more for the thousand of bench loader and bench prepare on two cores) printed nothing.
    Those already there are looked at once, and left out of the work and of its progress."""
    from alexkit.bench.prepare import write_photo_like

    files = write_photo_like(tmp_path, 3)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"making 3 photo-like JPEGs in {tmp_path}" and lines[-1].startswith("photo-like JPEGs: 3/3 (100%)"), lines
    (files[0]).unlink()
    assert write_photo_like(tmp_path, 3) == files
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"making 1 photo-like JPEG in {tmp_path} (2 there already)" and lines[-1].startswith("photo-like JPEGs: 1/1 (100%)"), lines
    assert write_photo_like(tmp_path, 3) == files
    assert capsys.readouterr().out == f"3 photo-like JPEGs already in {tmp_path}\n"


def test_bench_runs_all_three_routes(capsys):
    r = bench_prepare(BenchPrepareConfig(images=6, workers=2, size=32, repeats=1))
    assert set(r["routes"]) == {"(a) one process, PIL", "(b) FFCV DatasetWriter", "(c) alexkit prepare"}
    assert all(len(v) == 1 and v[0] > 0 for v in r["routes"].values())
    for name, (rate,) in r["routes"].items():  # CPU time per image x images per second = the cores kept busy
        busy = r["cpu_ms_per_image"][name][0] * rate / 1e3
        assert 0.1 < busy < usable_cores() + 1, (name, busy)  # FFCV's workers, never joined by it, included
    assert r["agreement_mean_abs"] < 3  # (a) and (c) make the same pictures
    out = capsys.readouterr().out
    assert "vs (b)" in out and "generated photo-like JPEGs" in out


def test_the_table_gives_medians_and_how_many_times_a_route_is_to_a_and_b(capsys):
    from alexkit.bench.prepare import _print_table

    r = dict(images=4, mean_kb=1.0, size=32, quality=90, workers=1, cpu="c", agreement_mean_abs=0.0,
             stats_vs_decoded={"mean_image_max": 0.0, "mean_image_mean": 0.0, "eigval_ratio": [1, 1, 1]},
             routes={"(a) one process, PIL": [1.0, 2.0, 9.0], "(b) FFCV DatasetWriter": [4.0, 4.0, 40.0],
                     "(c) alexkit prepare": [8.0, 1.0, 80.0]},
             cpu_ms_per_image={"(a) one process, PIL": [3.0, 5.0, 1.0], "(b) FFCV DatasetWriter": [1.0] * 3,
                               "(c) alexkit prepare": [1.0] * 3})  # fmt: skip
    _print_table(r)
    out = capsys.readouterr().out
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines()}
    assert rows["(c) alexkit prepare"] == ["8", "1-80", "4.00x", "2.00x", "1.00"]
    assert rows["(a) one process, PIL"] == ["2", "1-9", "1.00x", "0.50x", "3.00"]
    assert "-> 32 px JPEG q90, 1 worker, c\n" in out  # not "1 workers"


def test_two_processes_writing_one_photo_like_jpeg_keep_their_own_temporaries(tmp_path, monkeypatch):
    """Two `bench loader --work W` at once write the same sources: with one temporary name for every
    process, the other's rename took this one's temporary away (`...JPEG.partial: No such file or
    directory`). Here the other process writes the image whole just after this one has written its
    temporary and before its rename; both end with the one JPEG, and no temporary is left."""
    import subprocess
    import sys

    from PIL import Image

    from alexkit.bench.prepare import _write_one_photo

    real_save, others = Image.Image.save, []

    def save(self, *args, **kw):  # the real encoder; then another process writes the same image whole
        real_save(self, *args, **kw)
        others.append(subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from alexkit.bench.prepare "
                                      "import _write_one_photo; _write_one_photo((Path(sys.argv[1]), 6, 0))", str(tmp_path)],
                                     capture_output=True, text=True, timeout=120))  # fmt: skip

    monkeypatch.setattr(Image.Image, "save", save)
    path = _write_one_photo((tmp_path, 6, 0))
    assert [(r.returncode, r.stderr) for r in others] == [(0, "")]
    assert path == tmp_path / "train" / "c006" / "img_000006.JPEG"
    assert [p.name for p in path.parent.iterdir()] == [path.name] and Image.open(path).size in [size for size, _ in PHOTO_SIZES]


def test_ctrl_c_while_making_photo_like_jpegs_says_interrupted_once(tmp_path):
    """Ctrl-C reaches the whole process group: each pool worker printed its KeyboardInterrupt
    traceback before the parent's one word (most runs: the pool's exit may kill a worker first, so
    the workers' ignored signals are read too)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.test_prepare import _children, _in_own_group_with_sigint_as_default

    cmd = [sys.executable, "-m", "alexkit", "bench", "loader", "--work", str(tmp_path), "--images", "400", "--threads", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_in_own_group_with_sigint_as_default)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("src-400/train/*/*.JPEG"))) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the JPEGs were made before Ctrl-C: " + proc.stderr.read()
    workers = _children(proc.pid)
    assert len(workers) == 2 and all(signal.SIGINT in _ignored(w) for w in workers)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to the workers too
    assert proc.wait(timeout=60) == 130
    assert proc.stderr.read() == "interrupted\n"


def _ignored(pid: int) -> set:
    """The signals process `pid` ignores (SigIgn in /proc/PID/status: bit n-1 for signal n)."""
    from pathlib import Path

    mask = next(int(line.split()[1], 16) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigIgn:"))
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def test_an_image_that_does_not_decode_is_named_as_the_users_file(tmp_path):
    """The error named the bench's temporary copy (.../images/train/c000/img_000006.JPEG), deleted by then."""
    import pytest

    from alexkit.datasets import write_sample_dataset
    from alexkit.errors import AlexkitError

    src = write_sample_dataset(tmp_path / "src", num_classes=2, train_per_class=3, val_per_class=1)
    bad = src / "train" / "n99000002" / "n99000002_2.JPEG"
    bad.write_bytes(b"not an image")
    with pytest.raises(AlexkitError, match=f"^{bad}: not an image in any format PIL can read; .* remove or replace it in {src} "):
        bench_prepare(BenchPrepareConfig(src=src, images=6, workers=1, size=32, repeats=1))


def test_an_image_prepare_skips_is_refused_before_any_route_runs(tmp_path):
    """A 2000x10 image decodes in PIL but prepare skips it (sides over MAX_ASPECT apart): the bench took it,
    (c) wrote one image fewer than (a), and the run ended in an IndexError after every route was timed."""
    import pytest
    from PIL import Image

    from alexkit.datasets import write_sample_dataset
    from alexkit.errors import AlexkitError

    src = write_sample_dataset(tmp_path / "src", num_classes=2, train_per_class=3, val_per_class=1)
    long = src / "train" / "n99000001" / "n99000001_1.JPEG"
    Image.fromarray(np.full((10, 2000, 3), 128, np.uint8)).save(long)
    with pytest.raises(AlexkitError, match=f"^{long}: a 2000x10 image: its sides are more than 100 times apart.*; "
                                           f"every route must read every image: remove or replace it in {src} "):
        bench_prepare(BenchPrepareConfig(src=src, images=6, workers=1, size=32, repeats=1))
