"""alexkit's LRN against `nn.LocalResponseNorm` per column, on conv1's output at batch 32.

    .venv/bin/python scripts/lrn_speed.py [--repeats 7]

Prints the median time of forward + backward for each, with NCHW and channels-last input, on the
CPU (the two give the same outputs and gradients: tests/test_model.py).
"""

import argparse
import time

import torch
from torch import nn

from alexkit.model.lrn import local_response_norm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=7)
args = parser.parse_args()


def per_column(x: torch.Tensor) -> torch.Tensor:
    lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    return torch.cat([lrn(half) for half in x.chunk(2, dim=1)], dim=1)


torch.manual_seed(0)
for layout in (torch.contiguous_format, torch.channels_last):
    x0 = torch.randn(32, 96, 55, 55).contiguous(memory_format=layout)  # conv1's output, both columns
    for name, fn in (("alexkit", lambda x: local_response_norm(x, groups=2)), ("nn.LocalResponseNorm", per_column)):
        times = []
        for _ in range(args.repeats):
            x = x0.clone().requires_grad_()
            start = time.perf_counter()
            fn(x).sum().backward()
            times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        kind = "channels-last" if layout == torch.channels_last else "NCHW"
        print(f"{kind:14s} {name:22s} {1e3 * median:6.0f} ms (median of {args.repeats}, forward + backward)")
