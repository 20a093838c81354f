"""Training: the paper's recipe (alexkit/recipe.py) on one device, two columns, or DDP over torchrun processes.

What a run directory holds: alexkit/runs.py; how checkpoints are written and read:
alexkit/checkpoints.py. Resuming is exact at epoch boundaries with the same number of processes: the
loader's order and augmentation depend only on (seed, epoch, rank), and each epoch reseeds dropout
from (seed, rank, epoch).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Collection, Literal, get_args, get_origin, get_type_hints

import torch
import torch.distributed as dist
from torch import nn

from alexkit import ranges
from alexkit.checkpoints import CHECKPOINT_FORMAT, checkpoint_bytes, read_checkpoint, room_warnings, rng_state, save_checkpoint
from alexkit.checkpoints import seed_all, set_rng_state
from alexkit.errors import AlexkitError, alike, out_of_memory, refused, too_large
from alexkit.evaluate import TOP_K
from alexkit.launcher import launched, under_torchrun
from alexkit.model import MIN_INPUT_SIZE, AlexNet
from alexkit.model.alexnet import Init
from alexkit.model.placement import Parallel, Placement, alexnet_state_dict, check_device, idle_gpus_note, place
from alexkit.model.placement import setup, teardown
from alexkit.paths import DEFAULT_STORE, expand_home, word
from alexkit.pipeline.constants import size_for_crop
from alexkit.progress import Progress, Ticks, counted, warn
from alexkit.recipe import PlateauSchedule, base_lr, dropout_seed, make_optimizer, train_step, warmup_factor
from alexkit.ranks import before_joining, lost_peers_said, on_every_rank
from alexkit.ranks import same_checkpoint_everywhere, same_flags_everywhere, same_store_everywhere
from alexkit.resume import check_resumable, flags_given, go_on_from, how_to_go_on, less_memory
from alexkit.resume import resume_ddp_under_torchrun, resumed_config, world_size_of
from alexkit.runs import check_same_store, claim_run, find_checkpoint
from alexkit.runs import run_dir as make_run_dir, write_metrics, write_run_files
from alexkit.stops import held
from alexkit.train_report import Rate, flags, most_waited, stall_note, start_line, summary, timed

Auto = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class TrainConfig:
    data: Path = DEFAULT_STORE  # a store written by `alexkit prepare`
    out: Path | None = None  # run directory; None: DEFAULT_RUNS/<YYYYmmdd-HHMMSS>
    resume: Path | None = None  # a run directory (its last.pt) or a checkpoint file
    epochs: int = 90
    batch_size: int = 128  # global: split evenly over the DDP processes
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_biases: bool = False  # the authors did not decay biases; torchvision does
    lr_scaling: Literal["none", "linear"] = "none"  # linear: lr * batch_size / 128
    warmup_epochs: int = 0  # lr ramps up linearly per step over these epochs
    patience: int = 5  # epochs without a better val top-1 error before lr / 10
    max_lr_drops: int = 3  # the paper's three; the next plateau ends training
    seed: int = 0
    device: str = "auto"  # auto (CUDA if present), cpu, cuda, cuda:N
    parallel: Parallel = "none"
    amp: Auto = "auto"  # bf16 autocast; auto: on for CUDA with bf16 tensor cores (resolve_auto), off on CPU
    channels_last: Auto = "auto"  # auto: on for CUDA
    compile: Auto = "auto"  # torch.compile; auto: on for CUDA
    width: float = 1.0  # network size (see AlexNet); the defaults are the paper's net
    fc_features: int = 4096
    dropout: float = 0.5
    init: Init = "paper"
    progress: Literal["auto", "rich", "plain", "none"] = "auto"

    def __post_init__(self):
        for name in ("data", "out", "resume"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, expand_home(getattr(self, name)))
        object.__setattr__(self, "data", self.data.resolve())  # so that eval finds it from anywhere
        ranges.check_ranges(*((f"--{name.replace('_', '-')}", getattr(self, name), allowed)
                               for name, allowed in ranges.TRAIN.items()))  # fmt: skip
        if self.lr_scaling == "linear" and not base_lr(self) < math.inf:
            raise AlexkitError(f"--lr {self.lr} scaled linearly to --batch-size {self.batch_size} is not a finite number; "
                               "pass a smaller --lr")  # fmt: skip
        for name, allowed in _choices().items():
            if getattr(self, name) not in allowed:
                raise AlexkitError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        check_device(self.device)
        if self.parallel in ("columns", "ddp-columns") and self.fc_features % 2:
            raise AlexkitError(f"--fc-features {self.fc_features} cannot split fc6 and fc7 into --parallel {self.parallel}'s two "
                               f"columns; pass an even number ({self.fc_features - 1} or {self.fc_features + 1})")  # fmt: skip


@functools.cache
def _choices() -> dict[str, tuple[str, ...]]:
    """TrainConfig's modes and their allowed values, from the Literal types of its fields."""
    hints = get_type_hints(TrainConfig)
    return {name: get_args(hint) for name, hint in hints.items() if get_origin(hint) is Literal}


def compile_quietly(net: nn.Module) -> nn.Module:
    """torch.compile(net), without dynamo's warning, from every process, that it does not trace DDP's
    profiler label (record_function) in forward: it concerns profiling only."""
    logging.getLogger("torch._dynamo.variables.ctx_manager").addFilter(_not_profiler_label)  # added once
    return torch.compile(net)


def _not_profiler_label(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Profiler record function")


def fast_cuda() -> None:
    """cuDNN picks the fastest kernels for AlexNet's fixed shapes; fp32 matmuls (outside autocast) use TF32."""
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")


def train(cfg: TrainConfig, given: Collection[str] | None = None) -> Path:
    """Train AlexNet as `cfg` says; returns the run directory.

    Resuming (cfg.resume), the run's own config holds except for the fields named in `given` (the
    flags given on the command line; None: the fields of cfg that differ from TrainConfig's defaults).
    """
    from alexkit.pipeline.store import reading

    found, error = before_joining(lambda: _resume_from(cfg, given))
    ckpt, cfg = found if error is None else (None, cfg)
    placement = setup(cfg.parallel if error is None else "ddp", cfg.device, error)
    try:
        same_flags_everywhere(cfg, own=("device", "progress", "data", "out", "resume"))  # those: per process, or checked below
        with contextlib.ExitStack() as store_held:

            def open_store():
                store_held.enter_context(reading(cfg.data))  # no `prepare --force` replaces the store while it trains
                return _usable_store(cfg)

            store = on_every_rank(open_store)
            same_store_everywhere(store)
            run_dir = make_run_dir(cfg.resume, cfg.out, placement.is_main)
            if ckpt is not None:
                same_checkpoint_everywhere(ckpt, ckpt["path"], "--resume")
                on_every_rank(lambda: check_same_store(run_dir, store, ckpt["path"], ckpt["model_args"]))
            with claim_run(run_dir, placement.is_main, ckpt):
                _train_or_say_how_to_resume(cfg, ckpt, placement, store, run_dir)
    except BaseException:
        teardown(wait=False)
        raise
    teardown()
    return run_dir


def _resume_from(cfg: TrainConfig, given: Collection[str] | None) -> tuple[dict | None, TrainConfig]:
    """(the checkpoint to resume, with its path and stat; the config to train with)."""
    ckpt = None
    if cfg.resume:
        ckpt_path = find_checkpoint(cfg.resume, prefer=("last.pt",))
        check_resumable(ckpt_path)
        stat = ckpt_path.stat()  # before reading: claim_run checks it is still the run's latest
        ckpt = dict(read_checkpoint(ckpt_path), path=ckpt_path, stat=(stat.st_size, stat.st_mtime_ns))
        named = "parallel" in flags_given(cfg, given)
        asked, cfg = cfg, resumed_config(cfg, ckpt["config"], given, ckpt_path.parent)
        if cfg.parallel.startswith("ddp") and not named and not under_torchrun():  # not setup's "--parallel ddp needs torchrun"
            raise resume_ddp_under_torchrun(cfg.parallel, ckpt_path.parent, world_size_of(ckpt, ckpt_path.parent), asked, given)
    world = launched()
    if not cfg.parallel.startswith("ddp") and world > 1:
        raise AlexkitError(f"--parallel {cfg.parallel} under torchrun with {world} processes would run that many "
                           "copies of one training; pass --parallel ddp (or ddp-columns)")  # fmt: skip
    _check_batch_splits(cfg.batch_size, world, resumed=ckpt is not None)
    return ckpt, cfg


def _check_batch_splits(batch: int, world: int, resumed: bool) -> None:
    """Refuse a global batch that `world` processes cannot share evenly: checked before they join, so
    that it is said at once (not after the store is opened and the run folder claimed)."""
    if batch % world == 0:
        return
    counts = [n for n in range(1, min(batch, 1024) + 1) if batch % n == 0]
    listed = ", ".join(map(str, counts[:6])) + (", ..." if len(counts) > 6 else "")
    if resumed:
        raise alike(AlexkitError(f"the run's global batch, --batch-size {batch}, does not split evenly over {world} "
                                 f"processes (a resumed run keeps its batch); resume it on a number of processes that "
                                 f"divides {batch} ({listed})"))  # fmt: skip
    near = " or ".join(str(b) for b in (batch - batch % world, batch - batch % world + world) if b > 0)
    raise alike(AlexkitError(f"--batch-size {batch} (the global batch) does not split evenly over {world} processes; pass "
                             f"a --batch-size divisible by {world} ({near}), or run a number of processes that divides "
                             f"{batch} ({listed})"))  # fmt: skip


def _train_or_say_how_to_resume(cfg: TrainConfig, ckpt: dict | None, placement: Placement, store, run_dir: Path) -> None:
    """_train, with a failure the run survives (its saved epochs are whole) said as how to go on."""
    def then() -> str:
        return how_to_go_on(cfg.parallel, run_dir)

    try:
        with lost_peers_said(then):
            _train(cfg, ckpt, placement, store, run_dir)
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, SIGTERM, or the reader of stdout's pipe gone: say how to go on
        if placement.is_main and go_on_from(run_dir) is not None:
            print(f"note: the run keeps its last whole epoch; {then()}", file=sys.stderr)
        elif placement.is_main:  # a folder without config.json goes with this run (claim_run)
            reuse = f" (--out {word(run_dir)} reuses this run's folder)" if (run_dir / "config.json").is_file() else ""
            print(f"note: no epoch had ended, so there is nothing to continue; run the same command again{reuse}",
                  file=sys.stderr)  # fmt: skip
        raise
    except OSError as exc:  # a full disk, say
        if not exc.filename:  # not about a file (a socket, say)
            raise
        raise refused(exc, f"{too_large(exc) or 'fix that (free space, permissions)'}, then {then()}") from exc
    except torch.OutOfMemoryError as exc:  # another job on the GPU, or a --batch-size too large for it
        at = f"{counted(cfg.batch_size // placement.world_size, 'image')} per process on {placement.device}"
        raise out_of_memory(exc, at, less_memory(cfg, run_dir, then())) from exc


def _usable_store(cfg: TrainConfig):
    from alexkit.pipeline.store import Store, in_store

    if cfg.resume is not None and not Path(cfg.data).is_dir():
        raise AlexkitError(f"store {cfg.data} does not exist; pass --data with where the store that {cfg.resume} was "
                           "trained on is now")  # fmt: skip
    store = Store(cfg.data).check("train", "val")  # before any file of the run is written
    check_crop_fits(store)
    if cfg.out is not None and in_store(store.path, cfg.out):
        raise AlexkitError(f"--out {cfg.out} is in the folder of the store {store.path}, whose files are `alexkit prepare`'s (a --force "
                           "rebuild renames new ones over them, and a store may be deleted whole to prepare it again): pick a folder "
                           "outside it")  # fmt: skip
    return store


def check_crop_fits(store) -> None:
    """Refuse a store whose crops are smaller than AlexNet's smallest input (prepare warns of them)."""
    if store.crop < MIN_INPUT_SIZE:
        raise AlexkitError(f"store {store.path} holds {store.size}px images ({store.crop}px crops), too small for AlexNet; "
                           f"prepare one with --size {size_for_crop(MIN_INPUT_SIZE)} or more")  # fmt: skip


def _train(cfg: TrainConfig, ckpt: dict | None, placement: Placement, store, run_dir: Path) -> None:
    from alexkit.pipeline.loader import make_loader

    world, dev = placement.world_size, placement.device  # the batch splits over them (_check_batch_splits)
    on_cuda = dev.type == "cuda"
    amp, channels_last, compiled = resolve_auto(cfg.amp, cfg.channels_last, cfg.compile, dev)
    first_lr = base_lr(cfg)
    if on_cuda:
        fast_cuda()

    seed_all(cfg.seed)  # the same initial weights in every process
    model = AlexNet(store.num_classes, width=cfg.width, fc_features=cfg.fc_features, input_size=store.crop,
                    dropout=cfg.dropout, init=cfg.init)  # fmt: skip
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    net = place(model, placement, channels_last)
    optimizer = make_optimizer(net, cfg, first_lr)
    schedule = PlateauSchedule(first_lr, cfg.patience, cfg.max_lr_drops)
    metrics: list[dict] = []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        metrics = ckpt["metrics"]
        set_rng_state(ckpt["rng"])
    step_net = compile_quietly(net) if compiled else net

    per_rank = cfg.batch_size // world
    common = dict(device=dev, rank=placement.rank, world_size=world, seed=cfg.seed,
                  dtype=torch.bfloat16 if amp else torch.float32, channels_last=channels_last)  # fmt: skip
    train_loader = make_loader(store, "train", mode="train", batch_size=per_rank, drop_last=True, **common)
    val_loader = make_loader(store, "val", mode="center", batch_size=per_rank, drop_last=False, **common)
    mode = cfg.progress if placement.is_main else "none"  # rank 0 alone talks to the terminal; "none": no bars

    def say(text: str) -> None:
        if placement.is_main:
            print(text, flush=True)

    if schedule.stopped or len(metrics) >= cfg.epochs:  # a finished run: its files stay as they are...
        # ...except metrics.jsonl where a kill between the last checkpoint and its write left it behind
        if placement.is_main and write_metrics(run_dir, metrics, only_if_different=True):
            read = ckpt["path"].name if ckpt is not None else "last.pt"  # --resume RUN/best.pt: that one
            say(f"note: {run_dir}/metrics.jsonl did not match {read} (an epoch behind, or damaged); rewritten from it")
        say(f"{run_dir} already ended after its last lr drop ({counted(len(metrics), 'epoch')})" if schedule.stopped else
            f"{run_dir} already has {counted(len(metrics), 'epoch')}; pass a larger --epochs to continue it")  # fmt: skip
        return
    val_n = len(val_loader.reader)  # the whole split, all processes together
    say(start_line(run_dir, model, placement, flags(amp, channels_last, compiled), (len(train_loader.reader), val_n),
                    cfg, schedule.lr, len(metrics)))  # fmt: skip
    if placement.is_main:  # the process that saves: said now, not after an epoch a full disk would lose
        copies = 2 if not metrics and cfg.epochs == 1 else 3  # one epoch from nothing: best.pt, then last.pt beside it
        for line in room_warnings(run_dir, checkpoint_bytes(model, cfg.momentum > 0), copies):
            warn(line)
    before = world_size_of(ckpt, run_dir) if ckpt is not None else world
    idle = idle_gpus_note(placement, torch.cuda.device_count()) if on_cuda else None
    if idle is not None:
        say(idle)
    if before not in (None, world):  # None: a run too old to say
        say(f"note: {run_dir} ran on {before} process{'es' * (before != 1)} so far and goes on with {world}: it will "
            "not equal a run on one number of processes throughout (augmentation and dropout draw per process)")  # fmt: skip
    if placement.is_main:
        resolved = dict(amp=amp, channels_last=channels_last, compile=compiled, world_size=world, base_lr=first_lr,
                        devices=[str(d) for d in placement.devices])  # fmt: skip
        write_run_files(run_dir, dict(config=_config_dict(cfg), resolved=resolved, model_args=model.args), store, metrics)

    for epoch in range(len(metrics), cfg.epochs):
        if schedule.stopped:
            break
        trained, clock, started = _train_epoch(step_net, optimizer, schedule, train_loader, cfg, placement, epoch, amp, mode)
        with Ticks(mode=mode) as ticks:  # shown once validation lasts 2 s: ImageNet's on a CPU, not the demo's
            def validated(n: int) -> None:  # n: this process's images; all processes go at about the same pace
                ticks(f"validation {epoch + 1}/{cfg.epochs}", min(n * world, val_n), val_n, "images")

            val_top1, val_top5 = validate(step_net, val_loader, amp, dev, validated)
        if epoch + 1 > cfg.warmup_epochs:  # a warm-up epoch is no plateau: its lr is still rising
            schedule.step(val_top1)
        row = dict(epoch=epoch + 1, lr=trained["lr"], train_loss=trained["train_loss"], train_top1_err=trained["train_top1_err"],
                   val_top1_err=val_top1, val_top5_err=val_top5, images_per_s=trained["images_per_s"],
                   data_wait=trained["data_wait"], seconds=time.perf_counter() - started)  # fmt: skip
        metrics.append(row)
        if placement.is_main:  # saved, then said: a summary that cannot be printed (a closed pipe) loses no epoch
            is_best = val_top1 <= min(m["val_top1_err"] for m in metrics)
            with held(signal.SIGINT, signal.SIGTERM):  # the checkpoint and its metrics line, never one without the other
                save_checkpoint(run_dir, dict(
                    format_version=CHECKPOINT_FORMAT, model=alexnet_state_dict(net), model_args=dict(model.args),
                    optimizer=optimizer.state_dict(), scheduler=schedule.state_dict(), epoch=epoch + 1,
                    config=_config_dict(cfg), metrics=metrics, rng=rng_state(), world_size=world), is_best)  # fmt: skip
                write_metrics(run_dir, metrics)
            say(summary(row, epochs_left=0 if schedule.stopped else cfg.epochs - epoch - 1, classes=model.args["num_classes"],
                        start_up=clock.start_up(started)))  # fmt: skip
            stalled = stall_note(row["train_loss"], model.args["num_classes"], cfg.init) if epoch == 0 else None
            if stalled is not None:
                say(stalled)
    if schedule.stopped and placement.is_main:
        say(f"stopped: val top-1 error stopped improving after {schedule.drops} lr drops")


def _train_epoch(step_net, optimizer, schedule: PlateauSchedule, train_loader, cfg: TrainConfig, placement: Placement,
                 epoch: int, amp: bool, mode: str) -> tuple[dict, Rate, float]:
    """One epoch's training steps: ({lr (the last step's), train_loss, train_top1_err, images_per_s,
    data_wait}, all processes together; the epoch's Rate; when it started (time.perf_counter))."""
    world, dev, per_rank = placement.world_size, placement.device, cfg.batch_size // placement.world_size
    steps = len(train_loader)
    train_loader.set_epoch(epoch)
    torch.manual_seed(dropout_seed(cfg.seed, epoch, placement.rank))
    step_net.train()
    sums, seen = torch.zeros(2, dtype=torch.float64, device=dev), 0  # loss * n and correct top-1; n
    started = time.perf_counter()
    clock = Rate(per_rank * world)  # after the first step: not the start-up (graph build, compile)
    with Progress(f"epoch {epoch + 1}/{cfg.epochs}", steps, per_done=per_rank * world, fields=("loss", "lr"), mode=mode) as bar:
        for step, ((images, labels, _), waited) in enumerate(timed(train_loader)):
            lr = schedule.lr * warmup_factor(epoch, step, steps, cfg.warmup_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, logits = train_step(step_net, optimizer, images, labels, amp)
            seen += labels.numel()
            sums += torch.stack([loss.double() * labels.numel(), (logits.argmax(1) == labels).sum().double()])
            shown = dict(lr=f"{lr:.2g}")
            if step % 10 == 0 or step + 1 == steps:  # .item() waits for the GPU: not every step
                shown["loss"] = f"{loss.item():.3f}"
            bar.update(step + 1, rate=clock.step(waited), **shown)
    trained = time.perf_counter()
    data_wait = most_waited(clock, trained - started, dev)
    totals = torch.cat([sums, torch.tensor([seen], dtype=torch.float64, device=dev)])
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss_sum, correct, seen_all = totals.tolist()
    train_loss, train_err = loss_sum / seen_all, error_rate(correct, seen_all)
    if not math.isfinite(train_loss):
        if epoch == 0:
            raise AlexkitError(f"the training loss became {train_loss} in epoch 1; lower --lr or use --init sturdy")
        raise AlexkitError(f"the training loss became {train_loss} in epoch {epoch + 1}; last.pt keeps epoch {epoch}, "
                           "but a run goes on only with its own --lr: train anew with a lower --lr")  # fmt: skip
    return dict(lr=lr, train_loss=train_loss, train_top1_err=train_err, images_per_s=clock.rate() or seen_all / (trained - started),
                data_wait=data_wait), clock, started  # fmt: skip


def error_rate(correct: float, n: float) -> float:
    """Misses / n, exactly as eval computes it (1 - correct / n carries float noise: 3 of 63 missed
    would be 0.04761904761904767, not 3/63)."""
    return (n - correct) / n


@torch.no_grad()
def validate(net: nn.Module, loader, amp: bool, device: torch.device,
             seen: Callable[[int], None] | None = None) -> tuple[float, float]:  # fmt: skip
    """Top-1 and top-5 error (fractions) over the loader's split, every image counted once across ranks.
    `seen(n)` after each batch, with the images this process has validated so far."""
    net.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct top-1, correct top-5, images
    done = 0  # counted on the host: no wait for the GPU
    if seen is not None:
        seen(0)  # the start, so that a rate shown later covers the first batch's time too
    for images, labels, _ in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(images)  # (N, num_classes)
        hits = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices == labels[:, None]  # (N, min(5, K))
        counts += torch.stack([hits[:, 0].sum(), hits.any(1).sum(), torch.tensor(labels.numel(), device=device)])
        done += labels.numel()
        if seen is not None:
            seen(done)
    if dist.is_initialized():
        dist.all_reduce(counts)
    top1, top5, n = counts.tolist()
    if n == 0:
        raise AlexkitError("the validation split is empty; run `alexkit prepare` on a source with validation images")
    return error_rate(top1, n), error_rate(top5, n)


def resolve_auto(amp: Auto, channels_last: Auto, compile: Auto, device: torch.device) -> tuple[bool, bool, bool]:
    """--amp, --channels-last, --compile: "auto" means on for CUDA and off on the CPU, except that
    bf16 autocast is on only for GPUs with bf16 tensor cores (compute capability 8.0 on: A100, RTX 30xx
    and later). Older ones would emulate bf16 and gain nothing; they train in fp32 unless --amp on."""
    on_cuda = device.type == "cuda"
    bf16 = on_cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    return tuple(on if v == "auto" else v == "on" for v, on in ((amp, bf16), (channels_last, on_cuda), (compile, on_cuda)))


def _config_dict(cfg: TrainConfig) -> dict:
    """The config as config.json and checkpoints keep it: plain values, paths as strings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
