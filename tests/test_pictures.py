"""Pictures: the ten val views drawn are the image's own crops; grids have the right geometry;
plot draws curves of several runs and names the fix when matplotlib is missing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from alexkit.errors import AlexkitError
from alexkit.plot import PlotConfig, curves, plot, read_metrics
from alexkit.show_batch import ShowBatchConfig, grid, show_batch, train_tiles, val_view_tiles
from tests.test_evaluate import make_store

JPEG_TOL = 3  # grey levels: PIL's and DALI's JPEG decoders may round a few pixels differently


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("pictures") / "store", train=12, val=3)


def test_val_views_are_the_images_crops_with_the_mean_added_back(store):
    """Tile k equals the k-th window of the decoded image (mirrored for k >= 5), back in 0-255."""
    tiles, captions, label = val_view_tiles(store, 2)
    pixels = store.split("val").pixels(2).astype(int)  # (S, S, 3)
    c, far, mid = store.crop, store.size - store.crop, (store.size - store.crop) // 2
    windows = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]  # (top, left): TL, TR, BL, BR, centre
    expected = [pixels[t : t + c, l : l + c] for t, l in windows]
    expected += [e[:, ::-1] for e in expected]
    assert len(tiles) == 10 and label == store.split("val").labels[2]
    for tile, want in zip(tiles, expected):
        assert tile.shape == (c, c, 3) and tile.dtype == np.uint8
        assert np.abs(tile.astype(int) - want).max() <= JPEG_TOL
    assert captions[0] == "top-left" and captions[4] == "centre" and captions[9] == "centre mirrored"


@pytest.mark.parametrize("seed", [0, 1])
def test_train_tiles_are_the_seeds_own_windows_flips_and_lighting(store, seed):
    """Each tile is its image's window at the position the seed draws, mirrored as drawn, plus that
    draw's lighting offset: the exact picture the network got, with the mean window added back."""
    from alexkit.pipeline.augment import lighting_offsets, train_params
    from alexkit.pipeline.loader import STREAM_AUGMENT, epoch_rng

    tiles, _, indices = train_tiles(store, 6, seed=seed)
    xs, ys, flips, alpha = train_params(epoch_rng(seed, 0, STREAM_AUGMENT, 0), 6, store.size, store.crop)
    offsets = lighting_offsets(alpha, store.stats.eigval, store.stats.eigvec)  # (6, 3)
    c, train = store.crop, store.split("train")
    for tile, i, x, y, flip, offset in zip(tiles, indices, xs, ys, flips, offsets):
        window = train.pixels(i)[y : y + c, x : x + c].astype(float)
        want = np.clip((window[:, ::-1] if flip else window) + offset, 0, 255)
        assert np.abs(tile - want).max() <= JPEG_TOL + 1  # + 1: rounding to uint8


def test_train_tiles_of_a_store_smaller_than_the_count_are_all_its_images(tmp_path):
    small = make_store(tmp_path / "small", train=5, val=2)
    tiles, labels, indices = train_tiles(small, 16, seed=0)
    assert len(tiles) == 5 and sorted(indices) == list(range(5))


def test_grid_geometry_and_captions():
    tiles = [np.full((20, 20, 3), v, np.uint8) for v in (0, 80, 160)]
    img = grid(tiles, ["a", "b", "a much longer caption than fits under a tile"], "title", columns=2)
    # 20px tiles are scaled 8x to 160; 2 columns, 2 rows
    assert img.size == (6 + 2 * (160 + 6), 28 + 2 * (160 + 20 + 6))
    px = np.asarray(img)
    assert (px[28 + 80, 6 + 80] == 0).all() and (px[28 + 80, 6 + 166 + 80] == 80).all()
    assert (px[28 + 186 + 80, 6 + 80] == 160).all()


def test_grid_is_as_wide_as_a_title_wider_than_its_tiles():
    """One 160px tile under a title of ~400px (show-batch --count 1): the canvas widens, the title is whole."""
    from alexkit.show_batch import _font

    title = "alexkit-store: 1 training crop as fed to the network (seed 0)"
    img = grid([np.full((20, 20, 3), 80, np.uint8)], ["a"], title, columns=1)
    assert img.size[0] == 6 + int(np.ceil(_font(15).getlength(title))) + 6 > 6 + 160 + 6
    inked = np.flatnonzero((np.asarray(img)[:28] < 128).all(axis=2).any(axis=0))  # columns of the title's dark pixels
    assert inked.max() < img.size[0] - 6 and inked.max() > 6 + 160 + 6  # the title ends inside, past the tile


def test_show_batch_count_range_is_said_in_its_help_and_checked_alike():
    import inspect

    from alexkit.cli import show_batch as cli
    from alexkit.ranges import SHOW_BATCH_COUNT

    option = inspect.signature(cli.command).parameters["count"].default
    assert option.callback.allowed is SHOW_BATCH_COUNT and option.help.endswith("Range: from 1 to 256.")
    for count in (0, 257):
        with pytest.raises(AlexkitError, match=f"^--count {count} is out of range: from 1 to 256$"):
            ShowBatchConfig(count=count)


def test_show_batch_seed_range_is_said_in_its_help_and_checked_alike():
    import inspect

    from alexkit.cli import show_batch as cli
    from alexkit.ranges import SEED

    option = inspect.signature(cli.command).parameters["seed"].default
    assert option.callback.allowed is SEED and option.help.endswith("Range: from 0 to 4,294,967,295.")
    for seed in (-1, 2**32):
        with pytest.raises(AlexkitError, match=f"^--seed {seed} is out of range: from 0 to 4,294,967,295$"):
            ShowBatchConfig(seed=seed)


def test_show_batch_writes_two_pngs(store, tmp_path):
    paths = show_batch(ShowBatchConfig(data=store.path, out=tmp_path / "pics", count=8, val_index=1))
    assert [p.name for p in paths] == ["train-batch.png", "val-views.png"]
    train_png, views_png = (Image.open(p) for p in paths)
    scale = -(-160 // store.crop)  # 42px tiles scaled 4x
    assert train_png.size[0] == 6 + 8 * (store.crop * scale + 6)
    assert views_png.size == (6 + 5 * (store.crop * scale + 6), 28 + 2 * (store.crop * scale + 26))


def test_show_batch_bad_index(store, tmp_path):
    with pytest.raises(AlexkitError, match="holds 3 images"):
        show_batch(ShowBatchConfig(data=store.path, out=tmp_path / "pics", val_index=3))
    assert not (tmp_path / "pics").exists()  # checked before the first picture
    (tmp_path / "a-file").write_text("")
    with pytest.raises(AlexkitError, match="is a file; give a folder"):
        ShowBatchConfig(out=tmp_path / "a-file")
    with pytest.raises(AlexkitError, match=r"--out .*pictures is in the folder of the store .*; name a folder outside it"):
        show_batch(ShowBatchConfig(data=store.path, out=store.path / "pictures"))
    assert not (store.path / "pictures").exists()
    other = make_store(tmp_path / "other", train=2, val=1)  # another store than the one read: its folder is prepare's too
    for out in (other.path, other.path / "pictures"):
        with pytest.raises(AlexkitError, match=rf"^--out {out} is in the folder of the store {other.path}, whose files are "):
            ShowBatchConfig(data=store.path, out=out)


def test_show_batch_out_that_cannot_be_written_is_refused_before_the_store_is_read(tmp_path):
    """The error names --out as given (not a temporary file in it), before the loader runs: here the
    store does not even exist, and the --out error comes first."""
    import os
    import re
    from pathlib import Path

    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc, a folder no one can create files in, root included")
    for out, said in ((Path("/proc"), "--out /proc: cannot write in /proc ("),  # one to make: its nearest folder
                      (Path("/proc/pics/new"), "--out /proc/pics/new cannot be created: no folder can be made in /proc (")):
        with pytest.raises(AlexkitError, match=f"^{re.escape(said)}") as refused:
            ShowBatchConfig(data=tmp_path / "no-store", out=out)
        assert refused.value.exit_code == 1  # a path the system refuses, not a bad value


def test_show_batch_that_cannot_write_leaves_no_folder(store, tmp_path, monkeypatch):
    import errno

    from alexkit import show_batch as stage

    def full(image, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(stage, "_save", full)
    with pytest.raises(OSError, match="No space left"):
        show_batch(ShowBatchConfig(data=store.path, out=tmp_path / "pics", count=4))
    assert not (tmp_path / "pics").exists()


def test_show_batch_says_the_picture_it_wrote_before_the_one_it_could_not(store, tmp_path, capsys):
    """val-views.png a folder (a real obstacle, found only when written): train-batch.png is whole and
    kept, and its 'wrote' line comes before the error about the second picture."""
    out = tmp_path / "pics"
    (out / "val-views.png" / "x").mkdir(parents=True)
    with pytest.raises(OSError, match="Is a directory"):
        show_batch(ShowBatchConfig(data=store.path, out=out, count=4))
    assert capsys.readouterr().out == f"wrote {out / 'train-batch.png'}\n"
    assert Image.open(out / "train-batch.png").size[0] > 0


def write_run(run, epochs: int, start_err: float):
    run.mkdir(parents=True)
    rows = [dict(epoch=e, lr=0.01 if e <= epochs // 2 else 0.001, train_loss=2.0 / e, train_top1_err=start_err / e,
                 val_top1_err=start_err / e + 0.05, val_top5_err=start_err / (2 * e), images_per_s=100.0, seconds=1.0)
            for e in range(1, epochs + 1)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.json").write_text("{}")


def test_plot_two_runs(tmp_path):
    write_run(tmp_path / "a", 6, 0.9)
    write_run(tmp_path / "b", 4, 0.8)
    out = plot(PlotConfig(runs=(tmp_path / "a", tmp_path / "b"), out=tmp_path / "curves.png"))
    img = Image.open(out)
    assert img.size == (1100, 750)
    px = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    # both runs' colours (matplotlib's C0 blue #1f77b4 and C1 orange #ff7f0e) are drawn
    for rgb in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        assert (np.abs(px - rgb).sum(1) < 30).sum() > 200
    assert len(read_metrics(tmp_path / "a")) == 6
    for parent in ("x", "y"):  # runs of one name in two folders: the legend tells them apart by their paths
        write_run(tmp_path / parent / "run", 2, 0.9)
    fig = curves([(tmp_path / p / "run", read_metrics(tmp_path / p / "run")) for p in ("x", "y")])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [str(tmp_path / "x" / "run"), str(tmp_path / "y" / "run")]


def test_a_run_named_dot_is_labelled_with_its_folders_name(tmp_path, monkeypatch):
    """`alexkit plot . ../runC` (or metrics.jsonl) from inside a run: "." has the name "", which gave
    legend lines " val" and " train"; the folder's own name labels them, and the title."""
    from pathlib import Path

    write_run(tmp_path / "runB", 2, 0.9)
    write_run(tmp_path / "runC", 2, 0.8)
    monkeypatch.chdir(tmp_path / "runB")
    fig = curves([(run, read_metrics(run)) for run in (Path("."), Path("../runC"))])
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert labels == ["runB val", "runB train", "runC val", "runC train"]
    assert fig._suptitle.get_text() == f"{tmp_path / 'runB'}, ../runC"


def test_error_and_loss_axes_start_at_zero_even_when_every_value_is_zero(tmp_path):
    """A top-5 error of 0 at every epoch (5 classes or fewer): 0% at the bottom, not -4%..4%."""
    write_run(tmp_path / "a", 3, 0.9)
    records = [{**r, "val_top5_err": 0.0} for r in read_metrics(tmp_path / "a")]
    fig = curves([(tmp_path / "a", records)])
    limits = {ax.get_title(): ax.get_ylim() for ax in fig.axes}
    assert limits["top-5 error (val)"][0] == 0 and limits["top-5 error (val)"][1] > 0, limits
    for title in ("training loss", "top-1 error"):
        assert limits[title][0] == 0 and limits[title][1] > 0.9, limits
    assert limits["learning rate"][0] > 0, limits  # log scale


def test_plot_into_a_pipe_says_no_wrote_line(tmp_path, capsys):
    """`--out` a named pipe is written as it is (outputs.write_output), and is no file to name: plot
    said `wrote PATH` after it, where eval and bench loader say nothing for a stream."""
    import os
    import threading

    write_run(tmp_path / "a", 2, 0.9)
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()))
    reader.start()
    plot(PlotConfig(runs=(tmp_path / "a",), out=pipe))
    reader.join(timeout=30)
    assert received and received[0].startswith(b"\x89PNG") and capsys.readouterr().out == ""
    plot(PlotConfig(runs=(tmp_path / "a",), out=tmp_path / "c.png"))
    assert capsys.readouterr().out == f"wrote {tmp_path / 'c.png'}\n"


def test_plot_passes_over_a_run_still_in_its_first_epoch(tmp_path, capsys):
    write_run(tmp_path / "a", 3, 0.9)
    write_run(tmp_path / "live", 0, 0.9)  # metrics.jsonl exists, with no epoch yet
    (tmp_path / "starting").mkdir()
    (tmp_path / "starting" / ".train.lock").write_text("")  # before its run files are written
    out = plot(PlotConfig(runs=(tmp_path / "a", tmp_path / "live", tmp_path / "starting"), out=tmp_path / "c.png"))
    err = capsys.readouterr().err
    assert out.is_file() and f"skipped {tmp_path / 'live'}: it has no finished epoch yet" in err
    assert f"skipped {tmp_path / 'starting'}:" in err
    with pytest.raises(AlexkitError, match="starting/metrics.jsonl does not exist: run .*starting has no finished epoch yet"):
        plot(PlotConfig(runs=(tmp_path / "starting",), out=tmp_path / "d.png"))  # alone: the same run, said as one
    with pytest.raises(AlexkitError, match="holds no epochs yet"):  # the only run asked for: an error, not a blank chart
        plot(PlotConfig(runs=(tmp_path / "live",), out=tmp_path / "d.png"))


def test_plot_of_the_latest_run_names_a_newer_one_still_in_its_first_epoch(tmp_path, monkeypatch, capsys):
    """Without RUN, plot takes the latest run with a finished epoch: a newer run still in its first one
    was passed over without a word, so the curves looked like the new run's. A note names both, as
    eval's does."""
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "alexkit-runs" / "20261129-120000", 3, 0.9)
    (tmp_path / "alexkit-runs" / "20261129-120000" / "last.pt").write_bytes(b"")  # only looked for, not read
    out = plot(PlotConfig(out=tmp_path / "c.png"))
    assert out.is_file() and capsys.readouterr().err == ""
    write_run(tmp_path / "alexkit-runs" / "20261129-130000", 0, 0.9)  # started, no epoch yet
    plot(PlotConfig(out=tmp_path / "c.png"))
    assert capsys.readouterr().err == ("note: alexkit-runs/20261129-130000 has no finished epoch yet; using "
                                       "alexkit-runs/20261129-120000\n")  # fmt: skip


def test_plot_notes_only_a_run_newer_than_the_one_it_plots(tmp_path, monkeypatch, capsys):
    """The note names a newer run folder without a finished epoch: not an older one, nor none (a run
    whose config.json is gone is still a run, by its .train.lock), which it had called "newer" or "None"."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "alexkit-runs"
    write_run(runs / "20261129-120000", 3, 0.9)
    (runs / "20261129-120000" / "last.pt").write_bytes(b"")  # only looked for, not read
    (runs / "20261129-120000" / ".train.lock").write_bytes(b"")
    (runs / "20261129-120000" / "config.json").unlink()
    (runs / "20261128-120000").mkdir()
    (runs / "20261128-120000" / "config.json").write_text("{}")  # older, no epoch
    plot(PlotConfig(out=tmp_path / "c.png"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("lost", [True, False], ids=["missing", "empty"])
def test_a_run_that_lost_its_metrics_is_told_how_to_write_them_again(tmp_path, capsys, lost):
    """A run with a checkpoint but no metrics.jsonl, or an empty one (a full disk at metrics.jsonl
    after last.pt was saved leaves it as train made it at the start), is a run: `train --resume`
    writes the file again from the checkpoint (from best.pt where last.pt is gone too); it is not
    passed over as new, nor said to have no epochs yet."""
    write_run(tmp_path / "ok", 2, 0.9)
    write_run(tmp_path / "r", 2, 0.9)
    if lost:
        (tmp_path / "r" / "metrics.jsonl").unlink()
    else:
        (tmp_path / "r" / "metrics.jsonl").write_text("")
    said = "does not exist;" if lost else "holds no epochs, though {} does;"
    (tmp_path / "r" / "best.pt").write_bytes(b"")  # only looked for, not read
    with pytest.raises(AlexkitError, match=rf"r/metrics.jsonl {said.format('best.pt')} `alexkit train --resume \S*r/best.pt` "
                                           "writes it again from best.pt"):  # fmt: skip
        plot(PlotConfig(runs=(tmp_path / "r",), out=tmp_path / "c.png"))
    (tmp_path / "r" / "last.pt").write_bytes(b"")
    for runs in ((tmp_path / "r",), (tmp_path / "ok", tmp_path / "r")):
        with pytest.raises(AlexkitError, match=rf"r/metrics.jsonl {said.format('last.pt')} `alexkit train --resume \S*r` writes it "
                                               r"again from last.pt \(add --epochs N"):  # fmt: skip
            plot(PlotConfig(runs=runs, out=tmp_path / "c.png"))
    assert "skipped" not in capsys.readouterr().err
    if lost:
        (tmp_path / "r" / "last.pt").unlink()
        (tmp_path / "r" / "best.pt").unlink()  # config.json alone: a run still in its first epoch
        with pytest.raises(AlexkitError, match="r/metrics.jsonl does not exist: run .*r has no finished epoch yet"):
            plot(PlotConfig(runs=(tmp_path / "r",), out=tmp_path / "c.png"))


def test_a_picture_over_the_file_size_limit_names_the_limit_not_free_space(tmp_path):
    """The command line's one line for an OSError names the per-file size limit for EFBIG, not free space."""
    import os
    import subprocess

    from tests.test_prepare import file_size_limit

    write_run(tmp_path / "a", 3, 0.9)
    out = tmp_path / "c.png"
    r = subprocess.run([sys.executable, "-m", "alexkit", "plot", str(tmp_path / "a"), "--out", str(out)], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}, preexec_fn=file_size_limit(4096))  # fmt: skip
    assert (r.returncode, r.stderr) == (1, f"error: {out}: File too large; raise the per-file size limit (`ulimit -f`: 4 KiB "
                                           "here) or write to a file system that holds files this large\n")  # fmt: skip
    assert not out.exists()


def test_plot_errors(tmp_path, monkeypatch):
    with pytest.raises(AlexkitError, match="metrics.jsonl does not exist"):
        plot(PlotConfig(runs=(tmp_path,), out=tmp_path / "x.png"))
    with pytest.raises(AlexkitError, match="name a .png, .pdf, .svg file"):
        PlotConfig(out=tmp_path / "curves")
    with pytest.raises(AlexkitError, match="its folder .* does not exist"):
        PlotConfig(out=tmp_path / "nodir" / "c.png")
    for name in ("manifest.json", "classes.json"):  # a store's folder (and those below it) holds prepare's files only
        (tmp_path / "store" / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / "store" / name).write_text("{}")
    for out in (tmp_path / "store" / "c.png", tmp_path / "store" / "sub" / "c.png"):
        with pytest.raises(AlexkitError, match=rf"^--out {out} is in the folder of the store {tmp_path / 'store'}; name another file$"):
            PlotConfig(out=out)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "metrics.jsonl").write_text('{"lr": 0.01}\n')
    with pytest.raises(AlexkitError, match="line 1 is not an epoch record"):
        read_metrics(tmp_path / "odd")
    (tmp_path / "odd" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo')
    with pytest.raises(AlexkitError, match=r"line 2 is not JSON .*`alexkit train --resume .*odd` rewrites the file from last.pt"):
        read_metrics(tmp_path / "odd")
    (tmp_path / "odd" / "metrics.jsonl").write_bytes(b'{"epoch": 1}\n\x00\xff\xfe')
    with pytest.raises(AlexkitError, match=r"metrics.jsonl is not text \(byte 14 is no UTF-8\)"):
        read_metrics(tmp_path / "odd")
    with pytest.raises(AlexkitError, match=r"^\S*gone does not exist; pass run folders"):  # not ".../gone/metrics.jsonl"
        read_metrics(tmp_path / "gone")
    (tmp_path / "odd" / "config.json").write_text("{}")
    with pytest.raises(AlexkitError, match=r"^\S*config.json is a file, not a run folder"):
        read_metrics(tmp_path / "odd" / "config.json")
    write_run(tmp_path / "a", 2, 0.9)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(AlexkitError, match=r"`pip install matplotlib` \(in alexkit's checkout: `pip install -e '\.\[plot\]'`\)$"):
        plot(PlotConfig(runs=(tmp_path / "a",), out=tmp_path / "x.png"))
