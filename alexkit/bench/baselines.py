"""The two baselines bench loader times beside alexkit's graphs, on the same images (alexkit/bench/loader.py
runs them, one whole epoch each in turn, and prints the rows):

  (a)  torchvision-style: PIL decodes each source image of the store's split (train for train,
       the one the centre rows read for centre), resizes the shorter side to the store's size,
       cuts the centre square, then the same crop / flip / mean subtraction in NumPy + torch,
       in a torch DataLoader with one worker process per core (no lighting). With --store it
       needs --source, the dataset the store was prepared from.
  (b)  FFCV's own Loader over the same store: its numba-compiled pipeline decodes with
       libjpeg-turbo and crops; train = RandomResizedCrop decoder pinned to a CxC window at
       scale (C/S)^2, ratio 1 (that is, a random crop) + RandomHorizontalFlip; eval = its
       centre-crop decoder. Output uint8 NHWC: no float conversion, no lighting, no mean.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alexkit.bench import Runner
from alexkit.errors import AlexkitError, require

if TYPE_CHECKING:
    from alexkit.bench.loader import BenchLoaderConfig

_KEEP: list = []  # FFCV Loaders made here, kept to the end of the process


def eval_split(store) -> str:
    """The split the centre and ten-view rows read: val, or train where the store has none."""
    return "val" if store.has_split("val") else "train"


def source_images(store, src: Path, what: str) -> dict:
    """Baseline (a)'s images: {split: the samples of `src` that the store's split holds}, for train
    and the split the centre rows read; the files prepare skipped are left out, and the counts must
    be the store's (the same images as the other rows)."""
    from alexkit.datasets import find_dataset

    splits = find_dataset(src).splits
    skipped = {(s["split"], s["file"]) for s in store.manifest.get("skipped", [])}
    sources = {}
    for split in dict.fromkeys(("train", eval_split(store))):
        kept = tuple(s for s in splits.get(split, ()) if (split, s.name or s.path) not in skipped)
        if len(kept) != len(store.split(split)):
            made_from = store.manifest.get("source", {}).get("path", "SRC")
            raise AlexkitError(f"{what} has {len(kept)} {split} images (less those prepare skipped), but store {store.path} "
                               f"holds {len(store.split(split))}; pass the dataset it was prepared from ({made_from})")  # fmt: skip
        sources[split] = kept
    return sources


def torchvision_style_runner(sources: dict, stores: dict, mode: str, cfg: BenchLoaderConfig, threads: int) -> Runner:
    """Baseline (a): PIL decode + resize + centre square + crop/flip/mean in a DataLoader, over the
    source images of the split the other rows of this mode read."""
    import torch

    store = next(iter(stores.values()))
    samples = sources["train" if mode == "train" else eval_split(store)]
    data = _PilImages(samples, store.stats.mean_image, store.size, store.crop, train=mode == "train")
    # Workers come from a fork server, not forked from this process: a fork makes every page this
    # process writes next (the other pipelines' buffers, hundreds of MB) a copy-on-write fault,
    # billed to whichever pipeline runs next (it halved alexkit's next epoch).
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=mode == "train", num_workers=threads,
                                         persistent_workers=True, drop_last=mode == "train",
                                         multiprocessing_context="forkserver")  # fmt: skip
    return Runner("(a) PIL + DataLoader", "source JPEGs", mode, lambda e: loader)


class _PilImages:
    """A torchvision-style Dataset written with PIL + NumPy + torch (no torchvision here)."""

    def __init__(self, samples: tuple, mean_image: np.ndarray, size: int, crop: int, train: bool):
        self.samples, self.mean, self.size, self.crop, self.train = samples, mean_image, size, crop, train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        from alexkit.datasets import read_sample_bytes

        S, C = self.size, self.crop
        img = Image.open(io.BytesIO(read_sample_bytes(self.samples[i]))).convert("RGB")  # a file, or bytes in a tar
        scale = S / min(img.size)
        img = img.resize((max(S, round(img.width * scale)), max(S, round(img.height * scale))), Image.Resampling.BILINEAR)
        left, top = (img.width - S) // 2, (img.height - S) // 2
        pixels = np.asarray(img.crop((left, top, left + S, top + S)))  # (S, S, 3) uint8
        if self.train:
            x, y = np.random.randint(0, S - C + 1, 2)
            flip = np.random.rand() < 0.5
        else:
            x = y = (S - C) // 2
            flip = False
        view, mean = pixels[y : y + C, x : x + C], self.mean[y : y + C, x : x + C]
        if flip:
            view, mean = view[:, ::-1], mean[:, ::-1]
        image = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))).float()  # (3, C, C)
        return image - torch.from_numpy(np.ascontiguousarray(mean.transpose(2, 0, 1))), self.samples[i].label


def ffcv_runner(store, fmt: str, mode: str, cfg: BenchLoaderConfig, threads: int) -> Runner:
    """Baseline (b): FFCV's Loader decoding and cropping the same .beton on the CPU."""
    require("ffcv", fix="install FFCV 1.0.2 (see the README), or pass --no-baselines")
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor

    S, C = store.size, store.crop
    threads = min(threads, numba_threads())
    if mode == "train":
        area = (C / S) ** 2  # RandomResizedCrop pinned to a CxC window: a plain random crop
        image = [RandomResizedCropRGBImageDecoder((C, C), scale=(area, area), ratio=(1.0, 1.0)), RandomHorizontalFlip(), ToTensor()]
    else:
        image = [CenterCropRGBImageDecoder((C, C), ratio=C / S), ToTensor()]
    split = "train" if mode == "train" else eval_split(store)
    loader = Loader(str(store.path / f"{split}.beton"), batch_size=cfg.batch_size, num_workers=threads, os_cache=True,
                    order=OrderOption.RANDOM if mode == "train" else OrderOption.SEQUENTIAL, drop_last=mode == "train",
                    pipelines={"image": image, "label": [IntDecoder(), ToTensor()]}, seed=0)  # fmt: skip
    _KEEP.append(loader)  # FFCV's numba finalisers print spurious errors when a Loader is collected early
    return Runner("(b) FFCV Loader", fmt, mode, lambda e: loader)


def numba_threads() -> int:
    """The most worker threads FFCV's loader can have: numba's thread count (the cores, unless
    NUMBA_NUM_THREADS says otherwise)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS
