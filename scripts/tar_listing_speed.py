"""Listing ImageNet's train tar (a tar of per-class tars) with alexkit's plain-header reader against
Python's tarfile, on a generated tar of the same shape.

    .venv/bin/python scripts/tar_listing_speed.py [--classes 200] [--per-class 1300] [--work /tmp/tar-listing]

Members hold 100-800 zero bytes, so the file is small (~1 KB a member) and stays in the page cache:
the figures are the CPU cost of the listing, which a cold disk adds its reads to. Each way is timed
`--repeats` times, alternately; the median is printed. Both give the same entries (checked here, and
in tests/test_datasets.py).
"""

import argparse
import io
import tarfile
import time
from pathlib import Path

from alexkit.datasets import tars

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--classes", type=int, default=200)
parser.add_argument("--per-class", type=int, default=1300)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--work", type=Path, default=Path("/tmp/tar-listing"))
args = parser.parse_args()

path = args.work / f"train-{args.classes}x{args.per_class}.tar"
if not path.exists():
    args.work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path.with_suffix(".part"), "w", format=tarfile.GNU_FORMAT) as outer:  # as GNU tar writes
        for c in range(args.classes):
            wnid, inner_bytes = f"n{1_000_000 + c:08d}", io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w", format=tarfile.GNU_FORMAT) as inner:
                for i in range(args.per_class):
                    data = bytes(100 + i * 7 % 700)
                    info = tarfile.TarInfo(f"{wnid}_{i}.JPEG")
                    info.size = len(data)
                    inner.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = inner_bytes.tell()
            inner_bytes.seek(0)
            outer.addfile(info, inner_bytes)
    path.with_suffix(".part").rename(path)

plain_listing = tars._plain_listing
ways = {"alexkit": plain_listing, "tarfile": lambda raw, start, end: None}  # None: tarfile lists it
times, listings = {name: [] for name in ways}, {}
for _ in range(args.repeats):
    for name, way in ways.items():
        tars._plain_listing = way
        start = time.perf_counter()
        listings[name], _ = tars.index_class_tars(path, lambda member: True, lambda *progress: None)
        times[name].append(time.perf_counter() - start)
tars._plain_listing = plain_listing
assert listings["alexkit"] == listings["tarfile"], "the two listings differ"

members = sum(map(len, listings["tarfile"].values()))
medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
print(f"{path} ({path.stat().st_size / 1e6:,.0f} MB): {len(listings['tarfile'])} per-class tars, {members:,} members")
for name, median in medians.items():
    print(f"{name:8s} {median:6.2f} s  {1e6 * median / members:5.1f} us a member  (median of {args.repeats})")
print(f"alexkit is {medians['tarfile'] / medians['alexkit']:.1f}x tarfile; at ImageNet's 1,281,167 train images: "
      f"{1_281_167 * medians['alexkit'] / members:.1f} s against {1_281_167 * medians['tarfile'] / members:.1f} s")
