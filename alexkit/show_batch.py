"""`alexkit show-batch`: what the network is fed, drawn from the real loaders (PIL only).

    train-batch.png  augmented training crops (random crop, mirror, PCA lighting) with class names
    val-views.png    the ten test-time views of one val image: 4 corners + centre, then their mirrors
The loaders give mean-subtracted crops; the mean is added back and the sum clipped to 0-255.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexkit.errors import AlexkitError
from alexkit.outputs import check_folder, write_atomic
from alexkit.paths import DEFAULT_STORE
from alexkit.progress import counted
from alexkit.ranges import SEED, SHOW_BATCH_COUNT, check_ranges

TILE_MIN = 160  # tiles are scaled up (nearest) to at least this many pixels so small crops stay visible


@dataclass(frozen=True)
class ShowBatchConfig:
    data: Path = DEFAULT_STORE
    out: Path = Path("alexkit-pictures")  # folder for train-batch.png and val-views.png
    count: int = 16  # training crops in the grid
    val_index: int = 0  # position in val.beton of the image whose ten views are drawn
    seed: int = 0  # the loader's seed: same seed, same crops, flips and lighting

    def __post_init__(self):
        check_ranges(("--count", self.count, SHOW_BATCH_COUNT), ("--seed", self.seed, SEED))
        if self.val_index < 0:
            raise AlexkitError(f"--val-index {self.val_index}: must be 0 or more")
        check_folder(self.out, "--out", writable=True)  # a file, a link to nothing, read-only: said before the store is read
        from alexkit.pipeline.store import store_around

        # As eval's outputs: in the store read (even one half made) or in any other, the PNGs would lie among prepare's files.
        store = store_around(Path(self.out) / "train-batch.png", [self.data])
        if store is not None:
            raise AlexkitError(f"--out {self.out} is in the folder of the store {store}, whose files are prepare's; "
                               "name a folder outside it")  # fmt: skip


def show_batch(cfg: ShowBatchConfig) -> list[Path]:
    """Write DIR/train-batch.png and DIR/val-views.png; return the paths written."""
    from alexkit.pipeline.store import reading

    with reading(cfg.data):  # as train and eval read it: no `prepare --force` moves a new store in meanwhile
        return _show_batch(cfg)


def _show_batch(cfg: ShowBatchConfig) -> list[Path]:
    from alexkit.pipeline.store import Store

    store = Store(cfg.data)
    names = [c["name"] for c in store.classes]
    store.check("train", "val")
    _check_val_index(store, cfg.val_index)  # before the first picture is written
    made = not cfg.out.exists()
    cfg.out.mkdir(parents=True, exist_ok=True)
    try:
        tiles, labels, _ = train_tiles(store, cfg.count, cfg.seed)
        captions = [f"{y} {names[y]}" for y in labels]
        title = f"{store.path}: {counted(len(tiles), 'training crop')} as fed to the network (seed {cfg.seed})"
        # Each picture said as soon as it is written: where the second then fails, the first (which has
        # replaced an earlier one, if any) is whole and kept, and the error comes after its line.
        written = [_save(grid(tiles, captions, title, columns=min(8, len(tiles))), cfg.out / "train-batch.png")]
        print(f"wrote {written[-1]}", flush=True)
        tiles, captions, label = val_view_tiles(store, cfg.val_index)
        title = f"{store.path} val #{cfg.val_index} ({label} {names[label]}): the ten test views"
        written.append(_save(grid(tiles, captions, title, columns=5), cfg.out / "val-views.png"))
        print(f"wrote {written[-1]}", flush=True)
    except BaseException:
        if made and not any(cfg.out.iterdir()):  # a folder it made for pictures it could not write
            cfg.out.rmdir()
        raise
    return written


def train_tiles(store, count: int, seed: int) -> tuple[list[np.ndarray], list[int], list[int]]:
    """The loader's first training batch (seed, epoch 0, rank 0) as (C, C, 3) uint8 tiles with each
    crop's own mean window added back; their labels and positions in train.beton."""
    import torch

    from alexkit.pipeline.augment import train_params
    from alexkit.pipeline.loader import STREAM_AUGMENT, epoch_rng, make_loader

    count = min(count, len(store.split("train")))
    loader = make_loader(store, "train", mode="train", batch_size=count, device=torch.device("cpu"), seed=seed)
    images, labels, indices = next(iter(loader))  # (N, 3, C, C) float, mean-subtracted
    # The loader does not return the windows it cut; it draws them from this stream, first batch first.
    xs, ys, flips, _ = train_params(epoch_rng(seed, 0, STREAM_AUGMENT, 0), count, store.size, store.crop)
    mean, c = store.stats.mean_image, store.crop
    tiles = []
    for view, x, y, flip in zip(images.float().numpy(), xs, ys, flips):
        window = mean[y : y + c, x : x + c]
        tiles.append(_to_uint8(view, window[:, ::-1] if flip else window))
    return tiles, labels.tolist(), indices.tolist()


def _check_val_index(store, index: int) -> int:
    """The number of val images, if `index` is one of them."""
    total = len(store.split("val"))
    if index >= total:
        raise AlexkitError(f"--val-index {index}: {store.path}/val.beton holds {total} images (0 to {total - 1})")
    return total


def val_view_tiles(store, index: int) -> tuple[list[np.ndarray], list[str], int]:
    """The ten-crop loader's views of val image `index` as (C, C, 3) uint8 tiles with the exact mean
    crop of each view added back; their captions; the image's label."""
    import torch

    from alexkit.pipeline.augment import TEN_VIEWS, ten_view_windows
    from alexkit.pipeline.loader import make_loader

    total = _check_val_index(store, index)
    # Evaluation shards are positions rank, rank + W, ...: with W = total, rank `index` reads that image alone.
    loader = make_loader(store, "val", mode="tencrop", batch_size=1, device=torch.device("cpu"), rank=index, world_size=total)
    (images, labels, indices), = loader  # (1, 10, 3, C, C)
    assert indices.tolist() == [index]
    views, label = images[0].float().numpy(), int(labels[0])
    mean, c = store.stats.mean_image, store.crop
    tiles, captions = [], []
    for view, (x, y, flip), (where, _) in zip(views, ten_view_windows(store.size, c), TEN_VIEWS):
        view_mean = mean[y : y + c, x : x + c]
        tiles.append(_to_uint8(view, view_mean[:, ::-1] if flip else view_mean))
        captions.append(f"{where} mirrored" if flip else where)
    return tiles, captions, label


def _to_uint8(chw: np.ndarray, mean_hwc: np.ndarray) -> np.ndarray:
    """(3, C, C) mean-subtracted float -> (C, C, 3) uint8 with the mean added back, clipped to 0-255."""
    return np.clip(chw.transpose(1, 2, 0) + mean_hwc, 0, 255).round().astype(np.uint8)


def grid(tiles: list[np.ndarray], captions: list[str], title: str, *, columns: int):
    """A PIL image: tiles (H, W, 3) uint8 in rows of `columns`, each captioned below, a title on top."""
    from PIL import Image, ImageDraw

    h, w = tiles[0].shape[:2]
    scale = max(1, math.ceil(TILE_MIN / max(h, w)))
    th, tw = h * scale, w * scale
    font, title_font = _font(13), _font(15)
    pad, caption_h, title_h = 6, 20, 28
    rows = math.ceil(len(tiles) / columns)
    # As wide as the title where it is wider than the tiles (one or two of them: --count 1): never cut.
    width = max(pad + columns * (tw + pad), pad + math.ceil(title_font.getlength(title)) + pad)
    canvas = Image.new("RGB", (width, title_h + rows * (th + caption_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 7), title, fill="black", font=title_font)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = pad + (i % columns) * (tw + pad), title_h + (i // columns) * (th + caption_h + pad)
        canvas.paste(Image.fromarray(tile).resize((tw, th), Image.NEAREST), (x, y))
        draw.text((x, y + th + 3), _fit(draw, caption, font, tw), fill="black", font=font)
    return canvas


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _save(image, path: Path) -> Path:
    write_atomic(path, lambda f: image.save(f, format="PNG"))
    return path
