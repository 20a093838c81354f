"""`alexkit bench loader`: a tiny run of every pipeline, and its figures' arithmetic checked on
measurements whose answer is known. No test asserts a speed."""

import pytest

from alexkit.bench.loader import BenchLoaderConfig, bench_loader
from alexkit.paths import usable_cores
from alexkit.pipeline.loader import default_threads


def test_bench_runs_every_pipeline_on_both_stores(tmp_path, capsys):
    r = bench_loader(BenchLoaderConfig(work=tmp_path, images=24, batch_size=8, epochs=2))
    rows = {(row["pipeline"], row["store"], row["mode"]) for row in r["rows"]}
    for fmt in ("jpg", "raw"):
        assert {(p, fmt, m) for p in ("alexkit DALI", "alexkit DALI ops only") for m in ("train", "center", "tencrop")} <= rows
        assert {("(b) FFCV Loader", fmt, "train"), ("(b) FFCV Loader", fmt, "center")} <= rows
    assert {("(a) PIL + DataLoader", "source JPEGs", m) for m in ("train", "center")} <= rows
    for row in r["rows"]:  # CPU time per image x images per second = the cores the pipeline kept busy
        busy = row["cpu_ms_per_image"] * row["images_per_s"] / 1e3
        assert 0.1 < busy < usable_cores() + 1, (row, busy)
    assert (r["settings"]["threads"], r["settings"]["workers"]) == (default_threads(), usable_cores())
    assert all(len(epochs) == 10 for epochs in r["memory"].values())
    out, err = capsys.readouterr()
    assert "alexkit jpg train vs (a)" in out and "DALI ops only" in out
    lines = out.splitlines()  # what is being done is said before it is done
    assert lines[0] == f"making 24 photo-like JPEGs in {tmp_path / 'src-24'}"
    assert [line.split(" (")[0] for line in lines if line.startswith("store ready")] == [f"store ready: {tmp_path}/store-{fmt}-24" for fmt in ("jpg", "raw")]
    assert not [line for line in lines if line.startswith(("train: ", "scanning "))]  # prepare's own progress
    memory = lines.index("memory: 10 training epochs of alexkit's loader alone on each store")
    timing = lines.index("timing train: 7 rows, 2 epochs each in turn")
    assert memory < timing < lines.index("timing center: 7 rows, 2 epochs each in turn") < lines.index("timing tencrop: 4 rows, 2 epochs each in turn")
    assert lines[timing + 1].split()[:4] == ["alexkit", "DALI", "jpg", "train"]
    assert "warning" not in err  # its stores have no val split, and need none: no advice to add one


def test_bad_settings_are_one_line_errors(tmp_path):
    import pytest

    from alexkit.errors import AlexkitError

    for kw, why in [(dict(threads=0), "--threads"), (dict(images=8, batch_size=16), "fewer than one --batch-size"),
                    (dict(source=tmp_path), "goes with --store")]:  # fmt: skip
        with pytest.raises(AlexkitError, match=why):
            BenchLoaderConfig(**kw)


def test_json_in_a_stores_folder_is_refused_before_any_work(tmp_path, capsys):
    """--json over a store's manifest once wrote there and exited 0: the --store, a store the bench
    makes in --work (before it exists), and any other store, as eval refuses them."""
    from alexkit.cli.main import main
    from tests.test_evaluate import make_store

    store, other = make_store(tmp_path / "store").path, make_store(tmp_path / "other").path
    manifest = (store / "manifest.json").read_bytes()
    work = tmp_path / "work"
    for args, where in [(["--store", str(store), "--json", str(store / "manifest.json")], store),
                        (["--store", str(store), "--json", str(store / "bench.json")], store),
                        (["--store", str(store), "--json", str(other / "bench.json")], other),
                        (["--work", str(work), "--images", "24", "--batch-size", "8", "--json", str(work / "store-raw-24" / "b.json")], work / "store-raw-24")]:  # fmt: skip
        (work / "store-raw-24").mkdir(parents=True, exist_ok=True)  # its folder, as a first run that stopped leaves it
        with pytest.raises(SystemExit) as done:
            main(["bench", "loader", *args])
        err = capsys.readouterr().err
        assert done.value.code == 2 and f"is in the folder of the store {where}" in err and err.count("\n") == 1, err
    assert (store / "manifest.json").read_bytes() == manifest and not list(tmp_path.rglob("*bench.json"))


def test_a_store_in_work_gets_advice_the_bench_can_follow(tmp_path, capsys):
    """prepare's advice about a store already there (--force, --out) names flags the bench has not:
    while another process reads the store (another bench on the same --work), and where it holds a
    store of other settings (an earlier alexkit's), the bench says to remove its folder; while another
    bench on the same --work prepares it, to choose another --work."""
    import re

    import json

    from alexkit.bench.loader import make_store
    from alexkit.bench.prepare import write_photo_like
    from alexkit.errors import AlexkitError
    from alexkit.pipeline.prepare import _only_writer
    from alexkit.pipeline.store import reading

    src, out = tmp_path / "src-2", tmp_path / "store-jpg-2"
    write_photo_like(src, 2)
    assert make_store(src, out, "jpg", 1) == out
    capsys.readouterr()
    with reading(out):
        assert make_store(src, out, "jpg", 1) == out  # reused
    said = capsys.readouterr().out
    assert f"nothing to do (if {src} has changed since, remove {out} and the bench makes it again)" in said and "--force" not in said
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["settings"]["format_version"] = 0  # as an earlier alexkit wrote it
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AlexkitError, match=f"; remove {out} and the bench makes it again$") as info:
        make_store(src, out, "jpg", 1)
    assert "--force" not in str(info.value) and "--out" not in str(info.value)
    with _only_writer(out), pytest.raises(AlexkitError, match=f"^another `alexkit prepare` is writing {re.escape(str(out))}; "
                                                              "wait for it to end, or choose another --work$"):  # fmt: skip
        make_store(src, out, "jpg", 1)


def test_a_store_folder_in_work_that_cannot_be_used_is_said_of_work_not_out(tmp_path, capsys):
    """prepare's refusals of the folder it writes named --out, a flag bench loader has not: a store's
    folder in --work that is a file, holds other files, or cannot be written is said of --work."""
    import subprocess
    import sys

    from alexkit.bench.loader import make_store
    from alexkit.bench.prepare import write_photo_like
    from alexkit.cli.main import main
    from alexkit.errors import AlexkitError
    from tests.test_prepare import _bound_by_permissions

    work = tmp_path / "work"
    write_photo_like(work / "src-16", 16)
    (work / "store-jpg-16").write_text("mine")
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["bench", "loader", "--work", str(work), "--images", "16", "--batch-size", "8", "--epochs", "2", "--threads", "1"])
    assert done.value.code == 2
    assert capsys.readouterr().err == f"error: --work {work / 'store-jpg-16'} is a file; give a folder\n"
    (work / "store-jpg-16").unlink()
    (work / "store-jpg-16" / "notes.txt").parent.mkdir()
    (work / "store-jpg-16" / "notes.txt").write_text("mine")
    with pytest.raises(AlexkitError, match=r"^--work \S+/store-jpg-16 is a folder that holds no store but other files \(notes.txt\); "
                                           "pass a new or empty folder$"):  # fmt: skip
        make_store(work / "src-16", work / "store-jpg-16", "jpg", 1)
    prefix = _bound_by_permissions(tmp_path)
    (work / "store-jpg-16" / "notes.txt").unlink()
    (work / "store-jpg-16").chmod(0o555)
    r = subprocess.run([*prefix, sys.executable, "-m", "alexkit", "bench", "loader", "--work", str(work), "--images", "16",
                        "--batch-size", "8", "--epochs", "2", "--threads", "1"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (r.returncode, r.stderr) == (1, f"error: cannot write to {work / 'store-jpg-16'} (Permission denied); choose a "
                                           "folder you can write to for --work\n")  # fmt: skip


def test_each_store_made_is_said_in_one_line_not_prepares_transcript(tmp_path, capsys):
    """prepare's lines (its scan, its progress per split, its last line) came twice inside the bench's
    report; its last line alone says what a store holds, or that it was there already."""
    from alexkit.bench.loader import make_store
    from alexkit.bench.prepare import write_photo_like

    src, out = tmp_path / "src-3", tmp_path / "store-raw-3"
    write_photo_like(src, 3)
    capsys.readouterr()
    assert make_store(src, out, "raw", 1) == out
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"store ready: {out} (train 3 images, "), line
    make_store(src, out, "raw", 1)
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{out} already holds a finished store of {src} with these settings; nothing to do"), line


def test_each_row_is_given_as_its_last_epoch_ends():
    """A mode's rows came only once every pipeline had run all its epochs (minutes at the defaults):
    each runner now comes back as its own last epoch ends, before the next runner's last epoch."""
    from alexkit.bench import Runner, interleaved

    ran = []

    def runner(name):
        def epoch(e):
            ran.append(f"{name} epoch {e}")
            return [([0, 1], None)]

        return Runner(name, "s", "train", epoch)

    for r in interleaved([runner("a"), runner("b")], 2):
        ran.append(f"row {r.pipeline}")
    assert ran == ["a epoch 0", "b epoch 0", "a epoch 1", "row a", "b epoch 1", "row b"]


def test_the_store_is_held_against_prepare_while_the_bench_reads_it(tmp_path, monkeypatch):
    """--store was read with no reader lock, so a `prepare --force` moved a new store in under the
    bench. It holds the store's lock shared, as train and eval do: a prepare is refused while the rows
    run, and a bench of a store that a prepare is writing waits for it, then says so."""
    import alexkit.bench.loader as bench
    from alexkit.errors import AlexkitError
    from alexkit.locks import BeingRead
    from alexkit.pipeline.prepare import _only_writer
    from tests.test_evaluate import make_store

    store = make_store(tmp_path / "store", train=8, val=4).path
    real_interleaved, refused = bench.interleaved, []

    def interleaved(runners, epochs):  # the real rows, each mode's after a prepare tried to take the store
        with pytest.raises(BeingRead):
            with _only_writer(store):
                pass
        refused.append(1)
        return real_interleaved(runners, epochs)

    monkeypatch.setattr(bench, "interleaved", interleaved)
    cfg = BenchLoaderConfig(store=store, batch_size=4, epochs=2, threads=1, baselines=False, memory_epochs=1)
    assert len(bench_loader(cfg)["rows"]) == 6 and len(refused) == 3  # 3 modes, fused or not
    with _only_writer(store), pytest.raises(AlexkitError, match=f"^`alexkit prepare` is writing store {store}; wait for it to end$"):
        bench_loader(cfg)


# --- the figures: each from a measurement whose answer is known ---


def _burn(cpu_s: float) -> None:
    """Busy for `cpu_s` seconds of this process's CPU time."""
    import time

    end = time.process_time() + cpu_s
    while time.process_time() < end:
        pass


def test_images_per_s_and_cpu_per_image_count_images_over_each_epoch():
    """Epochs of 3 batches of 8 images, each batch sleeping 20 ms and using 5 ms of CPU: at most 400
    images/s (the sleeps alone), and 5 / 8 = 0.625 ms of CPU per image."""
    import time

    from alexkit.bench import Runner, interleaved

    def epoch(e):
        for _ in range(3):
            time.sleep(0.02)
            _burn(0.005)
            yield list(range(8)), None

    [r] = interleaved([Runner("p", "s", "train", epoch)], 3)
    assert len(r.rates) == len(r.cpu) == 3
    assert all(100 < rate <= 24 / 0.06 for rate in r.rates), r.rates
    assert all(0.5e-3 < cpu < 1.5e-3 for cpu in r.cpu), r.cpu  # seconds per image; /proc ticks are 10 ms


def test_a_row_is_the_median_of_the_epochs_after_the_warm_up_and_ratios_say_how_many_times(capsys):
    from alexkit.bench import Runner
    from alexkit.bench.loader import _print_summary, _row

    row = _row(Runner("alexkit DALI", "jpg", "train", None, rates=[99.0, 10.0, 20.0, 30.0, 40.0], cpu=[9.0, 1e-3, 2e-3, 3e-3, 4e-3]))
    assert (row["images_per_s"], row["min"], row["max"], row["cpu_ms_per_image"]) == (25.0, 10.0, 40.0, pytest.approx(2.5))
    baseline = dict(pipeline="(a) PIL + DataLoader", store="source JPEGs", mode="train", images_per_s=5.0, cpu_ms_per_image=12.5)
    _print_summary([row, baseline], {})
    assert "alexkit jpg train vs (a) 5.00x by images/s, 5.00x by CPU time" in capsys.readouterr().out


def test_cpu_seconds_counts_this_process_and_its_live_and_ended_children():
    import multiprocessing
    import time

    from alexkit.bench import cpu_seconds

    fork = multiprocessing.get_context("fork")
    hold, before = fork.Event(), cpu_seconds()
    live = fork.Process(target=_hold_after_burning, args=(0.4, hold))
    live.start()
    while _state(live.pid) != "S":  # until it has burnt its CPU time and waits
        time.sleep(0.05)
    assert 0.3 < cpu_seconds() - before < 0.8  # a live worker's time, from /proc
    hold.set()
    live.join()
    ended = fork.Process(target=_burn, args=(0.4,))
    ended.start()
    ended.join()
    _burn(0.2)
    assert 0.9 < cpu_seconds() - before < 1.6  # both children, ended and reaped, and this process


def _hold_after_burning(cpu_s, hold) -> None:
    _burn(cpu_s)
    hold.wait(60)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_memory_mib_sees_an_allocation_in_anonymous_memory_and_the_peak():
    import numpy as np

    from alexkit.bench.loader import memory_mib

    before = memory_mib()
    block = np.ones(200 * 2**20, np.uint8)  # 200 MiB, touched
    during = memory_mib()
    del block
    after = memory_mib()
    assert 197 < during["anon"] - before["anon"] < 203, (before, during)  # MiB: 1024 kB each
    assert during["file"] > 0 and during["anon"] + during["file"] <= during["rss"] + 1
    assert during["rss"] > after["rss"] + 150  # freed
    assert after["peak"] > after["rss"] + 150 and after["peak"] >= during["rss"] - 2  # the kernel updates the peak lazily


def test_the_pil_baseline_reads_the_source_images_of_the_split_each_mode_reads(tmp_path, capsys):
    """Baseline (a) once read every JPEG under --source (train and val, 13 here) in both its rows;
    now the train row reads the store's train sources (7: the file prepare skipped left out) and
    the centre row its val sources (4), in the store's order and labels. The legend gives the store's
    size, and says when (a) is not run."""
    import contextlib
    import io

    from alexkit.bench.baselines import source_images, torchvision_style_runner
    from alexkit.bench.loader import _legend
    from alexkit.datasets import write_sample_dataset
    from alexkit.errors import AlexkitError
    from alexkit.pipeline.prepare import PrepareConfig, prepare
    from alexkit.pipeline.store import Store

    src = write_sample_dataset(tmp_path / "src", num_classes=2, train_per_class=4, val_per_class=2)
    (src / "train" / "n99000001" / "n99000001_1.JPEG").write_bytes(b"not an image")  # skipped by prepare
    with contextlib.redirect_stdout(io.StringIO()):
        store = Store(prepare(PrepareConfig(src=src, out=tmp_path / "store", size=32, workers=1, for_training=False)))
    sources = source_images(store, src, f"--source {src}")
    for split, n in (("train", 7), ("val", 4)):
        assert len(sources[split]) == len(store.split(split)) == n
        assert [s.label for s in sources[split]] == list(store.split(split).labels)
    cfg = BenchLoaderConfig(store=store.path, source=src, batch_size=2, threads=1)
    center = torchvision_style_runner(sources, {"jpg": store}, "center", cfg, 1)
    assert sum(len(labels) for _, labels in center.epoch(0)) == 4
    assert "centre 32," in _legend(store.size, cfg)
    assert "(a) PIL + DataLoader: not run: no --source" in _legend(store.size, BenchLoaderConfig(store=store.path))
    other = write_sample_dataset(tmp_path / "other", num_classes=2, train_per_class=5, val_per_class=2)  # 10, less the name skipped
    with pytest.raises(AlexkitError, match=r"has 9 train images .* holds 7; pass the dataset it was prepared from"):
        source_images(store, other, f"--source {other}")


def test_the_pil_baseline_cuts_the_centre_of_the_resized_image_and_subtracts_the_mean(tmp_path):
    """A 120x60 image, black in its left quarter: shorter side to 32 makes it 64x32, and the centre
    32x32 (then its centre 24) holds none of the black; 200 - a mean of 50 is 150."""
    import numpy as np
    from PIL import Image

    from alexkit.bench.baselines import _PilImages
    from alexkit.datasets import Sample

    rgb = np.full((60, 120, 3), 200, np.uint8)
    rgb[:, :30] = 0
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    image, _ = _PilImages([Sample(str(tmp_path / "a.jpg"), 0)], np.full((32, 32, 3), 50, np.float32), 32, 24, train=False)[0]
    assert tuple(image.shape) == (3, 24, 24) and 140 < float(image.min()) <= float(image.max()) < 160


def test_the_settings_line_says_one_thread_and_one_worker_in_the_singular(tmp_path):
    """--threads 1 was said as "1 DALI threads, 1 baseline workers"."""
    from alexkit.bench.loader import _settings
    from alexkit.pipeline.store import Store
    from tests.test_evaluate import make_store

    store = Store(make_store(tmp_path / "store", train=4, val=2).path)
    line = _settings(BenchLoaderConfig(store=store.path, threads=1), 1, 1, {"jpg": store})["line"]
    assert ", 1 DALI thread, 1 baseline worker" in line and "threads" not in line and "workers" not in line, line


def test_the_json_written_is_said(tmp_path, capsys):
    """--json was written without a word, where show-batch, plot and sample say what they wrote."""
    import json

    from alexkit.cli.main import main
    from tests.test_evaluate import make_store

    store = make_store(tmp_path / "store", train=8, val=4).path
    with pytest.raises(SystemExit) as done:
        main(["bench", "loader", "--store", str(store), "--no-baselines", "--batch-size", "4", "--epochs", "2", "--threads", "1",
              "--memory-epochs", "1", "--json", str(tmp_path / "b.json")])  # fmt: skip
    assert done.value.code in (0, None)
    assert capsys.readouterr().out.endswith(f"\nwrote {tmp_path / 'b.json'}\n")
    assert len(json.loads((tmp_path / "b.json").read_text())["rows"]) == 6


def test_json_dash_is_stdout_holding_the_json_alone_and_the_report_goes_to_stderr(tmp_path, capfd, monkeypatch):
    """`bench loader --json -` wrote a file named - here; `--json /dev/stdout` came after the report."""
    import json

    from alexkit.cli.main import main
    from tests.test_evaluate import make_store

    monkeypatch.chdir(tmp_path)
    store = make_store(tmp_path / "store", train=8, val=4).path
    with pytest.raises(SystemExit) as done:
        main(["bench", "loader", "--store", str(store), "--no-baselines", "--batch-size", "4", "--epochs", "2", "--threads", "1",
              "--memory-epochs", "1", "--json", "-"])  # fmt: skip
    out, err = capfd.readouterr()
    assert done.value.code in (0, None) and len(json.loads(out)["rows"]) == 6
    assert err.startswith("alexkit bench loader: jpg store 8 images") and "timing train: 2 rows" in err, err
    assert not (tmp_path / "-").exists()


def test_json_dash_is_named_as_typed_in_its_errors(tmp_path):
    """`bench loader --json -` into a closed stdout, or a stdout redirected into a store's folder, was
    refused as --json /dev/stdout, a path not typed: it is `- (stdout)`."""
    import subprocess
    import sys

    from tests.test_evaluate import make_store

    store = make_store(tmp_path / "store", train=8, val=4).path
    cmd = [sys.executable, "-m", "alexkit", "bench", "loader", "--store", str(store), "--json", "-"]
    r = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *cmd], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (2, "error: --json - (stdout): that stream is not open in this process; choose a file\n")
    with open(store / "b.json", "w") as into_store:
        r = subprocess.run(cmd, stdout=into_store, stderr=subprocess.PIPE, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (2, f"error: --json - (stdout) is in the folder of the store {store}; name another file\n")
