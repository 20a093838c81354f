"""The built-in sample dataset: a few synthetic classes laid out exactly like ImageNet.

`write_sample_dataset(out)` (sample_place.py, which places it in `out`) writes the official extracted
layout, so the demo runs the same code path as real ImageNet:

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
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

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


def write_tree(tmp: Path, num_classes: int, train_per_class: int, val_per_class: int, seed: int,
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
    """meta.mat bytes: leaves (num_children == 0) by ILSVRC2012_ID, then the non-leaf rows: a root
    and its two halves (one half with a single class)."""
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


