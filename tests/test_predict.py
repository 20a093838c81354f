"""predict: the same numbers as eval for the same pixels; prepare's resize; works without the store."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexkit.errors import AlexkitError
from alexkit.evaluate import EvalConfig, evaluate
from alexkit.pipeline.imageops import decode_resized
from alexkit.predict import PredictConfig, list_images, load_image, predict
from tests.test_evaluate import PROB_ATOL, make_run, make_store
from tests.test_prepare import bomb_png


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    store = make_store(root / "store", val=4)
    ckpt, _ = make_run(root / "runs" / "r1", store)
    folder = root / "images"
    folder.mkdir()
    val = store.split("val")
    for i in range(len(val)):  # the stored pixels themselves, lossless: predict must see what eval sees
        Image.fromarray(val.pixels(i)).save(folder / f"val{i}.png")
    return root, store, ckpt, folder


@pytest.mark.parametrize("tta", [False, True])
def test_predict_agrees_with_eval_on_the_same_pixels(setup, tta, tmp_path):
    root, store, ckpt, folder = setup
    evaluate(EvalConfig(checkpoint=ckpt, data=store.path, tta=tta, device="cpu", predictions_path=tmp_path / "p.csv"))
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    got = predict(PredictConfig(images=(folder,), checkpoint=ckpt, tta=tta, top_k=3, device="cpu"))
    assert [r["path"] for r in got] == [str(folder / f"val{i}.png") for i in range(4)]
    for row, res in zip(rows, got):
        assert [t["index"] for t in res["top"]] == [int(row[f"top{j}"]) for j in (1, 2, 3)]
        np.testing.assert_allclose([t["prob"] for t in res["top"]], [float(row[f"p{j}"]) for j in (1, 2, 3)], atol=PROB_ATOL)
        assert res["top"][0]["name"] == f"class {res['top'][0]['index']}"


def test_resize_is_prepares(setup, tmp_path):
    """A large non-square photo goes through prepare's decode_resized: shorter side to S, centre square."""
    rng = np.random.default_rng(1)
    big = np.asarray(Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)).resize((310, 200), Image.BILINEAR))
    path = tmp_path / "wide.jpg"
    Image.fromarray(big).save(path, quality=92)
    got = load_image(path, 48)
    assert got.shape == (48, 48, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.asarray(decode_resized(path.read_bytes(), 48)))


def test_run_directory_is_enough_without_the_store(setup, tmp_path, capsys):
    """stats.npz and classes.json copied into the run directory stand in for a deleted store."""
    root, store, ckpt, folder = setup
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    config = {"data": str(tmp_path / "gone")}  # the store the run names no longer exists
    import torch

    c = torch.load(run / "best.pt", weights_only=True)
    c["config"] = config
    torch.save(c, run / "best.pt")
    a = predict(PredictConfig(images=(folder / "val1.png",), checkpoint=run, device="cpu"))
    b = predict(PredictConfig(images=(folder / "val1.png",), checkpoint=ckpt, data=store.path, device="cpu"))
    assert a[0]["top"] == b[0]["top"] and len(a[0]["top"]) == 3  # 3 classes: top_k capped
    assert "val1.png" in capsys.readouterr().out


def test_the_checkpoint_used_is_said_on_stderr(setup, tmp_path, monkeypatch, capsys):
    """With no --checkpoint, the latest run's best.pt, or its last.pt where best.pt is gone: named
    with its epoch as eval names it, on stderr (stdout holds only the predictions)."""
    _, _, ckpt, folder = setup
    run = tmp_path / "alexkit-runs" / "20260101-000000"
    shutil.copytree(ckpt.parent, run)
    (run / "best.pt").unlink()
    monkeypatch.chdir(tmp_path)
    predict(PredictConfig(images=(folder / "val1.png",), device="cpu"))
    out, err = capsys.readouterr()
    assert err == f"checkpoint {run.absolute() / 'last.pt'}, epoch 3\n"
    assert "checkpoint" not in out and out.startswith(str(folder / "val1.png"))


def test_a_run_whose_class_table_disagrees_with_its_checkpoint_is_refused(setup, tmp_path):
    _, _, ckpt, folder = setup
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    table = [{"index": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(2)]
    (run / "classes.json").write_text(json.dumps(table))  # a valid table, of 2 classes where the net has 3
    with pytest.raises(AlexkitError, match=r"best.pt has 3 classes but run .*run has 2; pass --data"):
        predict(PredictConfig(images=(folder / "val1.png",), checkpoint=run, device="cpu"))


def test_bad_inputs(setup, tmp_path):
    _, _, ckpt, _ = setup
    with pytest.raises(AlexkitError, match="does not exist"):
        list_images([tmp_path / "missing.jpg"])
    with pytest.raises(AlexkitError, match=r"^an image path is empty \(an unset shell variable\?\)"):
        PredictConfig(images=("",))  # not the current folder, which Path("") is
    os.mkfifo(tmp_path / "pipe.jpg")  # predict <(curl ...): a pipe is read like a file
    assert list_images([tmp_path / "pipe.jpg"]) == [tmp_path / "pipe.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlexkitError, match=r"holds no image files \([^)]*\)$"):
        list_images([tmp_path / "empty"])
    (tmp_path / "classes" / "n01440764").mkdir(parents=True)  # a train/ folder: images one level down
    with pytest.raises(AlexkitError, match=r"sub-folders are not searched: pass them in its place \(.*classes/\*\)$"):
        list_images([tmp_path / "classes"])
    (tmp_path / "empty" / ".ipynb_checkpoints").mkdir()  # a hidden folder is no sub-folder of images
    with pytest.raises(AlexkitError, match=r"holds no image files \([^)]*\)$"):
        list_images([tmp_path / "empty"])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(AlexkitError, match=r"none of the 1 images could be read \(first: .*bad.jpg: not an image in any format PIL"):
        predict(PredictConfig(images=(tmp_path / "bad.jpg",), checkpoint=ckpt, device="cpu"))


def test_a_folder_lists_the_image_names_prepare_reads(tmp_path):
    """.jfif and .pnm are images to prepare, so to predict too; macOS's ._ copies and notes are not."""
    for name in ("a.jfif", "b.PNM", "._a.jfif", "notes.txt", ".DS_Store"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images([tmp_path])] == ["a.jfif", "b.PNM"]


def test_an_unreadable_image_costs_only_itself(setup, tmp_path, capsys):
    _, _, ckpt, folder = setup
    (tmp_path / "bad.jpg").write_bytes(b"")
    images = (folder / "val1.png", tmp_path / "bad.jpg", folder / "val1.png")
    with pytest.raises(AlexkitError, match=r"1 of 3 images could not be read \(first: .*bad.jpg: empty file\)"):
        predict(PredictConfig(images=images, checkpoint=ckpt, device="cpu", batch_size=2))
    out, err = capsys.readouterr()
    assert out.count("val1.png") == 2 and f"skipped {tmp_path / 'bad.jpg'}: empty file" in err
    with pytest.raises(AlexkitError, match="no images"):
        PredictConfig(images=())


def test_a_path_not_there_is_an_error_and_a_link_to_nothing_is_skipped(setup, tmp_path, capsys):
    """A name not there at all (a typo, most likely) stops predict before any image is read; a link
    to nothing is there, given or in a folder: skipped with its reason, as an unreadable file."""
    _, _, ckpt, folder = setup
    with pytest.raises(AlexkitError, match=r"^image \S*missing.jpg does not exist; pass image files or folders$"):
        predict(PredictConfig(images=(folder / "val1.png", tmp_path / "missing.jpg"), checkpoint=ckpt, device="cpu"))
    assert capsys.readouterr() == ("", "")  # nothing predicted, no checkpoint even loaded
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copyfile(folder / "val1.png", photos / "a.png")
    (photos / "b.png").symlink_to(tmp_path / "gone.png")
    assert list_images([photos]) == [photos / "a.png", photos / "b.png"]
    for images in ((photos,), (photos / "b.png", photos / "a.png")):
        with pytest.raises(AlexkitError, match=r"1 of 2 images could not be read \(first: \S*b.png: a link to \S*gone.png, "
                                               r"which does not exist\)"):  # fmt: skip
            predict(PredictConfig(images=images, checkpoint=ckpt, device="cpu"))
        out, err = capsys.readouterr()
        assert out.startswith(str(photos / "a.png")) and f"skipped {photos / 'b.png'}: a link to {tmp_path / 'gone.png'}, " in err
    (photos / "b.png").unlink()  # two links to each other: both names are there, neither leads to a file
    (photos / "b.png").symlink_to("c.png")
    (photos / "c.png").symlink_to("b.png")
    with pytest.raises(AlexkitError, match=r"2 of 3 images could not be read \(first: \S*b.png: a link to c.png, which leads "
                                           r"to no file \(Too many levels of symbolic links\)\)"):  # fmt: skip
        predict(PredictConfig(images=(photos,), checkpoint=ckpt, device="cpu"))


def test_libjpegs_warning_about_a_file_it_decodes_is_named(setup, tmp_path, capfd):
    """Stray bytes before a JPEG's end: libjpeg prints to fd 2 and decodes the image; predict
    classifies it and names the file beside the warning, which never appears unnamed."""
    _, _, ckpt, folder = setup
    buf = io.BytesIO()
    Image.open(folder / "val1.png").save(buf, "JPEG", quality=95)
    photo = buf.getvalue()
    (tmp_path / "stray.jpg").write_bytes(photo[:-2] + bytes(40) + photo[-2:])
    [got] = predict(PredictConfig(images=(tmp_path / "stray.jpg",), checkpoint=ckpt, device="cpu"))
    out, err = capfd.readouterr()
    assert got["top"] and str(tmp_path / "stray.jpg") in out
    assert err.count("Corrupt JPEG data") == 1 and f"note: {tmp_path / 'stray.jpg'}: Corrupt JPEG data: " in err, err


def test_an_image_pil_refuses_outright_costs_only_itself(setup, tmp_path, capsys):
    """PIL's decompression-bomb refusal is no OSError: it too skips just its file."""
    _, _, ckpt, folder = setup
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    with pytest.raises(AlexkitError, match=r"1 of 2 images could not be read \(first: .*bomb.png: too many pixels"):
        predict(PredictConfig(images=(tmp_path / "bomb.png", folder / "val2.png"), checkpoint=ckpt, device="cpu"))
    out, err = capsys.readouterr()
    assert "val2.png" in out and f"skipped {tmp_path / 'bomb.png'}: too many pixels" in err
    Image.new("RGB", (20000, 1)).save(tmp_path / "line.png")  # its resize would take 2 GB; prepare skips it too
    with pytest.raises(AlexkitError, match=r"1 of 2 images could not be read \(first: .*line.png: a 20000x1 image: its sides"):
        predict(PredictConfig(images=(tmp_path / "line.png", folder / "val2.png"), checkpoint=ckpt, device="cpu"))


def test_cli_predict_tta(setup):
    _, _, ckpt, folder = setup
    cmd = [sys.executable, "-m", "alexkit", "predict", str(folder / "val0.png"), "--tta", "--checkpoint", str(ckpt), "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("val0.png") and len(lines) == 4 and "%" in lines[1] and "class" in lines[1]


def test_store_of_another_size_is_refused(setup, tmp_path):
    _, _, ckpt, folder = setup
    other = make_store(tmp_path / "s64", size=64, val=1, train=1)
    with pytest.raises(AlexkitError, match="64px images"):
        predict(PredictConfig(images=(folder / "val0.png",), checkpoint=ckpt, data=other.path, device="cpu"))
