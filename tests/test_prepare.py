"""`alexkit prepare`: every layout end to end, pixels against PIL references, statistics against
NumPy, odd and broken files, interruption and resume, a plain FFCV Loader, CLI errors.

Images are tiny (20-60 px sources, stores of 32 px). Layout tests use flat-colour images whose
colour encodes a per-file id, so order and labels are checked exactly after the round trip.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from alexkit.datasets import find_dataset, read_sample_bytes, write_sample_dataset
from alexkit.errors import AlexkitError
from alexkit.pipeline import imageops
from alexkit.pipeline.beton import BetonReader, BetonWriter
from alexkit.pipeline.prepare import PrepareConfig, prepare
from alexkit.pipeline.store import Store
from alexkit.pipeline.storedir import STORE_FILES
from tests.test_pipeline import sigint_as_default

SIZE = 32
WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted: labels 0, 1, 2


# --- images ---


def _coded(file_id: int, w: int, h: int) -> bytes:
    """A flat-colour JPEG whose colour spells file_id (two base-16 digits, 8 levels of margin)."""
    colour = (file_id % 16 * 16 + 8, file_id // 16 % 16 * 16 + 8, 128)
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _decode_id(pixels: np.ndarray) -> int:
    r, g, _ = pixels.reshape(-1, 3).mean(axis=0)
    return int(r // 16) + 16 * int(g // 16)


def _photo(rng: np.random.Generator, w: int, h: int, noise: float = 25) -> np.ndarray:
    """Smooth gradients plus noise: enough structure that resizing and JPEG matter."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([200 * x, 180 * y, 120 + 60 * np.sin(9 * x * y)], axis=-1)
    return np.clip(base + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, quality=90, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int = 20_000) -> bytes:
    """A valid PNG header for side x side pixels (400 million: past PIL's decompression-bomb limit)
    and no pixels: PIL refuses it with DecompressionBombError, which is not an OSError."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _reference(img: Image.Image, size: int) -> np.ndarray:
    """The definition: convert to RGB, resize the whole image (shorter side = size), centre crop."""
    img = img.convert("RGB")
    rw, rh = imageops.resized_size(*img.size, size)
    x0, y0 = imageops.crop_origin((rw, rh), size)
    return np.asarray(img.resize((rw, rh), imageops.FILTER).crop((x0, y0, x0 + size, y0 + size)))


# --- dataset trees ---


def _class_folder_tree(root: Path, train_per_class=4, val_per_class=2) -> dict[str, int]:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG; returns file base name -> id."""
    ids, n = {}, 0
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for wnid in reversed(WNIDS):  # created out of order on purpose
            (root / split / wnid).mkdir(parents=True)
            for k in range(per):
                name = f"{wnid}_{split}_{k}.JPEG"
                (root / split / wnid / name).write_bytes(_coded(n, 20 + 7 * n % 41, 20 + 11 * n % 37))
                ids[name], n = n, n + 1
    return ids


def _recode(root: Path) -> dict[str, int]:
    """Overwrite every image under root with a coded one (keeps names); returns base name -> id."""
    ids = {}
    for n, path in enumerate(sorted(p for p in root.rglob("*.JPEG"))):
        path.write_bytes(_coded(n, 24 + n % 30, 20 + 3 * n % 40))
        ids[path.name] = n
    return ids


def _official_extracted(root: Path) -> dict[str, int]:
    write_sample_dataset(root, num_classes=3, train_per_class=4, val_per_class=2)
    return _recode(root)


def _official_tars(root: Path, tmp: Path) -> dict[str, int]:
    """ILSVRC2012_img_train.tar (a tar of per-class tars), ILSVRC2012_img_val.tar, devkit folder."""
    tree = tmp / "extracted"
    ids = _official_extracted(tree)
    root.mkdir()
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid_dir in sorted((tree / "train").iterdir(), reverse=True):
            inner = tmp / f"{wnid_dir.name}.tar"
            with tarfile.open(inner, "w") as t:
                for f in sorted(wnid_dir.iterdir()):
                    t.add(f, arcname=f.name)
            outer.add(inner, arcname=inner.name)
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as t:
        for f in sorted((tree / "val").iterdir()):
            t.add(f, arcname=f.name)
    shutil.copytree(tree / "ILSVRC2012_devkit_t12", root / "ILSVRC2012_devkit_t12")
    return ids


def _kaggle(root: Path) -> dict[str, int]:
    ids, n = {}, 0
    data = root / "ILSVRC/Data/CLS-LOC"
    for wnid in WNIDS:
        (data / "train" / wnid).mkdir(parents=True)
        for k in range(3):
            name = f"{wnid}_{k}.JPEG"
            (data / "train" / wnid / name).write_bytes(_coded(n, 30, 40))
            ids[name], n = n, n + 1
    (data / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for k, wnid in enumerate([WNIDS[2], WNIDS[0], WNIDS[1], WNIDS[0]], start=1):
        name = f"ILSVRC2012_val_{k:08d}"
        (data / "val" / f"{name}.JPEG").write_bytes(_coded(n, 40, 30))
        ids[f"{name}.JPEG"], n = n, n + 1
        rows.append(f"{name},{wnid} 10 10 20 20")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows[:1] + rows[:0:-1]) + "\n")  # unsorted rows
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} name of {w}, other\n" for w in WNIDS))
    return ids


def _run(src: Path, out: Path, **kw) -> Path:
    return prepare(PrepareConfig(src=src, out=out, size=kw.pop("size", SIZE), workers=kw.pop("workers", 2), **kw))


# --- layouts end to end ---


@pytest.mark.parametrize("layout", ["class-folders", "official-extracted", "official-tars", "kaggle"])
def test_every_layout_round_trip(tmp_path, layout):
    src = tmp_path / "src"
    if layout == "class-folders":
        ids = _class_folder_tree(src)
    elif layout == "official-extracted":
        ids = _official_extracted(src)
    elif layout == "official-tars":
        ids = _official_tars(src, tmp_path)
    else:
        ids = _kaggle(src)
    ds = find_dataset(src)
    assert ds.layout == layout
    store = Store(_run(src, tmp_path / "store"))

    assert store.manifest["source"]["layout"] == layout
    assert [c["wnid"] for c in store.classes] == sorted(c["wnid"] for c in store.classes)
    assert [c["index"] for c in store.classes] == list(range(len(store.classes)))
    if layout == "kaggle":
        assert store.classes[1]["name"] == "name of n01443537, other"
    for split, samples in ds.splits.items():
        reader = store.split(split)
        assert len(reader) == len(samples) == store.manifest["splits"][split]["images"]
        for i, sample in enumerate(samples):
            pixels = reader.pixels(i)
            assert pixels.shape == (SIZE, SIZE, 3)
            assert _decode_id(pixels) == ids[Path(sample.name).name], (split, i, sample.name)
            assert reader.labels[i] == sample.label
        per_class = np.bincount(reader.labels, minlength=len(store.classes)).tolist()
        assert per_class == store.manifest["splits"][split]["per_class"]
    # train labels are the rank of the wnid (the class folder / per-class tar) in sorted order
    wnids = [c["wnid"] for c in store.classes]
    for i, sample in enumerate(ds.splits["train"]):
        wnid = next(w for w in wnids if w in sample.name)
        assert store.split("train").labels[i] == wnids.index(wnid)
    assert not list((tmp_path / "store").glob("*.partial"))


# --- pixels ---


@pytest.mark.parametrize(
    "w,h,size",
    [(60, 40, 32), (40, 60, 32), (37, 37, 32), (20, 58, 32), (21, 30, 48), (300, 97, 64), (33, 32, 32)]
    # upscaled, the longer side as long as the crop's far edge (torch copies an axis whose output
    # length is its input length): 213x320 -> 256x385, its crop rows 64..319
    + [(47, 48, 48), (60, 40, 48), (39, 175, 64), (66, 62, 64), (213, 320, 256), (355, 200, 256)],
)
def test_resize_and_crop_match_pil_reference(w, h, size):
    """torch's uint8 antialiased bilinear kernel, computing only up to the crop's far edge, equals
    PIL's "resize the whole image, then crop". Tolerance: 1 grey level, because torch rounds
    its intermediate (between the two separable passes) differently; on average far below that."""
    img = Image.fromarray(_photo(np.random.default_rng(w * h), w, h))
    ours = np.asarray(imageops.decode_resized(_png(img), size), dtype=int)
    assert ours.shape == (size, size, 3)
    diff = np.abs(ours - _reference(img, size))
    assert diff.max() <= 1 and diff.mean() < 0.1


@pytest.mark.parametrize("w,h", [(320, 610), (375, 320)])
def test_resize_is_at_most_2_grey_levels_off_pil_at_a_few_pixels(w, h):
    """Shapes (at size 256) where torch's rounding of the intermediate lands 2 levels from PIL's at a
    few values (4 and 10 of the 196,608 with torch 2.13), as torch's own full-size resize does too."""
    img = Image.fromarray(_photo(np.random.default_rng(w * h), w, h))
    diff = np.abs(np.asarray(imageops.decode_resized(_png(img), 256), dtype=int) - _reference(img, 256))
    assert diff.max() <= 2 and np.count_nonzero(diff == 2) <= 16 and diff.mean() < 0.1


@pytest.mark.parametrize("w,h", [(191, 300), (300, 191)])
def test_resize_of_a_reduced_decode_matches_pil_at_the_true_scale(w, h):
    """resize_crop on a 1/4-scale decode whose shorter side rounds up to exactly `size` (48 px for
    47.75): still scaled by 48 / 47.75, as PIL resizes the source's extent in decoded pixels (box).
    prepare's own reduced decodes keep twice `size`; resize_crop takes any scale."""
    size, rng = 48, np.random.default_rng(w)
    decoded = _photo(rng, -(-w // 4), -(-h // 4))  # (75, 48, 3) or (48, 75, 3)
    rw, rh = imageops.resized_size(w, h, size)
    x0, y0 = imageops.crop_origin((rw, rh), size)
    resized = Image.fromarray(decoded).resize((rw, rh), imageops.FILTER, box=(0, 0, w / 4, h / 4))
    reference = np.asarray(resized.crop((x0, y0, x0 + size, y0 + size)), dtype=int)
    diff = np.abs(imageops.resize_crop(decoded, 1 / 4, (w, h), size).astype(int) - reference)
    assert diff.max() <= 1 and diff.mean() < 0.1


def test_resize_geometry_worked_by_hand():
    """Shorter side to `size`, the longer one rounded to nearest; the crop centred, its corner rounded down."""
    assert imageops.resized_size(20, 58, 32) == (32, 93)  # 58 * 32 / 20 = 92.8
    assert imageops.resized_size(30, 21, 48) == (69, 48)  # 30 * 48 / 21 = 68.57
    assert imageops.resized_size(500, 375, 256) == (341, 256)  # 341.33
    assert imageops.resized_size(7, 1000, 256) == (256, 36571)  # 36571.43
    assert imageops.crop_origin((32, 93), 32) == (0, 30)  # 61 / 2 = 30.5
    assert imageops.crop_origin((69, 48), 48) == (10, 0)  # 21 / 2 = 10.5


@pytest.mark.parametrize("kind", ["baseline", "progressive", "grey", "4:4:4", "exif rotated"])
def test_opencv_decodes_jpegs_like_pil(kind):
    """Plain RGB and grey JPEGs go through OpenCV's decoder: the same pixels as PIL's, exactly
    (both libjpeg-turbo, same chroma upsampling), EXIF orientation ignored as PIL does."""
    rgb = _photo(np.random.default_rng(8), 70, 50)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    options = {"progressive": {"progressive": True}, "4:4:4": {"subsampling": 0}, "exif rotated": {"exif": exif}}
    data = _jpeg(rgb[:, :, 1] if kind == "grey" else rgb, **options.get(kind, {}))
    decoded, scale, source = imageops.decode_rgb(data, 32)
    assert scale == 1 and source == (70, 50) and decoded.shape == (50, 70, 3)
    np.testing.assert_array_equal(decoded, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_jpeg_encoder_writes_what_pil_writes():
    """OpenCV's encoder at quality 90: the very bytes of PIL's save (baseline, 4:2:0)."""
    rgb = _photo(np.random.default_rng(10), 48, 40)
    data = imageops.encode_jpeg(rgb, 90)
    assert data == _jpeg(rgb, quality=90)
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(data))) == 2  # 4:2:0


def test_reduced_decode_is_pils_draft():
    """OpenCV's 1/2, 1/4, 1/8 decode gives the pixels of PIL's draft at the same scale, with the
    rounded-up size (odd sizes on purpose)."""
    rng = np.random.default_rng(9)
    for w, h, size, factor in [(1001, 777, 64, 4), (531, 263, 64, 2), (2049, 1100, 64, 8)]:
        data = _jpeg(_photo(rng, w, h, noise=6))
        assert imageops.draft_factor(w, h, size) == factor
        decoded, scale, source = imageops.decode_rgb(data, size)
        drafted = Image.open(io.BytesIO(data))
        drafted.draft("RGB", imageops.draft_size(w, h, size))
        assert scale == 1 / factor and source == (w, h) and drafted.size == (-(-w // factor), -(-h // factor))
        np.testing.assert_array_equal(decoded, np.asarray(drafted))


def test_raw_store_holds_the_reference_pixels(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    refs = []
    for k, (w, h) in enumerate([(50, 40), (30, 60), (20, 20), (45, 33)]):
        (src / "train" / "a").mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(_photo(rng, w, h))
        (src / "train" / "a" / f"{k}.png").write_bytes(_png(img))
        refs.append(_reference(img, SIZE))
    reader = Store(_run(src, tmp_path / "store", format="raw")).split("train")
    for i, ref in enumerate(refs):  # raw: no loss beyond the resize's own rounding (see above)
        assert np.abs(reader.pixels(i).astype(int) - ref).max() <= 1


def test_jpeg_store_is_close_to_the_reference(tmp_path):
    """JPEG q90 (4:2:0 chroma, as FFCV stores) of the reference pixels: mean absolute error below
    3 grey levels on photo-like images (pure noise would lose more to chroma subsampling)."""
    rng = np.random.default_rng(4)
    src = tmp_path / "src"
    (src / "train" / "a").mkdir(parents=True)
    refs = []
    for k in range(4):
        img = Image.fromarray(_photo(rng, 40 + 5 * k, 56 - 3 * k, noise=6))
        (src / "train" / "a" / f"{k}.png").write_bytes(_png(img))
        refs.append(_reference(img, SIZE).astype(float))
    store = Store(_run(src, tmp_path / "store", quality=90))
    for i, ref in enumerate(refs):
        assert np.abs(store.split("train").pixels(i) - ref).mean() < 3.0


def test_draft_decode_stays_close_to_full_decode():
    """A JPEG 4-16x larger than needed is decoded by libjpeg at reduced scale (keeping 2x the
    resized size). Tolerance against the full decode: mean absolute difference below 1 grey
    level, 99th percentile below 4."""
    rng = np.random.default_rng(5)
    for w, h, size, scale in [(700, 520, 64, 4), (260, 400, 64, 2), (1100, 900, 128, 2)]:
        y, x = np.mgrid[0:h, 0:w] / max(w, h)
        smooth = np.stack([255 * x, 255 * y, 128 + 100 * np.sin(20 * x) * np.cos(15 * y)], -1)
        data = _jpeg(np.clip(smooth + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))
        drafted = Image.open(io.BytesIO(data)).draft("RGB", imageops.draft_size(w, h, size))
        assert drafted[1][2] == w / scale  # the shortcut is taken, at this scale
        ours = np.asarray(imageops.decode_resized(data, size), float)
        diff = np.abs(ours - _reference(Image.open(io.BytesIO(data)), size))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) < 4, (w, h, diff.mean(), np.percentile(diff, 99))


def test_odd_files_decode_like_pil_convert_rgb():
    """CMYK, grayscale, progressive JPEG; PNG named .JPEG; palette with transparency; RGBA; LA."""
    rng = np.random.default_rng(6)
    rgb = _photo(rng, 48, 36)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG", quality=95)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    files = {
        "cmyk": cmyk.getvalue(),
        "grey": _jpeg(rgb[:, :, 0]),
        "progressive": _jpeg(rgb, progressive=True),
        "png named .JPEG": _png(Image.fromarray(rgb)),
        "palette+transparency": _png(palette),
        "rgba": _png(Image.fromarray(rgb).convert("RGBA")),
        "la": _png(Image.fromarray(rgb).convert("LA")),
    }
    for what, data in files.items():
        got = np.asarray(imageops.decode_resized(data, SIZE), dtype=int)
        want = _reference(Image.open(io.BytesIO(data)), SIZE)
        assert np.abs(got - want).max() <= 1, what
    assert Image.open(io.BytesIO(files["cmyk"])).mode == "CMYK"
    cmyk_pixels = np.asarray(imageops.decode_resized(files["cmyk"], SIZE), float)
    assert np.abs(cmyk_pixels - _reference(Image.fromarray(rgb), SIZE)).mean() < 3  # colours survive CMYK


def test_16_bit_grey_keeps_its_top_8_bits():
    """PIL's convert("RGB") clips 16-bit grey at 255, which would store a near-white image. The same
    for an "I" image (some PILs open 16-bit PNGs so, and TIFFs): the top 8 bits whatever the pixels
    hold, so that a picture does not turn from white to black at one grey level."""
    grey16 = np.random.default_rng(7).integers(0, 65536, (36, 48)).astype(np.uint16)
    img = Image.fromarray(grey16)
    assert img.mode == "I;16"
    want = _reference(Image.fromarray((grey16 >> 8).astype(np.uint8)), SIZE)
    for data in (_png(img), _tiff(img.convert("I"))):
        assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
        got = np.asarray(imageops.decode_resized(data, SIZE), dtype=int)
        assert np.abs(got - want).max() <= 1 and got.mean() < 200
    for level in (255, 256):  # on either side of 8 bits: no jump
        flat = _tiff(Image.fromarray(np.full((40, 40), level, np.int32)))
        assert imageops.decode_resized(flat, SIZE).max() <= 1
    dark = Image.fromarray(np.full((36, 48), 200, np.uint16))  # I;16 whose values all fit 8 bits: still near black
    assert imageops.decode_resized(_png(dark), SIZE).max() <= 1


def _tiff(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "TIFF")
    return out.getvalue()


def test_an_image_longer_than_100_times_its_width_is_skipped_before_decoding():
    """By prepare (and predict): its centre crop would be a sliver, and the resize up to the crop's far
    edge grows with the ratio (21 GB for a 200000x1 PNG of 143 bytes). decode_resized itself takes no
    limit unless given one. The reason reads as a sentence, with no exception name."""
    with pytest.raises(imageops.TooElongated, match=r"^a 3000x1 image: its sides are more than 100 times apart") as info:
        imageops.convert(_png(Image.new("RGB", (3000, 1))), SIZE, "raw", 90)
    assert imageops.skip_reason(info.value, b"data").startswith("a 3000x1 image: ")
    assert imageops.convert(_png(Image.new("RGB", (1000, 10))), SIZE, "raw", 90)[0].shape == (SIZE, SIZE, 3)  # 100:1 is kept
    with pytest.raises(ValueError, match=r"1x3000 image"):  # tall as wide
        imageops.convert(_png(Image.new("RGB", (1, 3000))), SIZE, "raw", 90)
    assert imageops.decode_resized(_png(Image.new("RGB", (3000, 10))), SIZE).shape == (SIZE, SIZE, 3)  # no limit asked


def test_a_source_file_the_system_will_not_read_stops_prepare_naming_it(tmp_path):
    """Not skipped like a bad image: whatever made it unreadable (permissions, a failing disk) may have
    hit many files, and a quietly smaller dataset is worse than a stop. The error crosses from the
    worker process as the one-line PathRefused (exit 1). A folder read as a file stands in for a file
    root may not read (root reads any file)."""
    from alexkit.datasets import Sample
    from alexkit.errors import PathRefused
    from alexkit.pipeline.workers import ConvertJob, Workers

    job = ConvertJob(size=SIZE, format="jpg", quality=90, with_stats=True)
    good = tmp_path / "good.JPEG"
    good.write_bytes(_jpeg(_photo(np.random.default_rng(0), 40, 30)))
    chunk = [(0, Sample(str(good), 0)), (1, Sample(str(tmp_path), 0))]
    with Workers(1) as workers, pytest.raises(PathRefused) as refused:
        list(workers.run(iter([chunk]), job))
    assert str(refused.value).startswith(f"{tmp_path}: Is a directory; make it readable")
    assert refused.value.exit_code == 1
    cut = [(0, Sample(str(good), 0, offset=10**6, size=10, name="a.tar/x.JPEG"))]  # a tar member past its file's end
    with Workers(1) as workers, pytest.raises(AlexkitError, match="the file is truncated, download it again"):
        list(workers.run(iter([cut]), job))


def test_an_image_file_that_is_a_link_to_nothing_stops_prepare_naming_it(tmp_path):
    from alexkit.errors import PathRefused

    src = _sample_tree(tmp_path / "src", 2)
    gone = next((src / "train").iterdir()) / "gone.JPEG"
    gone.symlink_to(tmp_path / "nothing.JPEG")
    with pytest.raises(PathRefused, match=f"^{gone}: No such file or directory; "):
        _run(src, tmp_path / "store")


def test_sizes_are_said_in_mb_below_a_gigabyte():
    from alexkit.progress import amount

    assert (amount(999e6), amount(1e9), amount(12.345e9)) == ("999.0 MB", "1.0 GB", "12.3 GB")


def test_a_source_that_is_a_link_to_nothing_is_named_as_typed(tmp_path):
    (tmp_path / "imagenet").symlink_to(tmp_path / "gone")
    with pytest.raises(AlexkitError) as error:
        _run(tmp_path / "imagenet", tmp_path / "store")
    assert str(error.value).startswith(f"{tmp_path / 'imagenet'} is a link to {tmp_path / 'gone'}, which does not exist; ")


def test_bad_files_are_skipped_and_listed(tmp_path):
    src = tmp_path / "src"
    ids = _class_folder_tree(src, train_per_class=3, val_per_class=1)
    bad = {
        "empty.JPEG": b"",
        "truncated.JPEG": _jpeg(_photo(np.random.default_rng(0), 60, 50))[:700],
        "text.JPEG": b"this is not an image\n" * 20,
        "header-only.png": _png(Image.new("RGB", (40, 40)))[:40],
        "bomb.png": bomb_png(),
    }
    for name, data in bad.items():
        (src / "train" / WNIDS[1] / name).write_bytes(data)
    store = Store(_run(src, tmp_path / "store"))
    skipped = {Path(s["file"]).name: s for s in store.manifest["skipped"]}
    assert set(skipped) == set(bad)
    assert skipped["empty.JPEG"]["reason"] == "empty file"
    assert "not an image" in skipped["text.JPEG"]["reason"]
    assert "truncated" in skipped["truncated.JPEG"]["reason"]
    assert skipped["bomb.png"]["reason"].startswith("too many pixels for a photo")
    assert all(s["split"] == "train" and "\n" not in s["reason"] for s in skipped.values())
    train = store.split("train")
    assert len(train) == 9 and store.manifest["splits"]["train"]["skipped"] == 5
    assert sorted(_decode_id(train.pixels(i)) for i in range(len(train))) == sorted(
        v for k, v in ids.items() if "_train_" in k
    )


def test_a_file_libjpeg_warns_about_is_kept_and_named(tmp_path, capfd):
    """Stray bytes before a JPEG's end marker: libjpeg prints a warning to fd 2 and decodes the
    image. The warning lands in the manifest under the file's name, never unnamed on stderr."""
    src = tmp_path / "src"
    _class_folder_tree(src, train_per_class=3, val_per_class=1)
    stray = src / "train" / WNIDS[1] / "stray.JPEG"
    photo = _jpeg(_photo(np.random.default_rng(1), 60, 50))
    stray.write_bytes(photo[:-2] + bytes(40) + photo[-2:])
    store = Store(_run(src, tmp_path / "store"))
    out, err = capfd.readouterr()
    assert store.manifest["skipped"] == [] and len(store.split("train")) == 10
    [warned] = store.manifest["decoder_warnings"]
    assert warned["split"] == "train" and Path(warned["file"]).name == "stray.JPEG"
    assert warned["message"].startswith("Corrupt JPEG data: ") and "extraneous bytes" in warned["message"]
    assert "Corrupt JPEG" not in err
    assert "train: 10 images written" in out and "1 kept with a decoder warning" in out
    assert "1 image kept with a decoder warning, listed in" in out


def crash_on_marker(monkeypatch) -> None:
    """The decoder crashes its worker on a file whose bytes start with CRASH, as a segfault in a
    native decoder would (the forked workers inherit the patch)."""
    real = imageops.convert

    def convert(data, *args, **kw):
        if data.startswith(b"CRASH"):
            os.write(2, b"free(): invalid pointer\n")  # what a native crash prints before it kills the process
            os._exit(11)
        return real(data, *args, **kw)

    monkeypatch.setattr(imageops, "convert", convert)


def test_a_crashing_decoder_costs_only_its_file(tmp_path, monkeypatch):
    """A worker that dies (a native decoder crash) is replaced; only the culprit is skipped."""
    crash_on_marker(monkeypatch)
    src = tmp_path / "src"
    _class_folder_tree(src, train_per_class=4, val_per_class=1)
    (src / "train" / WNIDS[0] / "boom.JPEG").write_bytes(b"CRASH")
    other = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))  # a child that is not the pool's
    other.start()
    try:
        store = Store(_run(src, tmp_path / "store"))
        assert other.is_alive()  # the restart killed the pool's workers only
    finally:
        other.kill()
    assert [Path(s["file"]).name for s in store.manifest["skipped"]] == ["boom.JPEG"]
    assert store.manifest["skipped"][0]["reason"] == "the decoder crashed its worker process (free(): invalid pointer)"
    assert len(store.split("train")) == 12


def test_a_crash_while_another_worker_hands_back_a_large_result_does_not_hang(tmp_path):
    """The pool's clean-up after a crash SIGTERMs the other workers, which ignore SIGTERM: one then
    blocked writing a result larger than the pipe (a 160 px raw image: 77 kB) must still end. Run
    in a process of its own, so that a hang fails the test at its timeout instead of stalling it."""
    src = tmp_path / "src"
    _class_folder_tree(src, train_per_class=2, val_per_class=1)
    (src / "train" / WNIDS[0] / "boom.JPEG").write_bytes(b"CRASH")
    out = tmp_path / "store"
    script = f"""
import os, time
from pathlib import Path
from alexkit.pipeline import imageops
from alexkit.pipeline.prepare import PrepareConfig, prepare

real = imageops.convert

def convert(data, *args, **kw):
    if data.startswith(b"CRASH"):
        os._exit(11)
    time.sleep(0.5)  # still converting when the crash is noticed: the result comes after
    return real(data, *args, **kw)

imageops.convert = convert
prepare(PrepareConfig(src=Path({str(src)!r}), out=Path({str(out)!r}), size=160, format="raw", workers=2))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    store = Store(out)
    assert [Path(s["file"]).name for s in store.manifest["skipped"]] == ["boom.JPEG"]
    assert len(store.split("train")) == 2 * len(WNIDS)


def test_a_crash_keeps_the_statistics_of_the_other_images_of_its_chunk(tmp_path, monkeypatch):
    """With one worker and 37 images, work goes out in chunks of several images: the crasher's
    chunk is redone without it, and its other images still count in the mean and PCA."""
    crash_on_marker(monkeypatch)
    src = tmp_path / "src"
    _class_folder_tree(src, train_per_class=12, val_per_class=1)
    (src / "train" / WNIDS[0] / "boom.JPEG").write_bytes(b"CRASH")
    out = _run(src, tmp_path / "store", workers=1)
    with np.load(out / "stats.npz") as stats:
        assert int(stats["images"]) == len(Store(out).split("train")) == 36


# --- statistics ---


def test_a_grey_datasets_covariance_gives_no_negative_variance():
    """Grey images vary along (1, 1, 1) only: a rank-1 covariance, whose zero eigenvalues the solver
    returns as tiny negatives. Their square roots would make every lighting shift NaN."""
    from alexkit.pipeline.augment import lighting_offsets
    from alexkit.pipeline.store import eigen

    grey = np.ones(3) / np.sqrt(3)
    eigval, eigvec = eigen(np.outer(grey, grey) * 1234.567)
    assert (eigval >= 0).all() and eigval[0] == pytest.approx(1234.567)
    assert np.isfinite(lighting_offsets(np.full((4, 3), 0.1), eigval, eigvec)).all()


def _moments(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean image, mean RGB, RGB covariance) of (N, S, S, 3) pixels, in float64."""
    flat = pixels.reshape(-1, 3).astype(np.float64)
    return pixels.mean(axis=0), flat.mean(axis=0), np.cov(flat, rowvar=False, bias=True)


@pytest.mark.parametrize("fmt", ["jpg", "raw"])
def test_stats_match_numpy_over_the_pixels_before_encoding(tmp_path, fmt):
    """The statistics are those of the resized pixels before JPEG encoding (what a raw store
    holds): exact against NumPy over decode_resized's pixels, and within the resize's rounding
    of PIL's reference pixels."""
    rng = np.random.default_rng(7)
    src = tmp_path / "src"
    for k in range(12):
        d = src / "train" / WNIDS[k % 3]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{k}.JPEG").write_bytes(_jpeg(_photo(rng, 30 + 2 * k, 50 - k)))
        (src / "val" / WNIDS[k % 3]).mkdir(parents=True, exist_ok=True)
        (src / "val" / WNIDS[k % 3] / f"v{k}.JPEG").write_bytes(_jpeg(np.full((30, 30, 3), 255, np.uint8)))
    store = Store(_run(src, tmp_path / "store", format=fmt))
    train = store.split("train")
    sources = [read_sample_bytes(s) for s in find_dataset(src).splits["train"]]
    pixels = np.stack([imageops.decode_resized(data, SIZE) for data in sources])  # (N, S, S, 3) uint8
    if fmt == "raw":
        np.testing.assert_array_equal(pixels, np.stack([train.pixels(i) for i in range(len(train))]))
    mean_image, mean_rgb, cov = _moments(pixels)
    eigval, eigvec = np.linalg.eigh(cov)
    with np.load(tmp_path / "store" / "stats.npz") as z:
        assert z["mean_image"].shape == (SIZE, SIZE, 3)
        np.testing.assert_allclose(z["mean_image"], mean_image, atol=1e-4)  # float32
        np.testing.assert_allclose(z["mean_rgb"], mean_rgb, rtol=1e-12)
        np.testing.assert_allclose(z["cov"], cov, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(z["eigval"], eigval[::-1], rtol=1e-9)
        assert np.all(np.diff(z["eigval"]) <= 0)  # descending
        for j in range(3):  # columns are eigenvectors, up to sign
            col = z["eigvec"][:, j]
            np.testing.assert_allclose(cov @ col, z["eigval"][j] * col, rtol=1e-8, atol=1e-6)
            assert abs(abs(col @ eigvec[:, 2 - j]) - 1) < 1e-9
        assert int(z["images"]) == len(train)
        # PIL's reference pixels: the resize's rounding (<= 1 grey level) is all that differs
        pil = np.stack([_reference(Image.open(io.BytesIO(data)), SIZE) for data in sources])
        pil_mean_image, pil_mean_rgb, pil_cov = _moments(pil)
        assert np.abs(z["mean_image"] - pil_mean_image).max() <= 1 and np.abs(z["mean_rgb"] - pil_mean_rgb).max() < 0.05
        np.testing.assert_allclose(z["cov"], pil_cov, rtol=1e-3, atol=0.5)
        if fmt == "jpg":
            # Against the stored (decoded JPEG q90, 4:2:0) pixels: close, not equal. 12 noisy 32 px
            # images keep much of each image's JPEG error in the mean image (here ~1.5 grey levels
            # on average); the means per channel and the eigenvalues barely move (measured: 0.06
            # grey levels, 2.4%).
            stored = np.stack([train.pixels(i) for i in range(len(train))])
            stored_mean_image, stored_mean_rgb, stored_cov = _moments(stored)
            assert np.abs(z["mean_image"] - stored_mean_image).mean() < 3
            assert np.abs(z["mean_rgb"] - stored_mean_rgb).max() < 0.2
            np.testing.assert_allclose(z["eigval"], np.linalg.eigvalsh(stored_cov)[::-1], rtol=0.05)
    # the val split (all white) must not leak into the statistics
    assert store.stats.mean_image.max() < 250
    assert store.stats.eigval[0] > store.stats.eigval[2] > 0


# --- crash safety, resume, --force ---


def _sample_tree(root: Path, per_class: int) -> Path:
    return write_sample_dataset(root, num_classes=3, train_per_class=per_class, val_per_class=4)


def test_resume_keeps_a_finished_split(tmp_path):
    src, out = _sample_tree(tmp_path / "src", 6), tmp_path / "store"
    _run(src, out)
    train_stat = (out / "train.beton").stat()
    # as if killed while writing val: no manifest, no val, a partial file left behind
    (out / "manifest.json").unlink()
    (out / "val.beton").unlink()
    (out / "val.done.json").unlink()
    (out / "val.beton.partial").write_bytes(b"half a file")
    (out / ".stats.npz.host-4242-0a0b0c0d.partial").write_bytes(b"half a file")  # write_atomic's, of a kept file
    assert pytest.raises(AlexkitError, Store, out)
    _run(src, out)
    assert (out / "train.beton").stat().st_mtime_ns == train_stat.st_mtime_ns  # kept, not rebuilt
    assert len(Store(out).split("val")) == 12
    assert not list(out.glob("*.partial"))


def test_a_store_whose_prepare_was_stopped_says_so_with_the_command_that_finishes_it(tmp_path):
    """Killed while writing val, then while writing train: a reader names the stopped prepare and its
    command, with the source and settings its done-record keeps (SRC where no split was done), or says
    that a prepare is writing it now; that command finishes the store."""
    from alexkit.pipeline.prepare import _only_writer

    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    for name in ("manifest.json", "classes.json", "val.beton", "val.done.json"):  # as if killed while writing val
        (out / name).unlink()
    (out / "val.beton.partial").write_bytes(b"half a file")
    stopped = f"^store {out} is unfinished: the last `alexkit prepare` into it was stopped; finish it with `alexkit prepare "
    with pytest.raises(AlexkitError, match=stopped + f"{src} --out {out} --size {SIZE}` \\(which keeps its finished splits\\)$"):
        Store(out)
    with _only_writer(out), pytest.raises(AlexkitError, match=f"^store {out} is being written by `alexkit prepare`; wait"):
        Store(out)
    r = subprocess.run([sys.executable, "-m", "alexkit", "prepare", str(src), "--out", str(out), "--size", str(SIZE)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "train: kept from an earlier run" in r.stdout, r.stderr
    assert len(Store(out).check("train", "val").split("val")) == 12
    for name in ("manifest.json", "classes.json", "stats.npz", "train.beton", "train.done.json", "val.beton", "val.done.json"):
        (out / name).unlink()  # as if killed while writing train: no split done, nothing to name the source
    (out / "train.beton.partial").write_bytes(b"half a file")
    with pytest.raises(AlexkitError, match=stopped + f"SRC --out {out}`, SRC being the source it was run on "):
        Store(out)
    (out / "train.beton.partial").unlink()  # the lock alone: a prepare refused before it wrote (an empty SRC), not one stopped
    assert [p.name for p in out.iterdir()] == [".prepare.lock"]
    with pytest.raises(AlexkitError, match=f"^store {out} has no .*; run `alexkit prepare SRC --out {out}` first$"):
        Store(out)
    with _only_writer(out), pytest.raises(AlexkitError, match=f"^store {out} is being written by `alexkit prepare`; wait"):
        Store(out)  # the lock alone, held: a prepare still scanning its SRC


def test_the_source_by_a_link_or_by_dot_dot_is_the_same_source(tmp_path, capsys):
    """A finished store of it has nothing to do, and an interrupted one keeps its finished split."""
    src, out = _sample_tree(tmp_path / "src", 6), tmp_path / "store"
    (tmp_path / "link").symlink_to(src)
    (tmp_path / "sub").mkdir()
    _run(src, out)
    for other in (tmp_path / "link", tmp_path / "sub" / ".." / "src"):
        capsys.readouterr()
        _run(other, out)
        assert "nothing to do" in capsys.readouterr().out
    train_stat = (out / "train.beton").stat()
    for name in ("manifest.json", "val.beton", "val.done.json"):  # as if killed while writing val
        (out / name).unlink()
    _run(tmp_path / "link", out)
    assert (out / "train.beton").stat().st_mtime_ns == train_stat.st_mtime_ns  # kept, not rebuilt
    assert "train: kept from an earlier run" in capsys.readouterr().out
    (src.parent / "moved").mkdir()
    src.rename(src.parent / "moved" / "src")  # the source moved, with a link where it was: still the same one
    src.symlink_to(src.parent / "moved" / "src")
    capsys.readouterr()
    _run(src, out)
    assert "nothing to do" in capsys.readouterr().out


def test_a_finished_store_that_lost_a_file_is_mended_by_its_own_prepare_line(tmp_path, capsys):
    """stats.npz or classes.json removed by hand: the reader's error gives the store's prepare line,
    and that line (no --force) writes what is missing, keeping the splits that are whole, instead of
    saying there is nothing to do."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    val_stat = (out / "val.beton").stat()
    for lost in ("stats.npz", "classes.json"):
        (out / lost).unlink()
        with pytest.raises(AlexkitError, match=rf"^store {out} has no {lost}; write it again with `alexkit prepare {src} --out {out} --size {SIZE}` "):
            Store(out)
        capsys.readouterr()
        _run(src, out)
        assert f"has lost {lost}; writing what is missing" in capsys.readouterr().out
        assert Store(out).check("train", "val").stats.mean_image.shape == (SIZE, SIZE, 3)
    assert (out / "val.beton").stat().st_mtime_ns == val_stat.st_mtime_ns  # kept, not rebuilt
    (out / "val.beton").unlink()
    from alexkit.pipeline.prepare import _finished

    capsys.readouterr()  # a store that cannot be written (read-only): not finished, and no promise to write it
    assert _finished(out, src.resolve(), PrepareConfig(src=src, out=out, size=SIZE)) is False
    assert capsys.readouterr().out == ""
    _run(src, out)
    assert len(Store(out).split("val")) == 12 and "nothing to do" not in capsys.readouterr().out


def test_a_store_too_small_for_alexnet_is_written_with_a_warning(tmp_path, capsys):
    """16 to 41 px stores serve the loader and show-batch; train refuses them, so prepare says so first."""
    from alexkit.model import MIN_INPUT_SIZE
    from alexkit.pipeline.constants import crop_size, size_for_crop

    assert size_for_crop(MIN_INPUT_SIZE) == 42 and crop_size(42) >= MIN_INPUT_SIZE > crop_size(41)
    src = _sample_tree(tmp_path / "src", 2)
    _run(src, tmp_path / "small", size=41)
    assert ("warning: --size 41: its 35 px crops are too small for AlexNet, so train, eval and predict will refuse "
            "this store (--size 42 or more for them)") in capsys.readouterr().err
    _run(src, tmp_path / "enough", size=42)
    assert "too small" not in capsys.readouterr().err


def test_too_little_free_space_is_a_warning_in_the_units_that_fit(tmp_path, capsys, monkeypatch):
    """A small store's need is said in MB (not "0.0 GB"); the run goes on (a rerun resumes)."""
    src = _sample_tree(tmp_path / "src", 2)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    _run(src, tmp_path / "store")
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'store'} has 0.0 MB free, the store needs about " in err and " MB; the run may stop" in err


def test_a_source_file_replaced_under_the_same_name_makes_its_split_redone(tmp_path, capsys):
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    (out / "manifest.json").unlink()  # as if interrupted at the very end
    first = sorted((src / "train").rglob("*.JPEG"))[0]
    replacement = sorted((src / "val").glob("*.JPEG"))[0].read_bytes()
    first.write_bytes(replacement)  # another picture, same name
    capsys.readouterr()
    _run(src, out)
    printed = capsys.readouterr().out
    assert "train: kept from an earlier run" not in printed and "val: kept from an earlier run" in printed
    assert ("train: the one an earlier run finished here was made from other files (names, labels, sizes or "
            "modification times differ); converting it again") in printed


def test_an_interrupted_store_keeps_its_finished_split_from_a_copy_of_the_source(tmp_path, capsys):
    """A cluster job copies ImageNet to node-local disk and is stopped; the next job copies it to
    another path and runs again: a copy that keeps names, sizes and times is the same source."""
    src, out = _sample_tree(tmp_path / "job1" / "src", 2), tmp_path / "store"
    _run(src, out)
    train_stat = (out / "train.beton").stat()
    for name in ("manifest.json", "val.beton", "val.done.json"):  # as if stopped while writing val
        (out / name).unlink()
    copy = shutil.copytree(src, tmp_path / "job2" / "src")  # copy2: sizes and modification times kept
    capsys.readouterr()
    _run(copy, out)
    assert "train: kept from an earlier run" in capsys.readouterr().out
    assert (out / "train.beton").stat().st_mtime_ns == train_stat.st_mtime_ns
    assert Store(out).manifest["source"]["path"] == str(copy)


def test_a_second_prepare_on_the_same_out_is_refused(tmp_path):
    """Two runs on one --out would rename each other's temporary files into place."""
    from alexkit.pipeline.prepare import _only_writer

    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    out.mkdir()
    with _only_writer(out):  # as if another process were writing
        with pytest.raises(AlexkitError, match="another `alexkit prepare` is writing"):
            _run(src, out)
    assert not (out / "manifest.json").exists()
    _run(src, out)  # once it has ended
    assert len(Store(out).split("train")) == 6


def test_a_store_being_read_is_rebuilt_beside_its_readers_and_moved_in_after_them(tmp_path, capsys):
    """A training holds its store shared for days: --force builds the new store in .prepare-new
    meanwhile, leaves the files it reads alone, and moves the new one in on a rerun once the
    training has ended (converting nothing again). A rerun with nothing to do is still fine."""
    from alexkit.pipeline.store import reading

    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with reading(out):  # as if `alexkit train` were reading it
        with pytest.raises(AlexkitError, match=rf"^the new store is complete in {out}/.prepare-new, but {out} is being read \(by "
                                               r"`alexkit train`, `eval`, `predict`, `show-batch` or a bench\); run this command again once they end"):  # fmt: skip
            _run(src, out, size=SIZE + 8, force=True)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        assert Store(out / ".prepare-new").size == SIZE + 8
        with pytest.raises(AlexkitError, match="holds a finished store .* pass --force to replace it"):
            _run(src, out, size=SIZE + 8)  # other settings: what a reader going away would not change
        capsys.readouterr()
        assert _run(src, out) == out and "nothing to do" in capsys.readouterr().out
    _run(src, out, size=SIZE + 8, force=True)  # once the reader has gone
    said = capsys.readouterr().out
    assert "train: kept from an earlier run" in said and "val: kept from an earlier run" in said  # nothing converted again
    assert Store(out).size == SIZE + 8 and not (out / ".prepare-new").exists()
    (out / ".prepare.lock").unlink()  # a store copied without its dot file: its readers make it again
    with reading(out):
        assert stat.S_IMODE((out / ".prepare.lock").stat().st_mode) == 0o666  # other users' prepares may lock it too
    with reading(src):  # not a store (no manifest.json): nothing is left in it
        pass
    assert not (src / ".prepare.lock").exists()


def test_a_reader_waits_for_a_prepare_that_lets_go_at_once(tmp_path):
    """A rerun of prepare with nothing to do holds the store's lock for a moment: a training starting
    then waits for it instead of failing."""
    import threading
    import time

    from alexkit.pipeline.prepare import _only_writer
    from alexkit.pipeline.store import reading

    out = tmp_path / "store"
    out.mkdir()
    held, done = threading.Event(), threading.Event()

    def brief_writer():
        with _only_writer(out):
            held.set()
            time.sleep(0.3)
        done.set()

    threading.Thread(target=brief_writer).start()
    held.wait()
    with reading(out):
        assert done.is_set()  # it got in once the writer let go, not before


def test_a_file_system_without_locks_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    """NFS without its lock service, Lustre without -o flock: flock fails with ENOLCK or ENOSYS."""
    import errno
    import fcntl

    def no_locks(f, how):
        raise OSError(errno.ENOSYS, "Function not implemented")

    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(AlexkitError, match=r"cannot lock .*store/\.prepare\.lock: Function not implemented; its file "
                                           r"system offers no file locks") as failed:  # fmt: skip
        _run(src, out)
    assert failed.value.exit_code == 1 and not out.exists()


def _writing_fails(monkeypatch, exc: BaseException, split: str | None = None) -> None:
    """BetonWriter.add raises `exc`: in `split`'s .beton only (the splits before it written whole), or in any."""
    real_add = BetonWriter.add

    def add(self, *args, **kw):
        if split is None or self.path.name == f"{split}.beton":
            raise exc
        return real_add(self, *args, **kw)

    monkeypatch.setattr(BetonWriter, "add", add)


def test_a_full_disk_is_a_one_line_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _writing_fails(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(AlexkitError, match="cannot write .*train.beton: No space left on device") as full_disk:
        _run(src, out)
    assert full_disk.value.exit_code == 1  # a path the system refuses
    assert not out.exists()  # it made the folder and wrote nothing that lasts: the folder goes too
    out.mkdir()
    with pytest.raises(AlexkitError, match="No space left on device"):
        _run(src, out)
    assert sorted(p.name for p in out.iterdir()) == [".prepare.lock"]  # a folder it found stays


def file_size_limit(limit: int):
    """A child process's preexec_fn: its files stop at `limit` bytes with EFBIG ("File too large"), as
    under `ulimit -f` (SIGXFSZ ignored, as Python ignores it, so the write fails instead of the process)."""

    def limited():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return limited


def test_a_file_over_the_size_limit_names_the_limit_not_free_space(tmp_path):
    """EFBIG (`ulimit -f`, or FAT32's 4 GiB) is not a full disk: the fix is the limit or another file system."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "alexkit", "prepare", str(src), "--out", str(out), "--size", str(SIZE)],
                       capture_output=True, text=True, env=env, timeout=120, preexec_fn=file_size_limit(1 << 20))  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[-1] == (f"error: cannot write {out}/train.beton: File too large; raise the per-file size limit "
                                         "(`ulimit -f`: 1024 KiB here) or write to a file system that holds files this large, "
                                         "then run again (finished splits are kept)"), r.stderr  # fmt: skip


def test_a_split_with_other_settings_is_redone(tmp_path):
    src, out = _sample_tree(tmp_path / "src", 4), tmp_path / "store"
    _run(src, out)
    (out / "manifest.json").unlink()  # an unfinished store whose train split has size 32
    _run(src, out, size=48)
    store = Store(out)
    assert store.size == 48 and store.split("train").pixels(0).shape == (48, 48, 3)
    assert store.stats.mean_image.shape == (48, 48, 3)


def test_finished_store_is_kept_unless_force(tmp_path, capsys):
    src, out = _sample_tree(tmp_path / "src", 4), tmp_path / "store"
    _run(src, out)
    before = (out / "manifest.json").stat().st_mtime_ns
    _run(src, out)
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(AlexkitError, match="--force"):
        _run(src, out, size=48)
    with pytest.raises(AlexkitError, match=r"made with .*quality 90.* \(asked: .*quality 50.*--force"):
        _run(src, out, quality=50)
    with pytest.raises(AlexkitError, match=r"made with size \d+, format jpg, quality 90 \(asked: .*, size \d+, format raw\); pass --force"):
        _run(src, out, format="raw")  # a raw store has no quality to name
    other = _sample_tree(tmp_path / "other", 4)  # the same settings, another source
    with pytest.raises(AlexkitError, match=f"holds a finished store of {src} .*asked: {other}.*--force"):
        _run(other, out)
    _run(src, out, size=48, force=True)
    assert Store(out).size == 48


def test_a_class_added_while_interrupted_makes_the_kept_train_split_redone(tmp_path):
    """An empty class folder that sorts first shifts every label by one: train's records of its
    source must see that, not only its files."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    (out / "manifest.json").unlink()  # as if interrupted at the very end
    (src / "train" / "a000").mkdir()
    _run(src, out)
    store = Store(out)
    assert store.classes[0]["wnid"] == "a000" and min(store.split("train").labels) == 1


def test_a_kept_train_split_whose_statistics_are_gone_is_redone(tmp_path):
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    (out / "manifest.json").unlink()
    (out / "stats.npz").unlink()
    _run(src, out)
    assert Store(out).stats.mean_image.shape == (SIZE, SIZE, 3)


def test_a_train_split_of_which_no_image_decodes_is_one_error(tmp_path):
    for wnid in WNIDS[:2]:
        (tmp_path / "src" / "train" / wnid).mkdir(parents=True)
        (tmp_path / "src" / "train" / wnid / "x.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(AlexkitError, match=r"^none of the train split's 2 images in .*src could be decoded \(first: "):
        _run(tmp_path / "src", tmp_path / "store")
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_a_train_split_of_empty_class_folders_says_no_images_were_found(tmp_path):
    """0 files is not "none could be decoded": the error names the folder and the names looked for."""
    (tmp_path / "src" / "train" / WNIDS[0]).mkdir(parents=True)
    r = _cli(str(tmp_path / "src"), "--out", str(tmp_path / "deep" / "deeper" / "store"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: no images in {tmp_path / 'src' / 'train'}: its 1 class folder ({WNIDS[0]}) holds "
                               "no file ending in one of .bmp ")  # fmt: skip
    assert r.stderr.count("\n") == 1 and "decoded" not in r.stderr
    assert not (tmp_path / "deep").exists()  # nor the folders made for it
    r = _cli(str(tmp_path / "src"), "--out", f"{tmp_path}/p1/../p2/store")
    assert r.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["src"], r.stderr


def test_counts_of_one_are_singular(tmp_path, capsys):
    (tmp_path / "src" / "train" / "a").mkdir(parents=True)
    (tmp_path / "src" / "train" / "a" / "x.JPEG").write_bytes(_coded(1, 30, 30))
    _run(tmp_path / "src", tmp_path / "store")
    printed = capsys.readouterr().out
    assert "class-folders: 1 class, train 1 image\n" in printed, printed
    assert "train: 1 image written to" in printed and "store ready: " in printed and "(train 1 image, " in printed


# --- --force: the old store stays whole until the new one replaces it ---


def _files(out: Path) -> dict[str, bytes]:
    """The store's files and their bytes (not its lock file, nor a rebuild under way in .prepare-new)."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".prepare.lock"}


def test_a_force_rebuild_that_fails_leaves_the_old_store_whole(tmp_path, monkeypatch):
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    before = _files(out)
    _writing_fails(monkeypatch, OSError(5, "Input/output error"), "val")  # train is written by then: failed half-way
    with pytest.raises(AlexkitError, match="Input/output error"):
        _run(src, out, size=48, force=True)
    assert _files(out) == before  # byte for byte
    store = Store(out).check("train", "val")
    assert store.size == SIZE and len(store.split("train")) == 6


def test_cli_force_rebuild_of_an_undecodable_source_leaves_the_old_store_whole(tmp_path):
    """The review's case: every train image of the new source is empty; exit 2, and the old store is
    still all there (it used to keep only classes.json and the lock)."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    before = _files(out)
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    for f in (bad / "train").rglob("*.JPEG"):
        f.write_bytes(b"")
    r = _cli(str(bad), "--out", str(out), "--size", str(SIZE), "--workers", "2", "--force")
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: none of the train split's 6 images"), r.stderr  # after a 32 px store's warning
    assert _files(out) == before and not (out / ".prepare-new").exists()
    Store(out).check("train", "val")


def test_a_force_rebuild_gives_the_new_settings_and_drops_what_the_new_source_lacks(tmp_path, capsys):
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    _run(src, out, size=48, force=True)
    store = Store(out).check("train", "val")
    assert store.size == 48 and store.split("val").pixels(0).shape == (48, 48, 3)
    assert store.stats.mean_image.shape == (48, 48, 3)
    assert json.loads((out / "train.done.json").read_text())["settings"]["size"] == 48  # records moved with their files
    assert not (out / ".prepare-new").exists() and not list(out.rglob("*.partial"))
    assert "store ready: " + str(out) in capsys.readouterr().out
    shutil.rmtree(src / "val")  # the same source without its val split: it would take the store's away
    before = _files(out)
    with pytest.raises(AlexkitError, match=rf"^{src} has no val split .*, so the rebuilt store would have none, .*; {out} keeps "
                                           "its own: add val images .*, or choose another --out$"):  # fmt: skip
        _run(src, out, size=48, force=True)
    assert _files(out) == before and not (out / ".prepare-new").exists()
    (out / "val.beton").unlink()  # a val split removed by hand, its record left: the record must not stay either
    _run(src, out, size=48, force=True)
    assert sorted(p.name for p in out.iterdir()) == [".prepare.lock", "classes.json", "manifest.json", "stats.npz",
                                                     "train.beton", "train.done.json"]  # fmt: skip


def test_a_force_rebuild_of_an_unfinished_store_keeps_its_files_until_the_end(tmp_path, monkeypatch):
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    (out / "manifest.json").unlink()  # as if interrupted at the very end
    before = _files(out)
    _writing_fails(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _run(src, out, force=True)
    assert _files(out) == before  # its finished splits are still there for a plain rerun to keep
    monkeypatch.undo()
    _run(src, out)
    assert Store(out).size == SIZE


def test_readers_see_the_old_store_while_a_force_rebuild_runs(tmp_path, monkeypatch):
    """The rebuild holds the store's lock shared until its end: a training may start on the old store
    meanwhile; the new one is then put in place by a rerun once it has ended, converting nothing again."""
    from alexkit.pipeline import build as stage
    from alexkit.pipeline.store import reading

    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    before = _files(out)
    real_write_split = stage._write_split
    seen = []

    def write_split_under_a_reader(*args, **kw):
        with reading(out):  # a training starting now: it is let in, and reads the old store
            seen.append(Store(out).check("train", "val").size)
        return real_write_split(*args, **kw)

    monkeypatch.setattr(stage, "_write_split", write_split_under_a_reader)
    _run(src, out, size=48, force=True)
    assert seen == [SIZE, SIZE] and Store(out).size == 48

    before = _files(out)
    with contextlib.ExitStack() as training:  # one that starts during the rebuild and still runs at its end
        started = []

        def write_split_and_stay(*args, **kw):
            if not started:
                started.append(training.enter_context(reading(out)))
            return real_write_split(*args, **kw)

        monkeypatch.setattr(stage, "_write_split", write_split_and_stay)
        with pytest.raises(AlexkitError, match=r"the new store is complete in .*\.prepare-new, but .* is being read \(by "
                                               r"`alexkit train`, `eval`, `predict`, `show-batch` or a bench\); run this command again once they end"):  # fmt: skip
            _run(src, out, size=40, force=True)
        assert _files(out) == before
        with pytest.raises(AlexkitError, match="being read"):  # still read: nothing moves
            _run(src, out, size=40, force=True)
    monkeypatch.setattr(stage, "_write_split", real_write_split)
    _run(src, out, size=40, force=True)
    assert Store(out).size == 40 and not (out / ".prepare-new").exists()


def test_a_second_force_rebuild_is_refused_while_one_runs(tmp_path, monkeypatch):
    from alexkit.pipeline import build as stage

    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    real_write_split, errors = stage._write_split, []

    def write_split_racing(*args, **kw):
        if not errors:
            for force in (True, False):
                with pytest.raises(AlexkitError) as info:
                    _run(src, out, size=40, force=force)
                errors.append(str(info.value))
        return real_write_split(*args, **kw)

    monkeypatch.setattr(stage, "_write_split", write_split_racing)
    _run(src, out, size=48, force=True)
    for error in errors:  # the second --force, and a plain prepare of other settings (not "pass --force")
        assert error.startswith(f"another `alexkit prepare --force` is rebuilding {out} (in {out / '.prepare-new'})"), error
    assert Store(out).size == 48


def test_an_interrupted_force_rebuild_resumes_and_the_old_store_stays_meanwhile(tmp_path, monkeypatch, capsys):
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    before = _files(out)
    _writing_fails(monkeypatch, KeyboardInterrupt(), "val")
    with pytest.raises(KeyboardInterrupt):
        _run(src, out, size=48, force=True)
    assert _files(out) == before and Store(out).check("train", "val").size == SIZE
    assert (out / ".prepare-new" / "train.done.json").is_file()
    capsys.readouterr()
    _run(src, out)  # a plain rerun keeps the old store, and says what is left beside it
    captured = capsys.readouterr()
    assert "nothing to do" in captured.out and "holds an `alexkit prepare --force` rebuild that has not replaced" in captured.err
    monkeypatch.undo()
    _run(src, out, size=48, force=True)
    assert "train: kept from an earlier run" in capsys.readouterr().out  # the rebuild's own train split
    assert Store(out).check("train", "val").size == 48 and not (out / ".prepare-new").exists()


def _force_to_48_stopped_after_renames(tmp_path, monkeypatch, n: int) -> tuple[Path, Path, list[str]]:
    """A store prepared at SIZE, then `--force --size 48` stopped (Ctrl-C) after `n` renames of its move:
    (src, out, the names renamed into out)."""
    from alexkit.pipeline import storedir as stage

    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    real_rename, renamed = stage._rename, []

    def stopped_after_n(a, b):
        if len(renamed) == n:
            raise KeyboardInterrupt
        renamed.append(b.name)
        real_rename(a, b)

    monkeypatch.setattr(stage, "_rename", stopped_after_n)
    with pytest.raises(KeyboardInterrupt):
        _run(src, out, size=48, force=True)
    return src, out, renamed


def test_a_move_into_place_that_was_interrupted_is_finished_by_the_next_run(tmp_path, monkeypatch, capsys):
    """Stopped between its renames, OUT holds some new files and some old, and no manifest.json: it must
    not look finished, and the next prepare on it finishes the move before anything else."""
    src, out, renamed = _force_to_48_stopped_after_renames(tmp_path, monkeypatch, 2)
    assert renamed == ["train.beton", "stats.npz"] and not (out / "train.done.json").exists()
    with pytest.raises(AlexkitError, match=rf"^store {out} is half replaced: an `alexkit prepare --force` stopped while moving "
                                           rf"its new store in; finish that with `alexkit prepare {src} --out {out} --size 48`$"):  # fmt: skip
        Store(out)  # as train, eval and show-batch would say
    monkeypatch.undo()
    capsys.readouterr()
    _run(src, out, size=48)  # not even --force: the move is finished, then the store is the one asked for
    printed = capsys.readouterr().out
    assert "putting in place the store that an interrupted `prepare --force` finished" in printed and "nothing to do" in printed
    store = Store(out).check("train", "val")
    assert store.size == 48 and store.split("val").pixels(0).shape == (48, 48, 3)
    assert not (out / ".prepare-new").exists()


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _kill_9_once_writing(cmd: list[str], partial: Path) -> list[int]:
    """Start `cmd`, SIGKILL it once `partial` exists (the .beton being written); its workers' PIDs."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "prepare finished before it could be killed: " + proc.stderr.read().decode()
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return workers


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_kill_9_mid_run_or_mid_force_rebuild_and_the_rerun_succeeds(tmp_path):
    """Killed while writing its first store, prepare leaves none that looks complete, and its workers
    die with it; killed while a --force rebuilds the store, it leaves the old one as it was. Each time
    the same command run again finishes the job."""
    src, out = _sample_tree(tmp_path / "src", 60), tmp_path / "store"  # 180 train images
    cmd = [sys.executable, "-m", "alexkit", "prepare", str(src), "--out", str(out), "--size", "32", "--workers", "2"]
    workers = _kill_9_once_writing(cmd, out / "train.beton.partial")
    assert not (out / "manifest.json").exists()
    assert pytest.raises(AlexkitError, Store, out)
    if (out / "train.beton").exists():  # only if the split had finished: then its record says so
        assert (out / "train.done.json").exists()
    time.sleep(0.5)
    assert all(not Path(f"/proc/{w}").exists() or "zombie" in Path(f"/proc/{w}/status").read_text() for w in workers)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    store = Store(out)
    assert len(store.split("train")) == 180 and len(store.split("val")) == 12
    assert not list(out.glob("*.partial"))

    before = _files(out)
    force = [*cmd[:-4], "--size", "48", "--workers", "2", "--force"]
    _kill_9_once_writing(force, out / ".prepare-new" / "train.beton.partial")
    assert _files(out) == before and Store(out).check("train", "val").size == 32
    r = subprocess.run(force, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    store = Store(out).check("train", "val")
    assert store.size == 48 and len(store.split("train")) == 180 and len(store.split("val")) == 12
    assert not (out / ".prepare-new").exists() and not list(out.rglob("*.partial"))


def _in_own_group_with_sigint_as_default() -> None:
    sigint_as_default()
    os.setpgrp()  # a process group of its own, which the test can signal as a batch system does


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_stops_cleanly(tmp_path, sig, code, said):
    """SIGINT to prepare alone, as Ctrl-C; SIGTERM to prepare and its workers, as `kill` of a process
    group or a batch system's time limit: no half-written file, the workers joined, one word said."""
    src, out = _sample_tree(tmp_path / "src", 60), tmp_path / "store"
    cmd = [sys.executable, "-m", "alexkit", "prepare", str(src), "--out", str(out), "--size", "32", "--workers", "2"]
    # Ctrl-C as from a terminal, even where pytest itself was started with it ignored (`cmd &`, nohup)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_in_own_group_with_sigint_as_default)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out / "train.beton.partial").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "prepare finished before it could be stopped: " + proc.stderr.read()
    workers = _children(proc.pid)
    if sig == signal.SIGTERM:
        os.killpg(proc.pid, sig)  # the workers too: they leave it to prepare
    else:
        proc.send_signal(sig)
    assert proc.wait(timeout=30) == code, proc.stderr.read()
    err = proc.stderr.read()
    assert err.rstrip().endswith(said) and "Traceback" not in err, err  # no worker raised it
    assert not list(out.glob("*.partial")) and not (out / "manifest.json").exists()
    assert all(not Path(f"/proc/{w}").exists() for w in workers)  # joined, not orphaned


# --- FFCV reads it with no alexkit code ---


def test_plain_ffcv_loader_reads_the_store(tmp_path):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    src = tmp_path / "src"
    ids = _class_folder_tree(src, train_per_class=3, val_per_class=1)
    out = _run(src, tmp_path / "store")
    ours = BetonReader(out / "train.beton")
    loader = Loader(str(out / "train.beton"), batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    i = 0
    for images, labels in loader:
        for img, label in zip(images, labels.ravel()):
            assert img.shape == (SIZE, SIZE, 3)
            assert label == ours.labels[i]
            assert np.abs(img.astype(int) - ours.pixels(i)).max() <= 3  # FFCV decodes with its own libjpeg-turbo settings
            assert _decode_id(img) in ids.values()
            i += 1
    assert i == len(ours) == 9


# --- arguments and the command line ---


def test_bad_settings_are_one_line_errors(tmp_path):
    for kw in ({"format": "png"}, {"size": 8}, {"quality": 0}, {"workers": 0}, {"workers": 4 * (os.cpu_count() or 1) + 1}):
        with pytest.raises(AlexkitError) as info:
            PrepareConfig(src=tmp_path, **kw)
        assert "\n" not in str(info.value)


def _cli(*args, cwd=None, prefix=()):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    cmd = [*prefix, sys.executable, "-m", "alexkit", "prepare", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def _bound_by_permissions(tmp_path: Path) -> list[str]:
    """The command prefix under which a child process is refused what file permissions refuse: none
    for a user; for root, setpriv without the capabilities that bypass them. Skips the test where
    root cannot drop them (no setpriv, or a container that forbids it)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    locked = tmp_path / "permission-probe"
    locked.mkdir(mode=0o555)
    try:
        r = subprocess.run([*prefix, "sh", "-c", f"touch {locked}/x"], capture_output=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("running as root without setpriv: cannot drop the capabilities that bypass file permissions")
    if r.returncode == 0 or b"Permission denied" not in r.stderr:
        pytest.skip(f"running as root, and setpriv could not drop the capabilities that bypass file permissions: {r.stderr!r}")
    locked.rmdir()
    return prefix


def test_cli_errors_exit_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "src" / "train" / "a").mkdir(parents=True)
    (tmp_path / "src" / "train" / "a" / "x.JPEG").write_bytes(_coded(1, 30, 30))
    cases = {
        "missing": [str(tmp_path / "nope")],
        "empty": [str(tmp_path / "empty")],
        "out inside src": [str(tmp_path / "src"), "--out", str(tmp_path / "src" / "store")],
        "out is src": [str(tmp_path / "src"), "--out", str(tmp_path / "src")],
        "bad format": [str(tmp_path / "src"), "--format", "png"],
        "out a dangling link": [str(tmp_path / "src"), "--out", str(tmp_path / "link")],
    }
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    for what, args in cases.items():
        r = _cli(*args, "--out", str(tmp_path / "o")) if "--out" not in args else _cli(*args)
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (what, r.stderr)
        if what == "out a dangling link":
            assert lines[0] == f"error: --out {tmp_path / 'link'} is a link to {tmp_path / 'gone'}, which does not exist; " \
                               "make that folder, or remove the link"  # fmt: skip
    assert not (tmp_path / "src" / "store").exists()
    assert not (tmp_path / "o").exists()  # a run that failed before writing anything leaves no folder


def test_empty_paths_are_refused(tmp_path):
    """Typer makes "" the current folder: `--out ""` would scatter the store's files there."""
    src = _sample_tree(tmp_path / "src", 2)
    for args, start in (([str(src), "--out", ""], "error: --out '': an empty value (an unset shell variable?)"),
                        (["", "--out", str(tmp_path / "store")], "error: SRC '': an empty value (an unset shell variable?)")):
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith(start) and r.stderr.count("\n") == 1, r.stderr
    with pytest.raises(AlexkitError, match='^SRC "" names no folder'):  # from Python, where no command line checked it
        PrepareConfig(src="", out=tmp_path / "store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_an_out_folder_holding_other_files_is_refused(tmp_path):
    """`--out .`, `--out /`, `--out runs`: a folder with files but none of a store's is not written into."""
    src = _sample_tree(tmp_path / "src", 2)
    runs = tmp_path / "runs"
    (runs / "20250101-120000").mkdir(parents=True)
    (runs / "notes.txt").write_text("mine")
    before = sorted(p.name for p in runs.iterdir())
    r = _cli(str(src), "--out", str(runs))
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"error: --out {runs} is a folder that holds no store but other files (20250101-120000, notes.txt); "
                        f"pass a new or empty folder, e.g. --out {runs / 'alexkit-store'}\n")  # fmt: skip
    assert sorted(p.name for p in runs.iterdir()) == before
    for out, said in (("notes.txt", "is a file"), ("notes.txt/store", f"is under {runs}/notes.txt, which is a file")):
        r = _cli(str(src), "--out", str(runs / out))
        assert (r.returncode, r.stderr) == (2, f"error: --out {runs}/{out} {said}; give a folder\n")
    r = _cli(str(src), "--out", ".", cwd=tmp_path)  # the current folder, which holds the source
    assert r.returncode == 2 and "error: --out . is a folder that holds no store but other files (runs, src)" in r.stderr
    r = _cli(str(src), "--out", "/")
    assert r.returncode == 2 and r.stderr.startswith("error: --out / is a folder that holds no store but other files (")
    assert "and " in r.stderr and "e.g. --out /alexkit-store\n" in r.stderr, r.stderr
    run = runs / "20250101-120000"  # a training run: its copies of the store's stats.npz and classes.json make it no store
    for name in ("classes.json", "config.json", "last.pt", "stats.npz"):
        (run / name).write_bytes(b"")
    r = _cli(str(src), "--out", str(run))
    assert r.returncode == 2 and "holds no store but other files (classes.json, config.json, last.pt and 1 other)" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "src"]


@pytest.mark.parametrize("left", [[], [".prepare.lock"], ["train.beton.partial"], [".stats.npz.host-4242-0a0b0c0d.partial"],
                                  ["train.done.json", "train.beton"], [".prepare-new"]])  # fmt: skip
def test_an_empty_or_unfinished_store_folder_is_written(tmp_path, left):
    """What an interrupted prepare leaves (only its lock, only a temporary...) is a store to resume."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    out.mkdir()
    for name in left:
        if name == ".prepare-new":  # an interrupted --force's folder
            (out / name).mkdir()
        else:
            (out / name).write_bytes(b"")
    _run(src, out)
    assert len(Store(out).check("train", "val").split("train")) == 6


def test_a_source_without_val_is_prepared_with_a_warning_and_a_rerun_adds_val_later(tmp_path, capsys):
    """The warning says to add val images and run again: the rerun then writes val and keeps train
    (no --force, no train converted again, though flat val images and a devkit beside train/ change
    the layout's name); all of val undecodable is an error, not an empty split."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    for name in ("val", "ILSVRC2012_devkit_t12"):
        (src / name).rename(tmp_path / name)
    _run(src, out)
    assert "has no val split (or no val images): `alexkit train`, `eval` and `show-batch` need one" in capsys.readouterr().err
    assert Store(out).manifest["source"]["layout"] == "class-folders"
    _run(src, out)  # still none: looked for, and the warning again
    said = capsys.readouterr()
    assert "without val images; looking for them in" in said.out and "has no val split" in said.err
    wnids = sorted(p.name for p in (src / "train").iterdir())
    for wnid in wnids:
        (src / "val" / wnid).mkdir(parents=True)
        (src / "val" / wnid / "v.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(AlexkitError, match=r"^none of the val split's 3 images in .*src could be decoded \(first: .*\); "
                                           r"check the source files \(finished splits are kept\)$"):  # fmt: skip
        _run(src, out)
    shutil.rmtree(src / "val")
    for name in ("val", "ILSVRC2012_devkit_t12"):
        (tmp_path / name).rename(src / name)
    capsys.readouterr()
    _run(src, out)
    said = capsys.readouterr().out
    assert "train: kept from an earlier run" in said and "val: 12 images written" in said, said
    assert len(Store(out).check("train", "val").split("val")) == 12
    assert Store(out).manifest["source"]["layout"] == "official-extracted"
    _run(src, out)
    assert "nothing to do" in capsys.readouterr().out


def test_cli_unwritable_out_exits_1(tmp_path):
    """A path the system refuses: exit code 1 (2 is for bad flags and bad input)."""
    prefix = _bound_by_permissions(tmp_path)
    (tmp_path / "src" / "train" / "a").mkdir(parents=True)
    (tmp_path / "src" / "train" / "a" / "x.JPEG").write_bytes(_coded(1, 30, 30))
    (tmp_path / "locked").mkdir(mode=0o555)
    r = _cli(str(tmp_path / "src"), "--out", str(tmp_path / "locked" / "store"), prefix=prefix)
    assert r.returncode == 1, r.stderr
    assert r.stderr == (f"error: --out {tmp_path / 'locked' / 'store'} cannot be created: no folder can be made in "
                        f"{tmp_path / 'locked'} (Permission denied); choose another path\n")  # fmt: skip


def test_a_rerun_on_a_finished_read_only_store_has_nothing_to_do(tmp_path):
    """A finished store nobody may write (a shared copy, a read-only mount) is still the store asked
    for: a rerun says so and exits 0; other settings or --force need writing, and are refused."""
    prefix = _bound_by_permissions(tmp_path)
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    lock = out / ".prepare.lock"
    files = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p != lock}

    def unlocked_copy():  # a copy of the store without its dot file, in a read-only folder
        out.chmod(0o755)
        lock.unlink()
        out.chmod(0o555)

    try:
        for made_so in (lambda: lock.chmod(0o444), lambda: out.chmod(0o555), unlocked_copy):
            made_so()  # first another user's lock file in a folder one may write in, then the folder read-only too
            r = _cli(str(src), "--out", str(out), "--size", str(SIZE), prefix=prefix)
            assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr
            r = _cli("src", "--out", "store", "--size", str(SIZE), cwd=tmp_path, prefix=prefix)  # relative: the same store
            assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr
            for flags in (["--size", str(SIZE + 8)], ["--size", str(SIZE), "--force"]):
                r = _cli(str(src), "--out", str(out), *flags, prefix=prefix)
                assert r.returncode == 1 and r.stderr.count("\n") == 1, (flags, r.stderr)
                assert "Permission denied" in r.stderr and r.stderr.startswith("error: "), r.stderr
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == files
    finally:
        out.chmod(0o755)


def test_cli_end_to_end_and_summary(tmp_path):
    src = _sample_tree(tmp_path / "src", 3)
    r = _cli(str(src), "--out", str(tmp_path / "store"), "--size", "32", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "store ready" in r.stdout and "no file skipped" in r.stdout
    size = sum((tmp_path / "store" / f"{split}.beton").stat().st_size for split in ("train", "val"))
    assert f", {size / 1e6:,.1f} MB; no file skipped" in r.stdout, r.stdout  # the .beton files together
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["settings"]["size"] == 32 and manifest["settings"]["format"] == "jpg"
    assert manifest["splits"]["train"]["images"] == 9 and manifest["splits"]["val"]["images"] == 12
    assert set(manifest["timings"]) >= {"scan_s", "train_s", "val_s", "total_s"}
    # the sample set's odd files (a CMYK JPEG, a PNG named .JPEG) went in like the others
    train = BetonReader(tmp_path / "store" / "train.beton")
    for i, name in enumerate(["n99000001_1.JPEG", "n99000001_2.JPEG", "n99000001_3.JPEG"]):
        with Image.open(src / "train" / "n99000001" / name) as source:
            kind = source.format, source.mode
            want = _reference(source, SIZE)
        want = np.asarray(Image.open(io.BytesIO(_jpeg(want))), float)  # the same JPEG q90 loss
        assert np.abs(train.pixels(i) - want).mean() < 2, (name, kind)
    assert kind == ("PNG", "RGB")


@pytest.mark.parametrize("inside", [[], [".prepare.lock"]])
def test_what_a_stopped_force_leaves_without_a_file_of_the_new_store_goes_without_a_word(tmp_path, capsys, inside):
    """A --force stopped between making .prepare-new and its lock file (the folder empty), before its
    first file, or right after its move (holding only its lock), and a write probe of a killed prepare:
    removed by the next prepare, with no warning of a rebuild left to finish."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    (out / ".prepare-new").mkdir()
    for name in inside:
        (out / ".prepare-new" / name).write_bytes(b"")
    (out / ".alexkit-write-test-999999").write_bytes(b"")
    capsys.readouterr()
    _run(src, out)
    captured = capsys.readouterr()
    assert "nothing to do" in captured.out and ".prepare-new" not in captured.err, captured
    assert sorted(p.name for p in out.iterdir()) == sorted([".prepare.lock", *STORE_FILES])


def test_a_force_rebuild_from_a_source_of_other_classes_moves_in_its_class_table(tmp_path):
    """--force from a source with other classes: classes.json is the new source's (the one its labels
    index), as a fresh prepare of that source writes it, not the old store's."""
    out = tmp_path / "store"
    _run(_sample_tree(tmp_path / "three", 2), out)
    src = write_sample_dataset(tmp_path / "four", num_classes=4, train_per_class=2, val_per_class=2)
    _run(src, out, force=True)
    _run(src, tmp_path / "fresh")
    assert (out / "classes.json").read_bytes() == (tmp_path / "fresh" / "classes.json").read_bytes()
    assert len(json.loads((out / "classes.json").read_text())) == 4 and Store(out).num_classes == 4


def test_an_out_folder_holding_only_a_killed_prepares_write_probe_is_written(tmp_path):
    """A prepare killed between its write probe and its lock leaves only the probe in a new --out:
    that is prepare's own file, not "other files" to refuse the folder for."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    out.mkdir()
    (out / ".alexkit-write-test-999999").write_bytes(b"")
    _run(src, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([".prepare.lock", *STORE_FILES])


def test_a_finished_split_converted_again_stays_until_the_new_one_is_complete(tmp_path, monkeypatch, capsys):
    """A finished train-only store, then val added and train's files touched (a copy that did not keep
    their times): the rerun converts train again, as its files may have changed. Stopped while it
    does, the finished store is left as it was, byte for byte, manifest.json included; so is one that
    lost stats.npz, whose train split is converted again too."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    for name in ("val", "ILSVRC2012_devkit_t12"):
        (src / name).rename(tmp_path / name)
    _run(src, out)
    for name in ("val", "ILSVRC2012_devkit_t12"):
        (tmp_path / name).rename(src / name)
    for f in (src / "train").rglob("*.JPEG"):
        os.utime(f, (time.time() + 60, time.time() + 60))
    before = _files(out)
    _writing_fails(monkeypatch, OSError(5, "Input/output error"), "train")
    capsys.readouterr()
    with pytest.raises(AlexkitError, match="Input/output error"):
        _run(src, out)
    said = capsys.readouterr().out
    assert "looking for them in" in said and "(the train split is kept if its files have not changed)" in said
    assert "train: the one an earlier run finished here was made from other files" in said
    assert _files(out) == before and len(Store(out).check("train").split("train")) == 6
    monkeypatch.undo()
    _run(src, out)
    assert len(Store(out).check("train", "val").split("val")) == 12
    before = _files(out)
    (out / "stats.npz").unlink()
    _writing_fails(monkeypatch, OSError(5, "Input/output error"), "train")
    with pytest.raises(AlexkitError, match="Input/output error"):
        _run(src, out)
    assert _files(out) == {k: v for k, v in before.items() if k != "stats.npz"}


def test_a_rerun_on_a_source_without_val_keeps_its_finished_train_split(tmp_path, capsys):
    """A source with no val split, interrupted after its train split: the rerun keeps train and its
    statistics (clearing the missing val split must not take stats.npz with it)."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    shutil.rmtree(src / "val")
    _run(src, out)
    (out / "manifest.json").unlink()  # as if killed after the train split was done
    capsys.readouterr()
    _run(src, out)
    assert "train: kept from an earlier run" in capsys.readouterr().out
    assert Store(out).check("train").stats.mean_image.shape == (SIZE, SIZE, 3)


def test_prepare_with_stdout_a_closed_pipe_ends_without_a_word(tmp_path):
    """`alexkit prepare ... | head -0`, plain and as a --force beside a reading training: exit code 1
    and nothing on stderr (no error about OUT), as `yes | head` ends."""
    from alexkit.pipeline.store import reading

    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"

    def closed_stdout(*args):
        read, write = os.pipe()
        os.close(read)  # no reader: the first print fails (EPIPE)
        try:
            return subprocess.run([sys.executable, "-m", "alexkit", "prepare", str(src), "--out", str(out), "--size", str(SIZE),
                                   *args], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
        finally:
            os.close(write)

    r = closed_stdout()
    assert r.returncode == 1 and r.stderr == "", r.stderr
    _run(src, out)
    with reading(out):  # the --force builds beside it: the break comes inside the rebuild
        r = closed_stdout("--force")
    assert r.returncode == 1 and r.stderr == "", r.stderr


def test_a_force_on_a_folder_left_with_only_an_unfinished_rebuild_resumes_it(tmp_path, capsys):
    """OUT's store files removed by hand (`rm store/*` leaves the dot folder) while .prepare-new holds an
    unfinished rebuild: --force resumes that rebuild (converting nothing again) and moves it in."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out / ".prepare-new")
    (out / ".prepare-new" / "manifest.json").unlink()  # as a --force interrupted before its manifest leaves it
    capsys.readouterr()
    _run(src, out, force=True)
    said = capsys.readouterr().out
    assert "train: kept from an earlier run" in said and "val: kept from an earlier run" in said
    assert sorted(p.name for p in out.iterdir()) == sorted([".prepare.lock", *STORE_FILES])


def test_a_split_the_source_no_longer_has_goes_with_its_half_written_file(tmp_path):
    """Interrupted while writing val, then rerun on the source without its val split: the old
    val.beton.partial (the .beton writer's, as large as the split) goes with the split."""
    src, out = _sample_tree(tmp_path / "src", 2), tmp_path / "store"
    _run(src, out)
    for name in ("manifest.json", "val.beton", "val.done.json"):
        (out / name).unlink()
    (out / "val.beton.partial").write_bytes(b"half a file")
    shutil.rmtree(src / "val")
    _run(src, out)
    assert sorted(p.name for p in out.iterdir()) == [".prepare.lock", "classes.json", "manifest.json", "stats.npz",
                                                     "train.beton", "train.done.json"]  # fmt: skip


def test_a_move_stopped_after_a_whole_split_keeps_that_splits_done_record(tmp_path, monkeypatch):
    """Stopped once train's three files are in OUT (its done-record last) and before val's: the next
    prepare moves val and the rest, and train's record, already in place, stays with its files."""
    src, out, renamed = _force_to_48_stopped_after_renames(tmp_path, monkeypatch, 3)
    assert renamed == ["train.beton", "stats.npz", "train.done.json"]
    monkeypatch.undo()
    _run(src, out, size=48)
    assert sorted(p.name for p in out.iterdir()) == sorted([".prepare.lock", *STORE_FILES])
    assert json.loads((out / "train.done.json").read_text())["settings"]["size"] == 48
    assert Store(out).check("train", "val").size == 48
