"""Top-5 classes for image files, preprocessed exactly as the store and the val loader do.

    file -> RGB, shorter side to S, centre S x S square (prepare's decode_resized) -> float 0-255
    -> minus the mean image -> centre crop, or the ten views -> predict_top -> names

S, the mean image and the class table come from the run directory's copies of stats.npz and
classes.json (written by `alexkit train`), so a run is usable without its store; `data` overrides
them with a store's own.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexkit.datasets.listing import IMAGE_EXTENSIONS, hidden, image_file
from alexkit.errors import AlexkitError
from alexkit.paths import expand_home, word
from alexkit.ranges import AT_LEAST_1, check_ranges


@dataclass(frozen=True)
class PredictConfig:
    images: tuple[Path, ...] = field(default_factory=tuple)  # files, or folders (their image files, sorted); text as the CLI gives it
    checkpoint: Path | None = None  # a .pt file or a run directory; None: the latest run's best.pt, else its last.pt
    data: Path | None = None  # take stats and classes from this store instead of the run directory's copies
    tta: bool = False  # average over the paper's ten views instead of the centre crop
    top_k: int = 5
    batch_size: int = 32  # images per forward pass
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        if not self.images:
            raise AlexkitError("no images given; pass image files or folders: alexkit predict IMAGE...")
        if any(str(image) == "" for image in self.images):  # Path("") is the current folder: most likely an unset variable
            raise AlexkitError("an image path is empty (an unset shell variable?); pass image files or folders")
        object.__setattr__(self, "images", tuple(expand_home(image) for image in self.images))
        check_ranges(("--top", self.top_k, AT_LEAST_1), ("--batch-size", self.batch_size, AT_LEAST_1))
        from alexkit.model.placement import check_device

        check_device(self.device)


def predict(cfg: PredictConfig) -> list[dict]:
    """Classify each image; print its top-k and return [{"path", "top": [{"index", "wnid", "name", "prob"}]}]."""
    import torch

    from alexkit.checkpoints import load_model
    from alexkit.evaluate import predict_top
    from alexkit.model.placement import setup
    from alexkit.runs import check_compatible, find_checkpoint

    files = list_images(cfg.images)
    ckpt_path = find_checkpoint(cfg.checkpoint)
    model, ckpt = load_model(ckpt_path)
    epoch = f", epoch {ckpt['epoch']}" if ckpt.get("epoch") is not None else ""
    print(f"checkpoint {ckpt_path.absolute()}{epoch}", file=sys.stderr, flush=True)  # as eval says it; stdout is the predictions'
    mean_image, classes, source = stats_and_classes(ckpt_path, ckpt, cfg.data)
    size, crop = mean_image.shape[0], model.args["input_size"]
    check_compatible(model.args, ckpt_path, size=size, num_classes=len(classes), source=source)
    device = setup("none", cfg.device).device
    model = model.to(device)
    k = min(cfg.top_k, len(classes))
    results, skipped = [], []
    for start in range(0, len(files), cfg.batch_size):
        chunk = files[start : start + cfg.batch_size]
        loaded = [_try_views(f, size, mean_image, crop, cfg.tta) for f in chunk]  # (V, 3, C, C) arrays, or why not
        good = [v for v in loaded if not isinstance(v, str)]
        if good:
            with torch.inference_mode():
                p, top = predict_top(model, torch.from_numpy(np.stack(good)).to(device), k)  # (N, k) each
            tops = iter(zip(p.cpu().tolist(), top.cpu().tolist()))
        for f, v in zip(chunk, loaded):  # in file order: a skipped file's line comes between its neighbours'
            if isinstance(v, str):  # one bad file costs only itself; the command still fails at the end
                print(f"skipped {v}", file=sys.stderr, flush=True)
                skipped.append(v)
            else:
                results.append(_report(f, *next(tops), classes))
    if skipped:
        what = f"{len(skipped)} of {len(files)} images could not" if results else f"none of the {len(files)} images could"
        raise AlexkitError(f"{what} be read (first: {skipped[0]}); pass image files (JPEG, PNG, ...)")
    return results


def _try_views(path: Path, size: int, mean_image: np.ndarray, crop: int, tta: bool) -> np.ndarray | str:
    """The image's views, or a line saying why it cannot be read."""
    try:
        return views(load_image(path, size), mean_image, crop, tta)
    except AlexkitError as exc:
        return str(exc)


def _report(path: Path, probs: list[float], top: list[int], classes: list[dict]) -> dict:
    """Print an image's top classes; return them as {"path", "top": [{"index", "wnid", "name", "prob"}]}."""
    top_list = [{"index": c, "wnid": classes[c].get("wnid"), "name": classes[c].get("name"), "prob": q}
                for c, q in zip(top, probs)]  # fmt: skip
    print(path)
    for t in top_list:
        print(f"  {100 * t['prob']:6.2f}%  {t['index']:4d}  {t['name']}")
    sys.stdout.flush()  # before any later file's "skipped" line on stderr
    return {"path": str(path), "top": top_list}


def list_images(paths) -> list[Path]:
    """Files as given; folders expanded to their image files, sorted: the suffixes prepare reads, no dot
    files (macOS's ._ copies are not images). A path that is not there at all is an error now (a typo,
    most likely); a link to nothing, given or in a folder, is listed, to be skipped with its reason
    as an unreadable file is, not left out unsaid."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            with os.scandir(p) as entries:  # a link to nothing too, as prepare lists one
                found = sorted(Path(e.path) for e in entries if image_file(e) and not hidden(e.name))
            if not found:
                hint = ""
                if any(f.is_dir() and not f.name.startswith(".") for f in p.iterdir()):  # a train/ folder, say
                    hint = f"; its sub-folders are not searched: pass them in its place ({word(p)}/*)"
                raise AlexkitError(f"folder {p} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}){hint}")
            files += found
        elif p.exists() or _dangling(p):  # a file, or a pipe: predict <(curl ...)
            files.append(p)
        else:
            raise AlexkitError(f"image {p} does not exist; pass image files or folders")
    return files


def _dangling(path: Path) -> bool:
    """A link to nothing."""
    return path.is_symlink() and not path.exists()


def stats_and_classes(ckpt_path: Path, ckpt: dict, data: Path | None) -> tuple[np.ndarray, list[dict], str]:
    """(mean image (S, S, 3) float32, class table, where they came from): `data`'s store if given,
    else the run directory's copies, else the store the checkpoint names (or DEFAULT_STORE)."""
    from alexkit.runs import store_of
    from alexkit.pipeline.store import CLASSES, STATS, Stats, Store, read_classes, reading
    from alexkit.runs import check_same_store

    run = ckpt_path.parent
    if data is None and (run / STATS).is_file() and (run / CLASSES).is_file():
        return Stats.load(run / STATS).mean_image, read_classes(run / CLASSES), f"run {run}"
    path = store_of(ckpt, ckpt_path, data)
    with reading(path):  # its files read whole, with no `prepare --force` moving a new store in meanwhile
        store = Store(path)
        check_same_store(run, store, ckpt_path, ckpt["model_args"])  # against the run's copies, where it has them
        return store.stats.mean_image, store.classes, f"store {store.path}"


def load_image(path: Path, size: int) -> np.ndarray:
    """The image as `alexkit prepare` stores it: shorter side to `size`, centred square; (S, S, 3) uint8."""
    from alexkit.pipeline.imageops import MAX_ASPECT, DecoderMessages, decode_resized, skip_reason

    if _dangling(Path(path)):  # read_bytes would say "No such file or directory" of a name that is there
        try:
            os.stat(path)
            gone = "which does not exist"
        except OSError as exc:  # a loop of links: "Too many levels of symbolic links"
            gone = "which does not exist" if exc.errno == errno.ENOENT else f"which leads to no file ({exc.strerror})"
        raise AlexkitError(f"{path}: a link to {os.readlink(path)}, {gone}")
    data = None
    try:
        data = Path(path).read_bytes()
        with warnings.catch_warnings(), DecoderMessages() as messages:
            warnings.simplefilter("ignore")  # PIL's large-image and EXIF warnings: the image is read all the same
            rgb = decode_resized(data, size, MAX_ASPECT)  # as prepare: a 200000x1 image would need gigabytes
            said = messages.take()
    except Exception as exc:
        why = re.sub(r" ?<[^>]* at 0x[0-9a-f]+>", "", skip_reason(exc, data))  # PIL names its in-memory file, not ours
        raise AlexkitError(f"{path}: {why}") from exc
    if said:  # libjpeg's "Corrupt JPEG data: ..." about a file it decoded all the same: named, as prepare does
        print(f"note: {path}: {said}", file=sys.stderr, flush=True)
    return np.asarray(rgb)


def views(image: np.ndarray, mean_image: np.ndarray, crop: int, tta: bool) -> np.ndarray:
    """(S, S, 3) image -> (1, 3, C, C) centre crop or (10, 3, C, C) ten views, mean-subtracted, in
    the val loader's order (augment.TEN_VIEWS): the definitions the loader's graphs are tested against."""
    from alexkit.pipeline.augment import reference_center, reference_tencrop

    if tta:
        return reference_tencrop(image, mean_image, crop)  # (10, 3, C, C)
    return reference_center(image, mean_image, crop)[None]  # (1, 3, C, C)
