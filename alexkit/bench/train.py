"""Training speed: images/s with synthetic on-device input and with the real pipeline, side by side.

AlexNet is known to outrun its input pipelines (TensorFlow's benchmarks left out 8-GPU AlexNet on
real data for that reason); the gap between the two rows is what the loader costs.
Each row is the median of `repeats` timed windows of `steps` steps (after `warmup` steps), with
the slowest and fastest window beside it. The two rows' windows take turns (synthetic, real, then
real, synthetic, ...), and "vs synthetic" is the median of each real window's ratio to the synthetic
window beside it: a load that comes and goes on a shared machine weighs on both of a pair alike.
Timed one row after the other, such a load could put the real row above the synthetic one.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alexkit.errors import AlexkitError
from alexkit.paths import DEFAULT_STORE
from alexkit.progress import counted
from alexkit.ranges import AT_LEAST_1, Range, check_ranges
from alexkit.recipe import make_optimizer, train_step
from alexkit.train import Auto, TrainConfig, check_crop_fits, fast_cuda, resolve_auto


@dataclass(frozen=True)
class BenchTrainConfig:
    data: Path | None = None  # None: DEFAULT_STORE if it holds a store, else the synthetic row only (224, 1000 classes)
    batch_size: int = 128
    steps: int = 50  # per timed window
    repeats: int = 3
    warmup: int = 10
    device: str = "auto"
    amp: Auto = "auto"
    channels_last: Auto = "auto"
    compile: Auto = "auto"
    width: float = 1.0
    fc_features: int = 4096

    def __post_init__(self):
        check_ranges(("--batch-size", self.batch_size, AT_LEAST_1), ("--steps", self.steps, AT_LEAST_1),
                     ("--repeats", self.repeats, AT_LEAST_1), ("--warmup", self.warmup, Range(0)))
        TrainConfig(device=self.device, amp=self.amp, channels_last=self.channels_last, compile=self.compile,
                    width=self.width, fc_features=self.fc_features)  # fmt: skip  # validates the shared fields


def bench_train(cfg: BenchTrainConfig) -> dict:
    """Print and return {"device", "settings", "rows": [{"input", "images_per_s", "min", "max", "vs_synthetic"}, ...]}."""
    with contextlib.ExitStack() as held:  # the store's reader lock, while the rows run
        return _bench_train(cfg, _usable_store(cfg, held))  # the store: before any timing


def _bench_train(cfg: BenchTrainConfig, store) -> dict:
    from alexkit.model import AlexNet
    from alexkit.model.placement import setup

    dev = setup("none", cfg.device).device
    amp, channels_last, compiled = resolve_auto(cfg.amp, cfg.channels_last, cfg.compile, dev)
    if dev.type == "cuda":
        fast_cuda()
    size, classes = (store.crop, store.num_classes) if store else (224, 1000)

    torch.manual_seed(0)
    model = AlexNet(classes, width=cfg.width, fc_features=cfg.fc_features, input_size=size).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainConfig(), lr=0.01)
    net = torch.compile(model) if compiled else model
    dtype = torch.bfloat16 if amp else torch.float32
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def synthetic():
        images = (torch.randn(cfg.batch_size, 3, size, size, device=dev) * 60).to(dtype=dtype, memory_format=memory_format)
        labels = torch.randint(0, classes, (cfg.batch_size,), device=dev)
        while True:
            yield images, labels

    def real():
        from alexkit.pipeline.loader import make_loader

        loader = make_loader(store, "train", mode="train", batch_size=cfg.batch_size, device=dev, seed=0,
                             dtype=dtype, channels_last=channels_last, drop_last=True)  # fmt: skip
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for images, labels, _ in loader:
                yield images, labels
            epoch += 1

    inputs = [("synthetic on-device", synthetic()), ("real pipeline", real())][: 2 if store else 1]
    rates = _timed_windows(net, optimizer, inputs, cfg, amp, dev)
    rows = [row(name, windows, rates[0]) for (name, _), windows in zip(inputs, rates)]
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    settings = (f"batch {cfg.batch_size}, {size}x{size}, width {cfg.width}, {'bf16 autocast' if amp else 'fp32'}"
                f"{', channels-last' if channels_last else ''}{', compiled' if compiled else ''}; "
                f"median of {cfg.repeats} x {cfg.steps} steps{f' after {cfg.warmup} warm-up' if cfg.warmup else ', no warm-up'}"
                f"{', windows taking turns' if store else ''}")  # fmt: skip
    missing = f"{DEFAULT_STORE} is not a finished store (no manifest.json)" if DEFAULT_STORE.exists() else \
        f"no --data, and no store at {DEFAULT_STORE}"  # fmt: skip
    _print(device_name, settings, rows, None if store else f"{missing}: real pipeline not measured")
    return dict(device=device_name, settings=settings, rows=rows)


def _usable_store(cfg: BenchTrainConfig, held: contextlib.ExitStack):
    """The store of the real-pipeline row, or None (no --data, and no finished store at DEFAULT_STORE:
    the synthetic row alone). A store named by --data that cannot give that row is an error, said
    before any row is timed. The store is read as train reads it, its lock shared in `held`: no
    `prepare --force` moves a new store in meanwhile."""
    from alexkit.pipeline.store import MANIFEST, Store, reading

    if cfg.data is None and not (DEFAULT_STORE / MANIFEST).is_file():
        return None
    held.enter_context(reading(cfg.data or DEFAULT_STORE))
    store = Store(cfg.data or DEFAULT_STORE).check("train")
    check_crop_fits(store)  # as `alexkit train` says it
    train = store.split("train")
    if len(train) < cfg.batch_size:  # the real row drops the last partial batch: it would have none
        raise AlexkitError(f"{train.path} has {len(train)} images, fewer than one --batch-size ({cfg.batch_size}); lower --batch-size")
    return store


def row(name: str, rates: list[float], synthetic: list[float]) -> dict:
    """A table row: the median of the windows' images/s (one slow window, a page fault or a
    compile, moves a mean), with their range, and the median of its windows' ratios to the synthetic
    window timed next to each (a ratio of neighbours leaves out a load that changed meanwhile), taken
    over their logarithms: of an even number, the geometric mean of the middle two, so that 0.2 and 5
    make 1, not 2.6."""
    ratios = [math.log(r / s) for r, s in zip(rates, synthetic)]
    return dict(input=name, images_per_s=statistics.median(rates), min=min(rates), max=max(rates),
                vs_synthetic=math.exp(statistics.median(ratios)))  # fmt: skip


SETTLE = 3  # untimed steps before each window: the loader's batches fed ahead (prefetch 2, + 1) while the other row ran


def _timed_windows(net, optimizer, inputs: list, cfg: BenchTrainConfig, amp: bool, dev: torch.device) -> list[list[float]]:
    """images/s of each timed window, per input ((name, iterator of (images, labels))), the inputs'
    windows taking turns; the clock stops only after the device has finished. A line is printed as
    each input's warm-up starts (where there is one) and as each window ends: at the defaults on a CPU a window lasts
    minutes, and the table comes only at the end."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    net.train()

    def steps(batches, n: int) -> None:
        for _ in range(n):
            train_step(net, optimizer, *next(batches), amp)

    for name, batches in inputs:
        if cfg.warmup:
            print(f"  warm-up: {name}: {counted(cfg.warmup, 'step')}", flush=True)  # the real row's loader starts here
        steps(batches, cfg.warmup)
    rates: list[list[float]] = [[] for _ in inputs]
    for repeat in range(cfg.repeats):
        turn = range(len(inputs)) if repeat % 2 == 0 else reversed(range(len(inputs)))  # neither always goes first
        for i in turn:
            name, batches = inputs[i]
            steps(batches, SETTLE if len(inputs) > 1 else 0)
            sync()
            start = time.perf_counter()
            steps(batches, cfg.steps)
            sync()
            rates[i].append(cfg.steps * cfg.batch_size / (time.perf_counter() - start))
            print(f"  window {repeat + 1}/{cfg.repeats}: {name}: {rates[i][-1]:,.0f} images/s", flush=True)  # after the clock
    return rates


def _print(device_name: str, settings: str, rows: list[dict], note: str | None) -> None:
    print(f"train speed on {device_name}: {settings}")
    print(f"{'input':<22}{'images/s':>10}{'min-max':>18}{'vs synthetic':>14}")
    for row in rows:
        ratio = row["vs_synthetic"]
        spread = f"{row['min']:,.0f}-{row['max']:,.0f}"
        print(f"{row['input']:<22}{row['images_per_s']:>10,.0f}{spread:>18}{ratio:>14.0%}")
    if note:
        print(note)
