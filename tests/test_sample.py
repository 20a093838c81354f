"""The built-in sample dataset: official layout, determinism, odd files, and that it reads as ImageNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from alexkit.datasets import find_dataset, write_sample_dataset
from alexkit.datasets.sample import COLOURS, class_specs
from alexkit.errors import AlexkitError
from tests.test_cli import exit_of

# 4 classes x 30 train covers every train oddity position (g = 1, 2, 3, 5, 7, 11); 4 x 5 val.
ARGS = dict(num_classes=4, train_per_class=30, val_per_class=5, seed=3)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return write_sample_dataset(tmp_path_factory.mktemp("s") / "sample", **ARGS)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_official_extracted_layout(sample):
    wnids = ["n99000001", "n99000002", "n99000003", "n99000004"]
    assert sorted(p.name for p in sample.iterdir()) == ["ILSVRC2012_devkit_t12", "train", "val"]
    assert sorted(p.name for p in (sample / "train").iterdir()) == wnids
    in_class = sorted(p.name for p in (sample / "train" / "n99000002").iterdir())
    assert in_class == sorted(f"n99000002_{n}.JPEG" for n in range(1, 31))
    assert sorted(p.name for p in (sample / "val").iterdir()) == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 21)]
    data = sample / "ILSVRC2012_devkit_t12" / "data"
    assert len((data / "ILSVRC2012_validation_ground_truth.txt").read_text().split()) == 20

    synsets = scipy.io.loadmat(data / "meta.mat", squeeze_me=True)["synsets"]
    assert set(synsets.dtype.names) == {
        "ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images",
    }
    leaves = [(int(r["ILSVRC2012_ID"]), str(r["WNID"])) for r in synsets if int(r["num_children"]) == 0]
    assert sorted(w for _, w in leaves) == wnids
    assert [w for _, w in sorted(leaves)] != wnids  # ID order differs from sorted-wnid order
    assert sum(int(r["num_children"]) > 0 for r in synsets) >= 2


def test_reads_as_official_imagenet_with_labels_the_pixels_agree_with(sample):
    ds = find_dataset(sample)
    assert ds.layout == "official-extracted"
    assert ds.warnings == ()
    assert [c.name for c in ds.classes] == ["red disc", "blue striped square", "green triangle", "yellow ring"]
    assert [s.label for s in ds.splits["train"]] == [k for k in range(4) for _ in range(30)]
    assert all(s.name.startswith(f"train/n9900000{s.label + 1}/") for s in ds.splits["train"])
    val = ds.splits["val"]
    assert np.bincount([s.label for s in val]).tolist() == [5, 5, 5, 5]
    # The val label from meta.mat + ground truth names the colour painted in the image.
    palette = np.array([COLOURS[colour] for colour, _, _ in class_specs(4)], dtype=np.float32)  # (4, 3)
    for s in val:
        image = Image.open(s.path)
        if image.mode != "RGB":
            continue
        pixels = np.asarray(image, dtype=np.float32).reshape(-1, 3)
        vivid = pixels[np.ptp(pixels, axis=1) > 100]  # saturated pixels: the object, not the greyish background
        nearest = np.linalg.norm(vivid[:, None, :] - palette, axis=2).argmin(axis=1)
        votes = np.bincount(nearest, minlength=4)
        assert votes.argmax() == s.label and votes[s.label] > 0.9 * votes.sum(), (s.name, votes)


def test_same_arguments_give_the_same_bytes(sample, tmp_path):
    again = write_sample_dataset(tmp_path / "again", **ARGS)
    assert files(again) == files(sample)
    other = write_sample_dataset(tmp_path / "other", **{**ARGS, "seed": 4, "train_per_class": 2, "val_per_class": 1})
    assert files(other)["train/n99000001/n99000001_1.JPEG"] != files(sample)["train/n99000001/n99000001_1.JPEG"]


def test_real_world_oddities_are_present(sample):
    seen = {"L": 0, "CMYK": 0, "PNG": 0, "progressive": 0, "huge": 0, "small": 0}
    for path in sorted((sample / "train").rglob("*.JPEG")) + sorted((sample / "val").glob("*.JPEG")):
        with Image.open(path) as image:
            seen["L"] += image.mode == "L"
            seen["CMYK"] += image.mode == "CMYK"
            seen["PNG"] += image.format == "PNG"
            seen["progressive"] += bool(image.info.get("progressive"))
            seen["huge"] += max(image.size) > 1000
            seen["small"] += min(image.size) < 256
            image.convert("RGB").load()  # every file decodes
    assert seen["L"] >= 2 and seen["CMYK"] >= 1 and seen["PNG"] == 1 and seen["progressive"] >= 2
    assert seen["huge"] >= 1 and seen["small"] >= 10


def test_oddities_sit_where_the_docstring_says(sample):
    """The module docstring's positions in the class-major train order g (and in val), and the usual
    140-400 px shorter side elsewhere."""
    train = [sample / "train" / f"n9900000{k}" / f"n9900000{k}_{n}.JPEG" for k in range(1, 5) for n in range(1, 31)]
    for g, path in enumerate(train):
        with Image.open(path) as image:
            assert (image.mode == "CMYK", image.format == "PNG", image.size == (40, 30)) == (g == 1, g == 2, g == 11), g
            assert image.mode == "L" if g % 19 == 5 else image.mode != "L", g
            assert bool(image.info.get("progressive")) == (g % 23 == 3 and g != 2), g  # g = 2 is the PNG
            if g != 11 and g % 211 != 7:
                assert 140 <= min(image.size) < 400, (g, image.size)
    for i, path in enumerate(sorted((sample / "val").glob("*.JPEG")), start=1):
        with Image.open(path) as image:
            assert ((image.mode == "L"), bool(image.info.get("progressive"))) == (i % 13 == 4, i % 17 == 6), i


def test_val_classes_are_shuffled_and_meta_counts_the_train_images(sample):
    import scipy.io

    truth = (sample / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().split()
    assert sorted(truth) != truth and len(set(truth[:5])) > 1  # not class by class
    synsets = scipy.io.loadmat(sample / "ILSVRC2012_devkit_t12" / "data" / "meta.mat", squeeze_me=True)["synsets"]
    leaves = [r for r in synsets if int(r["num_children"]) == 0]
    assert len(leaves) == 4 and all(int(r["num_train_images"]) == 30 for r in leaves)


def test_the_documented_defaults_and_more_than_ten_classes(tmp_path):
    import inspect

    from alexkit.cli import sample as sample_cli
    from alexkit.datasets.sample import MAX_CLASSES, class_specs

    library = inspect.signature(write_sample_dataset).parameters
    flags = inspect.signature(sample_cli.command).parameters
    for name, flag, default in (("num_classes", "classes", 10), ("train_per_class", "train_per_class", 100),
                                ("val_per_class", "val_per_class", 20)):  # fmt: skip
        assert library[name].default == flags[flag].default.default == default, name
    assert MAX_CLASSES == 224 and len(set(class_specs(224))) == 224
    out = write_sample_dataset(tmp_path / "s", num_classes=12, train_per_class=1, val_per_class=0)
    assert len(list((out / "train").iterdir())) == 12


def test_bad_arguments_and_destinations(tmp_path):
    with pytest.raises(AlexkitError, match="--classes 0"):
        write_sample_dataset(tmp_path / "a", num_classes=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(AlexkitError, match="not empty"):
        write_sample_dataset(tmp_path / "mine", num_classes=1, train_per_class=1, val_per_class=0)
    with pytest.raises(AlexkitError, match=r"other than a sample dataset \(thesis.tex\)"):
        write_sample_dataset(tmp_path / "mine", num_classes=1, train_per_class=1, val_per_class=0, overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    # A folder not made yet, then `..`: checked as nothing there, the path led to `mine` once mkdir made
    # the folder, and mine's files went with an --overwrite nobody gave.
    (tmp_path / "mine" / "train" / "n01440764").mkdir(parents=True)
    (tmp_path / "mine" / "train" / "n01440764" / "a.JPEG").write_bytes(b"a photo")
    with pytest.raises(AlexkitError, match=f"^{tmp_path}/mine is not empty"):
        write_sample_dataset(tmp_path / "build" / ".." / "mine", num_classes=1, train_per_class=1, val_per_class=0)
    assert (tmp_path / "mine" / "train" / "n01440764" / "a.JPEG").read_bytes() == b"a photo"
    assert not (tmp_path / "build").exists()
    ours = write_sample_dataset(tmp_path / "ours", num_classes=1, train_per_class=1, val_per_class=0)
    (ours / ".bashrc").write_text("")  # named alone, not among the dataset's own folders
    with pytest.raises(AlexkitError, match=r"other than a sample dataset \(\.bashrc\); choose another folder$"):
        write_sample_dataset(ours, num_classes=1, train_per_class=1, val_per_class=0, overwrite=True)
    # A real extracted ImageNet has the sample's three top-level names: its meta.mat tells them apart.
    real = tmp_path / "imagenet"
    (real / "train" / "n01440764").mkdir(parents=True)
    (real / "train" / "n01440764" / "n01440764_10026.JPEG").write_bytes(b"a real photo")
    (real / "ILSVRC2012_devkit_t12" / "data").mkdir(parents=True)
    (real / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64")
    with pytest.raises(AlexkitError, match="not a sample dataset .*meta.mat was not written by `alexkit sample`"):
        write_sample_dataset(real, num_classes=1, train_per_class=1, val_per_class=0, overwrite=True)
    assert (real / "train" / "n01440764" / "n01440764_10026.JPEG").read_bytes() == b"a real photo"
    (tmp_path / "afile").write_text("")
    with pytest.raises(AlexkitError, match="afile, which is a file"):
        write_sample_dataset(tmp_path / "afile" / "x", num_classes=1)
    with pytest.raises(AlexkitError, match="--seed -1: must be 0 or more"):
        write_sample_dataset(tmp_path / "s", num_classes=1, seed=-1)
    assert not (tmp_path / "s").exists()
    # `/` has no folder above it to look at: a one-line refusal, not StopIteration.
    with pytest.raises(AlexkitError, match="^/ is not empty; choose another folder"):
        write_sample_dataset(Path("/"), num_classes=1, train_per_class=1, val_per_class=0)
    with pytest.raises(AlexkitError, match=r"^/ holds files other than a sample dataset \(.* and \d+ others\)"):
        write_sample_dataset(Path("/"), num_classes=1, train_per_class=1, val_per_class=0, overwrite=True)


def test_a_failed_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    import alexkit.datasets.sample as sample

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sample, "_meta_mat", broken)  # after every image: the devkit is written last
    with pytest.raises(OSError, match="No space left"):
        write_sample_dataset(tmp_path / "s", num_classes=1, train_per_class=2, val_per_class=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_one_class_has_a_devkit_of_one_leaf(tmp_path):
    from alexkit.datasets.devkit import parse_meta

    out = write_sample_dataset(tmp_path / "one", num_classes=1, train_per_class=1, val_per_class=1)
    with open(out / "ILSVRC2012_devkit_t12" / "data" / "meta.mat", "rb") as f:
        leaves = parse_meta(f, source="meta.mat")
    assert [wnid for wnid, _ in leaves.values()] == ["n99000001"]
    assert write_sample_dataset(tmp_path / "one", num_classes=2, overwrite=True) == out  # an earlier sample: replaced


def test_overwrite_keeps_the_old_dataset_until_the_new_one_is_whole(tmp_path):
    """Interrupted while writing, --overwrite leaves the earlier sample as it was; a run killed while
    moving the new one in (between a devkit's two renames, the worst place) is tidied by the next run."""
    out = write_sample_dataset(tmp_path / "s", num_classes=1, train_per_class=2, val_per_class=1)
    before = files(out)

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_sample_dataset(out, num_classes=2, train_per_class=2, val_per_class=1, overwrite=True, progress=interrupt)
    assert files(out) == before and sorted(p.name for p in out.iterdir()) == ["ILSVRC2012_devkit_t12", "train", "val"]
    (out / ".sample-replaced").mkdir()  # as if killed after moving the old devkit aside
    (out / "ILSVRC2012_devkit_t12").rename(out / ".sample-replaced" / "ILSVRC2012_devkit_t12")
    (out / ".sample-partial" / "train" / "n99000002").mkdir(parents=True)  # and the new one's rest still staged
    (out / ".sample-partial" / "train" / "n99000002" / "n99000002_1.JPEG").write_bytes(b"half")
    write_sample_dataset(out, num_classes=2, train_per_class=2, val_per_class=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["ILSVRC2012_devkit_t12", "train", "val"]
    assert len(list((out / "train").iterdir())) == 2
    write_sample_dataset(out, num_classes=1, train_per_class=1, val_per_class=0, overwrite=True)
    assert files(out) == files(write_sample_dataset(tmp_path / "fresh", num_classes=1, train_per_class=1, val_per_class=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "s"]


def test_the_dataset_is_written_into_dir_itself(tmp_path, monkeypatch):
    """DIR is filled, never moved aside and replaced: `sample .` (the shell's folder stays the one
    written), a link (the data lands where it leads), and an empty DIR that a stopped run leaves
    empty, while a DIR the run made goes, with the folders it made above it."""
    small = dict(num_classes=1, train_per_class=2, val_per_class=1)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = here.stat().st_ino
    write_sample_dataset(Path("."), **small)
    assert here.stat().st_ino == inode and sorted(p.name for p in here.iterdir()) == ["ILSVRC2012_devkit_t12", "train", "val"]
    assert write_sample_dataset(Path("."), **small, seed=1, overwrite=True) == here and here.stat().st_ino == inode

    (tmp_path / "disk").mkdir()
    (tmp_path / "link").symlink_to("disk")
    write_sample_dataset(tmp_path / "link", **small)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "disk" / "train" / "n99000001").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "here", "link"]

    def interrupt(done, total):
        raise KeyboardInterrupt

    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "new" / "er"):
        with pytest.raises(KeyboardInterrupt):
            write_sample_dataset(folder, **small, progress=interrupt)
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "new").exists()


def test_overwrite_deletes_nothing_sample_did_not_write(tmp_path):
    """--overwrite checks every name under DIR, not only the top three: a file of one's own in a class
    folder, or a folder of one's own in train/, is named and kept."""
    out = write_sample_dataset(tmp_path / "d1", num_classes=2, train_per_class=2, val_per_class=1)
    before, small = files(out), dict(num_classes=1, train_per_class=1, val_per_class=0, overwrite=True)
    for own in (out / "train" / "n99000001" / "myown.jpg", out / "train" / "mine", out / "train" / "n99000999",
                out / "val" / "n99000001_1.JPEG", out / "ILSVRC2012_devkit_t12" / "data" / "notes.txt"):  # fmt: skip
        own.mkdir() if own.suffix == "" else own.write_bytes(b"mine")
        with pytest.raises(AlexkitError, match=f"^{out} holds {own}, which `alexkit sample` does not write, and "
                                               "--overwrite would delete it; move it out, or choose another folder$"):  # fmt: skip
            write_sample_dataset(out, **small)
        assert own.exists()
        own.rmdir() if own.is_dir() else own.unlink()
        assert files(out) == before
    (out / "train" / "n99000002" / "n99000002_9.JPEG").symlink_to(tmp_path / "elsewhere")  # sample writes no links
    with pytest.raises(AlexkitError, match="n99000002_9.JPEG, which `alexkit sample` does not write"):
        write_sample_dataset(out, **small)


def test_its_staging_names_are_never_a_users_folder(tmp_path):
    """DIR/.sample-partial and DIR/.sample-replaced are removed only when they hold what sample writes
    (a stopped run's); one of the user's is named and kept, and so were DIR.partial and DIR.partial-old
    beside DIR, which sample used to delete."""
    beside = [tmp_path / "d.partial", tmp_path / "d.partial-old"]
    for folder in beside:
        folder.mkdir()
        (folder / "thesis.tex").write_text("precious")
    small = dict(num_classes=1, train_per_class=1, val_per_class=0)
    out = write_sample_dataset(tmp_path / "d", **small)
    assert all((folder / "thesis.tex").read_text() == "precious" for folder in beside)
    (out / ".sample-partial").mkdir()
    (out / ".sample-partial" / "thesis.tex").write_text("precious")
    with pytest.raises(AlexkitError, match=r"\.sample-partial is a name `alexkit sample` keeps for its own files, but "
                                           r".*\.sample-partial/thesis.tex is not a file sample writes; move that out of"):  # fmt: skip
        write_sample_dataset(out, **small, overwrite=True)
    (out / ".sample-partial" / "thesis.tex").unlink()
    (out / ".sample-replaced").write_text("precious")
    with pytest.raises(AlexkitError, match=r"\.sample-replaced is a name .* but it is not a folder sample made"):
        write_sample_dataset(out, **small, overwrite=True)
    assert (out / ".sample-replaced").read_text() == "precious"


def test_stopping_says_what_it_removes_and_what_is_left(tmp_path, monkeypatch, capsys):
    """A long removal is said first; one that a second Ctrl-C cuts short names the folder left, and
    the next run removes it."""
    import shutil

    import alexkit.datasets.sample_place as sample_place

    def interrupt(done, total):
        if done == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(sample_place, "SAY_REMOVING", 3)  # files: a removal of so many is said first
    out, small = tmp_path / "d", dict(num_classes=1, train_per_class=4, val_per_class=0)
    with pytest.raises(KeyboardInterrupt):
        write_sample_dataset(out, **small, progress=interrupt)
    assert capsys.readouterr().err == f"removing the partial dataset (3 files in {out}/.sample-partial) ...\n"
    assert not out.exists()

    rmtree = shutil.rmtree

    def cut_short(path, *args, **kwargs):  # the second Ctrl-C, once one class folder is gone
        rmtree(next(Path(path).glob("train/*")))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", cut_short)
    with pytest.raises(KeyboardInterrupt):
        write_sample_dataset(out, **small, progress=interrupt)
    said = capsys.readouterr().err.splitlines()
    assert said[1] == (f"{out}/.sample-partial is left, partly removed: remove it, or run `alexkit sample` into {out} "
                       "again, which removes it first")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [".sample-partial"]
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    write_sample_dataset(out, **small)
    assert sorted(p.name for p in out.iterdir()) == ["ILSVRC2012_devkit_t12", "train", "val"]
    monkeypatch.setattr(shutil, "rmtree", cut_short)  # the earlier dataset, moved aside by --overwrite: the new one is in
    with pytest.raises(KeyboardInterrupt):
        write_sample_dataset(out, **small, overwrite=True)
    assert capsys.readouterr().err == (f"removing the earlier sample dataset (6 files in {out}/.sample-replaced) ...\n"
                                       f"{out}/.sample-replaced is left, partly removed: remove it, or run `alexkit sample "
                                       f"--overwrite` into {out} again, which removes it first\n")  # fmt: skip
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    write_sample_dataset(out, **small, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["ILSVRC2012_devkit_t12", "train", "val"]


# Run in a process of its own: `--overwrite` with the n-th os.replace turned into an exit without
# clean-up, as a kill -9 or a power cut between two renames of its move-in leaves DIR.
_KILLED_AT_RENAME = """
import os, sys
n, count, real = int(sys.argv[1]), [0], os.replace
def replace(src, dst):
    count[0] += 1
    if count[0] == n:
        os._exit(9)
    real(src, dst)
os.replace = replace
from alexkit.datasets import write_sample_dataset
write_sample_dataset(sys.argv[2], num_classes=2, train_per_class=2, val_per_class=1, seed=1, overwrite=True)
"""


def test_a_dataset_whose_overwrite_was_killed_between_renames_is_refused_until_sample_runs_again(tmp_path):
    """Killed at any of the move-in's renames, DIR may hold the new devkit beside the old val images
    (whose labels the devkit gives): find_dataset, and so prepare, refuses it while the staging or
    replaced folder is there, saying to run sample again; the same run to its end is whole."""
    import shutil
    import subprocess
    import sys

    old = write_sample_dataset(tmp_path / "old", num_classes=2, train_per_class=2, val_per_class=1)
    new = dict(num_classes=2, train_per_class=2, val_per_class=1, seed=1)
    whole = files(write_sample_dataset(tmp_path / "new", **new))
    for n in range(1, 8):  # 6 renames: each of the three entries moved aside, then the new one in
        out = shutil.copytree(old, tmp_path / f"cut{n}")
        r = subprocess.run([sys.executable, "-c", _KILLED_AT_RENAME, str(n), str(out)], capture_output=True, text=True, timeout=120)
        if n == 7:  # no cut: the run's end
            assert r.returncode == 0 and files(out) == whole, r.stderr
            assert find_dataset(out).layout == "official-extracted"
            break
        assert r.returncode == 9, r.stderr
        with pytest.raises(AlexkitError, match=rf"^{out} holds \.sample-(partial|replaced): an `alexkit sample` into it was "
                                               rf"stopped, so its dataset may be part old, part new; run `alexkit sample {out} "
                                               "--overwrite` again with the same flags, which writes it whole$"):  # fmt: skip
            find_dataset(out)
        write_sample_dataset(out, **new, overwrite=True)  # as the error says
        assert files(out) == whole and find_dataset(out).layout == "official-extracted"


def test_a_second_run_into_the_same_dir_is_refused_and_touches_nothing(tmp_path):
    """Two runs at once into one DIR would share its staging folder, each removing or moving the other's
    files: while one holds the lock a second `alexkit sample` is refused at once, in one line, with or
    without --overwrite, and what the first has written stays as it is. Once the lock is let go, the
    staging folder is a stopped run's, and the next run removes it as before."""
    from alexkit.datasets.sample_place import _only_writer
    from tests.test_cli import run

    out = write_sample_dataset(tmp_path / "d", num_classes=2, train_per_class=2, val_per_class=1)
    (out / ".sample-partial" / "train" / "n99000001").mkdir(parents=True)  # the first run's, half-written
    (out / ".sample-partial" / "train" / "n99000001" / "n99000001_1.JPEG").write_bytes(b"half")
    before = files(out)
    for overwrite in ([], ["--overwrite"]):
        with _only_writer(out):
            r = run("sample", str(out), "--classes", "2", "--train-per-class", "2", "--val-per-class", "1", *overwrite)
        assert r.returncode == 2, r.stderr
        assert r.stderr == (f"error: {out} is being written by another `alexkit sample`; wait for it to end, "
                            "or choose another folder\n")  # fmt: skip
        assert files(out) == before
    write_sample_dataset(out, num_classes=2, train_per_class=2, val_per_class=1, seed=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["ILSVRC2012_devkit_t12", "train", "val"]
    assert files(out) == files(write_sample_dataset(tmp_path / "new", num_classes=2, train_per_class=2, val_per_class=1, seed=1))


def test_a_ctrl_c_as_the_lock_is_taken_leaves_no_folder_made(tmp_path, monkeypatch):
    """A Ctrl-C between making DIR and holding its lock (raised here by flock, as if it came just then)
    takes away the folders the run made, as one at any later point does; a run refused by another's
    lock removes nothing (the empty DIR may be the other run's, made a moment before)."""
    import fcntl

    from alexkit.datasets.sample_place import _only_writer

    def interrupted(fd, how):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(fcntl, "flock", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_sample_dataset(tmp_path / "new" / "d", num_classes=2, train_per_class=2, val_per_class=1)
    assert not (tmp_path / "new").exists()
    (tmp_path / "other").mkdir()
    with _only_writer(tmp_path / "other"), pytest.raises(AlexkitError, match="being written by another"):
        write_sample_dataset(tmp_path / "other", num_classes=2, train_per_class=2, val_per_class=1)
    assert (tmp_path / "other").is_dir()


def test_a_sample_into_a_dir_that_prepare_is_reading_is_refused(tmp_path, monkeypatch):
    """prepare reads the val labels from the devkit at its scan and the images long after: a `sample
    --overwrite` into its SRC meanwhile made a store of new images under old labels, and both exited 0.
    prepare holds SRC's lock shared from the scan to its last split; a sample run is refused, said as
    prepare's doing (not as another sample's), and the store is the dataset that was scanned."""
    from alexkit.datasets.sample_place import reading
    from alexkit.pipeline.beton import BetonWriter
    from alexkit.pipeline.prepare import PrepareConfig, prepare
    from alexkit.pipeline.store import Store
    from tests.test_cli import run

    src = write_sample_dataset(tmp_path / "d", num_classes=3, train_per_class=3, val_per_class=3)
    before = files(src)
    with reading(src):  # as `alexkit prepare` holds it
        r = run("sample", str(src), "--classes", "3", "--train-per-class", "3", "--val-per-class", "3", "--seed", "1", "--overwrite")
    assert (r.returncode, r.stderr) == (2, f"error: {src} is being read by `alexkit prepare`; wait for it to end, or choose "
                                           "another folder\n")  # fmt: skip
    assert files(src) == before

    real_add, tried = BetonWriter.add, []

    def add(self, *args, **kw):  # the real writer; at each split's first image, a sample run tries to replace SRC
        if self.path.name not in tried:
            tried.append(self.path.name)
            with pytest.raises(AlexkitError, match="is being read by `alexkit prepare`"):
                write_sample_dataset(src, num_classes=3, train_per_class=3, val_per_class=3, seed=1, overwrite=True)
        return real_add(self, *args, **kw)

    monkeypatch.setattr(BetonWriter, "add", add)
    store = Store(prepare(PrepareConfig(src=src, out=tmp_path / "store", size=32, workers=1, for_training=False)))
    assert tried == ["train.beton", "val.beton"] and files(src) == before
    assert store.split("val").labels.tolist() == [s.label for s in find_dataset(src).splits["val"]]


def test_prepare_of_a_dir_that_sample_is_writing_says_so(tmp_path):
    """While `alexkit sample` writes DIR (its lock held, its staging folder there), prepare said that a
    sample into it was stopped and to run it again, which would be refused: it says that DIR is being
    written, and leaves no --out folder behind."""
    from alexkit.datasets.sample_place import _only_writer
    from tests.test_cli import run

    src = write_sample_dataset(tmp_path / "d", num_classes=2, train_per_class=2, val_per_class=1)
    (src / ".sample-partial" / "train").mkdir(parents=True)  # the running sample's, half-written
    with _only_writer(src):  # as `alexkit sample` holds it
        r = run("prepare", str(src), "--out", str(tmp_path / "store"), "--size", "32")
    assert (r.returncode, r.stderr) == (2, f"error: {src} is being written by `alexkit sample`; wait for it to end\n")
    assert not (tmp_path / "store").exists()


def test_images_per_class_are_bounded(tmp_path, capsys):
    """At most as many per class as ImageNet's largest classes (1,300): a mistyped zero is refused."""
    with pytest.raises(AlexkitError, match=r"^--train-per-class 13000 is out of range: from 1 to 1,300 "):
        write_sample_dataset(tmp_path / "s", train_per_class=13000)
    assert exit_of(["sample", str(tmp_path / "s"), "--val-per-class", "2000"]) == 2
    assert capsys.readouterr().err == ("error: --val-per-class: 2000 is out of range: from 0 to 1,300 (the same bound as train); "
                                       "see alexkit sample -h\n")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["sample", str(out), "--classes", "2", "--train-per-class", "3", "--val-per-class", "2", "--seed", "1"]
    assert exit_of(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 train + 4 val images of 2 classes" in printed and str(out) in printed
    ds = find_dataset(out)
    assert (ds.layout, len(ds.splits["train"]), len(ds.splits["val"])) == ("official-extracted", 6, 4)

    assert exit_of(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert exit_of(args + ["--overwrite", "--classes", "3"]) == 0
    assert len(find_dataset(out).classes) == 3


def test_cli_passes_the_seed_and_says_next(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    small = ["--classes", "1", "--train-per-class", "1", "--val-per-class", "0"]
    assert exit_of(["sample", str(a), *small, "--seed", "0"]) == 0
    assert f"next: alexkit prepare {a}\n" in capsys.readouterr().out
    assert exit_of(["sample", str(b), *small, "--seed", "1"]) == 0
    name = "train/n99000001/n99000001_1.JPEG"
    assert (a / name).read_bytes() != (b / name).read_bytes()


def test_the_next_command_runs_as_printed_with_odd_folder_names(tmp_path, capsys, monkeypatch):
    """A folder with a space, a quote, a non-ASCII letter and a leading "-": the printed command, split
    as a shell splits it, names that folder (and not an option)."""
    import shlex

    monkeypatch.chdir(tmp_path)
    small = ["--classes", "1", "--train-per-class", "1", "--val-per-class", "0"]
    assert exit_of(["sample", "./-my data's ü", *small]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("next: "))
    words = shlex.split(line.removeprefix("next: "))
    assert words[:2] == ["alexkit", "prepare"] and not words[2].startswith("-")
    assert Path(words[2]).resolve() == (tmp_path / "-my data's ü").resolve() and len(words) == 3
