"""find_dataset on small trees and tars of every layout: labels, class order, names, val mapping, bytes."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from alexkit.datasets import LAYOUTS, find_dataset, read_sample_bytes
from alexkit.errors import AlexkitError

# Leaf classes by ILSVRC2012_ID: the ID order (1, 2, 3) is not the sorted-wnid order.
LEAVES = [(1, "n03000003", "gamma thing"), (2, "n01000001", "alpha thing"), (3, "n02000002", "beta thing")]
SORTED_WNIDS = ["n01000001", "n02000002", "n03000003"]
NAMES = {wnid: words for _, wnid, words in LEAVES}
# Val image i (1-based) has class VAL_IDS[i - 1]; as wnids: gamma, alpha, beta, alpha, gamma.
VAL_IDS = [1, 2, 3, 2, 1]
VAL_LABELS = [2, 0, 1, 0, 2]


def content(name: str) -> bytes:
    """Stand-in image bytes that say which file they are (layouts never decode)."""
    return f"bytes of {name}".encode()


def write(path: Path, data: bytes | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content(path.name) if data is None else data)


def meta_mat_bytes(leaves=LEAVES) -> bytes:
    """meta.mat with the leaves plus a non-leaf row (num_children > 0), shaped like the real one."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(i, w, words, "gloss", 0, np.zeros(0), 0, 10) for i, w, words in leaves]
    parent_id, children = len(leaves) + 1, np.arange(1, len(leaves) + 1)
    rows.append((parent_id, "n09999999", "parent thing", "gloss", len(leaves), children, 1, 30))
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for k, row in enumerate(rows):
        synsets[k, 0] = row
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": synsets})
    return buffer.getvalue()


def ground_truth(ids=VAL_IDS) -> bytes:
    return "".join(f"{i}\n" for i in ids).encode()


def write_devkit_folder(data_dir: Path, ids=VAL_IDS) -> None:
    write(data_dir / "meta.mat", meta_mat_bytes())
    write(data_dir / "ILSVRC2012_validation_ground_truth.txt", ground_truth(ids))


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_devkit_tar(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta_mat_bytes())
        add_member(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", ground_truth())
        add_member(tar, "ILSVRC2012_devkit_t12/COPYING", b"text")


def val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}.JPEG"


def write_official_extracted(src: Path) -> None:
    for wnid in SORTED_WNIDS[::-1]:
        for n in (3, 1, 2):
            write(src / "train" / wnid / f"{wnid}_{n}.JPEG")
    for i in range(len(VAL_IDS), 0, -1):
        write(src / "val" / val_name(i))


def assert_official_labels(ds) -> None:
    assert [c.wnid for c in ds.classes] == SORTED_WNIDS
    assert [c.name for c in ds.classes] == [NAMES[w] for w in SORTED_WNIDS]
    assert [c.index for c in ds.classes] == [0, 1, 2]
    assert [s.label for s in ds.splits["train"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [s.name.rsplit("/", 1)[-1] for s in ds.splits["val"]] == [val_name(i) for i in range(1, 6)]
    assert [s.label for s in ds.splits["val"]] == VAL_LABELS


# --- class folders ---


def test_class_folders_valprep(tmp_path):
    for wnid in ["n02000002", "n01000001"]:
        for n in (2, 10, 1):
            write(tmp_path / "train" / wnid / f"{wnid}_{n}.JPEG")
        write(tmp_path / "val" / wnid / f"ILSVRC2012_val_0000000{n}_{wnid}.JPEG")
    write(tmp_path / "train" / "n01000001" / ".hidden.JPEG")
    write(tmp_path / "train" / "n01000001" / "notes.txt")
    write(tmp_path / "train" / "n01000001" / "upper.JpG")
    write(tmp_path / "train" / "n01000001" / "sub" / "deeper.png")

    ticks = []
    ds = find_dataset(tmp_path, lambda *tick: ticks.append(tick))
    assert ds.layout == "class-folders"
    assert ds.root == tmp_path
    assert ticks == [("listing train/", 1, 2, "classes"), ("listing train/", 2, 2, "classes"),
                     ("listing val/", 1, 2, "classes"), ("listing val/", 2, 2, "classes")]  # fmt: skip
    classes = [(c.index, c.wnid, c.name) for c in ds.classes]
    assert classes == [(0, "n01000001", "n01000001"), (1, "n02000002", "n02000002")]
    train = ds.splits["train"]
    assert [(s.label, s.name) for s in train] == [
        (0, "train/n01000001/n01000001_1.JPEG"),
        (0, "train/n01000001/n01000001_10.JPEG"),
        (0, "train/n01000001/n01000001_2.JPEG"),
        (0, "train/n01000001/sub/deeper.png"),
        (0, "train/n01000001/upper.JpG"),
        (1, "train/n02000002/n02000002_1.JPEG"),
        (1, "train/n02000002/n02000002_10.JPEG"),
        (1, "train/n02000002/n02000002_2.JPEG"),
    ]
    assert [s.label for s in ds.splits["val"]] == [0, 1]
    for s in train + ds.splits["val"]:
        assert Path(s.path) == tmp_path / s.name and s.offset == 0 and s.size == -1
        assert read_sample_bytes(s) == content(Path(s.name).name)
    assert any("notes.txt" in w for w in ds.warnings)


def test_a_file_beside_the_class_folders_is_counted_among_the_ignored_files(tmp_path):
    """train/n99000010 as a file, not a folder: no class, and said so, as a file inside a class folder is."""
    for wnid in ["n01000001", "n02000002"]:
        write(tmp_path / "train" / wnid / f"{wnid}_1.JPEG")
    write(tmp_path / "train" / "n01000001" / "notes.txt")
    write(tmp_path / "train" / "n99000010")
    write(tmp_path / "train" / "n03000003.tar")  # warned of on its own, as a per-class tar without its folder
    ds = find_dataset(tmp_path)
    assert [c.wnid for c in ds.classes] == ["n01000001", "n02000002"]
    assert f"2 files in {tmp_path / 'train'} not images by extension, ignored (e.g. train/n01000001/notes.txt)" in ds.warnings
    (tmp_path / "train" / "n01000001" / "notes.txt").unlink()
    ds = find_dataset(tmp_path)
    assert f"1 file in {tmp_path / 'train'} not images by extension, ignored (e.g. train/n99000010)" in ds.warnings


def test_images_directly_in_train_are_said_to_be_in_no_class(tmp_path):
    for wnid in ["n01000001", "n02000002"]:
        write(tmp_path / "train" / wnid / f"{wnid}_1.JPEG")
    write(tmp_path / "train" / "stray.JPEG")
    ds = find_dataset(tmp_path)
    assert [s.name for s in ds.splits["train"]] == ["train/n01000001/n01000001_1.JPEG", "train/n02000002/n02000002_1.JPEG"]
    assert (f"1 image file directly in {tmp_path / 'train'}, in no class folder (e.g. stray.JPEG), left out; put each in "
            f"{tmp_path / 'train'}/<class>/") in ds.warnings  # fmt: skip


def test_custom_class_folders_train_only(tmp_path):
    for cls, count in [("zebra", 1), ("cat", 2), ("dog", 3)]:
        for n in range(count):
            write(tmp_path / "train" / cls / f"{cls}{n}.webp")
    ds = find_dataset(tmp_path)
    assert ds.layout == "class-folders"
    assert list(ds.splits) == ["train"]
    assert [(c.wnid, c.name) for c in ds.classes] == [("cat", "cat"), ("dog", "dog"), ("zebra", "zebra")]
    assert [s.label for s in ds.splits["train"]] == [0, 0, 1, 1, 1, 2]
    assert ds.warnings == ()


def test_a_link_back_up_inside_a_class_folder_is_an_error_naming_it(tmp_path):
    """Followed, it would list the images under it without end (until the OS gives up, 40 links deep)."""
    for cls in ("cat", "dog"):
        write(tmp_path / "train" / cls / f"{cls}0.jpg")
    (tmp_path / "train" / "dog" / "loop").symlink_to("..")
    with pytest.raises(AlexkitError) as error:
        find_dataset(tmp_path)
    assert str(error.value) == (f"{tmp_path}/train/dog/loop is a link to {tmp_path}/train, which holds it, so the "
                                "images under it would be listed without end; remove that link")  # fmt: skip


def test_a_link_to_nothing_under_an_image_name_is_listed_so_that_prepare_names_it(tmp_path):
    """Not quietly one of the ignored files: an image the dataset should hold is missing."""
    for cls in ("cat", "dog"):
        write(tmp_path / "train" / cls / f"{cls}0.jpg")
    (tmp_path / "train" / "dog" / "x.jpg").symlink_to(tmp_path / "gone.jpg")
    ds = find_dataset(tmp_path)
    assert [s.name for s in ds.splits["train"]] == ["train/cat/cat0.jpg", "train/dog/dog0.jpg", "train/dog/x.jpg"]


def test_a_fifo_under_an_image_name_is_no_image(tmp_path):
    """Its reader would wait for ever; it counts among the files that are not images."""
    for cls in ("cat", "dog"):
        write(tmp_path / "train" / cls / f"{cls}0.jpg")
    os.mkfifo(tmp_path / "train" / "dog" / "pipe.jpg")
    ds = find_dataset(tmp_path)
    assert [s.name for s in ds.splits["train"]] == ["train/cat/cat0.jpg", "train/dog/dog0.jpg"]
    assert any("train/dog/pipe.jpg" in w for w in ds.warnings), ds.warnings


def test_val_classes_missing_from_train_are_left_out_with_a_warning(tmp_path):
    write(tmp_path / "train" / "a" / "1.jpg")
    write(tmp_path / "train" / "c" / "1.jpg")
    write(tmp_path / "val" / "b" / "2.jpg")
    write(tmp_path / "val" / "c" / "3.jpg")
    ds = find_dataset(tmp_path)
    assert [(s.name, s.label) for s in ds.splits["val"]] == [("val/c/3.jpg", 1)]
    assert any(w.startswith("1 image in") and "left out" in w for w in ds.warnings), ds.warnings


# --- official extracted ---


def test_official_extracted_with_devkit_folder(tmp_path):
    write_official_extracted(tmp_path)
    write_devkit_folder(tmp_path / "downloads" / "ILSVRC2012_devkit_t12" / "data")
    ds = find_dataset(tmp_path)
    assert ds.layout == "official-extracted"
    assert_official_labels(ds)
    assert ds.warnings == ()
    for s in ds.splits["val"]:
        assert read_sample_bytes(s) == content(Path(s.name).name)


def test_official_extracted_with_devkit_tar(tmp_path):
    write_official_extracted(tmp_path)
    write_devkit_tar(tmp_path / "ILSVRC2012_devkit_t12.tar.gz")
    ds = find_dataset(tmp_path)
    assert ds.layout == "official-extracted"
    assert_official_labels(ds)


def test_subset_of_devkit_classes_warns_that_labels_are_not_standard(tmp_path):
    write_official_extracted(tmp_path)
    for f in (tmp_path / "train" / "n03000003").iterdir():
        f.unlink()
    (tmp_path / "train" / "n03000003").rmdir()
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    ds = find_dataset(tmp_path)
    assert [c.wnid for c in ds.classes] == SORTED_WNIDS[:2]
    assert [s.label for s in ds.splits["val"]] == [0, 1, 0]  # the two gamma images are left out
    assert any("not the standard 3-way" in w for w in ds.warnings)
    assert any("2 val images" in w for w in ds.warnings)


def test_flat_val_without_ground_truth_is_an_error(tmp_path):
    write_official_extracted(tmp_path)
    with pytest.raises(AlexkitError, match="no ground truth.*ILSVRC2012_devkit_t12") as info:
        find_dataset(tmp_path)
    assert "\n" not in str(info.value)


def test_ground_truth_id_not_in_meta_is_an_error(tmp_path):
    write_official_extracted(tmp_path)
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data", ids=[1, 2, 3, 4, 1])  # 4 is the non-leaf
    with pytest.raises(AlexkitError, match=r"ILSVRC2012_validation_ground_truth.txt line 4: ILSVRC2012_ID 4"):
        find_dataset(tmp_path)


def test_val_file_beyond_ground_truth_is_an_error(tmp_path):
    write_official_extracted(tmp_path)
    write(tmp_path / "val" / val_name(6))
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    with pytest.raises(AlexkitError, match="ILSVRC2012_val_00000006.JPEG: no line 6"):
        find_dataset(tmp_path)


# --- official tars ---


def write_official_tars(src: Path) -> dict[str, bytes]:
    """The three tars, members deliberately unsorted; returns every image's expected bytes by name."""
    expected = {}
    src.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in ["n02000002", "n03000003", "n01000001"]:
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for n in (5, 12, 1):
                    name = f"{wnid}_{n}.JPEG"
                    data = content(name) * (n + 100)  # sizes that are not multiples of 512
                    add_member(inner, name, data)
                    expected[f"ILSVRC2012_img_train.tar/{wnid}.tar/{name}"] = data
                add_member(inner, "README.txt", b"not an image")
            add_member(outer, f"{wnid}.tar", inner_bytes.getvalue())
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in (3, 1, 5, 2, 4):
            data = content(val_name(i)) * 7
            add_member(tar, val_name(i), data)
            expected[f"ILSVRC2012_img_val.tar/{val_name(i)}"] = data
    write_devkit_tar(src / "ILSVRC2012_devkit_t12.tar.gz")
    with tarfile.open(src / "ILSVRC2012_img_train_t3.tar", "w") as tar:  # the dogs subset: ignored
        add_member(tar, "n09999999.tar", b"")
    return expected


def test_official_tars_read_in_place(tmp_path):
    expected = write_official_tars(tmp_path)
    ticks = []
    ds = find_dataset(tmp_path, lambda *tick: ticks.append(tick))
    assert [t[0] for t in ticks] == ["indexing ILSVRC2012_img_train.tar"] * 3  # after each per-class tar
    assert [t[1] for t in ticks] == sorted(t[1] for t in ticks) and {t[3] for t in ticks} == {"MB"}
    assert ds.layout == "official-tars"
    assert_official_labels(ds)
    train = ds.splits["train"]
    assert [s.name for s in train[:3]] == [  # a class in its tar's order, not by name: read front to back
        "ILSVRC2012_img_train.tar/n01000001.tar/n01000001_5.JPEG",
        "ILSVRC2012_img_train.tar/n01000001.tar/n01000001_12.JPEG",
        "ILSVRC2012_img_train.tar/n01000001.tar/n01000001_1.JPEG",
    ]
    for label in range(3):
        offsets = [s.offset for s in train if s.label == label]
        assert offsets == sorted(offsets)
    assert {s.path for s in train} == {str(tmp_path / "ILSVRC2012_img_train.tar")}
    assert {s.path for s in ds.splits["val"]} == {str(tmp_path / "ILSVRC2012_img_val.tar")}
    assert len(train) + len(ds.splits["val"]) == len(expected)
    raw = (tmp_path / "ILSVRC2012_img_train.tar").read_bytes()
    for s in train + ds.splits["val"]:
        assert s.size == len(expected[s.name])
        assert read_sample_bytes(s) == expected[s.name]
    assert raw[train[0].offset : train[0].offset + train[0].size] == expected[train[0].name]


def test_official_train_tar_without_val(tmp_path):
    write_official_tars(tmp_path)
    (tmp_path / "ILSVRC2012_img_val.tar").unlink()
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    ds = find_dataset(tmp_path)
    assert list(ds.splits) == ["train"]
    assert [c.name for c in ds.classes] == SORTED_WNIDS  # no devkit: names are the wnids


def test_truncated_tar_read_is_an_error(tmp_path):
    write_official_tars(tmp_path)
    ds = find_dataset(tmp_path)
    last = max(ds.splits["train"], key=lambda s: s.offset)
    with open(last.path, "r+b") as f:
        f.truncate(last.offset + 3)
    with pytest.raises(AlexkitError, match="truncated"):
        read_sample_bytes(last)


# --- kaggle ---


def test_kaggle_layout(tmp_path):
    data = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    for wnid in SORTED_WNIDS:
        for n in (2, 1, 3):
            write(data / "train" / wnid / f"{wnid}_{n}.JPEG")
    for i in range(1, 6):
        write(data / "val" / val_name(i))
    wnid_of = {i: w for i, w, _ in LEAVES}
    wnid_of_val = {i: wnid_of[VAL_IDS[i - 1]] for i in range(1, 6)}
    rows = [f"{val_name(i)[:-5]},{wnid_of_val[i]} 10 20 30 40 {wnid_of_val[i]} 1 2 3 4" for i in (4, 2, 5, 1, 3)]
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    (tmp_path / "LOC_synset_mapping.txt").write_text("".join(f"{w} {NAMES[w]}\n" for w in SORTED_WNIDS[::-1]))
    ds = find_dataset(tmp_path)
    assert ds.layout == "kaggle"
    assert_official_labels(ds)
    assert ds.splits["val"][0].name == "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG"


def test_kaggle_val_image_without_csv_row_is_an_error(tmp_path):
    data = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    write(data / "train" / "n01000001" / "a.JPEG")
    write(data / "val" / val_name(1))
    write(data / "val" / val_name(2))
    (tmp_path / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\n{val_name(1)[:-5]},n01000001 1 2 3 4\n")
    with pytest.raises(AlexkitError, match="ILSVRC2012_val_00000002.JPEG has no row in .*LOC_val_solution.csv"):
        find_dataset(tmp_path)


# --- errors and checks ---


def test_missing_and_empty_src(tmp_path):
    with pytest.raises(AlexkitError, match="does not exist"):
        find_dataset(tmp_path / "nope")
    with pytest.raises(AlexkitError, match="is empty") as info:
        find_dataset(tmp_path)
    assert all(layout in str(info.value) for layout in LAYOUTS)


def test_nonsense_layout_lists_what_was_found_and_the_supported_layouts(tmp_path):
    write(tmp_path / "cats" / "1.jpg")
    write(tmp_path / "readme.md")
    with pytest.raises(AlexkitError) as info:
        find_dataset(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "cats/, readme.md" in message
    assert all(layout in message for layout in LAYOUTS)


def test_train_folder_of_unextracted_class_tars_says_how_to_fix(tmp_path):
    write(tmp_path / "train" / "n01000001.tar")
    with pytest.raises(AlexkitError, match="holds no class folders; extract each per-class tar"):
        find_dataset(tmp_path)


def test_full_imagenet_count_mismatch_warns(tmp_path):
    wnids = [f"n{k:08d}" for k in range(1000)]
    for w in wnids:
        write(tmp_path / "train" / w / "x.JPEG")
    ds = find_dataset(tmp_path)
    assert len(ds.classes) == 1000
    assert any("WARNING" in w and "train has 1,000 images, not 1,281,167" in w for w in ds.warnings)
    assert any("val has 0 images, not 50,000" in w for w in ds.warnings)


# --- mixed layouts: nothing dropped silently ---


def test_extracted_train_beside_the_val_tar_reads_the_tar(tmp_path):
    write_official_tars(tmp_path / "tars")
    for wnid in SORTED_WNIDS[::-1]:
        for n in (3, 1, 2):
            write(tmp_path / "train" / wnid / f"{wnid}_{n}.JPEG")
    for name in ("ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"):
        (tmp_path / "tars" / name).rename(tmp_path / name)
    ds = find_dataset(tmp_path)
    assert ds.layout == "official-extracted"
    assert_official_labels(ds)
    assert {s.path for s in ds.splits["val"]} == {str(tmp_path / "ILSVRC2012_img_val.tar")}


def write_kaggle_csv(src: Path) -> None:
    wnid_of = {i: w for i, w, _ in LEAVES}
    rows = [f"{val_name(i)[:-5]},{wnid_of[VAL_IDS[i - 1]]} 10 20 30 40" for i in (4, 2, 5, 1, 3)]
    (src / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")


def test_kaggles_train_and_val_moved_up_beside_its_csv_are_read(tmp_path):
    """Many move Kaggle's train/ and val/ out of ILSVRC/Data/CLS-LOC: the flat val images are then
    labelled by the LOC_val_solution.csv beside them."""
    write_official_extracted(tmp_path)
    write_kaggle_csv(tmp_path)
    (tmp_path / "LOC_synset_mapping.txt").write_text("".join(f"{w} {NAMES[w]}\n" for w in SORTED_WNIDS))
    ds = find_dataset(tmp_path)
    assert ds.layout == "kaggle"
    assert_official_labels(ds)
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(AlexkitError, match=rf"^{tmp_path / 'val'} holds 5 images but no ground truth: put "
                                           rf"ILSVRC2012_devkit_t12/ .* or Kaggle's LOC_val_solution.csv in {tmp_path}$"):
        find_dataset(tmp_path)


def test_the_train_tar_beside_an_extracted_val_folder_reads_that_folder(tmp_path):
    """The val tar extracted (flat, with the devkit; or into class folders) beside the train tar."""
    write_official_tars(tmp_path)
    (tmp_path / "ILSVRC2012_img_val.tar").unlink()
    for i in range(1, 6):
        write(tmp_path / "val" / val_name(i))
    ds = find_dataset(tmp_path)
    assert ds.layout == "official-tars"
    assert_official_labels(ds)
    assert ds.splits["val"][0].path == str(tmp_path / "val" / val_name(1))
    shutil.rmtree(tmp_path / "val")
    for i, label in enumerate(VAL_LABELS, start=1):
        write(tmp_path / "val" / SORTED_WNIDS[label] / val_name(i))
    val = find_dataset(tmp_path).splits["val"]
    assert {s.name.rsplit("/", 1)[-1]: s.label for s in val} == {val_name(i): VAL_LABELS[i - 1] for i in range(1, 6)}


def test_a_val_folder_beside_the_val_tar_is_said_and_an_empty_one_leaves_the_tar_read(tmp_path):
    """valprep's first step makes empty class folders: the tar still holds the images. A val/ that
    holds some is used, and said, since an extraction stopped halfway would be a smaller split."""
    write_official_tars(tmp_path)
    for wnid in SORTED_WNIDS:
        (tmp_path / "val" / wnid).mkdir(parents=True)
    ds = find_dataset(tmp_path)
    assert {s.path for s in ds.splits["val"]} == {str(tmp_path / "ILSVRC2012_img_val.tar")} and len(ds.splits["val"]) == 5
    for i in (1, 2):
        write(tmp_path / "val" / SORTED_WNIDS[VAL_LABELS[i - 1]] / val_name(i))
    ds = find_dataset(tmp_path)
    assert len(ds.splits["val"]) == 2
    assert (f"{tmp_path / 'val'} holds 2 val images and ILSVRC2012_img_val.tar lies beside it: the folder's are used; "
            f"if its extraction did not finish, remove {tmp_path / 'val'} to read the tar instead") in ds.warnings


def test_val_images_in_no_class_of_train_are_an_error_not_an_empty_split(tmp_path):
    """val/ILSVRC2012_img_val/*.JPEG (one level too deep) would be one class unknown to train: every
    val image left out, and training refused after the whole prepare."""
    write_official_extracted(tmp_path)
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    (tmp_path / "val").rename(tmp_path / "ILSVRC2012_img_val")
    (tmp_path / "val").mkdir()
    (tmp_path / "ILSVRC2012_img_val").rename(tmp_path / "val" / "ILSVRC2012_img_val")
    with pytest.raises(AlexkitError, match=rf"^none of the 5 images in {tmp_path / 'val'} is in a class folder named as "
                                           r"one of train's \(its folders: ILSVRC2012_img_val/; train's: e.g. n01000001/\); "
                                           rf"put val's class folders, or its flat ILSVRC2012_val_\* images, directly in {tmp_path / 'val'}$"):
        find_dataset(tmp_path)
    for wnid in SORTED_WNIDS:
        shutil.rmtree(tmp_path / "train" / wnid)
        write(tmp_path / "train" / wnid.upper() / "x.JPEG")  # no class of the devkit's
    shutil.rmtree(tmp_path / "val")
    for i in range(1, 6):
        write(tmp_path / "val" / val_name(i))
    with pytest.raises(AlexkitError, match=r"^none of the 5 val images in .* is of a class of train \(e.g. N01000001\)"):
        find_dataset(tmp_path)


def test_val_class_folders_that_disagree_with_the_ground_truth_warn(tmp_path):
    """A valprep script with a wrong mapping: the devkit beside the folders says so."""
    write_official_extracted(tmp_path)
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    shutil.rmtree(tmp_path / "val")
    for i, label in enumerate(VAL_LABELS, start=1):
        write(tmp_path / "val" / SORTED_WNIDS[label] / val_name(i))
    assert not [w for w in find_dataset(tmp_path).warnings if "valprep" in w]
    (tmp_path / "val" / SORTED_WNIDS[2] / val_name(1)).rename(tmp_path / "val" / SORTED_WNIDS[0] / val_name(1))
    ds = find_dataset(tmp_path)
    assert [w for w in ds.warnings if "valprep" in w] == [
        f"WARNING: 1 of 5 val images in class folders are in another class than {tmp_path / 'ILSVRC2012_devkit_t12' / 'data'} gives "
        f"(e.g. val/{SORTED_WNIDS[0]}/{val_name(1)}: {SORTED_WNIDS[2]}); a wrong valprep mapping? Labels come from the "
        "folders: move the images, or remove the class folders and put the images flat in val/"]
    assert [s.label for s in ds.splits["val"] if s.name.endswith(val_name(1))] == [0]  # the folder's
    write(tmp_path / "train" / "extra" / "x.JPEG")  # a stray class that is no wnid: the others are still compared
    assert [w for w in find_dataset(tmp_path).warnings if "valprep" in w][0].startswith("WARNING: 1 of 5 val images")


def test_a_class_folder_linked_to_nothing_is_an_error_not_a_missing_class(tmp_path):
    """A class folder linked to a disk that is not mounted: without it the later classes' labels
    would shift by one, silently. SRC/train itself linked to nothing is named too."""
    write_official_extracted(tmp_path / "data")
    write_devkit_folder(tmp_path / "data" / "ILSVRC2012_devkit_t12" / "data")
    (tmp_path / "data" / "train" / SORTED_WNIDS[0]).rename(tmp_path / "moved")
    (tmp_path / "data" / "train" / SORTED_WNIDS[0]).symlink_to(tmp_path / "nowhere" / SORTED_WNIDS[0])
    with pytest.raises(AlexkitError, match=rf"^{tmp_path / 'data' / 'train' / SORTED_WNIDS[0]} is a link to "
                                           rf"{tmp_path / 'nowhere' / SORTED_WNIDS[0]}, which does not exist \(a disk not "
                                           r"mounted\?\); make its target available, or remove the link$"):  # fmt: skip
        find_dataset(tmp_path / "data")
    (tmp_path / "data" / "train" / SORTED_WNIDS[0]).unlink()
    (tmp_path / "data" / "ILSVRC2012_img_test.tar").symlink_to(tmp_path / "nowhere" / "test.tar")  # not looked at
    (tmp_path / "data" / "LOC_synset_mapping.txt").symlink_to(tmp_path / "nowhere" / "names.txt")  # looked at
    with pytest.raises(AlexkitError, match=r"LOC_synset_mapping.txt is a link to .*, which does not exist"):
        find_dataset(tmp_path / "data")
    (tmp_path / "data" / "LOC_synset_mapping.txt").unlink()
    (tmp_path / "data" / "train" / SORTED_WNIDS[1] / "notes").symlink_to(tmp_path / "nowhere" / "notes")  # in a class
    assert len(find_dataset(tmp_path / "data").classes) == 2
    (tmp_path / "data" / "train").rename(tmp_path / "old-train")
    (tmp_path / "data" / "train").symlink_to(tmp_path / "nowhere" / "train")
    with pytest.raises(AlexkitError, match=rf"^{tmp_path / 'data' / 'train'} is a link to .*, which does not exist"):
        find_dataset(tmp_path / "data")


def test_kaggle_val_in_class_folders(tmp_path):
    data = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    for wnid in SORTED_WNIDS:
        write(data / "train" / wnid / f"{wnid}_1.JPEG")
    for i, label in enumerate(VAL_LABELS, start=1):
        write(data / "val" / SORTED_WNIDS[label] / val_name(i))
    val = find_dataset(tmp_path).splits["val"]
    assert len(val) == 5 and all(s.name.split("/")[-2] == SORTED_WNIDS[s.label] for s in val)  # labelled by folder


@pytest.mark.parametrize("kaggle", [False, True])
def test_a_val_folder_half_moved_into_class_folders_is_an_error(tmp_path, kaggle):
    root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" if kaggle else tmp_path
    write(root / "train" / "n01000001" / "a.JPEG")
    write(root / "val" / "n01000001" / val_name(1))
    write(root / "val" / val_name(2))
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    with pytest.raises(AlexkitError, match=r"holds 1 images .* and 1 class folders .*half-finished"):
        find_dataset(tmp_path)


def test_nearly_full_imagenet_warns_that_labels_are_not_standard(tmp_path):
    for k in range(999):
        write(tmp_path / "train" / f"n{k:08d}" / "a.JPEG")
    ds = find_dataset(tmp_path)
    assert any("999 wnid classes, not ImageNet's 1000" in w for w in ds.warnings)


# --- what a Mac, an editor or a cut-off download leaves behind ---


def test_macos_leftovers_are_no_classes(tmp_path):
    write_official_extracted(tmp_path)
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    write(tmp_path / "train" / "__MACOSX" / "n01000001" / "._n01000001_1.JPEG")
    write(tmp_path / "train" / "n01000001" / "__MACOSX" / "n01000001_9.JPEG")
    ds = find_dataset(tmp_path)
    assert_official_labels(ds)
    assert not ds.warnings


def test_apple_double_copies_in_the_train_tar_are_no_classes(tmp_path):
    write_official_tars(tmp_path)
    path = tmp_path / "ILSVRC2012_img_train.tar"
    with tarfile.open(path, "a") as outer:
        add_member(outer, "._n01000001.tar", b"\0" * 512)
        add_member(outer, "__MACOSX/._n02000002.tar", b"\0" * 512)
    ds = find_dataset(tmp_path)
    assert_official_labels(ds)


def test_stray_class_names_among_wnids_warn_that_labels_shift(tmp_path):
    for name in SORTED_WNIDS + ["Backup"]:
        write(tmp_path / "train" / name / "a.JPEG")
    ds = find_dataset(tmp_path)
    assert [c.wnid for c in ds.classes] == ["Backup"] + SORTED_WNIDS
    assert any(w.startswith("WARNING: 1 of the 4 classes are not wnids (e.g. Backup)") for w in ds.warnings)
    for name in ("cats", "dogs"):  # a dataset of its own, with no wnids: nothing to say
        write(tmp_path / "own" / "train" / name / "a.jpg")
    assert not find_dataset(tmp_path / "own").warnings


def test_per_class_tars_beside_class_folders_warn_when_not_extracted(tmp_path):
    for wnid in SORTED_WNIDS[:2]:
        write(tmp_path / "train" / wnid / "a.JPEG")
        write(tmp_path / "train" / f"{wnid}.tar")  # kept after extracting: fine
    write(tmp_path / "train" / f"{SORTED_WNIDS[2]}.tar")  # not extracted yet
    write(tmp_path / "train" / "ILSVRC2012_img_train.tar")  # left by an extract script: no class
    ds = find_dataset(tmp_path)
    assert [c.wnid for c in ds.classes] == SORTED_WNIDS[:2]
    [warning] = ds.warnings
    assert warning.startswith(f"WARNING: 1 per-class tar in {tmp_path / 'train'} without a class folder (e.g. n03000003.tar)")


def test_a_damaged_header_inside_a_class_tar_is_an_error(tmp_path):
    """Python's tarfile ends a listing quietly at a bad header after the first; that must not lose images."""
    write_official_tars(tmp_path)
    ds = find_dataset(tmp_path)
    second = sorted(s.offset for s in ds.splits["train"] if s.name.startswith("ILSVRC2012_img_train.tar/n02000002"))[1]
    with open(tmp_path / "ILSVRC2012_img_train.tar", "r+b") as f:  # the checksum field of that member's header
        f.seek(second - 512 + 148)
        f.write(b"999999\0 ")
    with pytest.raises(AlexkitError, match=r"n02000002.tar has a damaged header after 1 members; download"):
        find_dataset(tmp_path)


def test_a_class_tar_cut_inside_a_member_is_an_error(tmp_path):
    """A per-class tar stored cut off, its last image running past its end into the next class's tar."""
    inner_bytes = io.BytesIO()
    with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for n in (1, 2):
            add_member(inner, f"n01000001_{n}.JPEG", b"x" * 2000)
    whole = inner_bytes.getvalue()
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as outer:
        add_member(outer, "n01000001.tar", whole[: 512 + 2048 + 512 + 1000])  # 1,000 of the second's 2,000 bytes
        add_member(outer, "n02000002.tar", whole)
    cut = r"n01000001.tar is cut off after 1 members \(n01000001_2.JPEG runs past its end\); download ILSVRC2012_img_train"
    with pytest.raises(AlexkitError, match=cut):
        find_dataset(tmp_path)


@pytest.mark.parametrize("cut", [100, 512 + 100])
def test_a_val_tar_cut_inside_a_header_is_an_error(tmp_path, cut):
    """Cut 100 bytes into the third member's header, or into its data (a download that stopped)."""
    write_official_tars(tmp_path)
    path = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(path) as tar:
        third = tar.getmembers()[2].offset
    with open(path, "r+b") as f:
        f.truncate(third + cut)
    with pytest.raises(AlexkitError, match=r"ILSVRC2012_img_val.tar.*(is cut off after 2 members|cannot read)"):
        find_dataset(tmp_path)


def test_a_tar_written_without_end_blocks_is_read(tmp_path):
    """GNU tar lists a tar that ends where its last member ends (no zero blocks); so does alexkit."""
    write_official_tars(tmp_path)
    path = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    with open(path, "r+b") as f:
        f.truncate(last.offset_data + -(-last.size // 512) * 512)
    assert len(find_dataset(tmp_path).splits["val"]) == 5


def test_kaggle_files_saved_with_a_byte_order_mark_are_read(tmp_path):
    data = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    write(data / "train" / "n01000001" / "a.JPEG")
    write(data / "val" / val_name(1))
    (tmp_path / "LOC_val_solution.csv").write_text(f"\ufeffImageId,PredictionString\n{val_name(1)[:-5]},n01000001 1 2 3 4\n")
    (tmp_path / "LOC_synset_mapping.txt").write_text("\ufeffn01000001 alpha thing\n")
    ds = find_dataset(tmp_path)
    assert [s.label for s in ds.splits["val"]] == [0] and ds.classes[0].name == "alpha thing"


def test_the_train_folder_itself_or_the_dogs_tar_say_what_to_pass(tmp_path):
    write(tmp_path / "train" / "n01000001" / "a.JPEG")
    with pytest.raises(AlexkitError, match=f"the train folder itself: pass its parent folder {tmp_path};"):
        find_dataset(tmp_path / "train")
    (tmp_path / "dogs").mkdir()
    tarfile.open(tmp_path / "dogs" / "ILSVRC2012_img_train_t3.tar", "w").close()
    with pytest.raises(AlexkitError, match="ILSVRC2012_img_train_t3.tar is the dogs subset .*; put ILSVRC2012_img_train.tar in"):
        find_dataset(tmp_path / "dogs")


# --- tar listing: the plain-header reader must list exactly what tarfile lists ---

SIZES = [0, 1, 511, 512, 513, 1500]  # around the 512-byte block


def tarfile_listing(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


def listings(data: bytes, start: int = 0, end: int | None = None):
    """(the plain reader's listing or None, tarfile's listing or the error it ends in)."""
    from alexkit.datasets import tars

    end = len(data) if end is None else end
    plain = tars._plain_listing(io.BytesIO(data), start, end)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tars, "_plain_listing", lambda *args: None)
            by_tarfile = tars._listing(io.BytesIO(data), start, end, "t.tar", "t.tar", lambda name: True)
    except (AlexkitError, tarfile.TarError) as exc:
        by_tarfile = exc
    return plain, by_tarfile


@contextlib.contextmanager
def at_most(seconds: int):
    """The block, failed if it runs longer: a listing that goes round in circles is a failure, not a hung suite."""
    def too_long(*args):
        raise TimeoutError(f"still running after {seconds} s: a listing went round in circles")

    before = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_plain_tars_are_listed_without_tarfile_and_as_tarfile_lists_them(tmp_path, fmt):
    path = tmp_path / "plain.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        folder = tarfile.TarInfo("n01000001")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for k, size in enumerate(SIZES):
            add_member(tar, f"n01000001/n01000001_{k}.JPEG", bytes([k + 1]) * size)
        if fmt == tarfile.USTAR_FORMAT:  # a name of 107 characters, split into the prefix and name fields
            add_member(tar, "d" * 90 + "/n01000001_6.JPEG", b"c" * 700)
    plain, by_tarfile = listings(path.read_bytes())
    assert plain == by_tarfile == tarfile_listing(path)
    assert [size for _, _, size in plain] == SIZES + [700] * (fmt == tarfile.USTAR_FORMAT)


def test_a_tar_from_gnu_tar_is_listed_without_tarfile(tmp_path):
    """GNU tar's own headers (its magic, "./" folders, a name split nowhere), as ImageNet's tars were made."""
    tar_exe = shutil.which("tar")
    if tar_exe is None:
        pytest.skip("needs GNU tar")
    for k, size in enumerate(SIZES):
        write(tmp_path / "src" / "sub" / f"n01000001_{k}.JPEG", bytes(size))
    path = tmp_path / "gnu.tar"
    subprocess.run([tar_exe, "-cf", str(path), "-C", str(tmp_path / "src"), "."], check=True)
    plain, by_tarfile = listings(path.read_bytes())
    assert plain == by_tarfile == tarfile_listing(path) and len(plain) == len(SIZES)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tars_with_other_headers_are_listed_by_tarfile(tmp_path, fmt):
    """A link, and in GNU and pax tars a long name and one that is not ASCII: their headers are not
    plain file headers, so tarfile lists the tar. The link is listed with its target's bytes."""
    path = tmp_path / "other.tar"
    names = ["n01000001_" + "x" * 150 + ".JPEG", "n01000001_\u00e9.JPEG"] if fmt != tarfile.USTAR_FORMAT else []
    with tarfile.open(path, "w", format=fmt) as tar:
        for k, name in enumerate(names):
            add_member(tar, name, b"a" * 600 * (k + 1))
        link = tarfile.TarInfo("n01000001_link.JPEG")
        link.type, link.linkname = tarfile.SYMTYPE, "n01000001_9.JPEG"
        tar.addfile(link)
        add_member(tar, "n01000001_9.JPEG", b"b" * 513)
    plain, by_tarfile = listings(path.read_bytes())
    assert plain is None
    files = tarfile_listing(path)
    assert [name for name, _, _ in files] == [*names, "n01000001_9.JPEG"]
    assert by_tarfile == [*files, ("n01000001_link.JPEG", *files[-1][1:])]


def test_links_in_a_val_tar_read_their_targets_bytes(tmp_path):
    """A tar made from a tree of hard links (`cp -al`, a valprep with `ln`) holds link members: each is
    an image, read from its target's bytes. A link to what the tar does not hold is an error."""
    from alexkit.datasets.tars import index_flat_tar

    path = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(path, "w") as tar:
        add_member(tar, "val/" + val_name(1), b"one" * 300)
        for kind, name, target in ((tarfile.LNKTYPE, val_name(2), "val/" + val_name(1)),
                                   (tarfile.SYMTYPE, val_name(3), val_name(1))):  # fmt: skip
            link = tarfile.TarInfo("val/" + name)
            link.type, link.linkname = kind, target
            tar.addfile(link)
    entries = index_flat_tar(path, lambda name: name.endswith(".JPEG"))
    data = path.read_bytes()
    assert [name for name, _, _ in entries] == [val_name(i) for i in (1, 2, 3)]
    assert {data[offset : offset + size] for _, offset, size in entries} == {b"one" * 300}
    with tarfile.open(path, "a") as tar:
        link = tarfile.TarInfo("val/" + val_name(4))
        link.type, link.linkname = tarfile.LNKTYPE, "elsewhere/" + val_name(1)
        tar.addfile(link)
    with pytest.raises(AlexkitError, match=rf"^{path}: val/{val_name(4)} is a link to elsewhere/{val_name(1)}, which the "
                                           r"tar does not hold; make the tar again with the files themselves"):  # fmt: skip
        index_flat_tar(path, lambda name: name.endswith(".JPEG"))


# --- edges that once went unchecked ---


def test_official_extracted_with_a_devkit_folder_among_other_folders(tmp_path):
    write_official_extracted(tmp_path)
    for name in ("docs", "scripts", "zz"):
        (tmp_path / name).mkdir()
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    assert_official_labels(find_dataset(tmp_path))


def test_a_stray_meta_mat_does_not_hide_the_devkit_tar(tmp_path):
    write_official_extracted(tmp_path)
    write(tmp_path / "stuff" / "meta.mat", b"not the devkit")  # no ground truth beside it
    write_devkit_tar(tmp_path / "ILSVRC2012_devkit_t12.tar.gz")
    assert_official_labels(find_dataset(tmp_path))


def test_val_image_number_zero_is_an_error(tmp_path):
    """The ground truth's lines are numbered from 1: image 0 has none (not the last line's label)."""
    write_official_extracted(tmp_path)
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    write(tmp_path / "val" / val_name(0))
    with pytest.raises(AlexkitError, match=rf"{val_name(0)}: no line 0 in ILSVRC2012_validation_ground_truth.txt"):
        find_dataset(tmp_path)


def test_a_flat_val_file_misnamed_is_named_where_the_user_finds_it(tmp_path):
    """Its path, not its name alone (among 50,000 val files, in a folder or in the val tar)."""
    write_official_extracted(tmp_path)
    write_devkit_folder(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    write(tmp_path / "val" / "extra.JPEG")
    with pytest.raises(AlexkitError) as err:
        find_dataset(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'val' / 'extra.JPEG'}: flat val files must be named "), err.value
    shutil.rmtree(tmp_path / "val")
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w") as tar:  # train extracted, val still in its tar
        add_member(tar, "extra.JPEG", b"bytes")
    with pytest.raises(AlexkitError) as err:
        find_dataset(tmp_path)
    assert str(err.value).startswith(f"extra.JPEG in {tmp_path / 'ILSVRC2012_img_val.tar'}: flat val files must be named "), err.value


def test_a_kaggle_csv_without_its_header_is_refused(tmp_path):
    from alexkit.datasets.devkit import read_kaggle_solution

    path = tmp_path / "LOC_val_solution.csv"
    path.write_text(f"{val_name(1)[:-5]},n01000001 1 2 3 4\n")  # the first row would be lost as a header
    with pytest.raises(AlexkitError, match="LOC_val_solution.csv: expected the header ImageId,PredictionString"):
        read_kaggle_solution(path)


def test_val_class_folders_win_over_a_val_tar_beside_them(tmp_path):
    write(tmp_path / "train" / "a" / "1.jpg")
    write(tmp_path / "val" / "a" / "2.jpg")
    tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w").close()
    assert [s.name for s in find_dataset(tmp_path).splits["val"]] == ["val/a/2.jpg"]


def test_warnings_count_empty_classes_and_the_images_left_out(tmp_path):
    write(tmp_path / "train" / "a" / "1.jpg")
    (tmp_path / "train" / "b").mkdir()
    for name in ("2.jpg", "3.jpg"):
        write(tmp_path / "val" / "c" / name)  # a class absent from train
    write(tmp_path / "val" / "a" / "4.jpg")
    warnings = find_dataset(tmp_path).warnings
    assert f"1 class of 2 in {tmp_path / 'train'} without images (e.g. b); each keeps its label" in warnings, warnings
    assert any(w.startswith("2 images in") and "of classes with no train/ folder; left out" in w for w in warnings), warnings


def test_a_train_folder_whose_class_folders_hold_no_images_is_an_error_naming_them(tmp_path):
    (tmp_path / "train" / "n01000001").mkdir(parents=True)
    with pytest.raises(AlexkitError) as info:
        find_dataset(tmp_path)
    assert str(info.value).startswith(f"no images in {tmp_path / 'train'}: its 1 class folder (n01000001) holds no file "
                                      "ending in one of .bmp .gif .jfif .jpe .jpeg .jpg ")  # fmt: skip
    assert str(info.value).endswith(f"(any case); put each class's images in {tmp_path / 'train'}/<class>/ and run again")
    write(tmp_path / "train" / "n02000002" / "notes.txt")  # files there, none an image by its name
    with pytest.raises(AlexkitError, match=r"its 2 class folders \(e\.g\. n01000001\) hold no file .*\(any case\); "
                                           r"1 other file ignored \(e\.g\. train/n02000002/notes\.txt\); put each"):  # fmt: skip
        find_dataset(tmp_path)


def test_a_train_tar_whose_class_tars_hold_no_images_is_an_error(tmp_path):
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as outer:
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode="w") as tar:
            add_member(tar, "README.txt", b"not an image")
        add_member(outer, "n01000001.tar", inner.getvalue())
    with pytest.raises(AlexkitError, match=r"^no images in .*ILSVRC2012_img_train\.tar: its 1 per-class tar \(n01000001\) "
                                           r"holds no file ending in one of .*; use the official ILSVRC2012_img_train\.tar$"):  # fmt: skip
        find_dataset(tmp_path)


def test_a_class_tar_found_twice_in_the_train_tar_keeps_both(tmp_path):
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as outer:
        for n, folder in ((1, "a"), (2, "b")):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                add_member(tar, f"n01000001_{n}.JPEG", b"x" * 10)
            add_member(outer, f"{folder}/n01000001.tar", inner.getvalue())
    assert [s.name.rsplit("/", 1)[-1] for s in find_dataset(tmp_path).splits["train"]] == ["n01000001_1.JPEG", "n01000001_2.JPEG"]


def test_a_train_tar_cut_inside_a_class_tars_header_is_an_error(tmp_path):
    """The outer tar's listing is checked to end whole too: a cut there loses the classes after it."""
    write_official_tars(tmp_path)
    path = tmp_path / "ILSVRC2012_img_train.tar"
    with tarfile.open(path) as tar:
        third = tar.getmembers()[2].offset
    with open(path, "r+b") as f:
        f.truncate(third + 100)
    with pytest.raises(AlexkitError, match=r"ILSVRC2012_img_train.tar (is cut off|has a damaged header) after 2 members"):
        find_dataset(tmp_path)


def test_an_empty_member_of_a_tar_reads_as_no_bytes(tmp_path):
    from alexkit.datasets.layouts import Sample

    path = tmp_path / "t.tar"
    path.write_bytes(b"x" * 5000)
    assert read_sample_bytes(Sample(str(path), 0, offset=1024, size=0, name="t.tar/empty.JPEG")) == b""


def test_nearly_and_over_full_imagenet_warn(monkeypatch):
    from alexkit.datasets import layouts

    wnids = [f"n{k:08d}" for k in range(1000)]
    [warning] = layouts._full_imagenet_checks(wnids[:950], {})
    assert warning.startswith("WARNING: 950 wnid classes, not ImageNet's 1000")
    monkeypatch.setattr(layouts, "FULL_IMAGENET", {"classes": 1000, "train": 3, "val": 1})
    samples = tuple(layouts.Sample("x", 0) for _ in range(4))
    assert layouts._full_imagenet_checks(wnids, {"train": samples[:3], "val": samples[:1]}) == []
    [warning] = layouts._full_imagenet_checks(wnids, {"train": samples, "val": samples[:1]})
    assert "train has 4 images, not 3" in warning


# --- damaged and odd headers (found by comparing the two readers on 240,000 mutated tars) ---


def one_member_tar(size_field: bytes | None = None, mtime_field: bytes | None = None, kind=tarfile.REGTYPE) -> bytes:
    """A ustar tar of a.JPEG (3 bytes; or a folder of that name) and b.JPEG, with fields of the first
    header replaced and its checksum made right again, as a writer (not a damaged download) would
    leave them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("a.JPEG", "b.JPEG"):
            info = tarfile.TarInfo(name)
            info.type = kind if name == "a.JPEG" else tarfile.REGTYPE
            info.size = 3 if info.isfile() else 0
            tar.addfile(info, io.BytesIO(b"abc") if info.isfile() else None)
    data = bytearray(buffer.getvalue())
    for field, at in ((size_field, 124), (mtime_field, 136)):
        if field is not None:
            data[at : at + 12] = field.ljust(12, b"\0")
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    return bytes(data)


def test_a_negative_size_is_a_damaged_header_not_a_loop():
    """tarfile takes "-1000" for a size and goes back to an earlier header, for ever."""
    with at_most(10):
        plain, by_tarfile = listings(one_member_tar(size_field=b"-1000"))
    assert plain is None and "t.tar has a damaged header after 0 members" in str(by_tarfile)


def test_odd_headers_are_listed_alike_by_both_readers():
    plain, by_tarfile = listings(one_member_tar(mtime_field=b"9"))  # not octal: tarfile refuses the header
    assert plain is None and isinstance(by_tarfile, tarfile.TarError)
    folder = one_member_tar(size_field=b"77777", kind=tarfile.DIRTYPE)  # past the end: a folder's size is no data
    assert listings(folder) == ([("b.JPEG", 1024, 3)], [("b.JPEG", 1024, 3)])
    plain, by_tarfile = listings(b"")
    assert plain is None and isinstance(by_tarfile, tarfile.ReadError)  # an empty file is no tar


def test_a_class_tar_without_end_blocks_ends_where_its_member_does():
    """Both readers stop at the member's end instead of reading the next class tar's header."""
    inner = one_member_tar()[: 4 * 512]  # two members, no end blocks
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w") as tar:
        add_member(tar, "n01000001.tar", inner)
        add_member(tar, "n02000002.tar", one_member_tar())
    plain, by_tarfile = listings(outer.getvalue(), 512, 512 + len(inner))
    assert plain == by_tarfile == [("a.JPEG", 1024, 3), ("b.JPEG", 2048, 3)]


def test_the_plain_reader_lists_what_tarfile_lists_on_thousands_of_mutated_tars():
    """Small tars (files, folders, links, long and non-ASCII names; ustar, GNU, pax; with or without
    end blocks; alone or inside another tar), then fields replaced with their checksum made right,
    bytes flipped, cuts and garbage: wherever the plain reader gives a listing, tarfile gives the
    same one."""
    import random

    rng = random.Random(0)
    names = ["a.JPEG", "d/b.JPEG", "é.JPEG", "x" * 99, "y" * 130, "z" * 90 + "/c.JPEG"]
    numbers = [b"-1000", b"0", b"7", b"1000", b"77777", b" 12 ", b"1_0", b"+4", b"99", b"", b"\x80" + bytes(10) + b"\x02"]
    fields = [(0, 100), (100, 108), (124, 136), (136, 148), (156, 157), (257, 265), (329, 337), (345, 500)]
    with at_most(60):
        compared = answered = 0
        for case in range(3000):
            buffer = io.BytesIO()
            fmt = rng.choice([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
            with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
                for _ in range(rng.randint(0, 3)):
                    info = tarfile.TarInfo(rng.choice(names))
                    info.type = rng.choice([tarfile.REGTYPE] * 6 + [tarfile.DIRTYPE, tarfile.SYMTYPE])
                    info.size = rng.choice([0, 1, 511, 512, 513]) if info.isfile() else 0
                    try:
                        tar.addfile(info, io.BytesIO(bytes(info.size)) if info.isfile() else None)
                    except ValueError:  # a name ustar cannot hold
                        pass
            data = bytearray(buffer.getvalue())
            if rng.random() < 0.25:  # written without end blocks: the tar ends where its last member does
                with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
                    ends = [m.offset_data + (-(-m.size // 512) * 512 if m.isfile() else 0) for m in tar]
                del data[max(ends, default=0) :]
            for _ in range(rng.randint(0, 2)):
                at = 512 * rng.randrange(max(1, len(data) // 512))
                how = rng.random()
                if how < 0.6 and at + 512 <= len(data):  # a field, then the checksum made right again
                    lo, hi = rng.choice(fields)
                    data[lo + at : hi + at] = rng.choice(numbers + [b"5", b"x", b"\0"])[: hi - lo].ljust(hi - lo, b"\0")
                    data[at + 148 : at + 156] = b" " * 8
                    data[at + 148 : at + 156] = b"%06o\0 " % sum(data[at : at + 512])
                elif how < 0.8:
                    del data[rng.randrange(len(data) + 1) :]
                elif how < 0.9:
                    data += bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 512])))
                elif data:
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            data, start, end = bytes(data), 0, len(data)
            if rng.random() < 0.3:  # inside a train tar, between other members
                outer = io.BytesIO()
                with tarfile.open(fileobj=outer, mode="w") as tar:
                    add_member(tar, "n01000001.tar", data)
                    add_member(tar, "n02000002.tar", b"y" * 600)
                data, start, end = outer.getvalue(), 512, 512 + len(data)
            plain, by_tarfile = listings(data, start, end)
            compared += 1
            if plain is not None:
                answered += 1
                assert plain == by_tarfile, (case, plain, by_tarfile)
    assert answered > compared / 5  # the plain reader answered often enough for this to mean something
