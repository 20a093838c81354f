"""Evaluation: ten-crop against a NumPy reference, identical views, CSV/JSON, checkpoints, torchrun.

Stores here are tiny (48px images, 42px crops, a few images) and written by hand with BetonWriter;
the network is a narrow AlexNet with fixed random weights.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexkit.errors import AlexkitError
from alexkit.evaluate import EvalConfig, evaluate, find_checkpoint, predict_log_probs, predict_top, summarize
from alexkit.model import AlexNet
from alexkit.pipeline.beton import MODE_JPG, BetonWriter
from alexkit.pipeline.store import Store
from alexkit.checkpoints import read_checkpoint

SIZE = 48  # stored side; the crop is 42
PROB_ATOL = 2e-5  # float32 forward of the same pixels in a different batch layout, CSV written with 6 digits


def photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random (size, size, 3) uint8 image: a 6x6 grid of colours, bilinearly enlarged."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))


def make_store(root: Path, *, size: int = SIZE, classes: int = 3, val: int = 7, train: int = 8, uniform: bool = False,
               seed: int = 0) -> Store:  # fmt: skip
    """A store with JPEG train/val splits, a mean image and a class table.

    uniform=True: every image and the mean image are one flat colour each, so all ten views agree.
    Otherwise the mean image is an asymmetric ramp, so a crop or mirror taken from the wrong place shows.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, count in (("train", train), ("val", val)):
        writer = BetonWriter(root / f"{split}.beton", count)
        for i in range(count):
            label = i % classes
            pixels = np.full((size, size, 3), (30 + 40 * i) % 256, np.uint8) if uniform else photo(rng, size)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "JPEG", quality=95)
            writer.add(buf.getvalue(), label, mode=MODE_JPG, width=size, height=size)
        writer.close()
    y, x, c = np.mgrid[0:size, 0:size, 0:3]
    mean = np.full((size, size, 3), 117.0) if uniform else 40.0 + 2.5 * y + 1.5 * x + 20.0 * c
    np.savez(root / "stats.npz", mean_image=mean.astype(np.float32), eigval=np.array([900.0, 100.0, 10.0]), eigvec=np.eye(3))
    table = [{"index": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(classes)]
    (root / "classes.json").write_text(json.dumps(table))
    (root / "manifest.json").write_text(json.dumps({"format_version": 1, "settings": {"size": size}}))
    return Store(root)


def make_run(run: Path, store: Store, *, seed: int = 0) -> tuple[Path, AlexNet]:
    """A run directory as `alexkit train` leaves it: best.pt, last.pt, config.json, stats and classes."""
    torch.manual_seed(seed)
    model = AlexNet(store.num_classes, width=0.25, fc_features=32, input_size=store.crop, init="sturdy").eval()
    with torch.no_grad():
        model.fc8.weight.mul_(30.0)  # spread the probabilities, so a wrong view moves them visibly
    run.mkdir(parents=True)
    ckpt = dict(format_version=1, model=model.state_dict(), model_args=dict(model.args),
                config={"data": str(store.path)}, epoch=3, metrics=[])  # fmt: skip
    for name in ("best.pt", "last.pt"):
        torch.save(ckpt, run / name)
    (run / "config.json").write_text(json.dumps({"config": ckpt["config"]}))
    for name in ("stats.npz", "classes.json"):
        shutil.copyfile(store.path / name, run / name)
    return run / "best.pt", model


def numpy_views(pixels: np.ndarray, mean: np.ndarray, crop: int, tta: bool) -> np.ndarray:
    """(V, 3, C, C) float32 with plain slicing: centre crop, or 4 corners + centre and their mirrors."""
    x = pixels.astype(np.float64) - mean  # the paper subtracts the mean image, then takes views
    s = x.shape[0]
    far, mid = s - crop, (s - crop) // 2
    spots = [(mid, mid)] if not tta else [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    crops = [x[t : t + crop, l : l + crop] for t, l in spots]
    if tta:
        crops += [c[:, ::-1] for c in crops]
    return np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32)


def reference_probs(model: AlexNet, store: Store, tta: bool) -> np.ndarray:
    """(n, K) probabilities: the model's softmax on each view, averaged in float64."""
    val, mean = store.split("val"), store.stats.mean_image
    out = []
    for i in range(len(val)):
        views = torch.from_numpy(numpy_views(val.pixels(i), mean, store.crop, tta))
        with torch.no_grad():
            out.append(torch.softmax(model(views).double(), dim=1).mean(0).numpy())
    return np.stack(out)


def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    store = make_store(root / "store")
    ckpt, model = make_run(root / "alexkit-runs" / "r1", store)
    return root, store, ckpt, model


@pytest.fixture(scope="module")
def reference(setup):
    """{tta: (n, K) reference probabilities} for the module's store and checkpoint."""
    _, store, _, model = setup
    return {tta: reference_probs(model, store, tta) for tta in (False, True)}


@pytest.mark.parametrize("tta, batch_size", [(False, 3), (True, 3), (True, 3_000_000_000)])
def test_probabilities_match_numpy_reference(setup, reference, tta, batch_size, tmp_path):
    """Each CSV row's top-5 and probabilities equal the reference within PROB_ATOL. A batch far
    beyond the split is cut to it (DALI would allocate it, or refuse it with a multi-line error)."""
    _, store, ckpt, _ = setup
    csv_path = tmp_path / "pred.csv"
    results = evaluate(EvalConfig(checkpoint=ckpt, data=store.path, tta=tta, batch_size=batch_size, device="cpu",
                                  predictions_path=csv_path))  # fmt: skip
    ref = reference[tta]  # (n, 3)
    rows = read_predictions(csv_path)
    assert [int(r["index"]) for r in rows] == list(range(len(ref)))
    assert [int(r["label"]) for r in rows] == store.split("val").labels.tolist()
    for i, r in enumerate(rows):
        top = [int(r[f"top{j}"]) for j in range(1, 4)]  # 3 classes: top1..top3
        assert top == np.argsort(-ref[i]).tolist()
        np.testing.assert_allclose([float(r[f"p{j}"]) for j in range(1, 4)], ref[i][top], atol=PROB_ATOL)
    hit1 = ref.argmax(1) == store.split("val").labels
    assert results["n"] == len(ref) and results["tta"] is tta
    assert results["top1_err"] == pytest.approx(1 - hit1.mean())
    assert results["top5_err"] == 0.0  # 3 classes: the label is always among the top 5


def test_top5_among_eight_classes_matches_the_reference(tmp_path):
    """With more classes than five, the CSV's top1..top5 and the top-5 error follow the reference."""
    store = make_store(tmp_path / "store", classes=8, val=12, train=8, seed=3)
    ckpt, model = make_run(tmp_path / "runs" / "r", store, seed=3)
    ref = reference_probs(model, store, tta=True)  # (12, 8)
    csv_path = tmp_path / "pred.csv"
    results = evaluate(EvalConfig(checkpoint=ckpt, data=store.path, tta=True, device="cpu", predictions_path=csv_path))
    rows, labels = read_predictions(csv_path), store.split("val").labels
    assert [[int(r[f"top{j}"]) for j in range(1, 6)] for r in rows] == np.argsort(-ref, axis=1)[:, :5].tolist()
    hit5 = (np.argsort(-ref, axis=1)[:, :5] == labels[:, None]).any(axis=1)
    assert 0 < hit5.mean() < 1  # the case this is about: some labels outside the top 5
    assert results["top5_err"] == pytest.approx(1 - hit5.mean()) and results["top5_acc"] == pytest.approx(hit5.mean())
    hit1 = np.argmax(ref, axis=1) == labels
    assert results["top1_err"] == pytest.approx(1 - hit1.mean()) and results["top1_acc"] == pytest.approx(hit1.mean())


def test_each_val_image_must_be_counted_exactly_once(setup):
    from alexkit.evaluate import _check_each_once

    _, store, _, _ = setup
    _check_each_once(np.arange(7), 7, store)
    with pytest.raises(AlexkitError, match=r"gave 7 predictions for 7 images \(1 repeated, 1 missing\)"):
        _check_each_once(np.array([0, 1, 2, 3, 4, 5, 5]), 7, store)
    with pytest.raises(AlexkitError, match=r"gave 8 predictions for 7 images \(1 repeated, 0 missing\)"):
        _check_each_once(np.array([0, 1, 2, 3, 4, 5, 6, 6]), 7, store)


def test_ten_views_differ_from_the_centre_crop(reference):
    """The reference is sensitive to the views: centre and ten-crop disagree on these images."""
    assert np.abs(reference[True] - reference[False]).max() > 1e-2


def test_identical_views_score_the_same_with_and_without_tta(tmp_path):
    """Flat images with a flat mean image: all ten views are one tensor, so tta changes nothing."""
    store = make_store(tmp_path / "flat", uniform=True, val=4)
    ckpt, _ = make_run(tmp_path / "runs" / "r", store)
    got = {}
    for tta in (False, True):
        path = tmp_path / f"{tta}.csv"
        evaluate(EvalConfig(checkpoint=ckpt, data=store.path, tta=tta, device="cpu", predictions_path=path))
        got[tta] = [(r["top1"], float(r["p1"]), float(r["p2"])) for r in read_predictions(path)]
    assert len(got[False]) == 4
    for (c0, a0, b0), (c1, a1, b1) in zip(got[False], got[True], strict=True):
        assert c0 == c1 and a0 == pytest.approx(a1, abs=1e-6) and b0 == pytest.approx(b1, abs=1e-6)


def test_predict_log_probs_averages_the_softmax_over_views():
    torch.manual_seed(0)
    model = AlexNet(4, width=0.25, fc_features=16, input_size=42, init="sturdy").eval()
    with torch.no_grad():
        model.fc8.weight.mul_(30.0)  # views disagree clearly, so averaging logits instead would show
    images = torch.randn(2, 10, 3, 42, 42) * 60  # (N, V, 3, C, C)
    with torch.no_grad():
        got = predict_log_probs(model, images).exp()
        each = torch.stack([torch.softmax(model(images[i]), 1).mean(0) for i in range(2)])
        centre = predict_log_probs(model, images[:, 4]).exp()  # (N, 3, C, C): one view, plain softmax
    assert got.shape == (2, 4)
    torch.testing.assert_close(got, each, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(centre, torch.softmax(model(images[:, 4]), 1).detach())


@pytest.mark.parametrize("views", [1, 10])
def test_top_classes_keep_their_order_where_probabilities_underflow(views):
    """Logits 200, 0, 1, ..., 8: every class but 0 has probability 0 in float32, yet the order stays."""
    logits = torch.cat([torch.tensor([200.0, 0.0]), torch.arange(1.0, 9.0)])  # (10,)
    images = torch.zeros(2, views, 1) if views > 1 else torch.zeros(2, 1)
    model = lambda x: logits.expand(len(x), -1)  # noqa: E731  (N*V, 10), the same for every view
    p, top = predict_top(model, images, 5)
    assert torch.softmax(logits, 0)[1:].eq(0).all()  # the case this guards against
    assert top.tolist() == [[0, 9, 8, 7, 6]] * 2
    assert p[:, 0].tolist() == [1.0, 1.0] and (p[:, 1:] < 1e-40).all()


def test_summarize_counts_top5_among_ten_classes():
    """Labels at rank 1, 5, 6 and 10 of 10 classes: top-1 error 3/4, top-5 error 2/4, per class too."""
    ranking = np.arange(10)[None].repeat(4, 0)  # (4, 10): class 0 first
    rows = {"label": np.array([0, 4, 5, 9]), "top": ranking[:, :5]}
    got = summarize(rows, [{"index": i} for i in range(10)])
    assert (got["top1_err"], got["top5_err"], got["n"]) == (0.75, 0.5, 4)
    per = {c["index"]: (c["n"], c["top1_err"], c["top5_err"]) for c in got["per_class"]}
    assert per[0] == (1, 0.0, 0.0) and per[4] == (1, 1.0, 0.0) and per[5] == (1, 1.0, 1.0) and per[9] == (1, 1.0, 1.0)
    assert per[1] == (0, None, None)


def test_the_papers_figures_are_shown_beside_a_full_imagenet_ten_view_score():
    from alexkit.evaluate import report

    results = dict(tta=True, n=50_000, per_class=[dict(index=i, name=str(i), n=50, top1_err=0.4, top5_err=0.2) for i in range(1000)],
                   checkpoint="best.pt", epoch=90, store="alexkit-store", top1_err=0.41, top1_acc=0.59, top5_err=0.19,
                   top5_acc=0.81, images_per_s=1000.0, device="cuda:0", processes=1, seconds=50.0)  # fmt: skip
    paper = "the paper, one network on ten views (its Table 2): top-1 error 40.7%, top-5 error 18.2%"
    assert report(results, show_classes=0)[2] == paper
    not_imagenets = dict(per_class=results["per_class"][:999])
    for other in (dict(tta=False), dict(n=300), not_imagenets):  # a centre crop; the demo's store; 999 classes
        assert paper not in report({**results, **other}, show_classes=0)


def test_errors_are_misses_over_n_exactly_and_tied_worst_classes_keep_index_order():
    """1 - mean(hits) would give 0.04761904761904767 for 3 misses in 63; ties among the worst classes
    are listed by class index, as among the best."""
    from alexkit.evaluate import report

    label = np.arange(63) % 3
    top = np.stack([label, (label + 1) % 3], axis=1)  # (63, 2): right first, then another class
    top[:3] = (label[:3, None] + 1) % 3  # images 0, 1, 2 (one of each class) missed in the top 2 as well
    results = summarize({"label": label, "top": top}, [{"index": i, "name": f"c{i}"} for i in range(3)])
    assert results["top1_err"] == results["top5_err"] == 3 / 63
    assert [c["top1_err"] for c in results["per_class"]] == [1 / 21] * 3
    results.update(tta=False, checkpoint="c.pt", store="s", epoch=1, seconds=1.0, images_per_s=63.0, processes=1, device="cpu")
    lines = report(results, show_classes=1)
    assert lines[lines.index("worst classes:") + 1].endswith(" 0 c0")
    # 3 classes: every label is among the top 5, so no top-5 figure is shown as if it were a result
    assert "top-5 error not meaningful with 3 classes  n=63" in lines[1] and "% top-5" not in "\n".join(lines)
    top[1] = [(label[1] + 1) % 3, label[1]]  # class 1's miss has its label second: the same top-1, a better top-5
    results.update(summarize({"label": label, "top": top}, [{"index": i, "name": f"c{i}"} for i in range(3)]))
    lines = report(results, show_classes=1)
    assert lines[lines.index("best classes (top-1 error):") + 1].endswith(" 1 c1")
    assert lines[lines.index("worst classes:") + 1].endswith(" 0 c0")


def test_json_holds_totals_and_per_class(setup, tmp_path, capsys):
    _, store, ckpt, _ = setup
    path = tmp_path / "r.json"
    evaluate(EvalConfig(checkpoint=ckpt, data=store.path, tta=True, device="cpu", json_path=path))
    out = json.loads(path.read_text())
    assert {"top1_err", "top5_err", "n", "tta", "checkpoint"} <= out.keys()
    assert out["n"] == 7 and out["tta"] is True and out["checkpoint"] == str(ckpt.absolute())
    per = out["per_class"]
    assert [c["n"] for c in per] == [3, 2, 2]  # labels i % 3 for i in 0..6
    weighted = sum(c["n"] * c["top1_err"] for c in per) / out["n"]
    assert weighted == pytest.approx(out["top1_err"])
    text = capsys.readouterr().out
    assert "top-1 error" in text and "n=7" in text and "ten-crop" in text and "worst classes" in text
    assert re.search(r"throughput [\d,]+ images/s \([\d,]+ views/s\) on cpu x 1 process, ", text), text


def test_each_file_written_is_said_and_a_stream_is_not(setup, tmp_path, capfd):
    """eval ended with its throughput line, never saying which files it wrote (show-batch, plot and
    sample say it). A stream is no file to name, and after `--predictions /dev/stdout` a `wrote` line
    would be read as one more row."""
    _, store, ckpt, _ = setup
    evaluate(EvalConfig(checkpoint=ckpt, data=store.path, device="cpu", progress="none", json_path=tmp_path / "e.json",
                        predictions_path=tmp_path / "p.csv"))  # fmt: skip
    assert capfd.readouterr().out.splitlines()[-2:] == [f"wrote {tmp_path / 'p.csv'}", f"wrote {tmp_path / 'e.json'}"]
    evaluate(EvalConfig(checkpoint=ckpt, data=store.path, device="cpu", progress="none", predictions_path=Path("/dev/stdout")))
    out = capfd.readouterr().out
    assert out.endswith((tmp_path / "p.csv").read_bytes().decode()) and "wrote" not in out, out


def test_a_file_that_cannot_be_written_leaves_the_other_written(setup, tmp_path):
    """--predictions' folder removed while the evaluation ran: the --json file is still written, and the
    one error (exit code 1) names the file that failed and the one written; both failing, it names both."""
    _, store, ckpt, _ = setup
    gone = tmp_path / "gone"
    gone.mkdir()
    cfg = EvalConfig(checkpoint=ckpt, data=store.path, device="cpu", predictions_path=gone / "p.csv", json_path=tmp_path / "e.json")
    gone.rmdir()  # after the flags' checks, as by another process meanwhile
    with pytest.raises(AlexkitError, match=rf"^{gone}/p.csv: No such file or directory \(--json {tmp_path}/e.json was written\); "
                                           "check that path ") as failed:  # fmt: skip
        evaluate(cfg)
    assert failed.value.exit_code == 1 and json.loads((tmp_path / "e.json").read_text())["n"] == 7
    gone.mkdir()
    cfg = EvalConfig(checkpoint=ckpt, data=store.path, device="cpu", predictions_path=gone / "p.csv", json_path=gone / "e.json")
    gone.rmdir()
    with pytest.raises(AlexkitError, match=rf"^{gone}/p.csv: No such file or directory; {gone}/e.json: No such file or "
                                           "directory; check those paths "):  # fmt: skip
        evaluate(cfg)


def test_both_files_over_the_file_size_limit_name_the_limit_not_free_space(setup, tmp_path):
    """--predictions and --json both refused with EFBIG (`ulimit -f`): the one error names the limit."""
    from tests.test_prepare import file_size_limit

    _, store, ckpt, _ = setup
    pred, out = tmp_path / "p.csv", tmp_path / "e.json"
    r = subprocess.run([sys.executable, "-m", "alexkit", "eval", "--checkpoint", str(ckpt), "--data", str(store.path), "--device",
                        "cpu", "--predictions", str(pred), "--json", str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "200"}, preexec_fn=file_size_limit(64))  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[-1] == (f"error: {pred}: File too large; {out}: File too large; raise the per-file size limit "
                                         "(`ulimit -f`: 64 bytes here) or write to a file system that holds files this large"), r.stderr  # fmt: skip
    assert not pred.exists() and not out.exists()


def test_default_checkpoint_and_store_come_from_the_latest_run(setup, tmp_path, monkeypatch, capsys):
    """No flags: DEFAULT_RUNS' newest run's best.pt, evaluated on the store its config names; a newer
    run stopped before its first checkpoint is passed over."""
    root, store, _, _ = setup
    monkeypatch.chdir(root)
    stopped = root / "alexkit-runs" / "r2"
    stopped.mkdir()
    (stopped / "config.json").write_text((root / "alexkit-runs" / "r1" / "config.json").read_text())
    (stopped / "metrics.jsonl").write_text("")
    try:
        results = evaluate(EvalConfig(device="cpu"))
    finally:
        shutil.rmtree(stopped)  # the fixture's runs are shared with other tests
    assert results["checkpoint"] == str(Path("alexkit-runs/r1/best.pt").absolute())  # as the store: readable from anywhere
    assert "note: alexkit-runs/r2 has no checkpoint yet; using alexkit-runs/r1" in capsys.readouterr().err
    assert results["store"] == str(store.path) and results["n"] == 7
    assert find_checkpoint(root / "alexkit-runs" / "r1") == root / "alexkit-runs" / "r1" / "best.pt"
    monkeypatch.chdir(store.path.parent)
    results = evaluate(EvalConfig(checkpoint=root / "alexkit-runs" / "r1", data=Path(store.path.name), device="cpu"))
    assert results["store"] == str(store.path)  # --data given relative: said whole, as the checkpoint is


def test_a_store_that_prepare_is_writing_is_not_evaluated_on(setup):
    from alexkit.pipeline.prepare import _only_writer

    _, store, ckpt, _ = setup
    with _only_writer(store.path):  # as if `alexkit prepare --force` were rewriting it
        with pytest.raises(AlexkitError, match=f"`alexkit prepare` is writing store {store.path}; wait for it to end"):
            evaluate(EvalConfig(checkpoint=ckpt, data=store.path, device="cpu"))


def test_bad_inputs_are_one_line_errors(setup, tmp_path, monkeypatch):
    _, store, ckpt, _ = setup
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AlexkitError, match="no run with a checkpoint"):
        find_checkpoint(None)
    with pytest.raises(AlexkitError, match="does not exist"):
        find_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "config.json").write_text("{}")
    with pytest.raises(AlexkitError, match=r"stopped before its first epoch ended; train it again with `alexkit train --out .*stopped` and the flags it had"):
        find_checkpoint(tmp_path / "stopped", prefer=("last.pt",))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(AlexkitError, match="not an alexkit checkpoint"):
        evaluate(EvalConfig(checkpoint=tmp_path / "plain.pt", data=store.path, device="cpu"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(AlexkitError, match="legacy.pt is not an alexkit checkpoint"):  # not "damaged (its zip directory ...)"
        evaluate(EvalConfig(checkpoint=tmp_path / "legacy.pt", data=store.path, device="cpu"))
    ckpt_dict = torch.load(ckpt, weights_only=True)
    ckpt_dict["model"]["fc8.bias"][0] = float("nan")  # training stops at a non-finite loss: a file changed since
    torch.save(ckpt_dict, tmp_path / "nan.pt")
    with pytest.raises(AlexkitError, match=r"nan.pt: its weights are not all finite \(fc8.bias holds NaN or inf\)"):
        evaluate(EvalConfig(checkpoint=tmp_path / "nan.pt", data=store.path, device="cpu"))
    no_val = make_store(tmp_path / "no-val", val=0)  # every val file skipped: not a batch of 0 for DALI to refuse
    with pytest.raises(AlexkitError, match=r"no-val/val.beton holds no images; run `alexkit prepare` on a source with validation"):
        evaluate(EvalConfig(checkpoint=ckpt, data=no_val.path, device="cpu"))
    other = make_store(tmp_path / "five", classes=5, val=2, train=2)
    with pytest.raises(AlexkitError, match="3 classes but store"):
        evaluate(EvalConfig(checkpoint=ckpt, data=other.path, device="cpu"))
    with pytest.raises(AlexkitError, match="--batch-size"):
        EvalConfig(batch_size=0)
    with pytest.raises(AlexkitError, match="--device"):
        EvalConfig(device="gpu")
    # Output paths are checked before an evaluation whose figures they would lose.
    with pytest.raises(AlexkitError, match="--json .*: its folder .*nodir does not exist"):
        EvalConfig(json_path=tmp_path / "nodir" / "e.json")
    with pytest.raises(AlexkitError, match="--predictions .* is a folder"):
        EvalConfig(predictions_path=tmp_path)
    with pytest.raises(AlexkitError, match="--json and --predictions both name .*same.out; give each its own file"):
        EvalConfig(json_path=tmp_path / "same.out", predictions_path=tmp_path / "same.out")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(AlexkitError, match="--json .*: its folder .*a-file is a file"):
        EvalConfig(json_path=tmp_path / "a-file" / "e.json")
    if os.path.isdir("/proc/self"):  # a folder no one can create files in, root included
        with pytest.raises(AlexkitError, match="--json /proc/e.json: cannot write in /proc") as refused:
            EvalConfig(json_path=Path("/proc/e.json"))
        assert refused.value.exit_code == 1  # a path the system refuses, not a bad value


def test_eval_outputs_never_overwrite_the_checkpoint_the_run_or_the_store(setup, tmp_path):
    """--json/--predictions naming best.pt, a run's own file, a store file or any other .pt/.beton/.npz
    are refused before the evaluation, each file left as it was; a file of another kind is overwritten."""
    _, store, ckpt, _ = setup
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    kept = tmp_path / "kept"
    shutil.copytree(store.path, kept)
    (kept / ".prepare-new").mkdir()  # as a `prepare --force` under way has it
    other = tmp_path / "other.pt"
    other.write_bytes(b"a checkpoint")
    before = {p: p.read_bytes() for p in [*run.iterdir(), *kept.iterdir(), other] if p.is_file()}
    for flag, path, what in (("json_path", run / "best.pt", "would overwrite the best.pt of the run .*run"),
                             ("predictions_path", run / "last.pt", "would overwrite the last.pt of the run .*run"),
                             ("json_path", run / "metrics.jsonl", "would overwrite the metrics.jsonl of the run .*run"),
                             ("predictions_path", kept / "val.beton", "is in the folder of the store .*kept"),
                             ("json_path", kept / "manifest.json", "is in the folder of the store .*kept"),
                             ("json_path", kept / "eval.json", "is in the folder of the store .*kept"),
                             ("json_path", kept / ".prepare-new" / "e.json", "is in the folder of the store .*kept"),
                             ("json_path", other, "would overwrite a .pt file")):  # fmt: skip
        flag_name = "--json" if flag == "json_path" else "--predictions"
        with pytest.raises(AlexkitError, match=rf"{flag_name} .*{path.name} {what}; name another file"):
            evaluate(EvalConfig(checkpoint=run, data=kept, device="cpu", **{flag: path}))
    assert {p: p.read_bytes() for p in before} == before
    (run / "eval.json").write_text("an earlier evaluation")
    evaluate(EvalConfig(checkpoint=run, data=kept, device="cpu", json_path=run / "eval.json"))
    assert json.loads((run / "eval.json").read_text())["n"] == len(store.split("val"))


def test_damaged_run_files_are_one_line_errors_naming_them(setup, tmp_path):
    """A zero-byte or cut-off checkpoint, stats.npz or classes.json: the file named, with the fix."""
    _, store, ckpt, _ = setup
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    whole = ckpt.read_bytes()
    for cut in (0, 100, len(whole) // 2):  # torch says EOFError, or that its zip reader found no central directory
        (run / "best.pt").write_bytes(whole[:cut])
        with pytest.raises(AlexkitError, match=rf"checkpoint .*best.pt is truncated or damaged \({cut:,} bytes; .*\); copy it again "
                                               "from where it was written, or pass another best.pt/last.pt"):  # fmt: skip
            evaluate(EvalConfig(checkpoint=run, data=store.path, device="cpu"))
    (run / "best.pt").write_bytes(b"hello")
    with pytest.raises(AlexkitError, match=r"cannot load checkpoint .*best.pt: not a file torch.save wrote, or damaged from its start"):
        evaluate(EvalConfig(checkpoint=run, data=store.path, device="cpu"))
    with pytest.raises(AlexkitError, match=r"cannot load checkpoint .*stats.npz: not a file torch.save wrote, or damaged from its start"):
        evaluate(EvalConfig(checkpoint=run / "stats.npz", data=store.path, device="cpu"))  # a zip, but numpy's
    shutil.copyfile(ckpt, run / "best.pt")
    for name, damage in (("stats.npz", b""), ("stats.npz", (ckpt.parent / "stats.npz").read_bytes()[:100]),
                         ("classes.json", b""), ("classes.json", b'[{"index": 1}]'),
                         ("classes.json", json.dumps([{"index": i, "wnid": f"n{i}"} for i in range(3)]).encode())):  # fmt: skip
        (run / name).write_bytes(damage)
        with pytest.raises(AlexkitError, match=rf"{name} is not a {name} written by `alexkit prepare` .*; copy it again"):
            evaluate(EvalConfig(checkpoint=run, data=store.path, device="cpu"))
        shutil.copyfile(ckpt.parent / name, run / name)
    with pytest.raises(AlexkitError, match="is a file, not a store folder"):
        evaluate(EvalConfig(checkpoint=run, data=run / "best.pt", device="cpu"))


def test_a_folder_of_runs_points_to_its_latest_run(setup, tmp_path):
    _, _, ckpt, _ = setup
    runs = tmp_path / "alexkit-runs"
    for name in ("20260101-000000", "20260102-000000"):
        shutil.copytree(ckpt.parent, runs / name)
    with pytest.raises(AlexkitError, match=r"alexkit-runs is a folder of runs, not a run; .* the latest: .*20260102-000000"):
        find_checkpoint(runs)


def test_a_store_other_than_the_runs_is_refused(setup, tmp_path):
    """Same size and class count, other classes or mean image: the run's copies tell them apart."""
    _, store, ckpt, _ = setup
    other = tmp_path / "other"
    shutil.copytree(store.path, other)
    table = json.loads((other / "classes.json").read_text())
    table = [dict(c, wnid=t["wnid"], name=t["name"]) for c, t in zip(table, table[::-1])]  # the classes in another order
    (other / "classes.json").write_text(json.dumps(table))
    with pytest.raises(AlexkitError, match="has other classes than .*classes.json; pass --data with the store"):
        evaluate(EvalConfig(checkpoint=ckpt, data=other, device="cpu"))
    shutil.copyfile(store.path / "classes.json", other / "classes.json")
    np.savez(other / "stats.npz", mean_image=np.zeros((SIZE, SIZE, 3), np.float32), eigval=np.ones(3), eigvec=np.eye(3))
    with pytest.raises(AlexkitError, match="has another mean image than"):
        evaluate(EvalConfig(checkpoint=ckpt, data=other, device="cpu"))


def test_a_moved_project_folder_still_chains(setup, tmp_path, monkeypatch, capsys):
    """prepare -> train -> eval in one folder, then the folder moved: the store path in the run is
    gone, and eval reads the store beside the runs folder, checked against the run's copies."""
    _, store, ckpt, _ = setup
    project = tmp_path / "moved"
    shutil.copytree(store.path, project / "alexkit-store")
    run = project / "alexkit-runs" / "20260101-000000"
    shutil.copytree(ckpt.parent, run)
    config = {"data": str(tmp_path / "old-place" / "alexkit-store")}
    torch.save(dict(torch.load(run / "best.pt", weights_only=True), config=config), run / "best.pt")
    (run / "config.json").write_text(json.dumps({"config": config}))
    (tmp_path / "elsewhere").mkdir()
    shutil.copytree(store.path, tmp_path / "elsewhere" / "alexkit-store")
    monkeypatch.chdir(tmp_path / "elsewhere")  # a ./alexkit-store of the working folder is not the run's
    results = evaluate(EvalConfig(checkpoint=run, device="cpu"))
    assert results["store"] == str(project / "alexkit-store") and results["n"] == len(store.split("val"))
    assert f"reading {project / 'alexkit-store'}, the store of that name beside its runs folder" in capsys.readouterr().err
    (run / "config.json").write_text(json.dumps({"config": {"data": "/another/run/s/store"}}))
    with pytest.raises(AlexkitError, match="which is not there .*; pass --data"):  # the folder's files are another run's
        evaluate(EvalConfig(checkpoint=run, device="cpu"))
    (run / "config.json").write_text(json.dumps({"config": config}))
    np.savez(project / "alexkit-store" / "stats.npz", mean_image=np.zeros((SIZE, SIZE, 3), np.float32), eigval=np.ones(3),
             eigvec=np.eye(3))  # fmt: skip
    with pytest.raises(AlexkitError, match="has another mean image than"):  # another store: refused, not used
        evaluate(EvalConfig(checkpoint=run, device="cpu"))


def test_a_missing_store_or_mismatched_weights_are_one_line_errors(setup, tmp_path):
    _, store, ckpt, _ = setup
    moved = torch.load(ckpt, weights_only=True)
    moved["config"] = {"data": str(tmp_path / "gone")}
    torch.save(moved, tmp_path / "moved.pt")
    with pytest.raises(AlexkitError, match="trained on the store .*gone, which is not there .*; pass --data"):
        evaluate(EvalConfig(checkpoint=tmp_path / "moved.pt", device="cpu"))
    bad = dict(moved, model_args=dict(moved["model_args"], fc_features=16))
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(AlexkitError, match=r"bad.pt: its weights do not fit its model_args \(fc6.weight is \[32, 64\] in the file "
                                           r"but \[16, 64\] by its model_args, and 4 more\); pass"):  # fmt: skip
        evaluate(EvalConfig(checkpoint=tmp_path / "bad.pt", data=store.path, device="cpu"))
    torch.save(dict(moved, model_args=dict(moved["model_args"], width=0.5)), tmp_path / "wide.pt")
    with pytest.raises(AlexkitError, match=r"wide.pt: its weights do not fit its model_args \(conv1.weight is \[24, 3, 11, 11\] "
                                           r"in the file but \[48, 3, 11, 11\] by its model_args, and \d+ more\)"):  # fmt: skip
        evaluate(EvalConfig(checkpoint=tmp_path / "wide.pt", data=store.path, device="cpu"))
    model = dict(moved["model"])
    del model["fc8.bias"]
    torch.save(dict(moved, model=model), tmp_path / "short.pt")
    with pytest.raises(AlexkitError, match=r'short.pt: its weights do not fit its model_args \(Missing key\(s\) in state_dict: "fc8.bias"\); '):
        evaluate(EvalConfig(checkpoint=tmp_path / "short.pt", data=store.path, device="cpu"))


def test_a_checkpoint_with_bytes_changed_inside_a_tensor_is_damaged_not_loaded(setup, tmp_path):
    """torch.load does not check the CRC-32s torch.save stores; reading them again does."""
    _, store, ckpt, _ = setup
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    data = bytearray(ckpt.read_bytes())
    middle = len(data) // 2  # inside the largest tensor (fc6's weights)
    data[middle : middle + 1000] = bytes(1000)
    (run / "best.pt").write_bytes(data)
    torch.load(run / "best.pt", weights_only=True)  # what would have been trained on or evaluated
    with pytest.raises(AlexkitError, match=r"checkpoint .*best.pt is damaged \(record .*/data/\d+ fails its CRC-32 check\); copy it again "
                                           "from where it was written, or pass another best.pt/last.pt"):  # fmt: skip
        evaluate(EvalConfig(checkpoint=run, data=store.path, device="cpu"))
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)  # records without a CRC-32 (all zero) are taken as they are
    try:
        torch.save(torch.load(ckpt, weights_only=True), run / "best.pt")
    finally:
        torch.serialization.set_crc32_options(before)
    assert read_checkpoint(run / "best.pt")["model_args"] == read_checkpoint(ckpt)["model_args"]


def test_a_truncated_checkpoint_is_one_line_in_eval_predict_and_resume(setup, tmp_path):
    _, store, ckpt, _ = setup
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    for name in ("best.pt", "last.pt"):  # as a copy that stopped half-way leaves them
        (run / name).write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    Image.fromarray(photo(np.random.default_rng(0), SIZE)).save(tmp_path / "a.jpg")
    env = {**os.environ, "COLUMNS": "200"}
    for args in (["eval", "--checkpoint", str(run), "--data", str(store.path)], ["predict", str(tmp_path / "a.jpg"), "--checkpoint", str(run)],
                 ["train", "--resume", str(run)]):  # fmt: skip
        r = subprocess.run([sys.executable, "-m", "alexkit", *args, "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2, r.stderr
        [line] = r.stderr.splitlines()
        assert re.fullmatch(r"error: checkpoint .*/run/(best|last).pt is truncated or damaged \([\d,]+ bytes; .*\); copy it again .*", line), line


def test_eval_writes_its_files_when_stdout_is_a_closed_pipe(setup, tmp_path):
    """`alexkit eval --json E | head -0`: the figures cannot be printed, the files are still written."""
    _, store, ckpt, _ = setup
    read, write = os.pipe()
    os.close(read)  # no reader: the first print fails (EPIPE)
    cmd = [sys.executable, "-m", "alexkit", "eval", "--checkpoint", str(ckpt), "--data", str(store.path), "--device", "cpu",
           "--json", str(tmp_path / "e.json"), "--predictions", str(tmp_path / "p.csv")]  # fmt: skip
    r = subprocess.run(cmd, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write)
    assert r.returncode == 1 and r.stderr == "", r.stderr  # as `yes | head` ends: without a word
    assert json.loads((tmp_path / "e.json").read_text())["n"] == len(read_predictions(tmp_path / "p.csv")) == len(store.split("val"))


def test_dash_is_stdout_holding_the_output_alone_and_the_figures_go_to_stderr(setup, tmp_path):
    """`eval --json -` wrote a file named - in the current folder, and `eval --json /dev/stdout | jq`
    failed on the figures printed first. `-` is stdout, which then holds the JSON alone, the progress,
    figures and `wrote` lines going to stderr; a file named - is still ./-."""
    _, store, ckpt, _ = setup
    cmd = [sys.executable, "-m", "alexkit", "eval", "--checkpoint", str(ckpt), "--data", str(store.path), "--device", "cpu",
           "--progress", "plain", "--json", "-", "--predictions", "./-"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 7
    assert "eval: 7/7 (100%)" in r.stderr and "top-1 error" in r.stderr and r.stderr.endswith(f"\nwrote {tmp_path}/-\n"), r.stderr
    assert os.listdir(tmp_path) == ["-"] and len(read_predictions(tmp_path / "-")) == 7


def test_dash_into_a_closed_stdout_ends_as_a_closed_stdout_does_with_the_other_file_written(setup, tmp_path):
    """`eval --json - --predictions p.csv | true`: the pipe's reader has gone. That is the closed-stdout
    exit (1, no message), not a path to check for "permissions, free space"; p.csv is written."""
    _, store, ckpt, _ = setup
    cmd = [sys.executable, "-m", "alexkit", "eval", "--checkpoint", str(ckpt), "--data", str(store.path), "--device", "cpu",
           "--progress", "none", "--json", "-", "--predictions", "p.csv"]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    p.stdout.close()  # as `| true` leaves it
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 1 and "error:" not in err and "Broken pipe" not in err, err
    assert len(read_predictions(tmp_path / "p.csv")) == 7


def test_dash_is_named_as_typed_and_two_outputs_to_stdout_are_refused(setup, tmp_path, capfd):
    """`eval --json - --predictions -` was refused as "both name /dev/stdout", a path not typed; the
    messages about an output given as `-` name it `- (stdout)`: both to stdout, stdout into a store's
    folder, and stdout full (the other file written)."""
    from alexkit.cli.main import main

    _, store, ckpt, _ = setup
    with pytest.raises(SystemExit) as done:
        main(["eval", "--checkpoint", str(ckpt), "--data", str(store.path), "--json", "-", "--predictions", "-"])
    assert done.value.code == 2
    assert capfd.readouterr() == ("", "error: --json and --predictions both write to - (stdout), where the CSV and the "
                                      "JSON would run together; give one of them a file\n")  # fmt: skip
    other = make_store(tmp_path / "other").path
    cmd = [sys.executable, "-m", "alexkit", "eval", "--checkpoint", str(ckpt), "--data", str(store.path), "--device", "cpu",
           "--progress", "none", "--json", "-"]  # fmt: skip
    with open(other / "e.json", "w") as into_store:
        r = subprocess.run(cmd, stdout=into_store, stderr=subprocess.PIPE, text=True, timeout=300)
    assert (r.returncode, r.stderr) == (2, f"error: --json - (stdout) is in the folder of the store {other}; name another file\n")
    if not os.path.exists("/dev/full"):
        return
    with open("/dev/full", "w") as full:  # every write fails: no space left on device
        r = subprocess.run([*cmd, "--predictions", str(tmp_path / "p.csv")], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(  # after the figures, on stderr
        f"error: - (stdout): No space left on device (--predictions {tmp_path / 'p.csv'} was written); "), r.stderr


def test_cli_eval_tta(setup, tmp_path):
    _, store, ckpt, _ = setup
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "alexkit", "eval", "--tta", "--checkpoint", str(ckpt), "--data", str(store.path),
           "--device", "cpu", "--json", str(tmp_path / "r.json")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "top-5 error" in r.stdout and "images/s" in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["tta"] is True


def test_progress_none_leaves_stdout_to_the_figures_and_a_bad_mode_is_refused(setup, capsys):
    """`eval --predictions /dev/stdout | parser`: the progress lines came before the figures and the
    CSV, with no way to leave them out; `--progress none` does, as for train."""
    _, store, ckpt, _ = setup
    for mode, lines in (("plain", True), ("none", False)):
        evaluate(EvalConfig(checkpoint=ckpt, data=store.path, device="cpu", batch_size=2, progress=mode))
        out = capsys.readouterr().out
        assert any(line.startswith("eval: ") for line in out.splitlines()) is lines and "top-5 error" in out, out
    with pytest.raises(AlexkitError, match=r"^--progress 'bars' is not one of auto, rich, plain, none$"):
        EvalConfig(checkpoint=ckpt, data=store.path, progress="bars")


def eval_on_two_processes(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node=2 -m alexkit eval ARGS --device cpu`: two gloo processes."""
    # --local-addr: a CI machine's hostname may not resolve, and --standalone hands it to the workers.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1", "--nproc-per-node=2",
           "-m", "alexkit", "eval", *args, "--device", "cpu"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_torchrun_counts_every_image_once(setup, tmp_path):
    """Two gloo processes on CPU: the gathered CSV equals the single-process one, row for row."""
    _, store, ckpt, _ = setup
    single, double = tmp_path / "one.csv", tmp_path / "two.csv"
    evaluate(EvalConfig(checkpoint=ckpt, data=store.path, tta=True, batch_size=2, device="cpu", predictions_path=single))
    r = eval_on_two_processes("--tta", "--checkpoint", str(ckpt), "--data", str(store.path), "--batch-size", "2",
                              "--predictions", str(double), "--json", str(tmp_path / "two.json"))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("throughput") == 1  # rank 0 alone reports
    a, b = read_predictions(single), read_predictions(double)
    assert [x["index"] for x in b] == [str(i) for i in range(7)]
    for x, y in zip(a, b):
        assert (x["label"], x["top1"], x["top2"]) == (y["label"], y["top1"], y["top2"])
        assert float(x["p1"]) == pytest.approx(float(y["p1"]), abs=PROB_ATOL)
    assert json.loads((tmp_path / "two.json").read_text())["n"] == 7


def test_torchrun_with_more_processes_than_val_images(tmp_path):
    """One val image, two processes: rank 1 reads none, and its empty rows (5 top columns where
    3 classes give 3) must not break the gather."""
    store = make_store(tmp_path / "store", classes=3, val=1, train=1)
    ckpt, _ = make_run(tmp_path / "runs" / "r", store)
    r = eval_on_two_processes("--checkpoint", str(ckpt), "--data", str(store.path), "--predictions", str(tmp_path / "two.csv"))
    assert r.returncode == 0, r.stdout + r.stderr
    [row] = read_predictions(tmp_path / "two.csv")
    assert (row["index"], row["label"]) == ("0", "0") and {"top3", "p3"} <= set(row) and "top4" not in row


def test_eval_outputs_are_refused_only_where_they_would_overwrite(tmp_path, monkeypatch):
    """check_spares refuses a run file's name beside the checkpoint or over an existing file of another
    run, a .pt/.beton/.npz only where one exists (.npz included: another store's stats), and a store's
    folder named by a relative path too; a config.json elsewhere, or a new file of any suffix, is written."""
    run, store, elsewhere = tmp_path / "run", tmp_path / "store", tmp_path / "elsewhere"
    for folder in (run, store, elsewhere):
        folder.mkdir()
    ckpt = run / "best.pt"
    (elsewhere / "stats.npz").write_bytes(b"another store's statistics")
    for flag, path in (("json_path", elsewhere / "config.json"), ("predictions_path", elsewhere / "metrics.jsonl"),
                       ("json_path", elsewhere / "new.pt"), ("predictions_path", elsewhere / "new.npz")):  # fmt: skip
        EvalConfig(**{flag: path}).check_spares(ckpt, store)  # nothing to overwrite: allowed
    with pytest.raises(AlexkitError, match=r"--json .*elsewhere/stats.npz would overwrite a .npz file; name another file"):
        EvalConfig(json_path=elsewhere / "stats.npz").check_spares(ckpt, store)
    with pytest.raises(AlexkitError, match=r"--predictions .*config.json would overwrite the config.json of the run"):
        EvalConfig(predictions_path=run / "config.json").check_spares(ckpt, store)
    other_run = tmp_path / "other-run"  # another run's files: a typo in a runs folder must not cost its curves
    other_run.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (other_run / name).write_text("{}\n")
    with pytest.raises(AlexkitError, match=r"--json .*metrics.jsonl would overwrite the metrics.jsonl of the run .*other-run"):
        EvalConfig(json_path=other_run / "metrics.jsonl").check_spares(ckpt, store)
    EvalConfig(json_path=other_run / "eval.json").check_spares(ckpt, store)  # a new file beside them: allowed
    (other_run / "config.json").unlink()  # its lock file left: still a run, whose curves are kept
    (other_run / ".train.lock").write_bytes(b"")
    with pytest.raises(AlexkitError, match=r"--json .*metrics.jsonl would overwrite the metrics.jsonl of the run .*other-run"):
        EvalConfig(json_path=other_run / "metrics.jsonl").check_spares(ckpt, store)
    other_store = tmp_path / "other-store"
    other_store.mkdir()
    for name in ("manifest.json", "classes.json"):
        (other_store / name).write_text("{}")
    with pytest.raises(AlexkitError, match=r"--json .*manifest.json is in the folder of the store .*other-store; name another"):
        EvalConfig(json_path=other_store / "manifest.json").check_spares(ckpt, store)
    monkeypatch.chdir(store)
    with pytest.raises(AlexkitError, match=r"--json e.json is in the folder of the store"):
        EvalConfig(json_path=Path("e.json")).check_spares(ckpt, store)


@pytest.mark.parametrize("tta", [False, True], ids=["centre", "ten-views"])
def test_running_out_of_gpu_memory_is_one_line_with_a_lower_batch_size(setup, monkeypatch, tta):
    """torch's OutOfMemoryError (raised here by hand: this machine has no GPU) came out as the generic
    `error: OutOfMemoryError: ...`, without --batch-size, though --tta's default batch of 128 images
    is 1,280 crops. Now what torch said up to the free memory, the batch per process, and the fix;
    exit code 1, as train's."""
    from alexkit import evaluate as evaluate_module

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                     "79.19 GiB of which 1.06 GiB is free. Including non-PyTorch memory, ...")  # fmt: skip

    monkeypatch.setattr(evaluate_module, "predict_top", out_of_memory)
    _, store, ckpt, _ = setup
    with pytest.raises(AlexkitError) as failed:
        evaluate(EvalConfig(checkpoint=ckpt, data=store.path, device="cpu", batch_size=4, tta=tta, progress="none"))
    views = " x 10 views" if tta else ""
    assert failed.value.exit_code == 1
    assert str(failed.value) == ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
                                 f"which 1.06 GiB is free (at 4 images{views} per process on cpu); free the GPU (nvidia-smi "
                                 "lists what holds it) or pass a lower --batch-size, e.g. --batch-size 2")  # fmt: skip
    with pytest.raises(AlexkitError) as failed:  # one image a batch: nothing lower to pass
        evaluate(EvalConfig(checkpoint=ckpt, data=store.path, device="cpu", batch_size=1, tta=tta, progress="none"))
    assert str(failed.value).endswith(f"(at 1 image{views} per process on cpu); free the GPU (nvidia-smi lists what holds it)")
