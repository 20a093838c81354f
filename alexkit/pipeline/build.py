"""Writing a store into a folder: scan the source, convert each split (or keep the one an earlier run
finished there with the same settings and sources), the training set's statistics, the class table,
and manifest.json last. prepare.py decides where (OUT, or OUT/.prepare-new for a --force) and
whether; what a finished store holds is in its docstring.

Speed: the per-image work (imageops.convert: decode, resize, encode, then the statistics' sums in
the same pass) runs in a pool of processes over chunks of samples, a bounded number of chunks in
flight, results taken in order and written by the main process; memory stays flat whatever the
dataset size. About 1.7 CPU ms per ImageNet-like JPEG at 256 px, statistics included (see
`alexkit bench prepare`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from alexkit.datasets import Dataset, find_dataset, sample_place
from alexkit.errors import AlexkitError, PathRefused, too_large
from alexkit.progress import Progress, Ticks, amount, counted, duration, warn
from alexkit.pipeline import imageops
from alexkit.pipeline.beton import MODE_JPG, MODE_RAW, PAGE_SIZE, BetonWriter
from alexkit.pipeline.constants import STORE_FORMAT_VERSION, crop_size, size_for_crop
from alexkit.pipeline.store import CLASSES, MANIFEST, SPLITS, STAGING, STATS, write_stats
from alexkit.pipeline.storedir import clear, read_json, remove, write_json
from alexkit.pipeline.workers import ConvertJob, Workers, chunks

if TYPE_CHECKING:
    from alexkit.pipeline.prepare import PrepareConfig

# q90 at 256 px: 30.6 KB per image in bench loader's JPEG store of photo-like sources (its
# BetonReader's size.mean()); only for the free-space warning.
JPEG_BYTES_PER_PIXEL = 0.47


def build(cfg: PrepareConfig, src: Path, out: Path, keep: bool, replacing: Path | None = None) -> dict:
    """Scan `src` and write the store into `out`, reusing (if `keep`) each split an earlier run finished
    there with these settings and sources; return its manifest, written last. `replacing`: the store a
    --force rebuild will replace, whose val split a source without one must not take away. `src` is
    held against `alexkit sample` throughout: the labels read at the scan must stay its images'."""
    with sample_place.reading(src):
        return _build(cfg, src, out, keep, replacing)


def _build(cfg: PrepareConfig, src: Path, out: Path, keep: bool, replacing: Path | None) -> dict:
    from alexkit.model import MIN_INPUT_SIZE  # torch: the workers load it anyway

    settings = cfg.settings()
    started = time.perf_counter()
    print(f"scanning {src} ...", flush=True)
    with Ticks() as ticks:
        ds = find_dataset(src, ticks)
    scan_s = time.perf_counter() - started
    for warning in ds.warnings:
        warn(warning)
    if not ds.splits.get("val") and replacing is not None and (replacing / "val.beton").is_file():
        raise AlexkitError(f"{src} has no val split (or no val images), so the rebuilt store would have none, and "
                           f"`alexkit train`, `eval` and `show-batch` need one; {replacing} keeps its own: add val images "
                           f"in one of the layouts in README.md, or choose another {cfg.out_flag}")  # fmt: skip
    if cfg.for_training and crop_size(cfg.size) < MIN_INPUT_SIZE:  # a store for the loader's tests or show-batch
        warn(f"--size {cfg.size}: its {crop_size(cfg.size)} px crops are too small for AlexNet, so train, eval and "
             f"predict will refuse this store (--size {size_for_crop(MIN_INPUT_SIZE)} or more for them)")  # fmt: skip
    if not ds.splits.get("val") and cfg.for_training:
        warn(f"{src} has no val split (or no val images): `alexkit train`, `eval` and `show-batch` need one; add val "
             "images in one of the layouts in README.md and run again")  # fmt: skip
    counts = {name: len(samples) for name, samples in ds.splits.items()}
    listed = ", ".join(f"{n} {counted(c, 'image')}" for n, c in counts.items())
    print(f"{ds.layout}: {counted(len(ds.classes), 'class', 'classes')}, {listed}", flush=True)
    _check_free_space(out, sum(counts.values()), cfg)

    if not keep:
        clear(out, keep=())
    records = {}  # (a finished store stays whole, manifest.json in, until a new split is complete: _write_split)
    with Workers(cfg.workers) as workers:
        for name in [n for n in SPLITS if n in ds.splits]:
            fingerprint = _fingerprint(name, ds, settings)  # 1.28M file sizes and times: seconds
            record = _completed_split(out, name, fingerprint)
            if record is not None:
                print(f"{name}: kept from an earlier run ({counted(record['images'], 'image')})", flush=True)
            else:
                record = _write_split(out, name, ds, cfg, fingerprint, workers)
            records[name] = record

    remove(out / MANIFEST)  # (if no split was written) from here on the store is incomplete until manifest.json is back
    clear(out, keep=tuple(ds.splits))  # the splits the source no longer has
    write_json(out / CLASSES, [{"index": c.index, "wnid": c.wnid, "name": c.name} for c in ds.classes])
    manifest = _manifest(src, ds, settings, records, scan_s, time.perf_counter() - started)
    write_json(out / MANIFEST, manifest)  # last: the store is now complete
    return manifest


# --- one split ---


def _write_split(out: Path, name: str, ds: Dataset, cfg: PrepareConfig, fingerprint: dict, workers: Workers) -> dict:
    """Convert and write one split; its .beton, (for train) stats.npz, then its done-record. The
    split's old files, and the store's manifest.json, stay until the new .beton is complete: a run
    stopped while converting (hours for ImageNet's train) leaves an earlier store as it was."""
    samples = ds.splits[name]
    beton, done = out / f"{name}.beton", out / f"{name}.done.json"
    with_stats = name == "train"
    mode = MODE_JPG if cfg.format == "jpg" else MODE_RAW
    sums = imageops.PixelSums(cfg.size)
    per_class = [0] * len(ds.classes)
    skipped: list[dict] = []
    decoder_warnings: list[dict] = []  # kept images the decoder printed a warning about
    started = time.perf_counter()
    writer, converted = None, 0
    try:
        writer = BetonWriter(beton, capacity=len(samples))
        with Progress(name, len(samples), fields=("skipped",)) as progress:
            job = ConvertJob(size=cfg.size, format=cfg.format, quality=cfg.quality, with_stats=with_stats)
            for results, chunk_sums in workers.run(chunks(samples, cfg.workers), job):
                for index, payload, said in results:
                    sample = samples[index]
                    if payload is None:
                        skipped.append({"split": name, "file": sample.name or sample.path, "reason": said})
                        continue
                    if said:
                        decoder_warnings.append({"split": name, "file": sample.name or sample.path, "message": said})
                    writer.add(payload, sample.label, mode=mode, width=cfg.size, height=cfg.size)
                    per_class[sample.label] += 1
                if chunk_sums is not None:
                    sums.merge(chunk_sums)
                converted += len(results)
                progress.update(converted, skipped=len(skipped))
        if samples and not any(per_class):  # a val split of them all would pass for a store, and be refused by train
            first = f" (first: {skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""
            raise AlexkitError(f"none of the {name} split's {counted(len(samples), 'image')} in {ds.root} could be "
                               f"decoded{first}; check the source files (finished splits are kept)")  # fmt: skip
        count = writer.finish()
        remove(out / MANIFEST)  # the store is incomplete from here until manifest.json is back
        remove(done)  # an old record must never vouch for the file moved in now
        if with_stats:
            remove(out / STATS)  # nor old statistics for it
        writer.move_in()
    except BaseException as exc:  # Ctrl-C included: leave no partial file behind
        if writer is not None:
            writer.abort()
        beton.with_name(beton.name + ".partial").unlink(missing_ok=True)  # a writer that failed while starting
        if isinstance(exc, OSError):
            fix = too_large(exc) or f"free space or fix permissions on {out}"
            raise PathRefused(f"cannot write {beton}: {exc.strerror or exc}; {fix}, then run again (finished splits are kept)") from exc
        raise
    seconds = time.perf_counter() - started
    if with_stats:
        write_stats(out / STATS, sums)
    record = {
        **fingerprint,
        "source": {"path": str(ds.root)},  # for the command that finishes an unfinished store (not compared: a copy is the same)
        "images": count,
        "skipped": skipped,
        "decoder_warnings": decoder_warnings,
        "per_class": per_class,
        "seconds": round(seconds, 2),
        "images_per_s": round(len(samples) / max(seconds, 1e-9), 1),
        "bytes": beton.stat().st_size,
    }
    write_json(done, record)
    rate = record["images_per_s"]
    warned = f", {len(decoder_warnings)} kept with a decoder warning" if decoder_warnings else ""
    print(f"{name}: {counted(count, 'image')} written to {beton} in {seconds:.1f} s ({rate:,.0f} images/s), "
          f"{len(skipped)} skipped{warned}", flush=True)  # fmt: skip
    return record


def _completed_split(out: Path, name: str, fingerprint: dict) -> dict | None:
    """The done-record of a split finished earlier with the same settings and samples, else None
    (and where there was one, why it is not kept)."""
    record = read_json(out / f"{name}.done.json")
    if not isinstance(record, dict) or not (out / f"{name}.beton").is_file():
        return None
    if name == "train" and not (out / STATS).is_file():
        return None
    differs = [k for k, v in fingerprint.items() if record.get(k) != v]
    if differs:
        why = "other settings" if "settings" in differs else "other files (names, labels, sizes or modification times differ)"
        print(f"{name}: the one an earlier run finished here was made from {why}; converting it again", flush=True)
        return None
    return record


def _fingerprint(name: str, ds: Dataset, settings: dict) -> dict:
    """What a finished split depends on: settings, and a digest of its sample list (names relative to
    the source, labels), with each file's size and modification time (a file replaced under the same
    name makes the split redone). Not the source's path: a copy that keeps names and times (`cp -a`,
    `rsync -a`, a job's copy to node-local disk) keeps the split an interrupted run finished. Nor the
    layout's name, which val images added beside train/ can change (class-folders to
    official-extracted) while train's samples stay the same."""
    digest, stats = hashlib.sha256(), {}
    samples = ds.splits[name]
    with Ticks() as ticks:
        for i, s in enumerate(samples):
            if s.path not in stats:  # a tar's members share their tar's
                st = os.stat(s.path)
                stats[s.path] = f"{st.st_size}\t{st.st_mtime_ns}"
            digest.update(f"{s.name or s.path}\t{s.label}\t{s.size}\t{stats[s.path]}\n".encode("utf-8", "surrogateescape"))
            if i % 10_000 == 0 or i + 1 == len(samples):
                ticks(f"checking {name} files", i + 1, len(samples), "files")
    return {
        "split": name,
        "settings": settings,
        "samples": len(ds.splits[name]),
        "digest": digest.hexdigest(),
    }


# --- progress and reporting ---


def _manifest(src: Path, ds: Dataset, settings: dict, records: dict, scan_s: float, total_s: float) -> dict:
    splits = {
        name: {
            "file": f"{name}.beton",
            "sources": r["samples"],
            "images": r["images"],
            "skipped": len(r["skipped"]),
            "per_class": r["per_class"],
            "bytes": r["bytes"],
            "seconds": r["seconds"],
            "images_per_s": r["images_per_s"],
        }
        for name, r in records.items()
    }
    return {
        "format_version": STORE_FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(src), "layout": ds.layout},
        "settings": settings,
        "classes": len(ds.classes),
        "splits": splits,
        "skipped": [item for r in records.values() for item in r["skipped"]],
        "decoder_warnings": [item for r in records.values() for item in r.get("decoder_warnings", [])],
        "warnings": list(ds.warnings),
        "timings": {
            "scan_s": round(scan_s, 2),
            **{f"{name}_s": r["seconds"] for name, r in records.items()},
            "total_s": round(total_s, 2),
        },
    }


def summary(out: Path, manifest: dict) -> None:
    """The last line of a prepare: what the store holds, what was skipped, how long it took."""
    parts = [f"{name} {counted(s['images'], 'image')}" for name, s in manifest["splits"].items()]
    size = sum(s["bytes"] for s in manifest["splits"].values())  # for copies to other nodes, say
    parts.append(amount(size))
    skipped = len(manifest["skipped"])
    files = "file" if skipped == 1 else "files"
    note = f"; {skipped} {files} skipped, listed with their reasons in {out / MANIFEST}" if skipped else "; no file skipped"
    warned = len(manifest["decoder_warnings"])
    if warned:
        note += f"; {counted(warned, 'image')} kept with a decoder warning, listed in {out / MANIFEST}"
    print(f"store ready: {out} ({', '.join(parts)}{note}; {duration(manifest['timings']['total_s'])} in all)")


def _check_free_space(out: Path, images: int, cfg: PrepareConfig) -> None:
    per_image = cfg.size * cfg.size * (3 if cfg.format == "raw" else JPEG_BYTES_PER_PIXEL)
    need = images * per_image * 1.05 + 2 * PAGE_SIZE
    free = shutil.disk_usage(out).free
    if free < need:
        both = " (--force keeps the old store until the new one is complete: both need room)" if out.name == STAGING else ""
        warn(
            f"{out} has {amount(free)} free, the store needs about {amount(need)}{both}; "
            f"the run may stop on a full disk (rerun resumes)"
        )
