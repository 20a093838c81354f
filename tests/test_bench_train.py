"""`alexkit bench train`: a tiny run on the CPU, and its figures' arithmetic. No test asserts a speed."""

import time

import pytest
import torch

from alexkit.bench.train import BenchTrainConfig, _timed_windows, bench_train
from alexkit.model import AlexNet
from alexkit.recipe import make_optimizer
from alexkit.train import TrainConfig
from tests.test_evaluate import make_store


def test_timed_windows_count_images_after_the_warm_up():
    """2 warm-up steps, then 3 windows of 2 steps of 4 images: the windows' images over their rates
    are the seconds they took, which fit inside the whole call and hold the 6 timed batches' 20 ms
    sleeps (a bound that holds however slow the first steps are)."""
    torch.manual_seed(0)
    model = AlexNet(4, width=0.25, fc_features=16, input_size=56, init="sturdy")
    optimizer, used = make_optimizer(model, TrainConfig(), lr=0.01), []

    def batches():
        while True:
            used.append(1)
            time.sleep(0.02)
            yield torch.randn(4, 3, 56, 56) * 60, torch.randint(0, 4, (4,))

    cfg = BenchTrainConfig(batch_size=4, steps=2, repeats=3, warmup=2, device="cpu")
    start = time.perf_counter()
    [rates] = _timed_windows(model, optimizer, [("input", batches())], cfg, False, torch.device("cpu"))
    took = time.perf_counter() - start
    assert len(rates) == 3 and len(used) == 2 + 3 * 2
    timed = sum(2 * 4 / rate for rate in rates)
    assert 6 * 0.02 <= timed <= took, (timed, took)


def test_the_two_rows_windows_take_turns_each_after_settling_steps():
    """Timed one row after the other, a load that came and went on a shared machine moved the ratio
    either way. The windows alternate, neither input always first, and each window starts after
    SETTLE untimed steps that use up the batches its loader fed ahead while the other row ran."""
    from alexkit.bench.train import SETTLE

    model = AlexNet(4, width=0.25, fc_features=16, input_size=56, init="sturdy")
    optimizer, order = make_optimizer(model, TrainConfig(), lr=0.01), []

    def batches(name):
        while True:
            order.append(name)
            yield torch.randn(2, 3, 56, 56) * 60, torch.randint(0, 4, (2,))

    cfg = BenchTrainConfig(batch_size=2, steps=2, repeats=3, warmup=1, device="cpu")
    rates = _timed_windows(model, optimizer, [("s", batches("s")), ("r", batches("r"))], cfg, False, torch.device("cpu"))
    assert [len(r) for r in rates] == [3, 3]
    window = SETTLE + 2
    assert "".join(order) == "s" + "r" + ("s" * window + "r" * window) + ("r" * window + "s" * window) + ("s" * window + "r" * window)


def test_a_line_as_each_warm_up_starts_and_each_window_ends(capsys):
    """At its defaults on a CPU `bench train` runs about 19 minutes, and printed nothing before its
    table. Each warm-up is said before its first step, each window's images/s before the next
    window's first step: the steps below count the lines printed before them."""
    from alexkit.bench.train import SETTLE

    model = AlexNet(4, width=0.25, fc_features=16, input_size=56, init="sturdy")
    optimizer, printed, seen = make_optimizer(model, TrainConfig(), lr=0.01), [], []

    def batches():
        while True:
            printed.extend(capsys.readouterr().out.splitlines())
            seen.append(len(printed))
            yield torch.randn(2, 3, 56, 56) * 60, torch.randint(0, 4, (2,))

    cfg = BenchTrainConfig(batch_size=2, steps=1, repeats=2, warmup=1, device="cpu")
    rates = _timed_windows(model, optimizer, [("synthetic", batches()), ("real", batches())], cfg, False, torch.device("cpu"))
    printed.extend(capsys.readouterr().out.splitlines())
    window = SETTLE + 1
    assert seen == [1, 2] + [2] * window + [3] * window + [4] * window + [5] * window  # the second round: real first
    assert printed == ["  warm-up: synthetic: 1 step", "  warm-up: real: 1 step",
                       f"  window 1/2: synthetic: {rates[0][0]:,.0f} images/s", f"  window 1/2: real: {rates[1][0]:,.0f} images/s",
                       f"  window 2/2: real: {rates[1][1]:,.0f} images/s", f"  window 2/2: synthetic: {rates[0][1]:,.0f} images/s"]  # fmt: skip
    cfg, before = BenchTrainConfig(batch_size=2, steps=1, repeats=1, warmup=0, device="cpu"), len(printed)  # no warm-up: none said
    _timed_windows(model, optimizer, [("synthetic", batches())], cfg, False, torch.device("cpu"))
    printed.extend(capsys.readouterr().out.splitlines())
    assert len(printed) == before + 1 and printed[-1].startswith("  window 1/1: synthetic: "), printed[before:]


def test_bench_train_rows_and_the_ratio_to_synthetic(tmp_path, capsys):
    store = make_store(tmp_path / "store", size=64, train=12, val=2)
    r = bench_train(BenchTrainConfig(data=store.path, batch_size=4, steps=2, repeats=3, warmup=1, device="cpu",
                                     width=0.25, fc_features=16, channels_last="on", compile="off"))  # fmt: skip
    synthetic, real = r["rows"]
    assert (synthetic["input"], real["input"]) == ("synthetic on-device", "real pipeline")
    assert all(row["min"] <= row["images_per_s"] <= row["max"] for row in r["rows"])
    assert "fp32, channels-last; median" in r["settings"]  # --channels-last on, --compile off: each its own
    assert r["settings"].endswith(", windows taking turns")
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("real pipeline") and printed[-1].endswith(f"{real['vs_synthetic']:.0%}")
    assert printed[-2].endswith("100%")


def test_the_ratio_column_is_each_rows_median_ratio_to_its_neighbouring_synthetic_windows(capsys):
    """Each real window over the synthetic window timed beside it, then the median: a machine that
    slowed down for one pair of windows moves neither that pair's ratio much nor the median. The
    ratio of the rows' medians would mix windows timed under different loads."""
    from alexkit.bench.train import _print, row

    synthetic = [200.0, 100.0, 210.0]  # the second pair timed while something else ran
    real = [150.0, 76.0, 160.0]
    rows = [row("synthetic on-device", synthetic, synthetic), row("real pipeline", real, synthetic)]
    assert rows[1]["vs_synthetic"] == 0.76 and rows[1]["images_per_s"] / rows[0]["images_per_s"] == 0.75
    _print("CPU", "settings", rows, None)
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()[2:]] == ["100%", "76%"]


def test_a_row_is_the_median_of_its_windows_with_their_range():
    from alexkit.bench.train import row

    assert row("real pipeline", [900.0, 100.0, 200.0], [900.0, 200.0, 400.0]) == dict(
        input="real pipeline", images_per_s=200.0, min=100.0, max=900.0, vs_synthetic=0.5)
    # Two windows, one pair timed while something else ran: not their arithmetic mean (2.6).
    assert row("real pipeline", [20.0, 500.0], [100.0, 100.0])["vs_synthetic"] == pytest.approx(1.0)


def test_without_data_and_no_store_here_only_the_synthetic_row_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ./alexkit-store
    r = bench_train(BenchTrainConfig(batch_size=2, steps=1, repeats=1, warmup=0, device="cpu", width=0.25, fc_features=16,
                                     compile="off"))  # fmt: skip
    assert [row["input"] for row in r["rows"]] == ["synthetic on-device"]
    assert r["settings"].endswith("median of 1 x 1 steps, no warm-up")  # --warmup 0: not "after 0 warm-up"
    assert capsys.readouterr().out.splitlines()[-1] == "no --data, and no store at alexkit-store: real pipeline not measured"


def test_a_data_path_that_is_not_a_usable_store_is_an_error_before_any_timing(tmp_path, monkeypatch):
    """A raw dataset folder, a store's train.beton, a missing path, a 32 px store (28 px crops: no
    pool5 output) and a --batch-size above the store's training images once printed a note and
    exited 0, raised a bare ValueError, or failed only after the synthetic row had been timed."""
    import alexkit.bench.train as bench
    from alexkit.errors import AlexkitError

    timed = []
    monkeypatch.setattr(bench, "_timed_windows", lambda *a: timed.append(1) or [1.0])
    store, small = make_store(tmp_path / "store", size=64, train=12, val=2), make_store(tmp_path / "small", size=32)
    (tmp_path / "raw" / "train").mkdir(parents=True)
    for data, batch, said in [(tmp_path / "raw", 4, "has no stats.npz"), (store.path / "train.beton", 4, "pass the store's folder instead"),
                              (tmp_path / "nowhere", 4, "does not exist"), (small.path, 4, r"\(28px crops\), too small for AlexNet; "
                              "prepare one with --size 42 or more"), (store.path, 16, r"has 12 images, fewer than one --batch-size \(16\)")]:  # fmt: skip
        with pytest.raises(AlexkitError, match=said):
            bench_train(BenchTrainConfig(data=data, batch_size=batch, steps=1, repeats=1, warmup=0, device="cpu", width=0.25,
                                         fc_features=16, compile="off"))  # fmt: skip
    assert not timed


def test_the_store_is_held_against_prepare_while_the_rows_are_timed(tmp_path, monkeypatch):
    """--data was read with no reader lock, so a `prepare --force` moved a new store in under the
    bench. It holds the store's lock shared, as train does: a prepare is refused while the rows are
    timed, and a bench of a store that a prepare is writing waits for it, then says so."""
    import alexkit.bench.train as bench
    from alexkit.errors import AlexkitError
    from alexkit.locks import BeingRead
    from alexkit.pipeline.prepare import _only_writer

    store = make_store(tmp_path / "store", size=64, train=12, val=2).path
    real_windows, refused = bench._timed_windows, []

    def timed_windows(*args):  # the real windows, after a prepare tried to take the store
        with pytest.raises(BeingRead):
            with _only_writer(store):
                pass
        refused.append(1)
        return real_windows(*args)

    monkeypatch.setattr(bench, "_timed_windows", timed_windows)
    cfg = BenchTrainConfig(data=store, batch_size=4, steps=1, repeats=1, warmup=0, device="cpu", width=0.25, fc_features=16,
                           compile="off")  # fmt: skip
    assert [row["input"] for row in bench_train(cfg)["rows"]] == ["synthetic on-device", "real pipeline"] and refused == [1]
    with _only_writer(store), pytest.raises(AlexkitError, match=f"^`alexkit prepare` is writing store {store}; wait for it to end$"):
        bench_train(cfg)


def test_make_bench_gives_bench_train_the_demos_store_once_it_is_made(tmp_path):
    """From the repository's root bench train's default store, ./alexkit-store, is not the demo's
    (demo/alexkit-store): `make bench` never measured the real pipeline."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make")
    shutil.copy(Path(__file__).parents[1] / "Makefile", tmp_path)

    def bench_train_line() -> str:
        r = subprocess.run(["make", "-n", "bench"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        return next(line for line in r.stdout.splitlines() if "bench train" in line).strip()

    assert bench_train_line() == ".venv/bin/alexkit bench train"
    (tmp_path / "demo" / "alexkit-store").mkdir(parents=True)
    (tmp_path / "demo" / "alexkit-store" / "manifest.json").write_text("{}")
    assert bench_train_line() == ".venv/bin/alexkit bench train --data demo/alexkit-store"
