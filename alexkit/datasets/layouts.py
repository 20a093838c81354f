"""Find the images and labels of a dataset in any of the layouts ImageNet comes in.

`find_dataset(src)` looks at `src`, picks the layout, lists every image (no decoding) and labels
it with the rank of its class name in sorted order (for ImageNet: 0 = n01440764). Layouts:

  kaggle              src/ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/ (flat, or val/<wnid>/)},
                      src/LOC_val_solution.csv, src/LOC_synset_mapping.txt; or train/ and a flat
                      val/ moved up into src beside the csv
  class-folders       src/train/<class>/*, optional src/val/<class>/* (torchvision's ImageFolder
                      layout; any classes, not only ImageNet's)
  official-extracted  src/train/<wnid>/*, flat src/val/ILSVRC2012_val_*.JPEG (or src/ILSVRC2012_img_val.tar,
                      read in place) and the devkit (a folder holding data/meta.mat and the ground
                      truth, up to 3 levels under src outside the image folders; or
                      ILSVRC2012_devkit_t12.tar[.gz] in src)
  official-tars       src/ILSVRC2012_img_train.tar (a tar of per-class tars), optional
                      src/ILSVRC2012_img_val.tar (or its files extracted into src/val/) + the
                      devkit; read in place, never extracted

Classes are the folders (or per-class tars) of the train split; val images of other classes are
left out with a warning. Train samples are ordered by class, then file name (from the official
train tar: by class, then position in its per-class tar); val samples by file name (flat val) or
by class, then file name (val in class folders).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from alexkit.datasets import devkit as dk
from alexkit.datasets import sample_place
from alexkit.datasets.listing import IMAGE_EXTENSIONS, check_not_dangling, is_image, list_images, scan_top, visible
from alexkit.datasets.tars import Tick, index_class_tars, index_flat_tar
from alexkit.errors import AlexkitError
from alexkit.paths import expand_home, word
from alexkit.progress import counted, some

LAYOUTS = ("class-folders", "official-extracted", "official-tars", "kaggle")
TRAIN_TAR = "ILSVRC2012_img_train.tar"
TASK3_TAR = "ILSVRC2012_img_train_t3.tar"  # the dogs subset of another task, not the classification set
VAL_TAR = "ILSVRC2012_img_val.tar"
KAGGLE_DATA = "ILSVRC/Data/CLS-LOC"
FULL_IMAGENET = {"classes": 1000, "train": 1_281_167, "val": 50_000}

_SUPPORTED = (
    "supported layouts: class-folders (SRC/train/<class>/*, optional SRC/val/<class>/*); "
    "official-extracted (SRC/train/<wnid>/*, flat SRC/val/ILSVRC2012_val_*.JPEG, ILSVRC2012_devkit_t12 "
    "folder or .tar.gz); official-tars (SRC/ILSVRC2012_img_train.tar, optional ILSVRC2012_img_val.tar or its "
    "images in SRC/val/, + ILSVRC2012_devkit_t12.tar.gz); kaggle (SRC/ILSVRC/Data/CLS-LOC/{train,val} or SRC/{train,val}, "
    "SRC/LOC_val_solution.csv, SRC/LOC_synset_mapping.txt)"
)
_WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True, slots=True)
class Sample:
    """Where one image's encoded bytes are: a whole file, or `size` bytes at `offset` inside a tar."""

    path: str  # the file on disk, or the outer tar that holds the image
    label: int  # rank of the class name in sorted order
    offset: int = 0  # byte offset of the image inside `path` (tars); 0 for plain files
    size: int = -1  # bytes to read; -1 = the whole file
    name: str = ""  # readable, for messages: "train/n01440764/n01440764_10026.JPEG"


@dataclass(frozen=True)
class ClassInfo:
    index: int
    wnid: str  # the class folder / per-class tar name (a wnid for ImageNet)
    name: str  # from meta.mat or LOC_synset_mapping.txt, else the wnid


@dataclass(frozen=True)
class Dataset:
    root: Path
    layout: str  # one of LAYOUTS
    classes: tuple[ClassInfo, ...]
    splits: dict[str, tuple[Sample, ...]]  # "train", and "val" when present
    warnings: tuple[str, ...]  # things a person should read before spending hours on prepare


def read_sample_bytes(sample: Sample) -> bytes:
    """The image's encoded bytes: one open, seek and read (safe in any worker process)."""
    with open(sample.path, "rb") as f:
        if sample.size < 0:
            return f.read()
        f.seek(sample.offset)
        data = f.read(sample.size)
    if len(data) != sample.size:
        raise AlexkitError(
            f"{sample.name or sample.path}: expected {sample.size} bytes at offset {sample.offset} of "
            f"{sample.path}, got {len(data)}; the file is truncated, download it again"
        )
    return data


def _quiet(what: str, done: int, total: int, unit: str) -> None:
    pass


def find_dataset(src: Path, tick: Tick = _quiet) -> Dataset:
    """Detect the layout of `src` and list its images, labels and classes. `tick(what, done, total,
    unit)` hears of the long parts as they go (class folders listed; megabytes of a tar indexed)."""
    src = expand_home(src).absolute()
    if not src.exists():
        raise AlexkitError(
            f"{src} does not exist; pass the folder that holds your ImageNet (or run `alexkit sample DIR`)"
        )
    if not src.is_dir():
        hint = f"; pass its folder {src.parent}" if src.name in (TRAIN_TAR, VAL_TAR) else ""
        raise AlexkitError(f"{src} is not a folder{hint}; {_SUPPORTED}")
    found = visible(src)
    for name in ("train", "val", "ILSVRC", TRAIN_TAR, VAL_TAR, dk.DEVKIT_NAME, *dk.DEVKIT_TARS, dk.KAGGLE_SOLUTION, dk.KAGGLE_SYNSETS):
        check_not_dangling(src / name)  # SRC/train linked to a disk that is not mounted, say
    stopped = [name for name in (sample_place.STAGING, sample_place.REPLACED) if os.path.lexists(src / name)]
    if stopped:  # its entries move in one by one: a new devkit may already label the old val images
        raise AlexkitError(f"{src} holds {stopped[0]}: an `alexkit sample` into it was stopped, so its dataset may be part "
                           f"old, part new; run `alexkit sample {word(src)} --overwrite` again with the same flags, which "
                           "writes it whole")  # fmt: skip
    if not found:
        raise AlexkitError(f"{src} is empty; put a dataset there (or run `alexkit sample {word(src)}`); {_SUPPORTED}")
    if (src / KAGGLE_DATA / "train").is_dir():
        return _kaggle(src, tick)
    if (src / "train").is_dir():
        return _folders(src, tick)
    if (src / TRAIN_TAR).is_file():
        return _tars(src, tick)
    if (src / TASK3_TAR).is_file():
        raise AlexkitError(
            f"{src / TASK3_TAR} is the dogs subset of another ILSVRC-2012 task, not the 1000-class training set; "
            f"put {TRAIN_TAR} in {src}"
        )
    shown = ", ".join(n + "/" if (src / n).is_dir() else n for n in found[:8])
    more = f" and {len(found) - 8} more" if len(found) > 8 else ""
    fix = (
        f"this looks like the train folder itself: pass its parent folder {src.parent}"
        if src.name == "train" else f"if these are class folders, move them into {src}/train/"
    )
    raise AlexkitError(f"no known dataset layout in {src} (it holds: {shown}{more}); {fix}; {_SUPPORTED}")


# --- layouts ---


def _folders(src: Path, tick: Tick) -> Dataset:
    """class-folders (val/<class>/) or official-extracted (flat val/ + devkit)."""
    notes: list[str] = []
    wnids, train = _class_folder_split(src, "train", notes, tick)
    kit = dk.find_devkit(src)
    splits = {"train": train}
    val, flat = _val_folder(src, "val", wnids, kit, notes, tick)
    if val is not None:
        splits["val"] = val
    elif (src / VAL_TAR).is_file():  # train extracted, val still in its tar
        splits["val"] = _val_tar_split(src, wnids, kit, notes)
    if flat and kit is None:  # Kaggle's train/ and val/ moved up beside its CSV
        layout = "kaggle"
    else:
        layout = "official-extracted" if flat or (src / VAL_TAR).is_file() else "class-folders"
    names = kit.names() if kit is not None else _kaggle_names(src)
    return _dataset(src, layout, wnids, names, splits, notes)


def _kaggle(src: Path, tick: Tick) -> Dataset:
    notes: list[str] = []
    wnids, train = _class_folder_split(src, KAGGLE_DATA + "/train", notes, tick)
    splits = {"train": train}
    val = _val_folder(src, KAGGLE_DATA + "/val", wnids, None, notes, tick)[0]
    if val is not None:
        splits["val"] = val
    return _dataset(src, "kaggle", wnids, _kaggle_names(src), splits, notes)


def _tars(src: Path, tick: Tick) -> Dataset:
    """The official tars, indexed in place: each image is (tar path, byte offset, size)."""
    notes: list[str] = []
    per_class, ignored = index_class_tars(src / TRAIN_TAR, is_image, tick)
    if not per_class:
        raise AlexkitError(f"{src / TRAIN_TAR} holds no per-class tars (<wnid>.tar); use the official {TRAIN_TAR}")
    if ignored:
        notes.append(f"{counted(ignored, 'member')} of {src / TRAIN_TAR} not per-class .tar files, ignored")
    wnids = sorted(per_class)
    path = str(src / TRAIN_TAR)
    train = []
    for label, wnid in enumerate(wnids):
        for name, offset, size in per_class.pop(wnid):  # in tar order: each class's part of the file is read front to back
            train.append(Sample(path, label, offset, size, f"{TRAIN_TAR}/{wnid}.tar/{name}"))
    _check_empty_classes(wnids, train, f"{src / TRAIN_TAR}", ("per-class tar", f"use the official {TRAIN_TAR}"), notes)
    splits = {"train": tuple(train)}
    kit = dk.find_devkit(src)
    val = _val_folder(src, "val", wnids, kit, notes, tick)[0]  # the val tar extracted beside the train tar
    if val is not None:
        splits["val"] = val
    elif (src / VAL_TAR).is_file():
        splits["val"] = _val_tar_split(src, wnids, kit, notes)
    return _dataset(src, "official-tars", wnids, kit.names() if kit else {}, splits, notes)


def _val_folder(src: Path, rel: str, wnids: list[str], kit: dk.Devkit | None, notes: list[str],
                tick: Tick) -> tuple[tuple[Sample, ...] | None, bool]:  # fmt: skip
    """(the val split in src/rel, whether its images lie flat there): class folders, or flat
    ILSVRC2012_val_* files labelled by the devkit or, without one, Kaggle's CSV in src. (None, False)
    where the folder is absent or holds no images (a val tar may then hold them)."""
    val_dir = src / rel
    flat, subdirs = scan_top(val_dir) if val_dir.is_dir() else ([], [])
    _check_one_val_layout(val_dir, flat, subdirs)
    if subdirs:  # torchvision's layout, or the official val moved into class folders (valprep)
        samples = _class_folder_split(src, rel, notes, tick, expected=wnids)[1]
        if not samples:  # class folders made, nothing moved in yet: a val tar may hold the images
            return None, False
        _check_folders_against_truth(samples, wnids, kit, src / dk.KAGGLE_SOLUTION, notes)
        _note_unused_val_tar(src, rel, len(samples), notes)
        return samples, False
    if not flat:
        return None, False
    csv_path = src / dk.KAGGLE_SOLUTION
    if kit is None and not csv_path.is_file():
        kaggle = rel.startswith(KAGGLE_DATA)
        raise AlexkitError(
            f"{val_dir} holds {len(flat)} images but {csv_path} is missing; download it from the Kaggle competition"
            if kaggle else f"{val_dir} holds {len(flat)} images but no ground truth: put {dk.DEVKIT_NAME}/ (with data/"
            f"{dk.META_FILE} and data/{dk.GROUND_TRUTH_FILE}), {dk.DEVKIT_TARS[0]} or Kaggle's {dk.KAGGLE_SOLUTION} in {src}"
        )  # fmt: skip
    truth = kit.source if kit is not None else csv_path
    wnid_of = _truth(kit, csv_path)
    rows = []
    for f in flat:
        path = os.path.join(val_dir, f)
        rows.append((f"{rel}/{f}", wnid_of(f, path), path, 0, -1))  # whole files
    if kit is not None:
        _compare_with_devkit(wnids, kit, notes)
    _note_unused_val_tar(src, rel, len(rows), notes)
    return _labelled(rows, wnids, f"{val_dir} (labels from {truth})", notes), True


def _note_unused_val_tar(src: Path, rel: str, images: int, notes: list[str]) -> None:
    """The val folder's images are used where the val tar lies beside it too: say so (an extraction
    stopped halfway would make a smaller val split without a word). Kaggle's val folder is not
    meant: that layout never reads the tar."""
    if rel == "val" and (src / VAL_TAR).is_file():
        notes.append(f"{src / rel} holds {counted(images, 'val image')} and {VAL_TAR} lies beside it: the folder's are "
                     f"used; if its extraction did not finish, remove {src / rel} to read the tar instead")  # fmt: skip


def _truth(kit: dk.Devkit | None, csv_path: Path):
    """wnid_of(file name, path for errors) of a val image: from the devkit, else Kaggle's CSV."""
    if kit is not None:
        return lambda name, path: kit.val_wnid(name, where=path)
    solution = dk.read_kaggle_solution(csv_path)

    def wnid_of(name: str, path: str) -> str:
        wnid = solution.get(os.path.splitext(name)[0])
        if wnid is None:
            raise AlexkitError(f"{path} has no row in {csv_path}; download {dk.KAGGLE_SOLUTION} again")
        return wnid

    return wnid_of


def _check_folders_against_truth(samples, wnids: list[str], kit: dk.Devkit | None, csv_path: Path, notes: list[str]) -> None:
    """Val images in class folders that keep their official names (ILSVRC2012_val_N) are checked
    against the ground truth lying beside them: a valprep script with a wrong mapping gives chance-level
    validation after days of training. Labels still come from the folders."""
    official = [s for s in samples if dk.val_number(os.path.basename(s.name)) is not None
                and _WNID.match(wnids[s.label])]  # a class named otherwise ("goldfish") has no wnid to compare
    if not official or (kit is None and not csv_path.is_file()):
        return
    wnid_of = _truth(kit, csv_path)
    wrong = []
    for s in official:
        try:
            truth = wnid_of(os.path.basename(s.name), s.name)
        except AlexkitError:  # a number past the ground truth's lines: not ILSVRC-2012's val image
            continue
        if truth != wnids[s.label]:
            wrong.append((s.name, truth))
    if wrong:
        name, truth = wrong[0]
        source = kit.source if kit is not None else csv_path
        notes.append(f"WARNING: {len(wrong):,} of {len(official):,} val images in class folders are in another class than "
                     f"{source} gives (e.g. {name}: {truth}); a wrong valprep mapping? Labels come from the folders: "
                     "move the images, or remove the class folders and put the images flat in val/")  # fmt: skip


def _val_tar_split(src: Path, wnids: list[str], kit: dk.Devkit | None, notes: list[str]) -> tuple[Sample, ...]:
    """The val split read in place from ILSVRC2012_img_val.tar, labelled by the devkit."""
    if kit is None:
        raise AlexkitError(
            f"{src / VAL_TAR} has no ground truth: put {dk.DEVKIT_TARS[0]} (or the extracted "
            f"{dk.DEVKIT_NAME}/ folder) in {src}"
        )
    path = str(src / VAL_TAR)
    rows = [(f"{VAL_TAR}/{name}", kit.val_wnid(name, where=f"{name} in {path}"), path, offset, size)
            for name, offset, size in index_flat_tar(src / VAL_TAR, is_image)]  # fmt: skip
    _compare_with_devkit(wnids, kit, notes)
    return _labelled(rows, wnids, f"{src / VAL_TAR} (labels from {kit.source})", notes)


def _check_one_val_layout(val_dir: Path, flat: list[str], subdirs: list[str]) -> None:
    """A val folder holds flat images (labels from a devkit or Kaggle's CSV) or class folders, not both."""
    if flat and subdirs:
        raise AlexkitError(
            f"{val_dir} holds {len(flat)} images (e.g. {flat[0]}) and {len(subdirs)} class folders (e.g. {subdirs[0]}/): "
            "a half-finished move into class folders? Finish it (or undo it) and run again"
        )


# --- class folders ---


def _class_folder_split(src: Path, split: str, notes: list[str], tick: Tick, expected: list[str] | None = None):
    """(class names, samples) of src/<split>/<class>/**; with `expected`, classes come from train."""
    top = src / split
    loose: list[str] = []
    images_here, wnids = scan_top(top, loose)
    if images_here:
        notes.append(f"{counted(len(images_here), 'image file')} directly in {top}, in no class folder (e.g. "
                     f"{images_here[0]}), left out; put each in {top}/<class>/")  # fmt: skip
    if expected is None and not wnids:
        tars = sorted(top.glob("*.tar"))
        fix = (
            f"extract each per-class tar into {top}/<wnid>/, or put {TRAIN_TAR} itself in {src}"
            if tars else f"put each class's images in {top}/<class>/"
        )
        raise AlexkitError(f"{top} holds no class folders; {fix}")
    classes = expected if expected is not None else wnids
    index = {wnid: label for label, wnid in enumerate(classes)}
    samples, skipped, others = [], 0, []
    for done, wnid in enumerate(wnids, 1):
        names = list_images(top / wnid, f"{split}/{wnid}", others)
        tick(f"listing {split}/", done, len(wnids), "classes")
        if wnid not in index:
            skipped += len(names)
            continue
        label = index[wnid]  # one int object shared by the class's samples
        samples += [Sample(os.path.join(src, n), label, name=n) for n in names]
    # files beside the class folders (train/n01440764 as a file, a README) are in no class; tars are
    # not counted: per-class ones without their folder are warned of below, the others are archives
    others += [f"{split}/{name}" for name in sorted(loose) if not name.endswith(".tar")]
    if expected is not None:
        samples.sort(key=lambda s: s.name)
        if skipped and not samples:  # val/ILSVRC2012_img_val/*.JPEG, say: one level too deep, no class of train's
            raise AlexkitError(f"none of the {counted(skipped, 'image')} in {top} is in a class folder named as one of "
                               f"train's (its folders: {some([w + '/' for w in wnids])}; train's: e.g. {classes[0]}/); "
                               f"put val's class folders, or its flat ILSVRC2012_val_* images, directly in {top}")  # fmt: skip
        if skipped:
            notes.append(f"{counted(skipped, 'image')} in {top} of classes with no train/ folder; left out")
    else:
        fix = f"put each class's images in {top}/<class>/ and run again"
        _check_empty_classes(classes, samples, str(top), ("class folder", fix), notes, others)
        _warn_unextracted_tars(top, wnids, notes)
    if others:
        notes.append(f"{counted(len(others), 'file')} in {top} not images by extension, ignored (e.g. {others[0]})")
    return classes, tuple(samples)


def _warn_unextracted_tars(top: Path, classes: list[str], notes: list[str]) -> None:
    """Per-class tars (<wnid>.tar) beside the class folders whose folder is missing: those classes
    would be absent. Other tars (ILSVRC2012_img_train.tar moved in by an extract script) are not classes."""
    tars = sorted(e.name for e in os.scandir(top) if e.is_file() and e.name.endswith(".tar") and _WNID.match(e.name[:-4]))
    missing = [t for t in tars if t.removesuffix(".tar") not in classes]
    if missing:
        notes.append(
            f"WARNING: {counted(len(missing), 'per-class tar')} in {top} without a class folder (e.g. {missing[0]}): their classes "
            f"are absent and later classes' labels shift; extract each into {top}/<wnid>/ and run again"
        )


# --- labels, names, checks ---


def _labelled(rows, wnids: list[str], where: str, notes: list[str]) -> tuple[Sample, ...]:
    """Val samples from (name, wnid, path, offset, size) rows (offset 0, size -1: a whole file), sorted by name."""
    index = {wnid: label for label, wnid in enumerate(wnids)}
    samples, skipped = [], 0
    for name, wnid, path, offset, size in rows:
        label = index.get(wnid)
        if label is None:
            skipped += 1
        else:
            samples.append(Sample(path, label, offset, size, name))
    if skipped and not samples:
        raise AlexkitError(f"none of the {counted(skipped, 'val image')} in {where} is of a class of train (e.g. "
                           f"{wnids[0]}): are train's folders named by wnid, and is the ground truth ImageNet's?")  # fmt: skip
    if skipped:
        notes.append(f"{counted(skipped, 'val image')} in {where} of classes absent from train; left out")
    samples.sort(key=lambda s: s.name)
    return tuple(samples)


def _dataset(src, layout, wnids, names, splits, notes) -> Dataset:
    classes = tuple(ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids))
    notes += _full_imagenet_checks(wnids, splits)
    return Dataset(src, layout, classes, splits, tuple(notes))


def _kaggle_names(src: Path) -> dict[str, str]:
    path = src / dk.KAGGLE_SYNSETS
    return dk.read_synset_mapping(path) if path.is_file() else {}


def _compare_with_devkit(wnids: list[str], kit: dk.Devkit, notes: list[str]) -> None:
    leaves = {wnid for wnid, _ in kit.leaves.values()}
    if set(wnids) != leaves:
        notes.append(
            f"train has {counted(len(wnids), 'class', 'classes')}, the devkit ({kit.source}) lists {len(leaves)} "
            f"({len(leaves - set(wnids))} absent from train, {len(set(wnids) - leaves)} unknown to it): labels are "
            f"ranks among the {len(wnids)} train classes, not the standard {len(leaves)}-way indices"
        )


def _check_empty_classes(classes: list[str], samples: list[Sample], where: str, unit: tuple[str, str], notes: list[str],
                         others: list[str] | None = None) -> None:
    """A warning naming the train classes with no images; an error where no class has any (nothing to
    prepare or train on). `unit`: what a class is in `where` ("class folder"), and the fix."""
    counts = [0] * len(classes)
    for s in samples:
        counts[s.label] += 1
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty and len(empty) == len(classes):
        endings = " ".join(sorted(IMAGE_EXTENSIONS))
        also = f"; {counted(len(others), 'other file')} ignored (e.g. {others[0]})" if others else ""
        which, hold = (empty[0], "holds") if len(classes) == 1 else (f"e.g. {empty[0]}", "hold")
        raise AlexkitError(f"no images in {where}: its {counted(len(classes), unit[0])} ({which}) {hold} no file "
                           f"ending in one of {endings} (any case){also}; {unit[1]}")  # fmt: skip
    if empty:
        notes.append(f"{counted(len(empty), 'class', 'classes')} of {len(classes):,} in {where} without images (e.g. "
                     f"{empty[0]}); each keeps its label")  # fmt: skip


def _full_imagenet_checks(wnids: list[str], splits: dict[str, tuple[Sample, ...]]) -> list[str]:
    """Loud warnings when a 1000-wnid dataset does not have ILSVRC-2012's image counts, or when a
    nearly full one misses classes (its labels then differ from the standard 1000-way indices), or
    when a few class names among wnids are not wnids (a stray folder takes a label too)."""
    odd = [w for w in wnids if not _WNID.match(w)]
    if odd and len(odd) < len(wnids) / 2:
        return [f"WARNING: {len(odd)} of the {len(wnids)} classes are not wnids (e.g. {odd[0]}): each takes a label, "
                f"so the wnid classes' labels are not the standard indices; remove them unless they are classes"]  # fmt: skip
    if odd or not 900 <= len(wnids) <= FULL_IMAGENET["classes"]:
        return []
    if len(wnids) < FULL_IMAGENET["classes"]:
        return [f"WARNING: {len(wnids)} wnid classes, not ImageNet's 1000: a class folder missing? Labels are ranks "
                f"among these {len(wnids)}, not the standard 1000-way indices"]  # fmt: skip
    notes = []
    for split in ("train", "val"):
        got, want = len(splits.get(split, ())), FULL_IMAGENET[split]
        if got != want:
            notes.append(
                f"WARNING: this looks like full ImageNet (1000 wnid classes) but {split} has {got:,} images, "
                f"not {want:,}: an incomplete download or extraction? Results will not match the paper's"
            )
    return notes
