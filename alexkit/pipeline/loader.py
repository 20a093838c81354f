"""Store -> DALI -> torch: which samples each rank reads, in which order, and how they get there.

    loader = make_loader(store, "train", mode="train", batch_size=128, device=device,
                         rank=rank, world_size=world_size, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels, indices in loader:   # (N, 3, C, C) float on device, (N,) int64, (N,) int64
            ...

How the bytes travel. A .beton (FFCV's format) holds each sample's stored bytes (JPEG, or raw
H*W*3 pixels) contiguously inside one page. BetonReader maps the file with np.memmap, so a sample
is a slice `mm[ptr:ptr + size]`: no read call, no copy, no decode, about 1 us, served from the OS
page cache (shared by every process on the machine that reads the same file). A batch of those
slices goes to DALI's external_source, which reads them in place (no_copy; the graph keeps each
batch referenced until DALI is done with it), and DALI decodes them: on the GPU with nvJPEG and the
hardware JPEG engines ("mixed"), or with libjpeg-turbo in its CPU threads.
Why not FFCV's own loader: it decodes every JPEG on the CPU (its numba-compiled pipeline calls
libjpeg-turbo) before anything else sees the image, and its BytesDecoder, the only way to get
the encoded bytes out, pads them to the largest sample and drops the lengths. We want the encoded
bytes, so that the GPU can decode them and the same DALI graph serves the CPU and the GPU.
Memory: pages of the memmap that have been read count in the process's RSS as file-backed,
shared, reclaimable page cache (at most the .beton's size). Anonymous memory holds DALI's
buffers for the batches in flight (prefetch + 1) and levels off after the first epochs
(`alexkit bench loader` prints both, epoch by epoch).

Sharding (torchrun): by the global RANK and WORLD_SIZE, never by LOCAL_RANK.
- train: all ranks draw the same permutation of the split from (seed, epoch); rank r takes every
  world_size-th sample of it. With drop_last (the default for train) the permutation is first cut
  to a whole number of global batches (world_size * batch_size), so every rank runs the same
  number of full steps (what DDP needs) and fewer than world_size * batch_size samples, different
  ones each epoch, sit out. Without drop_last every sample is used once, but ranks may differ by
  one sample and one batch, and the last batch is partial: fine for one process, not for DDP.
- center / tencrop: the split in stored order, rank r taking positions r, r + W, r + 2W, ...;
  nothing dropped, nothing padded: every image is seen exactly once across ranks, and a rank may
  get one batch fewer than another (an evaluator must not run a collective per batch).
Augmentation randomness: crop corners, flips and lighting alphas come from a NumPy Generator
seeded by (seed, epoch, rank), drawn batch after batch; so an epoch is reproducible, and differs
from the next epoch. set_epoch works like DistributedSampler's: iterate again without it and the
epoch repeats exactly.
Epoch boundaries (train): the next epoch's batches are fed right behind this epoch's, so the pipeline
never empties between epochs; if the caller then sets any epoch but the next, the batches fed ahead
are dropped and that epoch starts afresh (same batches either way).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

from alexkit.errors import AlexkitError
from alexkit.paths import usable_cores
from alexkit.pipeline.augment import lighting_offsets, train_params
from alexkit.pipeline.beton import MODE_JPG, MODE_RAW
from alexkit.pipeline.graphs import MODES, GraphConfig, Mode, build_graph, eval_inputs, train_inputs
from alexkit.pipeline.kernel import is_compiled
from alexkit.pipeline.store import Store, rewrite
from alexkit.launcher import from_launcher

STREAM_ORDER, STREAM_AUGMENT = 0, 1  # independent random streams drawn from (seed, epoch, ...)
# The one-pass CPU kernel (kernel.py) compiles in about 2.2 s once per process and saves 0.05-0.15
# CPU ms per 224 view (`alexkit bench loader`, 2 cores). Train always runs it: it pays back within
# about 30,000 images (an ImageNet epoch is 1.28 million). An evaluation pass runs it from this
# many views in the process (ImageNet's val in one process: centre and ten views), or where the
# process has compiled it already.
KERNEL_PAYS_VIEWS = 40_000
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LoaderConfig:
    """Which split, which graph, and how it is sharded and run.

    drop_last: None means True for train and False for center / tencrop; evaluation modes never
      drop (every image once across ranks), so drop_last=True with them is an error.
    num_threads: DALI's CPU threads; None: default_threads().
    fused: on the CPU each graph's float work is one Numba-compiled pass (see graphs.py) where it
      pays for its compilation (KERNEL_PAYS_VIEWS); False: DALI's operators only.
    feed_ahead: train only: feed the next epoch's batches behind this one's (see the module
      docstring); False ends each epoch with the pipeline empty (what a benchmark that times
      epochs of several loaders in turn needs, so that none works during another's epoch).
    """

    split: str
    mode: Mode = "train"
    batch_size: int = 128
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    drop_last: bool | None = None
    decoder: Literal["auto", "cpu", "mixed"] = "auto"
    channels_last: bool = False
    num_threads: int | None = None
    prefetch: int = 2
    fused: bool = True
    feed_ahead: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise AlexkitError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.decoder not in ("auto", "cpu", "mixed"):
            raise AlexkitError(f"decoder {self.decoder!r} is not one of auto, cpu, mixed")
        if self.batch_size < 1 or self.prefetch < 1 or (self.num_threads is not None and self.num_threads < 1):
            raise AlexkitError(f"batch_size ({self.batch_size}), prefetch ({self.prefetch}) and num_threads "
                               f"({self.num_threads}) must be at least 1")  # fmt: skip
        if not 0 <= self.rank < self.world_size:
            raise AlexkitError(f"rank {self.rank} is not in [0, world_size={self.world_size}); "
                               f"pass the global RANK and WORLD_SIZE that torchrun sets")  # fmt: skip
        if self.seed < 0:
            raise AlexkitError(f"seed must be >= 0, got {self.seed}")
        if self.mode != "train" and self.drop_last:
            raise AlexkitError(f"drop_last=True with mode {self.mode!r}: evaluation must see every image once; leave drop_last unset")

    @property
    def shuffle(self) -> bool:
        return self.mode == "train"

    @property
    def drops_last(self) -> bool:
        return self.shuffle if self.drop_last is None else self.drop_last


def epoch_rng(seed: int, epoch: int, stream: int, rank: int = 0) -> np.random.Generator:
    """An independent Generator for one (seed, epoch, stream, rank)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, stream, rank]))


def shard_positions(n: int, cfg: LoaderConfig, epoch: int) -> np.ndarray:
    """The positions in the split that rank cfg.rank reads in this epoch, in reading order."""
    W, B = cfg.world_size, cfg.batch_size
    order = epoch_rng(cfg.seed, epoch, STREAM_ORDER).permutation(n) if cfg.shuffle else np.arange(n)
    if cfg.drops_last:
        order = order[: n // (W * B) * (W * B)]  # whole global batches only
    return np.ascontiguousarray(order[cfg.rank :: W])


def shard_size(n: int, cfg: LoaderConfig) -> int:
    """len(shard_positions(n, cfg, epoch)), for any epoch, without drawing a permutation."""
    W, B = cfg.world_size, cfg.batch_size
    m = n // (W * B) * (W * B) if cfg.drops_last else n
    return len(range(cfg.rank, m, W))


def default_threads() -> int:
    """DALI CPU threads for this process: its share of the cores among the node's ranks, plus one,
    so that a core never idles while a thread waits (on the executor handing over between
    operators, on a page of the store). JPEG train on 2 cores, `alexkit bench loader --threads 2`
    against its default 3: 3,954 -> 4,423 and 4,369 images/s."""
    cores = usable_cores()
    return max(1, cores // from_launcher("LOCAL_WORLD_SIZE", 1, least=1)) + 1


class Loader:
    """Batches of (images, labels, indices) from one split of a store; see the module docstring."""

    def __init__(self, store: Store, cfg: LoaderConfig, *, device: torch.device | str, dtype: torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise AlexkitError(f"dtype {dtype} is not one of torch.{', torch.'.join(DTYPES)}")
        self.store, self.cfg = store, cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.reader = store.split(cfg.split)
        self.epoch = 0
        self.encoded = check_images(self.reader, store)
        self.decoder = _pick_decoder(cfg.decoder, self.encoded, self.device)
        self._pipe = None
        self._feed = _Feed()
        self._open = False  # the pipeline has batches in flight
        self._ahead: int | None = None  # the epoch whose batches the pipeline is already working on
        self._run = 0  # counts __iter__ calls, so a stale iterator can tell it was superseded
        if cfg.shuffle and cfg.drops_last and len(self) == 0:
            raise AlexkitError(f"{self.reader.path} has {len(self.reader)} images, fewer than one batch of {cfg.batch_size} per rank "
                               f"for {cfg.world_size} rank(s); lower the batch size")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next iteration: its order (train) and augmentation randomness."""
        if epoch < 0:
            raise AlexkitError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def positions(self, epoch: int | None = None) -> np.ndarray:
        """This rank's positions in the split for an epoch (default: the current one), in order."""
        return shard_positions(len(self.reader), self.cfg, self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        n, B = shard_size(len(self.reader), self.cfg), self.cfg.batch_size  # not a permutation of the split per call
        return n // B if self.cfg.drops_last else -(-n // B)

    def __iter__(self):
        epoch = self.epoch  # a set_epoch during the pass is for the next pass
        batches = self._batches(epoch)
        if not batches:
            return
        pipe = self._pipeline()
        if self._ahead != epoch:  # the pipeline is not already working on this epoch's batches
            self._finish()  # a previous iteration left early, or fed another epoch: drop its batches in flight
            self._feed.queue.append(self._inputs(epoch))
        self._ahead = None
        ahead = self.cfg.mode == "train" and self.cfg.feed_ahead
        if ahead:
            # Cross-epoch feed: the next epoch's batches follow this one's, so the pipeline keeps
            # working while the last batches are trained on (and during validation), and the next
            # epoch starts with batches ready. A caller that then sets another epoch costs a drain.
            self._feed.queue.append(self._inputs(epoch + 1))
        self._run += 1
        run = self._run
        self._open = True
        for _ in batches:
            if run != self._run:
                raise RuntimeError("this loader was iterated again while an older iteration was still being consumed")
            try:
                views, index = pipe.run()
            except RuntimeError as exc:
                failed = self._failed(exc, epoch)
                if failed is exc:
                    raise
                raise failed from exc
            yield self._to_torch(views, index)
        if run == self._run:  # a newer iteration has taken the pipeline over: its batches are not ours to drain
            if ahead and not self._feed.ran_dry:
                self._ahead = epoch + 1
            else:  # evaluation; or DALI read past the next epoch too (prefetch > its batches) and stopped
                self._finish()

    def _failed(self, exc: RuntimeError, epoch: int) -> Exception:
        """DALI's error for a sample it could not process (a damaged JPEG in the store, say) as one
        line naming the file; other errors as they are."""
        text = str(exc)
        if "Critical error in pipeline" not in text:
            return exc
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        after = lines.index("encountered:") + 1 if "encountered:" in lines else 0
        reason = next((l for l in lines[after:] if not l.startswith(("Critical error", "Current pipeline"))), lines[0])
        fix = (f"the store is damaged: {rewrite(self.store.path)}"
               if "fn.decoders." in text and "memory" not in text.lower() else "run again with --debug for DALI's whole message")  # fmt: skip
        return AlexkitError(f"{self.reader.path}: DALI could not process a batch of epoch {epoch + 1} ({reason}); {fix}")

    def _batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's positions of one epoch, cut into batches."""
        positions, B = self.positions(epoch), self.cfg.batch_size
        return [positions[i : i + B] for i in range(0, len(self) * B, B)]

    def _inputs(self, epoch: int) -> Iterator[tuple]:
        """The graph inputs of one epoch of this rank, batch after batch (lazily)."""
        rng = epoch_rng(self.cfg.seed, epoch, STREAM_AUGMENT, self.cfg.rank) if self.cfg.mode == "train" else None
        return graph_inputs(self.reader, self._batches(epoch), self.store, self.encoded, rng)

    def _finish(self) -> None:
        """End the pipeline's epoch: stop feeding, collect what is in flight, reset for the next one."""
        self._ahead = None
        if not self._open:
            return
        self._feed.queue.clear()
        while True:
            try:
                self._pipe.run()
            except StopIteration:
                break
        self._pipe.reset()
        self._feed.ran_dry = False
        self._open = False

    def _pipeline(self):
        if self._pipe is None:
            cfg = self.cfg
            graph = GraphConfig(
                mode=cfg.mode, size=self.store.size, crop=self.store.crop, encoded=self.encoded, decoder=self.decoder,
                device_id=self._device_id(), channels_last=cfg.channels_last, batch_size=cfg.batch_size,
                num_threads=cfg.num_threads or default_threads(), prefetch=cfg.prefetch, fused=self._fused(),
            )
            self._pipe = build_graph(graph, self.store.stats.mean_image, self._feed, no_copy=True)
            self._pipe.build()
        return self._pipe

    def _fused(self) -> bool:
        """Whether the CPU graph runs the one-pass kernel: see KERNEL_PAYS_VIEWS."""
        cfg = self.cfg
        views = len(self.positions()) * (10 if cfg.mode == "tencrop" else 1)
        return cfg.fused and (cfg.mode == "train" or views >= KERNEL_PAYS_VIEWS or is_compiled(cfg.channels_last))

    def _device_id(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _to_torch(self, views, index):
        """DALI outputs -> torch without copies: DLPack hands over DALI's buffers (kept alive by
        the executor's reference counting), on the GPU as on the CPU. On the GPU, torch's stream
        waits for DALI's work on the batch (DALI's __dlpack__ is given torch's stream), and a
        released buffer goes back to DALI only after a device-wide synchronise (DALI's DLPack
        deleter), so kernels torch has queued but not run never see it overwritten."""
        with torch.device(self.device):
            images = torch.from_dlpack(views.as_tensor())  # (N, 3, C, C) float32 or (N, C, C, 3); tencrop (N, 10, ...)
        indices = torch.from_dlpack(index.as_tensor()).clone()  # (N,) int64, CPU; ours, not the fed array
        if self.cfg.channels_last:
            images = images.movedim(-1, -3)  # a view: NCHW shape, channels-last strides
        if images.dtype != self.dtype:
            images = images.to(self.dtype)  # keeps the channels-last strides
        labels = torch.from_numpy(self.reader.labels[indices.numpy()]).to(self.device, non_blocking=True)
        return images, labels, indices


def graph_inputs(reader, batches: list[np.ndarray], store: Store, encoded: bool, rng: np.random.Generator | None) -> Iterator[tuple]:
    """Graph inputs batch by batch: the stored bytes sliced from the memmap, and for train (rng
    given) the crop corners, flips and lighting offsets drawn for them, batch after batch."""
    S, C, stats = store.size, store.crop, store.stats
    for idx in batches:
        data = [reader.raw_bytes(i) if encoded else reader.raw_bytes(i).reshape(S, S, 3) for i in idx]
        if rng is None:
            yield eval_inputs(data, idx)
            continue
        x, y, flip, alpha = train_params(rng, len(idx), S, C)
        yield train_inputs(data, idx, x, y, flip, lighting_offsets(alpha, stats.eigval, stats.eigvec))


class _Feed:
    """DALI's external_source callback: the next batch of graph inputs from the queued epochs, or
    StopIteration when none is left. A separate object, so that the pipeline holds no reference
    back to its Loader."""

    def __init__(self):
        self.queue: deque[Iterator[tuple]] = deque()
        self.ran_dry = False  # StopIteration was raised: DALI feeds nothing more until a reset

    def __call__(self) -> tuple:
        while self.queue:
            batch = next(self.queue[0], None)
            if batch is not None:
                return batch
            self.queue.popleft()
        self.ran_dry = True
        raise StopIteration


def check_images(reader, store: Store) -> bool:
    """Whether the split stores JPEG (True) or raw pixels (False); every image must be size x size."""
    S = store.size
    if len(reader) and not ((reader.heights == S).all() and (reader.widths == S).all()):
        raise AlexkitError(f"{reader.path}: images are not all {S}x{S} as manifest.json says; re-run `alexkit prepare`")
    modes = set(np.unique(reader.modes).tolist())
    if not modes <= {MODE_JPG, MODE_RAW} or len(modes) > 1:
        raise AlexkitError(f"{reader.path} mixes JPEG and raw images (FFCV 'smart' mode?); re-run `alexkit prepare` with one format")
    return modes != {MODE_RAW}


def _pick_decoder(decoder: str, encoded: bool, device) -> Literal["cpu", "mixed"]:
    if decoder == "mixed" and device.type != "cuda":
        raise AlexkitError(f"decoder 'mixed' decodes on a GPU but the device is {device}; use decoder 'cpu' or 'auto'")
    if not encoded:
        return "cpu"  # raw pixels: nothing to decode
    if decoder == "auto":
        return "mixed" if device.type == "cuda" else "cpu"
    return decoder


def make_loader(store: Store | str | Path, split: str, *, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, **options) -> Loader:  # fmt: skip
    """A Loader over `split` of `store` (a Store or its directory); `options` are LoaderConfig's
    fields (mode, batch_size, rank, world_size, seed, drop_last, decoder, channels_last, ...).

    images come as (N, 3, C, C) (tencrop: (N, 10, 3, C, C)) in `dtype` on `device`, channels-last
    strides if asked; labels (N,) int64 on `device`; indices (N,) int64 positions in the split, on
    the CPU. decoder "auto" decodes JPEG on the GPU ("mixed") when device is CUDA, else on the CPU.
    """
    return Loader(store if isinstance(store, Store) else Store(Path(store)), LoaderConfig(split=split, **options),
                  device=device, dtype=dtype)  # fmt: skip
