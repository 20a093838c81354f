"""The store the GPU checks read: photo-like JPEGs (`alexkit bench prepare`'s sources, ~500x375,
10 classes), TRAIN for train/ and the last VAL for val/, through `alexkit prepare` at 256 px, JPEG q90.

    python3 scripts/gpu/make_store.py STORE [TRAIN VAL]      (defaults 1000 250)

Built where it is used (check.py's first step, where STORE holds no store): it needs only what
prepare's write path needs (numpy, pillow, opencv, torch, typer; not FFCV or numba), and the store
itself does not travel. The sources go to STORE-src and are removed once the store is built.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from alexkit.bench.prepare import write_photo_like
from alexkit.paths import usable_cores


def main() -> int:
    store = Path(sys.argv[1])
    train, val = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (1000, 250)
    src = store.with_name(store.name + "-src")
    shutil.rmtree(src, ignore_errors=True)  # sources of a cut-short run: some already moved to val/
    for path in write_photo_like(src, train + val, workers=usable_cores()):
        if int(path.stem.split("_")[1]) >= train:  # by number: the list comes sorted by class folder
            dest = src / "val" / path.parent.name / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            path.rename(dest)
    cmd = [sys.executable, "-m", "alexkit", "prepare", str(src), "--out", str(store), "--size", "256", "--format", "jpg",
           "--quality", "90"]  # fmt: skip
    rc = subprocess.call(cmd)
    if rc == 0:
        shutil.rmtree(src)
    return rc


if __name__ == "__main__":
    sys.exit(main())
