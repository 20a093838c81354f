"""What reading a checkpoint's CRC-32s again costs beside torch.load, on a checkpoint of the
paper's AlexNet (its weights and an SGD momentum buffer of the same size, as train's last.pt holds).

    .venv/bin/python scripts/checkpoint_check_speed.py [--repeats 5] [--work /tmp/checkpoint-check]

torch.load does not check the CRC-32 that torch.save stores for every record; alexkit.checkpoints
checks them after the load (failed_crc). Each is timed `--repeats` times, alternately, with the file
in the page cache; the medians are printed.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from alexkit.model import AlexNet
from alexkit.checkpoints import failed_crc

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--work", type=Path, default=Path("/tmp/checkpoint-check"))
args = parser.parse_args()

args.work.mkdir(parents=True, exist_ok=True)
path = args.work / "last.pt"
weights = AlexNet().state_dict()
torch.save({"model": weights, "momentum": {name: w.clone() for name, w in weights.items()}}, path)
loads, checks = [], []
for _ in range(args.repeats):
    start = time.perf_counter()
    torch.load(path, map_location="cpu", weights_only=True)
    loads.append(time.perf_counter() - start)
    start = time.perf_counter()
    assert failed_crc(path) is None
    checks.append(time.perf_counter() - start)
load, check = statistics.median(loads), statistics.median(checks)
print(f"{path}: {path.stat().st_size / 1e6:,.0f} MB; torch.load {load:.3f} s, CRC-32 check {check:.3f} s "
      f"({check / load:.2f}x the load, {path.stat().st_size / 1e9 / check:.1f} GB/s)")
