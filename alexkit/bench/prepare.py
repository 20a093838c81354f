"""Prepare speed: images/s of `alexkit prepare` beside two baselines, on the same images and cores.

  (a) one process, PIL: open, convert to RGB, resize the shorter side (same filter), centre crop,
      encode JPEG, write a file; the straightforward converter.
  (b) FFCV's own route: an indexed dataset returning the same preprocessed PIL images, written by
      `ffcv.writer.DatasetWriter` with RGBImageField(write_mode="jpg") and IntField, all workers.
  (c) `alexkit prepare`: the whole command (scan, convert, write, training statistics).

Each route runs `repeats` times, interleaved (a, b, c, a, b, c, ...) so a busy neighbour hurts
them alike; the table gives the median images/s with the range, and the CPU time per image
summed over all processes (insensitive to other load; lower is better). Without SRC, photo-like
JPEGs of ImageNet-like sizes are generated first (see `write_photo_like`).
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import platform
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexkit.bench import cpu_seconds
from alexkit.errors import AlexkitError, refused
from alexkit.outputs import write_atomic
from alexkit.paths import usable_cores
from alexkit.progress import Progress, counted
from alexkit.ranges import AT_LEAST_1, Range, check_ranges
from alexkit.stops import blocked, ignored

# ImageNet-like (width, height) and how often each occurs: mostly Flickr's 500 px on the long
# side, some larger photos, a few small ones. Mean ~500 x 420 pixels.
PHOTO_SIZES = (
    ((500, 375), 0.36), ((375, 500), 0.15), ((500, 333), 0.15), ((333, 500), 0.05), ((500, 500), 0.04),
    ((400, 300), 0.07), ((640, 480), 0.07), ((800, 600), 0.04), ((1024, 768), 0.02), ((1600, 1200), 0.005),
    ((250, 188), 0.025),
)  # fmt: skip



@dataclass(frozen=True)
class BenchPrepareConfig:
    src: Path | None = None  # a dataset (any layout); None: generate photo-like JPEGs
    images: int = 1000
    workers: int = field(default_factory=usable_cores)
    size: int = 256
    quality: int = 90
    repeats: int = 3
    seed: int = 0

    def __post_init__(self):
        check_ranges(("--images", self.images, AT_LEAST_1), ("--workers", self.workers, AT_LEAST_1),
                     ("--repeats", self.repeats, AT_LEAST_1), ("--size", self.size, Range(16, 1024)),
                     ("--quality", self.quality, Range(1, 100)))  # fmt: skip


def bench_prepare(cfg: BenchPrepareConfig) -> dict:
    """Print the table and return {"images", "workers", "routes": {name: [images/s per repeat]}, ...}."""
    with tempfile.TemporaryDirectory(prefix="alexkit-bench-prepare-") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        started = time.perf_counter()
        if cfg.src is None:
            files = write_photo_like(images, cfg.images, seed=cfg.seed, workers=cfg.workers)
            what = "generated photo-like JPEGs (1/f noise, colour, edges, grain; quality 90, 4:2:0)"
        else:
            files = _copy_from(cfg, images)
            what = f"images taken evenly across the train split of {cfg.src}"
        sizes = [os.path.getsize(f) for f in files]
        dims = [_dims(f) for f in files[:200]]
        print(
            f"{len(files)} {what}: mean {np.mean([d[0] for d in dims]):.0f} x {np.mean([d[1] for d in dims]):.0f} px, "
            f"mean {np.mean(sizes) / 1e3:.0f} KB ({time.perf_counter() - started:.1f} s to make)",
            flush=True,
        )
        for f in files:  # warm the page cache, so no route pays for the first read
            f.read_bytes()
        _load_libraries()  # and import every route's libraries, so none pays for that in round 1

        routes = {
            "(a) one process, PIL": lambda k: _route_pil(files, tmp / f"a{k}", cfg),
            "(b) FFCV DatasetWriter": lambda k: _route_ffcv(files, tmp / f"b{k}.beton", cfg),
            "(c) alexkit prepare": lambda k: _route_alexkit(images, tmp / f"c{k}", cfg),
        }
        rates: dict[str, list[float]] = {name: [] for name in routes}
        cpu_ms: dict[str, list[float]] = {name: [] for name in routes}
        for k in range(cfg.repeats):
            for name, run in routes.items():
                _reap_children()
                cpu = cpu_seconds()
                seconds = run(k)
                _reap_children()  # FFCV never joins its workers: count their time here, not later
                rates[name].append(len(files) / seconds)
                cpu_ms[name].append(1e3 * (cpu_seconds() - cpu) / len(files))
                print(f"  round {k + 1}/{cfg.repeats}: {name}: {rates[name][-1]:,.0f} images/s, "
                      f"{cpu_ms[name][-1]:.2f} CPU ms/image", flush=True)  # fmt: skip
        check = _agreement(files[:20], tmp / "a0", tmp / "c0" / "train.beton")
        stats_check = _stats_agreement(tmp / "c0")

    result = {
        "images": len(files),
        "mean_kb": float(np.mean(sizes) / 1e3),
        "workers": cfg.workers,
        "size": cfg.size,
        "quality": cfg.quality,
        "cpu": cpu_name(),
        "routes": rates,
        "cpu_ms_per_image": cpu_ms,
        "agreement_mean_abs": check,
        "stats_vs_decoded": stats_check,
    }
    _print_table(result)
    return result


# --- the three routes; each returns wall seconds ---


def _load_libraries() -> None:
    """FFCV (with numba and torch) for (b), OpenCV and torch for (c): once, before any timing.
    `alexkit prepare` run from the shell pays ~1 s of imports once, whatever the dataset size."""
    import ffcv.writer  # noqa: F401

    from alexkit.pipeline import imageops

    imageops.load_libraries()


def _preprocess_pil(path: Path, size: int):
    """The plain way: full decode, convert, resize the whole image, crop the centre."""
    from PIL import Image

    from alexkit.pipeline.imageops import FILTER, crop_origin, resized_size

    img = Image.open(path).convert("RGB")
    rw, rh = resized_size(*img.size, size)
    x0, y0 = crop_origin((rw, rh), size)
    return img.resize((rw, rh), FILTER).crop((x0, y0, x0 + size, y0 + size))


def _route_pil(files: list[Path], out: Path, cfg: BenchPrepareConfig) -> float:
    out.mkdir()
    started = time.perf_counter()
    for i, f in enumerate(files):
        _preprocess_pil(f, cfg.size).save(out / f"{i:06d}.jpg", "JPEG", quality=cfg.quality)
    return time.perf_counter() - started


class _PilDataset:
    """What an FFCV user writes: __getitem__ -> (PIL image, label), preprocessing inside."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return _preprocess_pil(self.files[i], self.size), int(self.files[i].parent.name[1:]) % 1000


def _route_ffcv(files: list[Path], out: Path, cfg: BenchPrepareConfig) -> float:
    import contextlib

    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    started = time.perf_counter()
    fields = {"image": RGBImageField(write_mode="jpg", jpeg_quality=cfg.quality), "label": IntField()}
    with contextlib.redirect_stderr(io.StringIO()):  # FFCV's own progress bar
        DatasetWriter(str(out), fields, num_workers=cfg.workers).from_indexed_dataset(_PilDataset(files, cfg.size))
    return time.perf_counter() - started


def _route_alexkit(src: Path, out: Path, cfg: BenchPrepareConfig) -> float:
    import contextlib

    from alexkit.pipeline.prepare import PrepareConfig, prepare

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its lines and notes
        prepare(PrepareConfig(src=src, out=out, size=cfg.size, quality=cfg.quality, workers=cfg.workers))
    return time.perf_counter() - started


def _agreement(files: list[Path], pil_out: Path, beton: Path) -> float:
    """Mean |(a) - (c)| in grey levels over a few images: both routes make the same pictures."""
    from PIL import Image

    from alexkit.pipeline.beton import BetonReader

    reader = BetonReader(beton)
    diffs = [
        np.abs(np.asarray(Image.open(pil_out / f"{i:06d}.jpg"), float) - reader.pixels(i)).mean() for i in range(len(files))
    ]
    return float(np.mean(diffs))


def _stats_agreement(store: Path) -> dict:
    """The store's training statistics, taken from the pixels before JPEG encoding, against the same
    statistics over its decoded JPEGs: what skipping a second decode of every image costs."""
    from alexkit.pipeline.beton import BetonReader
    from alexkit.pipeline.imageops import PixelSums
    from alexkit.pipeline.store import STATS, Stats, eigen

    stats, reader = Stats.load(store / STATS), BetonReader(store / "train.beton")
    sums = PixelSums(stats.mean_image.shape[0])  # prepare's own sums, over the decoded images
    for i in range(len(reader)):
        sums.add(np.ascontiguousarray(reader.pixels(i)))  # (S, S, 3) uint8, decoded with PIL
    mean_image, _, cov = sums.moments()
    eigval, _ = eigen(cov)
    diff = np.abs(mean_image - stats.mean_image)
    return {"mean_image_max": float(diff.max()), "mean_image_mean": float(diff.mean()),
            "eigval_ratio": (stats.eigval / eigval).tolist()}  # fmt: skip


# --- inputs ---


def write_photo_like(out: Path, n: int, *, seed: int = 0, workers: int = 1) -> list[Path]:
    """n JPEGs (quality 90) in class folders out/train/c000../ with PHOTO_SIZES and ImageNet-like
    bytes per pixel (~110 KB at 500 x 375): 1/f noise in luminance and colour, a few hard-edged
    shapes, fine grain. Files already there are kept (they are the same for the same seed). Says
    how many it makes where, then its progress (a thousand take half a minute or more on two cores).
    Returns the files in the order prepare lists them."""
    paths = [_photo_path(out, i) for i in range(n)]
    missing = [i for i, path in enumerate(paths) if not path.exists()]  # each file looked at once: the pool makes these alone
    listed = sorted(paths, key=lambda p: (p.parent.name, p.name))
    if not missing:
        print(f"{counted(n, 'photo-like JPEG')} already in {out}", flush=True)
        return listed
    there = n - len(missing)
    print(f"making {counted(len(missing), 'photo-like JPEG')} in {out}" + (f" ({there:,} there already)" if there else ""), flush=True)
    jobs = [(out, i, seed) for i in missing]
    # Workers ignore Ctrl-C, as prepare's do (pipeline/workers.py): each printed a KeyboardInterrupt
    # traceback. The parent takes it, and the pool's exit terminates them (SIGTERM, at its default in a child).
    with blocked(signal.SIGINT):
        pool = mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(workers, initializer=ignored,
                                                                               initargs=(signal.SIGINT,))  # fmt: skip
    with pool, Progress("photo-like JPEGs", len(jobs)) as progress:
        for done, _ in enumerate(pool.imap(_write_one_photo, jobs, chunksize=8), 1):
            progress.update(done)
    return listed


def _photo_path(out: Path, i: int) -> Path:
    return out / "train" / f"c{i % 10:03d}" / f"img_{i:06d}.JPEG"


def _write_one_photo(job: tuple[Path, int, int]) -> Path:
    from PIL import Image

    out, i, seed = job
    path = _photo_path(out, i)
    rng = np.random.default_rng([seed, i])
    sizes, weights = zip(*PHOTO_SIZES)
    w, h = sizes[rng.choice(len(sizes), p=np.array(weights) / sum(weights))]
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(photo_like(rng, w, h))
    # All or nothing, through a temporary of this process's own: an interrupted run leaves no truncated
    # JPEG to reuse, and two benches making one --work at once do not rename each other's away.
    write_atomic(path, lambda f: image.save(f, "JPEG", quality=90))
    return path


def photo_like(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8: natural-image-like spectrum (amplitude ~ 1/f), correlated colour, edges, grain."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    noise = rng.standard_normal((3, h, w // 2 + 1)) + 1j * rng.standard_normal((3, h, w // 2 + 1))
    fields = np.fft.irfft2(noise * np.stack([f**-1.05, f**-1.4, f**-1.4]), s=(h, w))
    fields /= fields.std(axis=(1, 2), keepdims=True)
    lum, c1, c2 = fields
    img = rng.uniform(90, 160) + 45 * lum[..., None] + np.stack([22 * c1, 12 * c2, -18 * c1 - 10 * c2], axis=-1)
    y, x = np.mgrid[0:h, 0:w]
    for _ in range(rng.integers(2, 6)):  # objects: discs with hard edges
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * min(w, h)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[inside] = img[inside] * 0.6 + rng.uniform(0, 255, 3) * 0.4
    img += rng.normal(0, 4.0, (h, w, 1)) + rng.normal(0, 1.5, (h, w, 3))  # sensor grain
    return np.clip(img, 0, 255).astype(np.uint8)


def _copy_from(cfg: BenchPrepareConfig, out: Path) -> list[Path]:
    """cfg.images train images of the dataset cfg.src, evenly spread over it, copied as class folders. Each
    must convert in every route: the routes are timed on the same images, and an error about a temporary
    copy would name a file that is gone, so the user's file is named here."""
    from alexkit.datasets import find_dataset, read_sample_bytes
    from alexkit.pipeline import imageops

    imageops.load_libraries()  # OpenCV single-threaded before _unconvertible uses it, as prepare's parent has it
    samples = find_dataset(cfg.src).splits["train"]
    picked = samples[:: max(1, len(samples) // cfg.images)][: cfg.images]
    files = []
    for i, s in enumerate(picked):
        where = s.path if s.size < 0 else f"{s.name} in {s.path}"  # a file, or an image inside a tar
        try:
            data = read_sample_bytes(s)
        except OSError as exc:
            raise refused(exc, "make it readable, or pass another dataset", where) from None
        why = _unconvertible(data, cfg)
        if why is not None:
            raise AlexkitError(f"{where}: {why}; every route must read every image: remove or replace it in {cfg.src} "
                               "(`alexkit prepare` skips such files), or pass another dataset")  # fmt: skip
        folder = out / "train" / f"c{s.label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:06d}{Path(s.name or s.path).suffix or '.JPEG'}"
        path.write_bytes(data)
        files.append(path)
    return sorted(files, key=lambda p: (p.parent.name, p.name))


def _unconvertible(data: bytes, cfg: BenchPrepareConfig) -> str | None:
    """Why some route cannot convert these bytes; None if every route can. Route (c) is checked with
    the decoding prepare's workers run (OpenCV or PIL, and no image whose sides are more than
    MAX_ASPECT apart): an image prepare skips left (c) one short, its images/s counted over an image
    it never wrote and the (a)-(c) comparison indexing past its store. (a) and (b) with their own PIL one."""
    from alexkit.pipeline.imageops import MAX_ASPECT, DecoderMessages, decode_resized, skip_reason

    try:
        with DecoderMessages():  # libjpeg's warnings on a file it decodes anyway: caught, as prepare's workers do
            decode_resized(data, cfg.size, MAX_ASPECT)  # convert's decoding (its JPEG encoding cannot fail on a file's account)
        _preprocess_pil(io.BytesIO(data), cfg.size)
    except Exception as exc:  # anything a file's bytes can do
        return skip_reason(exc, data)
    return None


def _reap_children(timeout: float = 30.0) -> None:
    """Wait for every child process this process started to end, and reap it."""
    deadline = time.monotonic() + timeout
    while mp.active_children() and time.monotonic() < deadline:
        time.sleep(0.01)


def _dims(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _print_table(r: dict) -> None:
    med = {name: statistics.median(v) for name, v in r["routes"].items()}
    a, b = med["(a) one process, PIL"], med["(b) FFCV DatasetWriter"]
    print(f"\nprepare, {r['images']} images ({r['mean_kb']:.0f} KB mean) -> {r['size']} px JPEG q{r['quality']}, "
          f"{counted(r['workers'], 'worker')}, {r['cpu']}")  # fmt: skip
    print(f"{'route':24s} {'images/s (median)':>18s} {'range':>13s} {'vs (a)':>7s} {'vs (b)':>7s} {'CPU ms/image':>13s}")
    for name, v in r["routes"].items():
        cpu = statistics.median(r["cpu_ms_per_image"][name])
        ratios = f"{med[name] / a:6.2f}x {med[name] / b:6.2f}x"
        print(f"{name:24s} {med[name]:18,.0f} {min(v):6,.0f}-{max(v):<6,.0f} {ratios} {cpu:13.2f}")
    print(f"(c) includes the scan and the training statistics; libraries imported before timing; "
          f"(a) vs (c) pixels: mean |diff| {r['agreement_mean_abs']:.2f} grey levels")
    s = r["stats_vs_decoded"]
    print(f"(c)'s statistics (from the pixels before encoding) vs the same over its decoded JPEGs: mean image within "
          f"{s['mean_image_max']:.2f} grey levels ({s['mean_image_mean']:.2f} on average), eigenvalues x "
          f"{', '.join(f'{v:.3f}' for v in s['eigval_ratio'])}")  # fmt: skip
