"""ImageNet's official tars indexed in place: where each image's bytes lie, with no extraction.

The train tar is a tar of per-class tars (`n01440764.tar`, members in no particular order); the val
tar is flat. An image is (member name, absolute byte offset in the outer file, size), so a worker
reads it with one seek and read (`layouts.read_sample_bytes`).

Python's tarfile ends a listing quietly at a damaged header after the first one, or at a header cut
off by an incomplete download; a whole tar ends with a zero block (or, written without one, exactly
where its last member ends, which GNU tar accepts too), so each listing is checked to end there.

Listing is the slow part: tarfile spends ~17 us of Python per header, ~22 s for the train tar's 1.28
million. A tar of plain file and folder headers (short names, no links, as ImageNet's image names
are) is listed by `_plain_listing`, which builds no objects, ~6 us a header
(`scripts/tar_listing_speed.py`); any other header (a long name, pax, a link, a bad checksum
or number, a cut) sends that tar to tarfile, which lists it and raises its errors. The two agree
entry for entry wherever the plain reader answers (tests/test_datasets.py).
"""

from __future__ import annotations

import os
import posixpath
import re
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
                end = member.offset_data + member.size
                listing = _listing(raw, member.offset_data, end, f"{path}: {member.name}", path.name, keep)
                per_class.setdefault(stem, []).extend(_kept(listing, keep))
                tick(f"indexing {path.name}", min(end // 1_000_000, total_mb), total_mb, "MB")
            _check_end(outer, raw, os.path.getsize(path), str(path), path.name)
    except (tarfile.TarError, EOFError) as exc:
        raise _damaged(path, exc) from exc
    return per_class, ignored


def index_flat_tar(path: Path, keep: Callable[[str], bool]) -> list[Entry]:
    """Sorted entries of the members kept, from a flat tar (ILSVRC2012_img_val.tar)."""
    try:
        with open(path, "rb") as raw:
            found = _kept(_listing(raw, 0, os.path.getsize(path), str(path), path.name, keep), keep)
    except (tarfile.TarError, EOFError) as exc:
        raise _damaged(path, exc) from exc
    return sorted(found)


def _kept(listing: list[Entry], keep: Callable[[str], bool]) -> list[Entry]:
    """The entries `keep` accepts by their full names, named by their base names."""
    return [(os.path.basename(name), offset, size) for name, offset, size in listing if keep(name)]


def _listing(raw, start: int, end: int, what: str, download: str, keep: Callable[[str], bool]) -> list[Entry]:
    """(name, data offset, size) of each regular file of the tar that fills bytes [start, end) of
    `raw`, checked to be whole. Offsets are from the start of `raw`."""
    found = _plain_listing(raw, start, end)
    if found is not None:
        return found
    raw.seek(start)  # a TarFile started there reports offsets from the start of `raw`
    found, links = [], []
    with tarfile.open(fileobj=_Bounded(raw, end), mode="r:") as tar:  # which sees nothing past `end`
        for m in tar:
            if m.size < 0:  # tarfile takes "-1000" for a size, and would go back and forth
                raise AlexkitError(f"{what} has a damaged header after {len(found):,} members; download {download} again")
            if not m.isdir() and m.offset_data + m.size > end:  # a folder's size is no data: not skipped
                raise AlexkitError(f"{what} is cut off after {len(found):,} members ({m.name} runs past its end); "
                                   f"download {download} again")  # fmt: skip
            if m.isfile():
                found.append((m.name, m.offset_data, m.size))
            elif m.islnk() or m.issym():
                links.append(m)
        _check_end(tar, raw, end, what, download)
    return found + _followed(links, found, what, keep)


def _followed(links: list[tarfile.TarInfo], found: list[Entry], what: str, keep: Callable[[str], bool]) -> list[Entry]:
    """Entries for the tar's links to its own files (hard links, as a tar of a tree made with
    `cp -al` or `ln` holds; symbolic ones), with their target's bytes. A link to what the tar does
    not hold is an error if `keep` takes its name (an image's: listed, it would read no image)."""
    files = {posixpath.normpath(name): (offset, size) for name, offset, size in found}
    entries = []
    for m in links:
        target = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(m.name), m.linkname)
        hit = files.get(posixpath.normpath(target))
        if hit is not None:
            entries.append((m.name, *hit))
        elif keep(m.name):
            raise AlexkitError(f"{what}: {m.name} is a link to {m.linkname}, which the tar does not hold; make the tar "
                               "again with the files themselves (tar --dereference)")  # fmt: skip
    return entries


class _Bounded:
    """`raw` for tarfile, ending at `end`: a tar inside another ends where its member does, even
    without end blocks, instead of running on into the next member's header."""

    def __init__(self, raw, end: int):
        self.raw, self.end = raw, end

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.end - self.raw.tell())
        return self.raw.read(left if n is None or n < 0 else min(n, left))

    def seek(self, *args) -> int:
        return self.raw.seek(*args)

    def tell(self) -> int:
        return self.raw.tell()


_FILE, _DIRECTORY = b"0", b"5"  # the type flags of a plain tar's headers (GNU tar's and tarfile's)


def _plain_listing(raw, start: int, end: int) -> list[Entry] | None:
    """`_listing`'s entries, read as tarfile reads them, where every header is a plain file or
    folder header with a good checksum and the tar ends whole; else None (tarfile takes over)."""
    found, at = [], start
    if end == start:
        return None  # an empty file is no tar: tarfile says so
    while at < end:
        raw.seek(at)
        header = raw.read(_BLOCK)
        if len(header) != _BLOCK or at + _BLOCK > end:
            return None  # cut off
        if not any(header):
            return found  # the end-of-archive block
        kind, stored_sum = header[156:157], _octal(header[148:156])
        if kind not in (_FILE, _DIRECTORY) or stored_sum != 256 + sum(header) - sum(header[148:156]):
            return None  # a long name, pax or sparse header, a link; a damaged header
        size = _octal(header[124:136])
        if size is None or size < 0 or not all(_PLAIN_NUMBER.fullmatch(header, a, b) for a, b in _OTHER_NUMBERS):
            return None  # base-256 (a member of 8 GiB or more), not a number, or negative: tarfile decides
        data = at + _BLOCK
        if kind == _DIRECTORY:  # as in tarfile: a folder's size, if any, is not skipped
            at = data
            continue
        if data + size > end:
            return None
        name, prefix = _text(header[0:100]), _text(header[345:500])
        found.append((f"{prefix}/{name}" if prefix else name, data, size))
        at = data + -(-size // _BLOCK) * _BLOCK
    return found if at == end else None


# mode, uid, gid, mtime, devmajor, devminor: not needed here, but tarfile refuses a header where one
# is not a number, and so must this reader, to list exactly what tarfile lists. A field of the plain
# form (spaces, octal digits, then spaces or NULs) is one tarfile reads; any other goes to tarfile.
_OTHER_NUMBERS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))
_PLAIN_NUMBER = re.compile(rb" *[0-7]*[ \0]*")


def _octal(field: bytes) -> int | None:
    """A header's octal number field as tarfile reads it (empty: 0); None if it is not one."""
    if field[:1] in (b"\x80", b"\xff"):  # base-256
        return None
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        return None


def _text(field: bytes) -> str:
    """A header's text field as tarfile reads it: up to the first NUL, in the file system's encoding."""
    return os.fsdecode(field.split(b"\0", 1)[0])


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
