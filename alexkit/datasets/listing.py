"""Listing a raw dataset's folders: which entries are images, which are never data (dot files, a
Mac's __MACOSX), and the checks a listing makes on the way (links to nothing, links back up)."""

from __future__ import annotations

import os
from pathlib import Path

from alexkit.errors import AlexkitError

IMAGE_EXTENSIONS = frozenset(
    ".jpeg .jpg .jpe .jfif .png .bmp .webp .gif .tif .tiff .ppm .pgm .pbm .pnm".split()
)


def list_images(folder: Path, prefix: str, others: list[str], above: frozenset = frozenset()) -> list[str]:
    """Sorted names "<prefix>/<file>" of the image files under `folder` (recursive, hidden skipped;
    what is not a regular file, a FIFO say, is one of the `others`). `above`: the (device, inode) of
    the folders that hold this one, so that a link back up to one of them is an error, not a loop."""
    st = os.stat(folder)
    if (st.st_dev, st.st_ino) in above:
        link = next((p for p in (folder, *folder.parents) if p.is_symlink()), folder)  # the one that leads back
        raise AlexkitError(f"{link} is a link to {os.path.realpath(link)}, which holds it, so the images under it would be "
                           "listed without end; remove that link")  # fmt: skip
    above = above | {(st.st_dev, st.st_ino)}
    found = []
    with os.scandir(folder) as entries:
        for e in entries:
            if hidden(e.name):
                continue
            if e.is_dir():
                found += list_images(Path(e.path), f"{prefix}/{e.name}", others, above)
            elif image_file(e):
                found.append(f"{prefix}/{e.name}")
            else:
                others.append(f"{prefix}/{e.name}")
    found.sort()
    return found


def image_file(entry: os.DirEntry) -> bool:
    """A file with an image extension: a regular one, or a link to a file that is gone (prepare then
    stops, naming it). A FIFO under an image name would block its reader for ever."""
    if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
        return False
    try:
        return entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
    except OSError:  # a loop of links (ELOOP): a name that leads to no file, listed as a link to nothing is
        return True


def scan_top(folder: Path, others: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(sorted image file names, sorted sub-folder names) directly in `folder`, hidden skipped; the
    names of its other files are added to `others` where given."""
    files, dirs = [], []
    with os.scandir(folder) as entries:
        for e in entries:
            if hidden(e.name):
                continue
            if e.is_dir():
                dirs.append(e.name)
            elif image_file(e):
                files.append(e.name)
            else:
                check_not_dangling(e)
                if others is not None:
                    others.append(e.name)
    return sorted(files), sorted(dirs)


def check_not_dangling(entry: os.DirEntry | Path) -> None:
    """A link to nothing among the folders is an error: a class folder linked to a disk that is not
    mounted would otherwise drop its class, and shift the labels of every class after it."""
    path = Path(entry.path if isinstance(entry, os.DirEntry) else entry)
    if path.is_symlink() and not path.exists():
        raise AlexkitError(f"{path} is a link to {os.readlink(path)}, which does not exist (a disk not mounted?); "
                           "make its target available, or remove the link")  # fmt: skip


def is_image(name: str) -> bool:
    base = os.path.basename(name)
    return not hidden(base) and "__MACOSX/" not in name and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def hidden(name: str) -> bool:
    """Dot files (.DS_Store, macOS's ._ copies) and the __MACOSX folder a Mac's zip adds: never data."""
    return name.startswith(".") or name == "__MACOSX"


def visible(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if not hidden(e.name))
