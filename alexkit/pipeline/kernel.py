"""The one-pass CPU kernel of the DALI graphs (graphs.py): a Numba function that DALI's
numba_function operator runs per sample.

For each of a sample's V views (V = 1 for train and center, 10 for tencrop) it reads the uint8
window of the image and the float32 mean window once and writes the output view once:
    out[v, :, h, w'] = pixel[y + h, x + w] - mean[v, h, w] + offset,  w' = C - 1 - w if mirrored
the same float32 arithmetic as DALI's own operators, which need two or three passes (see
graphs.py for why and for the figures).
"""

from __future__ import annotations

import signal

import numpy as np

from alexkit.stops import held


def _kernel_chw(out, mean_windows, data, corners, offset):
    """out (V, 3, C, C) float32: view v is the CxC window of data (H, W, 3) uint8 at corners[v] =
    (x, y, mirror), minus mean_windows[v] (C, C, 3), plus offset (3,), mirrored when corners[v, 2]."""
    C = mean_windows.shape[1]
    o0, o1, o2 = offset[0], offset[1], offset[2]
    for v in range(mean_windows.shape[0]):
        x, y, mirror = corners[v, 0], corners[v, 1], corners[v, 2]
        for h in range(C):
            for w in range(C):
                t = C - 1 - w if mirror else w
                out[v, 0, h, t] = np.float32(data[y + h, x + w, 0]) - mean_windows[v, h, w, 0] + o0
                out[v, 1, h, t] = np.float32(data[y + h, x + w, 1]) - mean_windows[v, h, w, 1] + o1
                out[v, 2, h, t] = np.float32(data[y + h, x + w, 2]) - mean_windows[v, h, w, 2] + o2


def _kernel_hwc(out, mean_windows, data, corners, offset):
    """As _kernel_chw, with out (V, C, C, 3)."""
    C = mean_windows.shape[1]
    for v in range(mean_windows.shape[0]):
        x, y, mirror = corners[v, 0], corners[v, 1], corners[v, 2]
        for h in range(C):
            for w in range(C):
                t = C - 1 - w if mirror else w
                for c in range(3):
                    out[v, h, t, c] = np.float32(data[y + h, x + w, c]) - mean_windows[v, h, w, c] + offset[c]


def _shape_chw(outs, ins):
    """Output shapes: the mean windows' (V, C, C, 3) as (V, 3, C, C). The mean windows are the
    kernel's first input because DALI 2.4's setup wrapper shows a setup function only as many
    inputs as the operator has outputs."""
    for i in range(len(outs[0])):
        outs[0][i][0] = ins[0][i][0]
        outs[0][i][1] = ins[0][i][3]
        outs[0][i][2] = ins[0][i][1]
        outs[0][i][3] = ins[0][i][2]


def _shape_hwc(outs, ins):
    """Output shapes: the mean windows' (V, C, C, 3)."""
    for i in range(len(outs[0])):
        for d in range(4):
            outs[0][i][d] = ins[0][i][d]


_COMPILED: dict = {}  # layout (channels_last) -> the operator, or None without numba


def is_compiled(channels_last: bool) -> bool:
    """Whether this process has compiled the kernel for this layout already (using it is then free)."""
    return _COMPILED.get(channels_last) is not None


def one_pass_op(channels_last: bool):
    """The kernel as a DALI operator, compiled on first use (about 2 s) and shared by every
    pipeline of the process; None where numba is not installed or cannot compile it (the graph then
    uses DALI's own operators)."""
    if channels_last not in _COMPILED:
        try:
            import nvidia.dali.types as types
            from nvidia.dali.plugin.numba import NumbaFunction

            run, shape = (_kernel_hwc, _shape_hwc) if channels_last else (_kernel_chw, _shape_chw)
            with held(signal.SIGINT):  # a Ctrl-C inside numba's compiler would be dropped: raised after it
                op = NumbaFunction(run_fn=run, setup_fn=shape, device="cpu", out_types=[types.FLOAT],
                                   in_types=[types.FLOAT, types.UINT8, types.INT32, types.FLOAT],
                                   outs_ndim=[4], ins_ndim=[4, 3, 2, 1])  # fmt: skip
        except Exception:  # no numba, one that cannot load here (its plugin imports numba.cuda too), or one that
            op = None  # cannot compile the kernel (a numba older than the numpy beside it): DALI's operators then
        _COMPILED[channels_last] = op
    return _COMPILED[channels_last]
