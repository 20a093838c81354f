"""The FFCV .beton format, read and written directly.

Why not FFCV's own writer: its workers run the image code, and one exception there leaves the
parent waiting forever; it writes at the final path, so an interrupted run leaves a file that looks
complete. We decode, resize and encode in our own worker pool and hand only finished bytes to this
writer, which runs in the main process, writes to a temporary name and renames when complete.

Why not FFCV's loader for reading: its pipeline decodes on the CPU with numba; we want the JPEG
bytes themselves (for DALI's GPU decoder) and a memmap gives them in a few microseconds.

Layout of a file (all little-endian, as in ffcv/types.py of FFCV 1.0.2):
  header          version u2, num_fields u2, page_size u4, num_samples u8, alloc_table_ptr u8
  field table     per field: type_id u1, name u1[16], arguments u1[1024]
  metadata        num_samples records; here (image: mode u1, width u2, height u2, data_ptr u8; label: i8)
  data pages      page_size-aligned pages; a sample's bytes never straddle two pages
  alloc table     per sample: sample_id u8, ptr u8, size u8
The files we write are read by a plain `ffcv.loader.Loader` (tested).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexkit.errors import AlexkitError

VERSION = 2
PAGE_SIZE = 1 << 23  # 8 MiB, FFCV's default (4 x 2 MiB huge pages)
MODE_JPG, MODE_RAW = 0, 1
TYPE_INT, TYPE_RGB = 1, 2  # FFCV's type ids for IntField and RGBImageField

HEADER = np.dtype(
    [("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")],
    align=True,
)
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
# RGBImageField's metadata (packed, 13 bytes), then IntField's, combined with align=True as FFCV does.
IMAGE_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
METADATA = np.dtype([("image", IMAGE_META), ("label", "<i8")], align=True)


class BetonWriter:
    """Append (image bytes, label) samples in order; `close()` finalises and renames into place.

    `capacity` is an upper bound on the number of samples (space is reserved for their metadata);
    fewer may be written (skipped files): the header records the real count.
    """

    def __init__(self, path: Path, capacity: int):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".partial")
        self.capacity = capacity
        self.metadata = np.zeros(capacity, dtype=METADATA)
        self.allocs = np.zeros(capacity, dtype=ALLOC)  # 24 bytes a sample (tuples would take ~160)
        self.count = 0
        self.file = open(self.tmp_path, "wb")
        fields = np.zeros(2, dtype=FIELD_DESC)
        for i, (type_id, name) in enumerate([(TYPE_RGB, b"image"), (TYPE_INT, b"label")]):
            fields[i]["type_id"] = type_id
            fields[i]["name"][: len(name)] = np.frombuffer(name, dtype="<u1")
        # Both fields' argument blocks are all zeros in FFCV 1.0.2 (settings are not recorded).
        self.metadata_start = HEADER.itemsize + fields.nbytes
        data_start = self.metadata_start + capacity * METADATA.itemsize
        self.page_start = -(-data_start // PAGE_SIZE) * PAGE_SIZE  # first page boundary after metadata
        self.file.write(np.zeros(1, dtype=HEADER).tobytes())
        self.file.write(fields.tobytes())
        self.file.seek(self.page_start)
        self.pos = self.page_start

    def add(self, data: bytes | np.ndarray, label: int, *, mode: int, width: int, height: int) -> None:
        """Append one sample: JPEG bytes (mode=MODE_JPG) or HWC uint8 pixels (mode=MODE_RAW)."""
        if self.count >= self.capacity:
            raise ValueError(f"more than the {self.capacity} samples reserved")
        buf = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else memoryview(data)
        size = buf.nbytes
        if size > PAGE_SIZE:
            raise ValueError(f"sample of {size} bytes exceeds the {PAGE_SIZE}-byte page")
        page_left = PAGE_SIZE - (self.pos - self.page_start) % PAGE_SIZE
        if size > page_left:  # never straddle a page: FFCV's loaders read whole pages
            self.file.write(b"\0" * page_left)
            self.pos += page_left
        self.file.write(buf)
        record = self.metadata[self.count]
        record["image"]["mode"], record["image"]["width"], record["image"]["height"] = mode, width, height
        record["image"]["data_ptr"] = self.pos
        record["label"] = label
        self.allocs[self.count] = (self.count, self.pos, size)
        self.pos += size
        self.count += 1

    def close(self) -> int:
        """finish(), then move_in(). Returns the count."""
        count = self.finish()
        self.move_in()
        return count

    def finish(self) -> int:
        """Pad the last page, write metadata, allocation table and header, fsync: the file is complete
        under its temporary name. Returns the count."""
        used = (self.pos - self.page_start) % PAGE_SIZE
        if used:
            self.file.write(b"\0" * (PAGE_SIZE - used))
            self.pos += PAGE_SIZE - used
        alloc_ptr = self.pos
        self.file.truncate(alloc_ptr)  # with no samples the data pages were never written: the file ends short
        self.file.seek(alloc_ptr)
        self.file.write(self.allocs[: self.count].tobytes())
        self.file.seek(self.metadata_start)
        self.file.write(self.metadata[: self.count].tobytes())
        header = np.zeros(1, dtype=HEADER)
        header["version"], header["num_fields"], header["page_size"] = VERSION, 2, PAGE_SIZE
        header["num_samples"], header["alloc_table_ptr"] = self.count, alloc_ptr
        self.file.seek(0)
        self.file.write(header.tobytes())
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.count

    def move_in(self) -> None:
        """Rename the finished file into place (over the old one, if any)."""
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        """Close and delete the temporary file (the final path is never touched), also when
        closing fails (on a full disk, flushing the last buffer fails again)."""
        try:
            self.file.close()
        except OSError:
            pass
        finally:
            self.tmp_path.unlink(missing_ok=True)


@dataclass
class BetonReader:
    """Random access to a .beton written by BetonWriter or by FFCV (image + label fields)."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        file_size = self.path.stat().st_size
        if file_size < HEADER.itemsize:
            raise self._broken(f"{file_size} bytes, shorter than its header")
        header = np.fromfile(self.path, dtype=HEADER, count=1)[0]
        if int(header["version"]) != VERSION:
            raise self._broken(f"FFCV format version {int(header['version'])}, expected {VERSION}")
        n_fields, self.num_samples = int(header["num_fields"]), int(header["num_samples"])
        offset = HEADER.itemsize + n_fields * FIELD_DESC.itemsize  # the metadata's start
        alloc_ptr, alloc_end = int(header["alloc_table_ptr"]), int(header["alloc_table_ptr"]) + self.num_samples * ALLOC.itemsize
        if offset + self.num_samples * METADATA.itemsize > alloc_ptr or alloc_end > file_size:
            raise self._broken(f"its tables of {self.num_samples} samples do not fit in its {file_size:,} bytes; truncated?")
        fields = np.fromfile(self.path, dtype=FIELD_DESC, count=n_fields, offset=HEADER.itemsize)
        names = [bytes(f["name"]).rstrip(b"\0").decode() for f in fields]
        if names[:2] != ["image", "label"] or list(fields["type_id"][:2]) != [TYPE_RGB, TYPE_INT]:
            raise self._broken(f"fields {names}, expected image (RGBImageField) and label (IntField)")
        self.metadata = np.fromfile(self.path, dtype=METADATA, count=self.num_samples, offset=offset)
        allocs = np.fromfile(self.path, dtype=ALLOC, count=self.num_samples, offset=alloc_ptr)
        if self.num_samples and int((allocs["ptr"] + allocs["size"]).max()) > alloc_ptr:
            raise self._broken("a sample runs past the data pages")
        order = np.argsort(allocs["sample_id"], kind="stable")
        self.ptr = allocs["ptr"][order].astype(np.int64)
        self.size = allocs["size"][order].astype(np.int64)
        self.labels = self.metadata["label"].astype(np.int64)
        self.modes = self.metadata["image"]["mode"].astype(np.uint8)
        self.heights = self.metadata["image"]["height"].astype(np.int64)
        self.widths = self.metadata["image"]["width"].astype(np.int64)
        self.mm = np.memmap(self.path, dtype=np.uint8, mode="r")

    def __len__(self) -> int:
        return self.num_samples

    def _broken(self, why: str) -> AlexkitError:
        from alexkit.pipeline.store import rewrite  # store imports this module

        return AlexkitError(f"{self.path} is not a readable .beton ({why}); {rewrite(self.path.parent)}")

    def raw_bytes(self, i: int) -> np.ndarray:
        """The stored bytes of sample i: JPEG bytes (mode 0) or H*W*3 pixels (mode 1); a memmap view."""
        p = self.ptr[i]
        return self.mm[p : p + self.size[i]]

    def pixels(self, i: int) -> np.ndarray:
        """Sample i as (H, W, 3) uint8 RGB, decoding JPEG with PIL (for tests and small tools)."""
        data = self.raw_bytes(i)
        if self.modes[i] == MODE_RAW:
            return np.asarray(data).reshape(int(self.heights[i]), int(self.widths[i]), 3)
        import io

        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB"))
