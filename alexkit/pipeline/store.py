"""A prepared store: DIR/{train,val}.beton, stats.npz, classes.json, manifest.json (see prepare.py),
read back; and the writer of stats.npz, so that its format lives in this one file."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from alexkit.errors import AlexkitError, why
from alexkit.locks import held_by_another, shared_reader
from alexkit.outputs import write_atomic
from alexkit.paths import is_run, word
from alexkit.pipeline.beton import BetonReader
from alexkit.pipeline.constants import STORE_FORMAT, STORE_FORMAT_VERSION, STORE_QUALITY, STORE_SIZE, crop_size

# The names of a store's files (prepare.py's docstring says what each holds), and of prepare's own beside them.
MANIFEST = "manifest.json"  # written last and removed first: the mark of a finished store
STATS = "stats.npz"
CLASSES = "classes.json"
SPLITS = ("train", "val")  # each a SPLIT.beton, with its SPLIT.done.json record
LOCK = ".prepare.lock"  # prepare holds it exclusively while it writes; trainings and evaluations, shared
STAGING = ".prepare-new"  # a --force rebuild's new store, inside the store (same file system: renames are atomic)


@dataclass(frozen=True)
class Stats:
    """Training-set statistics in 0-255 units.

    mean_image: (H, W, 3) float32, the per-pixel mean of the stored training images.
    eigval: (3,) variances of the RGB pixel distribution along its principal axes, descending.
    eigvec: (3, 3) columns are the matching unit eigenvectors.
    PCA lighting adds eigvec @ (alpha * sqrt(eigval)) with alpha normal, std 0.1: see lighting_offsets.
    """

    mean_image: np.ndarray
    eigval: np.ndarray
    eigvec: np.ndarray

    @classmethod
    def load(cls, path: Path) -> "Stats":
        """The stats.npz of a store, or a run's copy of it; AlexkitError naming the file if it is damaged."""
        try:
            with np.load(path) as z:
                stats = cls(z["mean_image"].astype(np.float32), z["eigval"].astype(np.float64), z["eigvec"].astype(np.float64))
            if stats.mean_image.ndim != 3 or stats.mean_image.shape[2] != 3 or stats.eigval.shape != (3,) or stats.eigvec.shape != (3, 3):
                raise ValueError("arrays of the wrong shape")
        except (EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # an OSError names its path itself
            raise AlexkitError(f"{path} is not a stats.npz written by `alexkit prepare` ({why(exc)}); {_fix(path)}") from exc
        return stats


def write_stats(path: Path, sums) -> None:
    """stats.npz from prepare's imageops.PixelSums: mean image, RGB covariance and its
    eigen-decomposition (Stats' convention), written atomically."""
    mean_image, mean_rgb, cov = sums.moments()
    eigval, eigvec = eigen(cov)
    buffer = io.BytesIO()  # 0.8 MB at 256 px
    np.savez(buffer, mean_image=mean_image.astype(np.float32), mean_rgb=mean_rgb, cov=cov, eigval=eigval,
             eigvec=eigvec, images=np.int64(sums.images), pixels=np.int64(sums.images * sums.size * sums.size))  # fmt: skip
    write_atomic(path, buffer.getvalue())


def eigen(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues descending, eigenvectors as columns) of a 3x3 covariance, each column's largest
    component made positive so the result does not depend on the solver's sign choice."""
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(3)])
    return np.maximum(eigval, 0.0), eigvec * signs


def read_classes(path: Path) -> list[dict]:
    """[{"index": 0, "wnid": "n01440764", "name": "tench, Tinca tinca"}, ...] from a store's classes.json
    or a run's copy; AlexkitError naming the file if it is damaged."""
    try:
        classes = json.loads(path.read_text())
        if not isinstance(classes, list) or [c.get("index") for c in classes] != list(range(len(classes))) or not classes:
            raise ValueError("not a list of classes indexed 0, 1, 2, ...")
        if not all(isinstance(c.get("wnid"), str) and isinstance(c.get("name"), str) for c in classes):
            raise ValueError("a class without its wnid or name")
    except (ValueError, AttributeError) as exc:  # an OSError names its path itself
        raise AlexkitError(f"{path} is not a classes.json written by `alexkit prepare` ({why(exc)}); {_fix(path)}") from exc
    return classes


def rewrite(store: Path) -> str:
    """How to write `store` again: the `alexkit prepare` line with its source and settings as its
    manifest.json records them (SRC where it cannot be read)."""
    return f"rewrite the store with `{prepare_line(store, store)} --force`"


def prepare_line(built: Path, store: Path) -> str:
    """`alexkit prepare SRC --out STORE` with the source and settings that `built` (the store, or the
    folder of its --force rebuild) records in its manifest.json, or else (a store whose prepare did not
    finish) in a split's done-record; SRC where none can be read or names its source."""
    return _prepare_line(*_recorded(Path(built)), store)


def _prepare_line(src: str | None, flags: str, store: Path) -> str:
    return f"alexkit prepare {'SRC' if src is None else word(src)} --out {word(store)}{flags}"


def _recorded(built: Path) -> tuple[str | None, str]:
    """(the source, or None; the flags of its settings that are not the defaults) as prepare_line says."""
    src, flags = None, ""
    for name in (MANIFEST, *(f"{n}.done.json" for n in SPLITS)):
        try:
            record = json.loads((Path(built) / name).read_text())
            settings = record["settings"]
            defaults = {"size": STORE_SIZE, "format": STORE_FORMAT, "quality": STORE_QUALITY}  # PrepareConfig's
            given = {k: settings[k] for k, default in defaults.items() if settings[k] != default}
            if settings["format"] != "jpg":
                given.pop("quality", None)  # a raw store has none
        except (OSError, ValueError, KeyError, TypeError):
            continue
        flags = "".join(f" --{k} {v}" for k, v in given.items())
        with contextlib.suppress(KeyError, TypeError):  # (a done-record of a version that did not name it)
            src = str(record["source"]["path"])
        break
    return src, flags


def _holds_files(folder: Path) -> bool:
    """Whether `folder` is there and holds anything (dot files included) but prepare's lock, which a
    prepare refused before it wrote anything (an empty SRC, say) leaves in a folder it did not make."""
    try:
        return any(p.name != LOCK for p in folder.iterdir())
    except OSError:  # none, or not listable
        return False


def _fix(path: Path) -> str:
    """The fix for a damaged store file at `path`, or a run's copy of one."""
    if (path.parent / MANIFEST).is_file():  # a store's own file
        return rewrite(path.parent)
    return "copy it again from the store it came from (a run keeps copies of its store's files)"


def _trained_on(run: Path) -> str:
    """Where to send a run folder passed in place of a store: to the store its config.json records."""
    from alexkit.runs import recorded  # (runs imports this module)

    named = recorded(run, "config", "data")
    if not isinstance(named, str) or not named:
        return f"pass the store it was trained on (the --out of `alexkit prepare`, holding {STATS}, {CLASSES}, {MANIFEST})"
    if not Path(named).is_dir():
        return f"pass the store it was trained on (its config.json names {word(named)}, which is not there now)"
    return f"pass the store it was trained on: {word(named)} (its config.json names it)"


def in_store(store: Path, path) -> bool:
    """Whether `path` is the folder of the store `store` or lies below it: a place for prepare's files
    only (a --force rebuild renames its new files over their namesakes, and a store may be deleted
    whole to prepare it again), never for another command's outputs."""
    return Path(path).resolve().is_relative_to(Path(store).resolve())


def store_holding(path) -> Path | None:
    """The store folder (one holding manifest.json and classes.json) that `path` lies in, at any depth,
    or None: a file there is prepare's, for outputs of other commands to keep off."""
    return next((p for p in Path(path).resolve().parents if (p / MANIFEST).is_file() and (p / CLASSES).is_file()), None)


def store_around(path, ours=()) -> Path | None:
    """The store whose folder `path` lies in: the first of `ours` (the stores a command reads or makes,
    finished or not, as in_store tells), else any finished one (store_holding); None where none.
    Where another command's output must not go."""
    return next((Path(s) for s in ours if in_store(s, path)), None) or store_holding(path)


def reading(path: Path):
    """Hold the store at `path` against `alexkit prepare` (a --force rebuild would replace its files
    under a days-long training) while the block runs; refused while a prepare writes it."""
    return shared_reader(Path(path) / LOCK, f"`alexkit prepare` is writing store {path}; wait for it to end")


class Store:
    """Read-only view of a store directory written by `alexkit prepare`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        missing = [n for n in (STATS, CLASSES, MANIFEST) if not (self.path / n).is_file()]
        if not self.path.is_dir() or missing:
            what = ("is a file, not a store folder" if self.path.is_file() else "does not exist" if not self.path.is_dir()
                    else f"has no {', '.join(missing)}")  # fmt: skip
            if MANIFEST in missing and (self.path / STAGING / MANIFEST).is_file():
                raise AlexkitError(f"store {self.path} is half replaced: an `alexkit prepare --force` stopped while moving its "
                                   f"new store in; finish that with `{prepare_line(self.path / STAGING, self.path)}`")  # fmt: skip
            above = next((p for p in self.path.parents if p.is_file()), None)  # prepare could not write there either
            if self.path.is_file() or above is not None:
                holder = self.path.parent if above is None else above.parent
                what = what if above is None else f"is under {above}, which is a file"
                fix = (f"pass the store's folder instead: {word(holder)}" if (holder / MANIFEST).is_file()
                       else f"pass the store's folder instead (the --out of `alexkit prepare`, holding {STATS}, {CLASSES}, {MANIFEST})")  # fmt: skip
                raise AlexkitError(f"store {self.path} {what}; {fix}")
            if MANIFEST not in missing:  # a finished store that lost a file: its own prepare line writes it again
                raise AlexkitError(f"store {self.path} {what}; write it again with `{prepare_line(self.path, self.path)}` "
                                   "(which keeps the splits that are whole)")  # fmt: skip
            if (self.path / "train").is_dir() or (self.path / "ILSVRC2012_img_train.tar").is_file() or (self.path / "ILSVRC").is_dir():
                raise AlexkitError(f"store {self.path} {what}: it looks like a dataset, not a store; run `alexkit prepare "
                                   f"{word(self.path)} --out STORE` and pass that STORE")  # fmt: skip
            if is_run(self.path):
                raise AlexkitError(f"store {self.path} is a run folder (of `alexkit train`), not a store; "
                                   f"{_trained_on(self.path)}")  # fmt: skip
            from alexkit.pipeline.storedir import not_a_store  # (storedir imports this module)

            others = not_a_store(self.path)
            if others:  # images, say: `prepare --out` there would be refused
                raise AlexkitError(f"store {self.path} is a folder that holds no store but other files ({others}); pass the --out "
                                   "folder of `alexkit prepare`, or run `alexkit prepare SRC --out STORE` and pass that STORE")  # fmt: skip
            if held_by_another(self.path / LOCK):  # a prepare still scanning its SRC, or writing
                raise AlexkitError(f"store {self.path} is being written by `alexkit prepare`; wait for it to end")
            if _holds_files(self.path):  # prepare's own files (a split, a temporary), no manifest.json: unfinished
                src, flags = _recorded(self.path)  # a split's done-record names the source it was run on
                line = _prepare_line(src, flags, self.path)
                raise AlexkitError(f"store {self.path} is unfinished: the last `alexkit prepare` into it was stopped; finish it "
                                   f"with `{line}`{', SRC being the source it was run on' if src is None else ''} "
                                   "(which keeps its finished splits)")  # fmt: skip
            raise AlexkitError(f"store {self.path} {what}; run `alexkit prepare SRC --out {word(self.path)}` first")
        manifest, fix = self.path / MANIFEST, rewrite(self.path)
        try:
            self.manifest = json.loads(manifest.read_text())
            version, self.size = self.manifest["format_version"], int(self.manifest["settings"]["size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AlexkitError(f"{manifest} is not a store manifest ({exc.__class__.__name__}: {exc}); {fix}") from exc
        if version != STORE_FORMAT_VERSION:
            raise AlexkitError(f"{manifest} is of store format {version}; this alexkit reads format {STORE_FORMAT_VERSION}: {fix}")
        self.crop = crop_size(self.size)
        self._splits: dict[str, BetonReader] = {}

    @cached_property
    def stats(self) -> Stats:
        stats = Stats.load(self.path / STATS)
        if stats.mean_image.shape[:2] != (self.size, self.size):
            raise AlexkitError(f"{self.path / STATS} holds a {'x'.join(map(str, stats.mean_image.shape[:2]))} mean image, "
                               f"but the store's images are {self.size}x{self.size} (manifest.json); {rewrite(self.path)}")  # fmt: skip
        return stats

    @cached_property
    def classes(self) -> list[dict]:
        """[{"index": 0, "wnid": "n01440764", "name": "tench, Tinca tinca"}, ...]"""
        return read_classes(self.path / CLASSES)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def has_split(self, name: str) -> bool:
        return (self.path / f"{name}.beton").is_file()

    def split(self, name: str) -> BetonReader:
        """The split's .beton, opened once per Store: its tables are read whole (~90 MiB for ImageNet's train)."""
        if name not in self._splits:
            path = self.path / f"{name}.beton"
            if not path.is_file():
                raise AlexkitError(f"store {self.path} has no {name}.beton; run `alexkit prepare` on a source with a {name} split")
            self._splits[name] = BetonReader(path)
        return self._splits[name]

    def check(self, *splits: str) -> "Store":
        """Read now what a stage will read (statistics, classes, these splits): a damaged, missing or
        empty part (every file of a split skipped) is said before any work."""
        self.stats, self.classes
        for name in splits:
            if len(self.split(name)) == 0:
                images = "validation" if name == "val" else "training"
                raise AlexkitError(f"{self.split(name).path} holds no images; run `alexkit prepare` on a source with {images} images")
        return self
