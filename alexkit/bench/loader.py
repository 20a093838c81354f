"""Input pipeline speed: alexkit's DALI graphs beside two baselines, in one run, on the same images.

  alexkit  store -> DALI (CPU operators here) -> torch: crop, flip, PCA lighting (train) and
           per-pixel mean subtraction, float32 NCHW output. A JPEG q90 store and a raw store.
           Each mode also runs a second time with DALI's own operators only (no one-pass
           kernel, see pipeline/graphs.py), to show what the kernels buy.
  (a), (b) the baselines, torchvision-style and FFCV's own loader: alexkit/bench/baselines.py.
The pipelines of one mode take turns, one whole epoch each, so that other processes on the
machine slow them alike. The first epoch is a warm-up (graph build, numba compilation, worker
start); the median of the others is printed with their min-max, and the CPU time per image (all
threads and worker processes), the steadier figure on a shared machine.
Threads: alexkit's loader its default (cores + 1, see pipeline/loader.default_threads), the
baselines one worker per core ("a DataLoader on all cores"; FFCV cannot run more workers than
numba has threads); --threads gives every pipeline the same number (FFCV's at most numba's
thread count: the settings line says what each got). Memory: alexkit's train
loader runs alone first, and the process's anonymous and file-backed RSS is printed after each
epoch. Without --store, the photo-like JPEGs of `alexkit bench prepare` (ImageNet-like sizes
and bytes, q90) are made, kept in --work if given, and run through `alexkit prepare` into a
JPEG q90 store and a raw store.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from alexkit.bench import Runner, interleaved
from alexkit.bench.baselines import eval_split, ffcv_runner, numba_threads, source_images, torchvision_style_runner
from alexkit.bench.prepare import cpu_name, write_photo_like
from alexkit.errors import AlexkitError
from alexkit.paths import usable_cores
from alexkit.pipeline.loader import check_images, default_threads
from alexkit.pipeline.store import MANIFEST
from alexkit.progress import counted
from alexkit.ranges import AT_LEAST_1, Range, check_ranges

@dataclass(frozen=True)
class BenchLoaderConfig:
    store: Path | None = None  # an existing store; None: synthetic inputs in `work`
    source: Path | None = None  # the dataset the store was prepared from, for baseline (a) when a store is given
    work: Path | None = None  # where synthetic inputs are kept (reused next time); None: a temporary folder
    images: int = 1000  # synthetic images to make
    batch_size: int = 128
    epochs: int = 5  # per row, the first one not timed
    threads: int | None = None  # DALI threads, FFCV and DataLoader workers; None: each its default
    prefetch: int = 2
    baselines: bool = True
    memory_epochs: int = 10  # training epochs of alexkit's loader alone, memory read after each

    def __post_init__(self):
        threads = 1 if self.threads is None else self.threads
        check_ranges(*((flag, value, AT_LEAST_1) for flag, value in (
            ("--images", self.images), ("--batch-size", self.batch_size), ("--prefetch", self.prefetch),
            ("--threads", threads), ("--memory-epochs", self.memory_epochs))),
            ("--epochs", self.epochs, Range(2, why="the first is not timed")))  # fmt: skip
        if self.store is None and self.images < self.batch_size:
            raise AlexkitError(f"--images {self.images} is fewer than one --batch-size ({self.batch_size}); make at least one batch")
        if self.store is not None and not (Path(self.store) / MANIFEST).is_file():
            raise AlexkitError(f"--store {self.store} is not a finished store (no manifest.json); run `alexkit prepare` first")
        if self.source is not None and (self.store is None or not Path(self.source).is_dir()):
            what = "is not a folder" if self.store is not None else "goes with --store (without it the sources are made)"
            raise AlexkitError(f"--source {self.source} {what}; pass the dataset the store was prepared from, or leave --source out")

    def check_json(self, path: Path) -> None:
        """Refuse a --json file in a store's folder, as eval does: the --store, a store this bench makes
        in --work, or any other (a folder holding manifest.json and classes.json, or one below it). A
        store's files are prepare's, and its folder may be deleted whole to prepare it again."""
        from alexkit.outputs import shown
        from alexkit.pipeline.store import store_around

        ours = [self.store] if self.store is not None else []
        if self.store is None and self.work is not None:  # the stores made there, maybe not yet
            ours = [Path(self.work) / f"store-{fmt}-{self.images}" for fmt in ("jpg", "raw")]
        store = store_around(Path(path).resolve(), ours)
        if store is not None:
            raise AlexkitError(f"--json {shown(path)} is in the folder of the store {store}; name another file")


def bench_loader(cfg: BenchLoaderConfig) -> dict:
    """Measure, print and return {"settings", "rows": [...], "memory": {...}}.

    The pipelines of one mode run side by side, one epoch each in turn, so that other processes
    on the machine slow them alike.
    """
    from alexkit.pipeline.store import Store, reading

    threads = cfg.threads or default_threads()  # alexkit's
    workers = cfg.threads or usable_cores()  # the baselines'
    with tempfile.TemporaryDirectory(prefix="alexkit-bench-") as tmp, contextlib.ExitStack() as held:

        def read(path: Path) -> Store:  # as train and eval read it: no `prepare --force` moves a new store in meanwhile
            held.enter_context(reading(path))
            return Store(path)

        work = Path(cfg.work or tmp)
        if cfg.store is None:  # folders per count: a store is of every file in its source folder
            src = work / f"src-{cfg.images}"
            write_photo_like(src, cfg.images, workers=workers)  # `alexkit bench prepare`'s images
            stores = {fmt: read(make_store(src, work / f"store-{fmt}-{cfg.images}", fmt, workers)) for fmt in ("jpg", "raw")}
            sources = source_images(stores["jpg"], src, "the made sources")
        else:
            store = read(cfg.store)
            stores = {"jpg" if check_images(store.split("train"), store) else "raw": store}
            sources = source_images(store, cfg.source, f"--source {cfg.source}") if cfg.source and cfg.baselines else {}
        settings = _settings(cfg, threads, workers, stores)
        print(settings["line"], flush=True)
        print(_legend(next(iter(stores.values())).size, cfg), flush=True)
        print(f"memory: {counted(cfg.memory_epochs, 'training epoch')} of alexkit's loader alone on each store", flush=True)
        memory = {fmt: memory_per_epoch(store, cfg, threads) for fmt, store in stores.items()}  # first: a clean process
        rows = []
        for mode in ("train", "center", "tencrop"):
            runners = [alexkit_runner(store, fmt, mode, cfg, threads, fused=f) for f in (True, False) for fmt, store in stores.items()]
            if cfg.baselines and mode != "tencrop":
                runners += [torchvision_style_runner(sources, stores, mode, cfg, workers)] if sources else []
                runners += [ffcv_runner(store, fmt, mode, cfg, workers) for fmt, store in stores.items()]
            print(f"timing {mode}: {counted(len(runners), 'row')}, {counted(cfg.epochs, 'epoch')} each in turn", flush=True)
            rows += [_row(r) for r in interleaved(runners, cfg.epochs)]  # each row printed as its last epoch ends
            del runners  # stops DataLoader workers, frees DALI pipelines
        _print_summary(rows, memory)
    return {"settings": settings, "rows": rows, "memory": memory}


# --- inputs ---


def make_store(src: Path, out: Path, fmt: str, workers: int) -> Path:
    """`alexkit prepare` the sources into a 256 store (JPEG q90 or raw); a finished one is reused. What
    prepare would advise for one already there (--force) the bench has not: remove the folder instead.
    Of prepare's lines only the last is printed (the store ready, or there already): its whole
    transcript, twice, buried the bench's own lines."""
    from alexkit.paths import word
    from alexkit.pipeline.prepare import PrepareConfig, prepare

    said = io.StringIO()
    with contextlib.redirect_stdout(said):  # its warnings stay on stderr
        made = prepare(PrepareConfig(src=src, out=out, format=fmt, quality=90, workers=workers, for_training=False,
                                     remake=f"remove {word(out)} and the bench makes it again", out_flag="--work"))  # fmt: skip
    print(said.getvalue().splitlines()[-1], flush=True)  # `store ready: ...`, or that it was there already
    return made


# --- alexkit's pipeline, as a runner of whole epochs (the baselines' are in baselines.py) ---


def alexkit_runner(store, fmt: str, mode: str, cfg: BenchLoaderConfig, threads: int, fused: bool = True) -> Runner:
    """alexkit's loader on the CPU; fused=False: DALI's own operators only."""
    from alexkit.pipeline.loader import make_loader

    # feed_ahead=False: the runners' epochs take turns, and work fed ahead would run in the next one's.
    loader = make_loader(store, "train" if mode == "train" else eval_split(store), mode=mode, batch_size=cfg.batch_size,
                         num_threads=threads, prefetch=cfg.prefetch, drop_last=mode == "train", seed=0, fused=fused,
                         feed_ahead=False)  # fmt: skip

    def epoch(e: int):
        loader.set_epoch(e)
        return loader

    return Runner("alexkit DALI" if fused else "alexkit DALI ops only", fmt, mode, epoch)


def memory_per_epoch(store, cfg: BenchLoaderConfig, threads: int) -> list[dict]:
    """The process's memory after each of `memory_epochs` training epochs of alexkit's loader alone."""
    from alexkit.pipeline.loader import make_loader

    gc.collect()
    loader = make_loader(store, "train", batch_size=cfg.batch_size, num_threads=threads, prefetch=cfg.prefetch, seed=0)
    after = []
    for e in range(cfg.memory_epochs):
        loader.set_epoch(e)
        for _ in loader:
            pass
        after.append(memory_mib())
    return after


# --- reporting ---


def memory_mib() -> dict:
    """This process's resident memory (MiB): anonymous, file-backed (shared libraries and mapped .beton
    pages), and the peak."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss": fields.get("VmRSS"), "anon": fields.get("RssAnon"), "file": fields.get("RssFile"), "peak": fields.get("VmHWM")}


def _legend(size: int, cfg: BenchLoaderConfig) -> str:
    """What each row does; a baseline not run says why."""
    lines = ["alexkit DALI: decode, crop, flip, PCA lighting (train), per-pixel mean subtraction -> float32 NCHW",
             "alexkit DALI ops only: the same outputs with DALI's own operators, without the one-pass kernels"]  # fmt: skip
    if cfg.baselines:
        a = f"decode the source image, resize, centre {size}, crop, flip, mean subtraction -> float32"
        if cfg.store is not None and cfg.source is None:
            a = "not run: no --source (the dataset the store was prepared from)"
        lines += [f"(a) PIL + DataLoader: {a}", "(b) FFCV Loader: decode + crop (+ flip for train) -> uint8 NHWC; no lighting, no mean, no float"]
    return "\n".join("  " + line for line in lines)


def _row(r: Runner) -> dict:
    timed, cpu_ms = r.rates[1:], statistics.median(r.cpu[1:]) * 1e3
    row = dict(pipeline=r.pipeline, store=r.store, mode=r.mode, images_per_s=statistics.median(timed), min=min(timed),
               max=max(timed), cpu_ms_per_image=cpu_ms)  # fmt: skip
    print(f"  {r.pipeline:22s} {r.store:13s} {r.mode:8s} {row['images_per_s']:8,.0f} images/s ({row['min']:,.0f}-{row['max']:,.0f})"
          f"  {cpu_ms:6.2f} CPU ms/image", flush=True)  # fmt: skip
    return row


def _settings(cfg: BenchLoaderConfig, threads: int, workers: int, stores: dict) -> dict:
    import nvidia.dali

    from alexkit.pipeline.kernel import one_pass_op

    # Compiled here, before any row: the eval rows then run the kernel too, as they would on
    # ImageNet's val (see loader.KERNEL_PAYS_VIEWS).
    started = time.perf_counter()
    compiled = one_pass_op(False) is not None
    seconds = time.perf_counter() - started
    kernel = f"one-pass kernel, compiled in {seconds:.1f} s" if compiled else \
        "no one-pass kernel (no numba, or one that cannot compile it here): all rows run DALI's operators only"  # fmt: skip
    capped = cfg.baselines and compiled and numba_threads() < workers  # FFCV's workers are numba threads
    ffcv = f" ({numba_threads()} for FFCV: numba's threads)" if capped else ""
    n = {fmt: len(s.split("train")) for fmt, s in stores.items()}
    size = {fmt: sum(os.path.getsize(s.path / f"{sp}.beton") for sp in ("train", "val") if s.has_split(sp)) for fmt, s in stores.items()}
    line = (f"alexkit bench loader: {', '.join(f'{fmt} store {n[fmt]} images ({size[fmt] / 2**20:,.0f} MiB)' for fmt in stores)}; "
            f"batch {cfg.batch_size}, {counted(threads, 'DALI thread')}, {counted(workers, 'baseline worker')}{ffcv}, on {os.cpu_count()} CPUs ({cpu_name()}), "
            f"DALI {nvidia.dali.__version__} CPU operators ({kernel}), prefetch {cfg.prefetch}; {cfg.epochs} epochs per row, "
            f"median (min-max) of the last {cfg.epochs - 1}")  # fmt: skip
    return {"line": line, "threads": threads, "workers": workers, "batch_size": cfg.batch_size, "epochs": cfg.epochs, "images": n}


def _print_summary(rows: list[dict], memory: dict) -> None:
    """alexkit vs the baselines on the same inputs: by wall-clock images/s, and by CPU time per image
    (the steadier figure when other processes share the cores)."""
    by = {(r["pipeline"], r["store"], r["mode"]): r for r in rows}
    for fmt in ("jpg", "raw"):
        for mode in ("train", "center", "tencrop"):
            ours = by.get(("alexkit DALI", fmt, mode))
            others = [(name, by.get((pipeline, store, mode))) for name, pipeline, store in
                      [("(a)", "(a) PIL + DataLoader", "source JPEGs"), ("(b)", "(b) FFCV Loader", fmt),
                       ("DALI ops only", "alexkit DALI ops only", fmt)]]  # fmt: skip
            parts = [f"{name} {ours['images_per_s'] / o['images_per_s']:.2f}x by images/s, "
                     f"{o['cpu_ms_per_image'] / ours['cpu_ms_per_image']:.2f}x by CPU time"
                     for name, o in others if ours and o]  # fmt: skip
            if parts:
                print(f"  alexkit {fmt} {mode} vs " + "; ".join(parts))
    print("  memory after each training epoch of alexkit's loader, run alone first (MiB; file-backed = shared libraries and mapped .beton pages):")
    for fmt, per_epoch in memory.items():
        anon = ", ".join(f"{m['anon']:.0f}" for m in per_epoch)
        last = per_epoch[-1]
        print(f"    {fmt} store: anonymous {anon}; file-backed {last['file']:.0f}; process peak RSS so far {last['peak']:.0f}")
