"""`alexkit prepare SRC`: raw images -> an FFCV store plus the training set's statistics.

What DIR holds when it is finished (read through alexkit.pipeline.store.Store):
  train.beton, val.beton  fields `image` (RGBImageField, size x size, JPEG or raw RGB) and `label`
                          (IntField), in the order find_dataset lists the split (see
                          datasets/layouts.py); a plain `ffcv.loader.Loader` reads them
  stats.npz               over the training images, computed from the resized size x size pixels
                          before JPEG encoding: mean_image (size, size, 3) float32, mean_rgb (3,),
                          cov (3, 3), eigval (3,) descending, eigvec (3, 3) whose columns are the
                          eigenvectors, images, pixels; all in 0-255 units
  classes.json            [{"index", "wnid", "name"}], index = rank of the wnid in sorted order
  manifest.json           format version, source, settings, counts per split and per class,
                          every skipped file with its reason, timings; written LAST
  <split>.done.json       per-split completion record (settings + a digest of the sample list)
  .prepare.lock           held by prepare while it writes, shared by the trainings and evaluations that read
  .prepare-new/           only during a --force rebuild: the new store, built as above, until it replaces the old

The store keeps the mean image; the loader subtracts it (stored pixels stay uint8 and JPEG-able).

Never a broken store: files are written under temporary names and renamed when complete, and
manifest.json, the mark of a finished store, is written last and removed just before the first file
it vouches for is replaced: a split converted again keeps its old files until its new .beton is
complete, so a rerun stopped while converting leaves a finished store as it was. An interrupted
run (Ctrl-C, kill -9, a full disk) never leaves a manifest.json of its own; running again keeps each
split whose done-record matches the settings and sources, and redoes the rest. A finished store is left as
it is unless `force` (a rerun that finds it writes nothing, so needs no write access to it). A file
that cannot be decoded is skipped and listed with its reason; a worker process that dies (a crash
in a native decoder) costs only the file that killed it.

`force` on a folder that holds a store (finished or not) never touches the old one until the new one
is complete: the new store is built in OUT/.prepare-new (resumed there like any store if interrupted),
while the old one stays whole and readable by trainings (prepare holds the lock shared meanwhile); then
each new file is renamed over its old one, manifest.json out first and back in last (storedir.move_in). A run
stopped during those renames leaves OUT unfinished, and the next prepare on OUT completes them first.
The rebuild needs room for both stores. An --out folder that holds other files but none of a
store's (nor prepare's own) is refused: a store's files would be scattered among them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alexkit.errors import AlexkitError, PathRefused, refused
from alexkit.locks import BeingRead, NoLocks, held_by_another, only_writer
from alexkit.outputs import check_folder, remove_empty
from alexkit.paths import DEFAULT_STORE, expand_home, usable_cores, word
from alexkit.pipeline import imageops
from alexkit.pipeline.build import build, summary
from alexkit.pipeline.constants import STORE_FORMAT, STORE_FORMAT_VERSION, STORE_QUALITY, STORE_SIZE
from alexkit.pipeline.store import CLASSES, LOCK, MANIFEST, STAGING, STATS
from alexkit.pipeline.storedir import PROBE, STORE_FILES, move_in, not_a_store, read_json, rebuild, rebuild_beside_readers
from alexkit.pipeline.storedir import remove_if_only_lock
from alexkit.progress import warn

FORMATS = ("jpg", "raw")
MIN_SIZE, MAX_SIZE = 16, 1024  # 1024 px raw (3 MiB) still fits a .beton page


@dataclass(frozen=True)
class PrepareConfig:
    src: Path
    out: Path = DEFAULT_STORE
    size: int = STORE_SIZE  # stored images are size x size
    format: Literal["jpg", "raw"] = STORE_FORMAT
    quality: int = STORE_QUALITY  # JPEG quality, 1-100 (ignored for raw)
    workers: int = field(default_factory=usable_cores)
    force: bool = False  # rebuild a finished store
    for_training: bool = True  # warn where train, eval or show-batch could not use the store (bench loader's is not)
    remake: str | None = None  # how the caller has a finished store made again, said instead of "--force" (bench loader has none)
    out_flag: str = "--out"  # the flag that chose `out`, in the advice to choose another (bench loader's is --work)

    def __post_init__(self):
        if str(self.src) == "":  # Path("") would be the current folder
            raise AlexkitError('SRC "" names no folder; pass the folder that holds your ImageNet (or run `alexkit sample '
                               'DIR` for a small demo set)')  # fmt: skip
        if str(self.out) == "":
            raise AlexkitError(f'--out "" names no folder (it would be the current one); pass the store\'s folder, e.g. '
                               f"--out {DEFAULT_STORE}")  # fmt: skip
        object.__setattr__(self, "src", expand_home(self.src))
        object.__setattr__(self, "out", expand_home(self.out))
        if self.format not in FORMATS:
            raise AlexkitError(f"--format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise AlexkitError(f"--size {self.size}: choose {MIN_SIZE} to {MAX_SIZE} ({STORE_SIZE} is the paper's)")
        if not 1 <= self.quality <= 100:
            raise AlexkitError(f"--quality {self.quality}: choose 1 to 100 (90 or more keeps JPEG artefacts negligible)")
        if not 1 <= self.workers <= 4 * (os.cpu_count() or 1):
            raise AlexkitError(f"--workers {self.workers}: use 1 to {4 * (os.cpu_count() or 1)} (4 per core); more "
                               "processes than cores only add memory")  # fmt: skip

    def settings(self) -> dict:
        """What the stored pixels depend on; a split is reused only if these are equal."""
        return {
            "size": self.size,
            "format": self.format,
            "quality": self.quality if self.format == "jpg" else None,
            "filter": imageops.FILTER_NAME,
            "crop": "centre",
            "format_version": STORE_FORMAT_VERSION,
        }


def prepare(cfg: PrepareConfig) -> Path:
    """Write the store for cfg.src into cfg.out (see the module docstring); return cfg.out."""
    try:
        src, out, made = _check_paths(cfg)
    except PathRefused:  # a read-only folder: fine if there is nothing to write
        if _finished_as_asked(cfg, cfg.out, cfg.src.resolve()):
            return cfg.out
        raise
    try:
        with _only_writer(out, cfg.out_flag) as lock:
            try:
                with _writing(out):
                    return _prepare(cfg, src, out, lock)
            except BaseException:
                if made:  # a run that failed before writing anything (an empty source, say) leaves no folder
                    _unmake(made)  # while the lock is held: no other prepare is in it
                raise
    except NoLocks:  # taking the lock failed: nor can any other prepare hold one there, so the folder is ours
        if made:
            _unmake(made)
        raise
    except BeingRead as being_read:  # a training or evaluation reads the store (or a --force rebuilds it, as they do)
        return _while_read(cfg, src, out, being_read)
    except OSError:  # the lock file cannot be opened for writing (another user's store): as above
        if _finished_as_asked(cfg, out, src):
            return out
        raise


def _while_read(cfg: PrepareConfig, src: Path, out: Path, being_read: BeingRead) -> Path:
    """Where trainings or evaluations hold the store's lock shared (or a --force rebuild does, as they
    do): nothing to do if it is the store asked for, a --force builds the new one beside it, and
    anything else waits for them (`being_read` says so)."""
    rebuilding = held_by_another(out / STAGING / LOCK)
    if not cfg.force:
        try:
            if _finished(out, src, cfg):  # nothing to write
                return out
        except AlexkitError:  # other settings: say first that a rebuild is under way, where one is
            if not rebuilding:
                raise
    if rebuilding:
        raise AlexkitError(f"another `alexkit prepare --force` is rebuilding {out} (in {out / STAGING}); wait for it "
                           f"to end, or choose another {cfg.out_flag}") from None  # fmt: skip
    if cfg.force and (out / MANIFEST).is_file():  # a finished store: the new one can be built beside it meanwhile
        with _writing(out):
            return _rebuild(cfg, src, out)
    raise being_read


@contextlib.contextmanager
def _writing(out: Path):
    """An OSError past the checks of _check_paths (a full disk, a permission, a symlink loop) said as
    one line naming OUT; not a closed stdout (`| head`), which is nothing to fix in OUT."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise refused(exc, "fix that and run again (finished splits are kept)", out) from exc


def _finished_as_asked(cfg: PrepareConfig, out: Path, src: Path) -> bool:
    """Where `out` cannot be written: True, and says so, if it holds the finished store asked for (a rerun
    writes nothing, so needs no write access, nor the lock); else False, and the refusal stands."""
    if cfg.force:
        return False
    try:
        return _finished(out, src, cfg)
    except AlexkitError:  # a store of other settings: replacing it is what cannot be done
        return False


def _finished(out: Path, src: Path, cfg: PrepareConfig, writing: bool = False) -> bool:
    """True, and says so, where `out` holds a finished store of `src` with cfg's settings; an error
    where it holds a finished store of something else; False where it holds none (work to do), or
    one that lost a file, or (when `writing`, for training) one without val images: the source may
    have them now, as the warning asked (said when `writing`: this run writes what is missing)."""
    settings = cfg.settings()
    finished = read_json(out / MANIFEST)
    if not isinstance(finished, dict):
        return False
    recorded = finished.get("source", {}).get("path")
    if finished.get("settings") != settings or recorded is None or Path(recorded).resolve() != src:
        raise AlexkitError(
            f"{out} holds a finished store of {recorded} made with "
            f"{_describe(finished.get('settings', {}))} (asked: {src}, {_describe(settings)}); "
            f"{cfg.remake or f'pass --force to replace it, or choose another {cfg.out_flag}'}"
        )
    lost = [name for name in (STATS, CLASSES, *(f"{n}.beton" for n in finished.get("splits", {}))) if not (out / name).is_file()]
    if lost and writing:  # removed by hand since: written again, keeping the splits that are whole
        print(f"{out} holds a finished store of {src} with these settings but has lost {', '.join(lost)}; writing "
              "what is missing", flush=True)  # fmt: skip
    if lost:
        return False
    if writing and cfg.for_training and not finished.get("splits", {}).get("val", {}).get("images"):  # val added since the warning said to
        print(f"{out} holds a finished store of {src} without val images; looking for them in {src} again "
              "(the train split is kept if its files have not changed)", flush=True)  # fmt: skip
        return False
    print(f"{out} already holds a finished store of {src} with these settings; nothing to do (if {src} "
          f"has changed since, {cfg.remake or '--force rebuilds it'})")  # the source is not scanned again
    return True


def _only_writer(out: Path, out_flag: str = "--out"):
    """Hold out/.prepare.lock: two runs writing one store would rename each other's files."""
    return only_writer(out / LOCK, f"another `alexkit prepare` is writing {out}; wait for it to end, or choose another {out_flag}",
                       f"{out} is being read (by `alexkit train`, `eval`, `predict`, `show-batch` or a bench), whose store it "
                       f"would change; wait for them to end, or choose another {out_flag}")  # fmt: skip


def _prepare(cfg: PrepareConfig, src: Path, out: Path, lock) -> Path:
    for tmp in [*out.glob(".*.partial"), *out.glob(f"{PROBE}*")]:  # left by a prepare killed while writing (the lock
        tmp.unlink(missing_ok=True)  # is ours; a probe of another prepare's _check_paths may go: it says missing_ok)
    staging = out / STAGING
    remove_if_only_lock(staging)  # a --force stopped before its first file, or just after its move: nothing to keep
    if isinstance(read_json(staging / MANIFEST), dict) and not (out / MANIFEST).exists():
        print(f"{out}: putting in place the store that an interrupted `prepare --force` finished in {staging}", flush=True)
        move_in(staging, out)  # first: until then OUT is a mix of old and new files
        shutil.rmtree(staging)
    if not cfg.force and staging.is_dir():
        warn(f"{staging} holds an `alexkit prepare --force` rebuild that has not replaced the store; run that command "
             "again to finish it, or remove the folder to free its space")  # fmt: skip
    if not cfg.force and _finished(out, src, cfg, writing=True):
        return out
    if cfg.force and (staging.is_dir() or any((out / name).exists() for name in STORE_FILES)):
        return _rebuild(cfg, src, out, lock)
    manifest = build(cfg, src, out, keep=not cfg.force)
    summary(out, manifest)
    return out


def _rebuild(cfg: PrepareConfig, src: Path, out: Path, lock=None) -> Path:
    """--force where `out` holds a store: built beside it (storedir.rebuild), holding `lock` (out's,
    exclusive), or, where trainings or evaluations read the store (None), its lock shared as theirs."""
    def into(staging: Path) -> dict:
        return build(cfg, src, staging, keep=True, replacing=out)  # keeping what an interrupted --force finished there

    summary(out, rebuild(out, into, lock) if lock is not None else rebuild_beside_readers(out, into))
    return out


def _describe(settings: dict) -> str:
    """size 256, format jpg, quality 90; a raw store has no quality to name."""
    return ", ".join(f"{k} {settings.get(k)}" for k in ("size", "format", "quality") if settings.get(k) is not None)


# --- files ---


def _unmake(made: list[Path]) -> None:
    """Remove the folders this call made (OUT, then the parents it made for it) where nothing is in them."""
    remove_if_only_lock(made[0])
    remove_empty(made[1:])


def _check_paths(cfg: PrepareConfig) -> tuple[Path, Path, list[Path]]:
    """(resolved src, out, the folders this call made: out, then its parents it made) after the
    checks that need no scan; AlexkitError on unusable paths."""
    src, out = cfg.src.absolute(), cfg.out
    if not src.exists():
        gone = f"is a link to {os.readlink(src)}, which does not exist" if src.is_symlink() else "does not exist"
        raise AlexkitError(f"{src} {gone}; pass the folder that holds your ImageNet (or run `alexkit sample DIR` for a "
                           "small demo set)")  # fmt: skip
    src = src.resolve()  # the same folder by a link or `..` is the same source
    if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()):
        elsewhere = src.resolve().parent / "alexkit-store"
        raise AlexkitError(f"--out {out} is inside the source {src}; write the store elsewhere, e.g. --out {word(elsewhere)}")
    flag = cfg.out_flag  # bench loader has no --out: its stores are folders it names in its --work
    check_folder(out, flag)  # a file, a path under one, a link to nothing
    others = not_a_store(out)
    if others:  # `--out .`, `--out /`, a folder of runs: the store's files would be scattered among theirs
        example = f", e.g. --out {word(out / DEFAULT_STORE.name)}" if flag == "--out" else ""  # (no folder to suggest in --work)
        raise AlexkitError(f"{flag} {out} is a folder that holds no store but other files ({others}); pass a new or "
                           f"empty folder{example}")  # fmt: skip
    try:
        absent = [p for p in (out, *out.parents) if not os.path.lexists(p)]
        try:
            out.mkdir(parents=True)
            made = absent
        except FileExistsError:  # there already, or made by another process just now: not ours to remove
            made = []
        probe = out / f"{PROBE}{os.getpid()}"  # per process: two runs must not delete each other's
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)  # (a prepare holding the lock clears any it finds, a killed one's)
    except OSError as exc:
        why = exc.strerror or exc
        raise PathRefused(f"cannot write to {out} ({why}); choose a folder you can write to for {flag}") from exc
    return src, out, made
