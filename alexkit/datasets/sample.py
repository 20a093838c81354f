"""The built-in sample dataset: a few synthetic classes laid out exactly like ImageNet.

`write_sample_dataset(out)` writes the official extracted layout, so the demo runs the same code
path as real ImageNet:

    out/train/<wnid>/<wnid>_<n>.JPEG                       n = 1 .. train_per_class
    out/val/ILSVRC2012_val_<8 digits>.JPEG                 numbered from 1, classes shuffled
    out/ILSVRC2012_devkit_t12/data/meta.mat                struct array `synsets`, real field names
    out/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt

Classes have made-up wnids (n99000001, n99000002, ...) and honest names. Each class is one
colour x shape x texture combination ("red disc", "blue striped square", ...), drawn once or
twice per image at a random position, size and angle, with jittered colour, over a smooth noisy
background of low saturation. Colour and coarse shape survive a resize to 64x64, so a small CNN
at 56-64 px input learns the classes far above chance in a few CPU minutes. The first 8 classes
each have a colour of their own; later ones (up to 224) reuse a colour with another shape/texture.

meta.mat gives the leaves' ILSVRC2012_IDs in an order that is not the sorted-wnid order, and adds
non-leaf rows (num_children > 0), as the real devkit does, so readers must filter and map.

Real-world oddities, at fixed positions of the class-major train order g = 0, 1, ... (and of val):
sizes from 40x30 to 1400 px on the long side, aspect ratios 0.6-1.7 (most images 140-400 px on the
shorter side); g = 1 is a CMYK JPEG, g = 2 a PNG named .JPEG, g = 11 a 40x30 thumbnail,
g % 19 == 5 grayscale, g % 23 == 3 progressive, g % 211 == 7 over 1000 px on a side; val has
grayscale (i % 13 == 4) and progressive (i % 17 == 6) files. The defaults (10 classes x (100 +
20) images) take ~15 MB and ~8 s on 2 cores. The same arguments give the same bytes, file for file.

The dataset is written into `out` itself (a link followed, `.` or a mount point too), staged in
out/.sample-partial and its entries moved into place at the end, so that a stopped run leaves `out` as
it was. An earlier sample dataset's entries (--overwrite) go to out/.sample-replaced as the new ones
come in, and are removed last.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from alexkit import stops
from alexkit.errors import AlexkitError
from alexkit.paths import check_folder, remove_empty, word
from alexkit.progress import some
from alexkit.ranges import SAMPLE, check_ranges

COLOURS = {  # saturated hues, far from the low-saturation backgrounds
    "red": (220, 35, 35),
    "blue": (35, 75, 225),
    "green": (40, 175, 55),
    "yellow": (240, 215, 35),
    "magenta": (205, 45, 205),
    "cyan": (35, 205, 215),
    "orange": (245, 130, 25),
    "white": (250, 250, 250),
}
SHAPES = ("disc", "square", "triangle", "ring", "cross", "star", "diamond")
TEXTURES = ("solid", "striped", "checked", "dotted")
# The first classes: every colour once, then repeats with another shape and texture.
FIRST_CLASSES = (
    ("red", "disc", "solid"),
    ("blue", "square", "striped"),
    ("green", "triangle", "solid"),
    ("yellow", "ring", "solid"),
    ("magenta", "cross", "solid"),
    ("cyan", "square", "checked"),
    ("orange", "disc", "dotted"),
    ("white", "star", "solid"),
    ("red", "triangle", "striped"),
    ("green", "diamond", "checked"),
)
MAX_CLASSES = len(COLOURS) * len(SHAPES) * len(TEXTURES)
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12/data")
META_FIELDS = (
    "ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images",
)
ENTRIES = ("ILSVRC2012_devkit_t12", "train", "val")  # in the order they move in: the devkit's meta.mat marks a sample dataset
STAGING = ".sample-partial"  # in DIR: the new dataset, written here whole before its entries move into DIR
REPLACED = ".sample-replaced"  # in DIR: an earlier sample dataset's entries, moved here as the new ones come, then removed
SAY_REMOVING = 1000  # files: a removal of at least this many is said first (on a slow disk it takes a while)
# Every path a sample dataset holds, relative to its folder: folders, files. A class folder's number
# (k, from 1 to MAX_CLASSES) is checked apart.
_FOLDERS = re.compile(r"train|val|ILSVRC2012_devkit_t12(/data)?|train/n99(?P<k>\d{6})")
_FILES = re.compile(r"train/(n99(?P<k>\d{6}))/\1_[1-9]\d*\.JPEG|val/ILSVRC2012_val_\d{8}\.JPEG"
                    r"|ILSVRC2012_devkit_t12/data/(meta\.mat|ILSVRC2012_validation_ground_truth\.txt)")


def class_specs(num_classes: int) -> list[tuple[str, str, str]]:
    """(colour, shape, texture) of each class, in wnid order."""
    rest = [c for c in itertools.product(COLOURS, SHAPES, TEXTURES) if c not in FIRST_CLASSES]
    # Walk the rest with a stride coprime to its length (214 = 2 x 107), so consecutive extra
    # classes change colour and shape together.
    rest = [rest[(i * 37) % len(rest)] for i in range(len(rest))]
    return (list(FIRST_CLASSES) + rest)[:num_classes]


def class_name(spec: tuple[str, str, str]) -> str:
    colour, shape, texture = spec
    return f"{colour} {shape}" if texture == "solid" else f"{colour} {texture} {shape}"


def write_sample_dataset(
    out: Path,
    *,
    num_classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 20,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the sample dataset into `out` (see the module docstring); return `out`.

    `out` must be absent or empty, or, with overwrite=True, hold an earlier sample dataset and nothing
    else. `progress(done, total)` is called after each image. A run that stops leaves `out` as it was
    (a folder it made itself removed), or, stopped while tidying, names what is left.
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise AlexkitError(f"--classes {num_classes}: the sample dataset has 1 to {MAX_CLASSES} classes")
    check_ranges(("--train-per-class", train_per_class, SAMPLE["train_per_class"]),
                 ("--val-per-class", val_per_class, SAMPLE["val_per_class"]))  # fmt: skip
    if seed < 0:
        raise AlexkitError(f"--seed {seed}: must be 0 or more")
    out = Path(out).absolute()  # named in full in messages
    if ".." in out.parts:  # build/../data with no build/ yet: checked as nothing there, it is ./data once mkdir makes build/
        out = Path(os.path.realpath(out))
    replaced_files, leftovers = _check_destination(out, overwrite)
    made = [p for p in (out, *out.parents) if not os.path.lexists(p)]  # out and the folders above it this call makes
    staging, written, staged, moved = out / STAGING, [0], False, False

    def step(done: int, total: int) -> None:
        written[0] = done
        if progress:
            progress(done, total)

    try:
        out.mkdir(parents=True, exist_ok=True)
        for leftover, files in leftovers.items():  # a stopped run's (checked above: sample's files alone)
            _remove(leftover, "a stopped run's files", out, files)
        try:
            staging.mkdir()  # fails where another run has made one since the check: not this run's to remove
            staged = True
            _write_tree(staging, num_classes, train_per_class, val_per_class, seed, step)
        except OSError as exc:  # named by the folder asked for, not the staging one
            raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
        with stops.held(signal.SIGINT, signal.SIGTERM):  # a few renames: a Ctrl-C waits for them
            _move_in(staging, out)
            moved = True
    except BaseException:
        if not moved:  # out as it was: what this run staged goes, and the folders it made
            if staged:
                _remove(staging, "the partial dataset", out, written[0])
            remove_empty(made)
        raise
    finally:
        if moved:  # the new dataset is in place, stopped or not
            _remove(out / REPLACED, "the earlier sample dataset", out, replaced_files)
    return out


def _move_in(staging: Path, out: Path) -> None:
    """Move the complete dataset in `staging` into `out`, entry by entry, each entry of an earlier one
    going to out/REPLACED just before: the devkit first, so that `out` holds a sample's meta.mat from
    the first rename on (a run killed between two renames is a sample dataset a rerun can replace)."""
    for name in ENTRIES:
        if os.path.lexists(out / name):
            (out / REPLACED).mkdir(exist_ok=True)
            os.replace(out / name, out / REPLACED / name)
        os.replace(staging / name, out / name)
    staging.rmdir()


def _remove(folder: Path, what: str, out: Path, files: int) -> None:
    """Remove `folder`, one of sample's own in `out` (if there): said first when it holds many files,
    and what is left named when a second Ctrl-C (or an error) cuts the removal short."""
    if not os.path.lexists(folder):
        return
    if files >= SAY_REMOVING:
        print(f"removing {what} ({files:,} files in {folder}) ...", file=sys.stderr, flush=True)
    try:
        shutil.rmtree(folder)
    except BaseException:
        if os.path.lexists(folder):  # a rerun into a dataset (the earlier or the new one) needs --overwrite
            again = "alexkit sample --overwrite" if any(os.path.lexists(out / name) for name in ENTRIES) else "alexkit sample"
            print(f"{folder} is left, partly removed: remove it, or run `{again}` into {word(out)} again, which "
                  "removes it first", file=sys.stderr, flush=True)  # fmt: skip
        raise


def _write_tree(tmp: Path, num_classes: int, train_per_class: int, val_per_class: int, seed: int,
                progress: Callable[[int, int], None] | None) -> None:  # fmt: skip
    """train/<wnid>/*.JPEG, flat val/ and the devkit under `tmp`."""
    specs = class_specs(num_classes)
    wnids = [f"n99{i:06d}" for i in range(1, num_classes + 1)]
    total, done = num_classes * (train_per_class + val_per_class), 0

    for label, (wnid, spec) in enumerate(zip(wnids, specs)):
        (tmp / "train" / wnid).mkdir(parents=True)
        for n in range(1, train_per_class + 1):
            g = label * train_per_class + n - 1
            data = _image_file(spec, np.random.default_rng([seed, 0, g]), **_train_oddities(g))
            (tmp / "train" / wnid / f"{wnid}_{n}.JPEG").write_bytes(data)
            done += 1
            if progress:
                progress(done, total)

    val_labels = np.random.default_rng([seed, 2]).permutation(np.repeat(np.arange(num_classes), val_per_class))
    (tmp / "val").mkdir()
    for i, label in enumerate(val_labels, start=1):
        grey, progressive = i % 13 == 4, i % 17 == 6
        data = _image_file(specs[label], np.random.default_rng([seed, 1, i]), grey=grey, progressive=progressive)
        (tmp / "val" / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(data)
        done += 1
        if progress:
            progress(done, total)

    ids = _ilsvrc_ids(num_classes)
    (tmp / DEVKIT_DATA).mkdir(parents=True)
    (tmp / DEVKIT_DATA / "meta.mat").write_bytes(_meta_mat(wnids, specs, ids, train_per_class))
    truth = "".join(f"{ids[label]}\n" for label in val_labels)
    (tmp / DEVKIT_DATA / "ILSVRC2012_validation_ground_truth.txt").write_text(truth)


# --- drawing ---


def _train_oddities(g: int) -> dict:
    """The odd-file options of train image number g (class-major order)."""
    return {
        "cmyk": g == 1,
        "png": g == 2,
        "thumbnail": g == 11,
        "grey": g % 19 == 5,
        "progressive": g % 23 == 3,
        "huge": g % 211 == 7,
    }


def _image_file(spec, rng: np.random.Generator, *, cmyk=False, png=False, thumbnail=False,
                grey=False, progressive=False, huge=False) -> bytes:
    """One encoded image of class `spec`; the options make the odd files real ImageNet has."""
    from PIL import Image

    if thumbnail:
        width, height = 40, 30
    elif huge:
        long_side = int(rng.integers(1024, 1400))
        width, height = long_side, int(long_side * rng.uniform(0.6, 0.85))
    else:
        short, aspect = int(rng.integers(140, 400)), float(np.exp(rng.uniform(-0.5, 0.5)))
        width, height = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    pixels = _draw(spec, width, height, rng, noise=2.0 if huge else 4.0)  # (H, W, 3) uint8
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if png:
        image.save(buffer, "PNG")
        return buffer.getvalue()
    if grey:
        image = image.convert("L")
    elif cmyk:
        image = image.convert("CMYK")
    image.save(buffer, "JPEG", quality=int(rng.integers(70, 93)), progressive=progressive)
    return buffer.getvalue()


def _draw(spec, width: int, height: int, rng: np.random.Generator, *, noise: float) -> np.ndarray:
    """(H, W, 3) uint8: a smooth, low-saturation background with 1-2 instances of the class's object."""
    from PIL import Image

    # Background: a coarse random grid of greyish tints, smoothly upsampled, plus pixel noise.
    grid_h, grid_w = int(rng.integers(2, 6)), int(rng.integers(2, 6))
    grey = rng.uniform(45, 200, (grid_h, grid_w, 1))
    grid = np.clip(grey + rng.normal(0, 14, (grid_h, grid_w, 3)), 0, 255).astype(np.uint8)
    background = Image.fromarray(grid).resize((width, height), Image.BICUBIC)
    canvas = np.asarray(background, dtype=np.float32) + rng.normal(0, noise, (height, width, 3)).astype(np.float32)

    colour, shape, texture = spec
    side = min(width, height)
    for _ in range(1 if rng.random() < 0.7 else 2):
        radius = side * rng.uniform(0.16, 0.34)
        # Centres stay inside the central square, so a centre crop keeps the object.
        reach = max(side / 2 - radius, 1.0)
        cx = width / 2 + rng.uniform(-reach, reach)
        cy = height / 2 + rng.uniform(-reach, reach)
        rgb = np.clip(np.array(COLOURS[colour]) * rng.uniform(0.8, 1.05) + rng.normal(0, 10, 3), 0, 255)
        _paint(canvas, shape, texture, cx, cy, radius, rng.uniform(0, 2 * np.pi), rgb)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _paint(canvas: np.ndarray, shape: str, texture: str, cx: float, cy: float, radius: float,
           angle: float, rgb: np.ndarray) -> None:
    """Paint one object in place, working only on its bounding box."""
    height, width, _ = canvas.shape
    x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, width)
    y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    # Object coordinates: rotated, in units of the radius (the shape fits in the unit disc).
    dx, dy = (xs - cx) / radius, (ys - cy) / radius
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    r = np.hypot(u, v)
    inside = {
        "disc": lambda: r < 1,
        "square": lambda: np.maximum(abs(u), abs(v)) < 0.75,
        "triangle": lambda: (v > -0.5) & (v < 1 - np.sqrt(3) * abs(u)),
        "ring": lambda: (r > 0.55) & (r < 1),
        "cross": lambda: ((abs(u) < 0.3) & (abs(v) < 1)) | ((abs(v) < 0.3) & (abs(u) < 1)),
        "star": lambda: r < 0.4 + 0.6 * abs((np.arctan2(v, u) * 5 / np.pi) % 2 - 1),  # 5 points
        "diamond": lambda: abs(u) + abs(v) < 1,
    }[shape]()
    # Texture: which inside pixels take a dark shade of the colour (coarse: ~4 periods across).
    dark = {
        "solid": lambda: np.zeros_like(inside),
        "striped": lambda: np.floor(u / 0.35) % 2 == 0,
        "checked": lambda: (np.floor(u / 0.45) + np.floor(v / 0.45)) % 2 == 0,
        "dotted": lambda: np.hypot(u % 0.5 - 0.25, v % 0.5 - 0.25) < 0.13,
    }[texture]()
    box = canvas[y0:y1, x0:x1]
    box[inside & ~dark] = rgb
    box[inside & dark] = rgb * 0.3


# --- devkit ---


def _ilsvrc_ids(num_classes: int) -> list[int]:
    """ILSVRC2012_ID of each class (by wnid rank): 1..N in an order unlike the sorted wnids."""
    order = list(range(1, num_classes, 2)) + list(range(0, num_classes, 2))  # odd ranks first
    ids = [0] * num_classes
    for ilsvrc_id, rank in enumerate(order, start=1):
        ids[rank] = ilsvrc_id
    return ids


SAMPLE_MARK = b"MATLAB 5.0 MAT-file, written by alexkit sample"  # meta.mat's header text


def _meta_mat(wnids: list[str], specs, ids: list[int], train_per_class: int) -> bytes:
    """meta.mat bytes: leaves (num_children == 0) by ILSVRC2012_ID, then three non-leaf rows."""
    import scipy.io

    n = len(wnids)
    rows = sorted(
        (ids[k], wnids[k], class_name(specs[k]), f"synthetic class: a {class_name(specs[k])} on a noisy background",
         0, np.zeros(0, np.uint16), 0, train_per_class)
        for k in range(n)
    )
    first, second = [r[0] for r in rows[: (n + 1) // 2]], [r[0] for r in rows[(n + 1) // 2:]]
    halves = [(k, half) for k, half in enumerate((first, second)) if half]  # one class: no second half (it would be a leaf)
    rows += [(n + 1, "n99100001", "synthetic object", "any synthetic class", len(halves),
              np.array([n + 2 + k for k, _ in halves], np.uint16), 2, n * train_per_class)]  # fmt: skip
    rows += [(n + 2 + k, f"n9910000{2 + k}", f"synthetic object, {which} half", f"synthetic classes, {which} half",
              len(half), np.array(half, np.uint16), 1, len(half) * train_per_class)
             for (k, half), which in zip(halves, ("first", "second"))]  # fmt: skip
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in META_FIELDS])  # (rows, 1) like the real file
    for i, row in enumerate(rows):
        synsets[i, 0] = (np.uint16(row[0]), *row[1:4], np.uint16(row[4]), row[5], np.uint8(row[6]), np.uint32(row[7]))
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": synsets})
    data = bytearray(buffer.getvalue())
    data[:116] = SAMPLE_MARK.ljust(116)  # drop the creation date
    return bytes(data)


def _check_destination(out: Path, overwrite: bool) -> tuple[int, dict[Path, int]]:
    """Refuse `out` unless the dataset may be written into it. Returns how many files of an earlier
    sample dataset it holds (to be replaced), and a stopped run's staging or replaced folders with how
    many files each holds (to be removed first). Names are checked, not contents: all that `out` holds
    must be paths sample writes, in those folders or not."""
    check_folder(out, "DIR")  # a file, a path under one, a link to nothing
    if not out.exists():
        return 0, {}
    leftovers = {}
    for leftover in (out / STAGING, out / REPLACED):
        if not os.path.lexists(leftover):
            continue
        foreign, leftovers[leftover] = _not_sample(leftover) if leftover.is_dir() and not leftover.is_symlink() else (leftover, 0)
        if foreign is not None:  # not a folder of sample's: not sample's to remove
            what = "it is not a folder sample made" if foreign == leftover else f"{foreign} is not a file sample writes"
            raise AlexkitError(f"{leftover} is a name `alexkit sample` keeps for its own files, but {what}; move that out of "
                               f"{out}, or choose another folder")  # fmt: skip
    found = sorted(p.name for p in out.iterdir() if p.name not in (STAGING, REPLACED))
    if not found:
        return 0, leftovers
    if not overwrite:
        raise AlexkitError(
            f"{out} is not empty; choose another folder, or pass --overwrite to replace an earlier sample dataset"
        )
    foreign = [name for name in found if name not in ENTRIES]
    if foreign:
        raise AlexkitError(
            f"{out} holds files other than a sample dataset ({some(foreign)}); choose another folder"
        )
    meta = out / DEVKIT_DATA / "meta.mat"  # a real extracted ImageNet has these three names too
    if not os.path.lexists(meta) and (out / REPLACED / DEVKIT_DATA / "meta.mat").is_file():
        meta = out / REPLACED / DEVKIT_DATA / "meta.mat"  # a run killed between its devkits' two renames (_move_in)
    head = meta.open("rb").read(len(SAMPLE_MARK)) if meta.is_file() else b""
    if head != SAMPLE_MARK:
        raise AlexkitError(f"{out} is not a sample dataset ({meta} was not written by `alexkit sample`); choose another folder")
    foreign, files = _not_sample(out, skip=(STAGING, REPLACED))
    if foreign is not None:
        raise AlexkitError(f"{out} holds {foreign}, which `alexkit sample` does not write, and --overwrite would delete "
                           "it; move it out, or choose another folder")  # fmt: skip
    return files, leftovers


def _not_sample(root: Path, skip: tuple[str, ...] = ()) -> tuple[Path | None, int]:
    """(the first path under `root` that `alexkit sample` does not write, a link included, or None; how
    many files root holds), by names alone. `skip`: names at the top to leave out."""
    files, folders = 0, [""]
    while folders:
        folder = folders.pop()
        with os.scandir(root / folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = f"{folder}/{entry.name}".lstrip("/")
                if path in skip:
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                known = (_FOLDERS if is_dir else _FILES).fullmatch(path)
                if entry.is_symlink() or not known or (known["k"] is not None and not 1 <= int(known["k"]) <= MAX_CLASSES):
                    return root / path, files
                if is_dir:
                    folders.append(path)
                else:
                    files += 1
    return None, files
