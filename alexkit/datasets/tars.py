"""ImageNet's official tars indexed in place: where each image's bytes lie, with no extraction.

The train tar is a tar of per-class tars (`n01440764.tar`, members in no particular order); the val
tar is flat. An image is (member name, absolute byte offset in the outer file, size), so a worker
reads it with one seek and read (`layouts.read_sample_bytes`).

Python's tarfile ends a listing quietly at a damaged header after the first one, or at a header cut
off by an incomplete download; a whole tar ends with a zero block (or, written without one, exactly
where its last member ends, which GNU tar accepts too), so each listing is checked to end there.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from alexkit.errors import AlexkitError

_BLOCK = 512  # tar's header and padding unit

Entry = tuple[str, int, int]  # (member base name, absolute offset of its data, size)
Tick = Callable[[str, int, int, str], None]  # (what, done, total, unit): progress of a long listing


def index_class_tars(path: Path, keep: Callable[[str], bool], tick: Tick) -> tuple[dict[str, list[Entry]], int]:
    """({per-class tar stem: [entries kept]}, how many other files the outer tar holds). `tick` hears
    of the megabytes indexed after each per-class tar."""
    per_class: dict[str, list[Entry]] = {}
    ignored = 0
    total_mb = os.path.getsize(path) // 1_000_000
    try:
        with tarfile.open(path, "r:") as outer, open(path, "rb") as raw:
            for member in outer:  # per-class tars, in no particular order
                base = os.path.basename(member.name)
                stem, ext = os.path.splitext(base)
                if not member.isfile() or ext.lower() != ".tar" or base.startswith("."):  # ._x.tar: a Mac's copy
                    ignored += member.isfile()
                    continue
                # An inner TarFile over the raw file, started at the inner tar's first byte, reports
                # offsets from the start of the raw file: outer offset_data + offset inside the inner tar.
                raw.seek(member.offset_data)
                end = member.offset_data + member.size
                entries = per_class.setdefault(stem, [])
                with tarfile.open(fileobj=raw, mode="r:") as inner:
                    for m in inner:
                        if m.offset_data + m.size > end:
                            raise AlexkitError(f"{path}: {member.name} overruns its member; download {path.name} again")
                        if m.isfile() and keep(m.name):
                            entries.append((os.path.basename(m.name), m.offset_data, m.size))
                    _check_end(inner, raw, end, f"{path}: {member.name}", path.name)
                tick(f"indexing {path.name}", min(end // 1_000_000, total_mb), total_mb, "MB")
            _check_end(outer, raw, os.path.getsize(path), str(path), path.name)
    except (tarfile.TarError, EOFError) as exc:
        raise _damaged(path, exc) from exc
    return per_class, ignored


def index_flat_tar(path: Path, keep: Callable[[str], bool]) -> list[Entry]:
    """Sorted entries of the members kept, from a flat tar (ILSVRC2012_img_val.tar)."""
    try:
        with tarfile.open(path, "r:") as tar, open(path, "rb") as raw:
            found = [(os.path.basename(m.name), m.offset_data, m.size) for m in tar if m.isfile() and keep(m.name)]
            _check_end(tar, raw, os.path.getsize(path), str(path), path.name)
    except (tarfile.TarError, EOFError) as exc:
        raise _damaged(path, exc) from exc
    return sorted(found)


def _check_end(tar: tarfile.TarFile, raw, end: int, what: str, download: str) -> None:
    """`tar` has been listed to where it stopped (tar.offset in `raw`, which holds the tar up to `end`):
    a whole tar has a zero block there, or ends there."""
    if tar.offset == end:
        return
    raw.seek(tar.offset)
    block = raw.read(_BLOCK) if tar.offset + _BLOCK <= end else b""
    if len(block) != _BLOCK or any(block):
        where = "is cut off" if not block else "has a damaged header"
        raise AlexkitError(f"{what} {where} after {len(tar.getmembers()):,} members; download {download} again")


def _damaged(path: Path, exc: Exception) -> AlexkitError:
    return AlexkitError(f"{path}: cannot read the tar ({exc}); the download is incomplete or damaged, fetch it again")
