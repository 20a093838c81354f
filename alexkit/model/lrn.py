"""Local response normalisation across channels (paper section 3.3), applied within each column.

    b[i] = a[i] / (k + (alpha / n) * sum_{j = i - n//2}^{i + (n-1)//2} a[j]^2) ** beta

The sum runs over the channels of the same column only (a window never crosses the column
boundary), and is clipped at the column's first and last channel.

Alpha convention: the sum is scaled by alpha / n, as in the authors' code (cuda-convnet divides
its `scale` by the window size), Caffe and `torch.nn.LocalResponseNorm`. With alpha = 1e-4 this is
what the authors computed; the paper's formula read literally (no division) equals alpha = 5e-4
here.

`local_response_norm` gives the same outputs and gradients as `nn.LocalResponseNorm` applied to
each column (tested), with a hand-written backward (first derivatives only: asking for a second,
as a gradient penalty or a Hessian-vector product does, raises an error rather than a wrong value): no pow in the backward, no padded copies,
beta = 0.75 through rsqrt. On the CPU its forward + backward of conv1's output (32 x 96 x 55 x 55)
is faster than `nn.LocalResponseNorm` per column, by the most on channels-last input
(`scripts/lrn_speed.py` times both).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _window_sum(t: Tensor, before: int, after: int) -> Tensor:
    """s[:, :, i] = sum of t[:, :, j] for j in [i - before, i + after], clipped to the channels of dim 2."""
    s = t.clone()
    channels = t.shape[2]
    for d in range(1, min(before, channels - 1) + 1):
        s[:, :, d:] += t[:, :, : channels - d]
    for d in range(1, min(after, channels - 1) + 1):
        s[:, :, : channels - d] += t[:, :, d:]
    return s


def _neg_pow(den: Tensor, beta: float) -> Tensor:
    """den ** -beta; for beta = 0.75 as den^-1/2 * den^-1/4, which is cheaper than pow."""
    if beta == 0.75:
        r = torch.rsqrt(den)
        return r.mul_(r.sqrt())
    return den.pow(-beta)


def _wide(x: Tensor) -> Tensor:
    """x in float32, or float64 if it already is (bf16 under autocast would lose the small sums)."""
    return x if x.dtype == torch.float64 else x.float()


class _LRN(torch.autograd.Function):
    """Computes in float32 (or float64) whatever the input dtype and returns the input dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
        n, c, h, w = x.shape
        xf = _wide(x).reshape(n, groups, c // groups, h, w)  # (N, columns, channels per column, H, W)
        den = _window_sum(xf * xf, size // 2, (size - 1) // 2).mul_(alpha / size).add_(k)
        scale = _neg_pow(den, beta)
        ctx.save_for_backward(x, den, scale)
        ctx.params = (size, alpha, beta, groups)
        return (xf * scale).reshape(n, c, h, w).to(x.dtype)

    @staticmethod
    @once_differentiable  # den and scale came from x with autograd off: a second derivative would miss their share
    def backward(ctx, grad: Tensor):
        # d out[j] / d x[i] = [i == j] scale[j] - (2 alpha beta / n) x[j] x[i] scale[j] / den[j]
        # for every j whose window holds i: the transposed window swaps `before` and `after`.
        x, den, scale = ctx.saved_tensors
        size, alpha, beta, groups = ctx.params
        n, c, h, w = x.shape
        xf = _wide(x).reshape(n, groups, c // groups, h, w)
        g_scaled = _wide(grad).reshape(n, groups, c // groups, h, w) * scale
        t = (g_scaled * xf).div_(den)
        dx = _window_sum(t, (size - 1) // 2, size // 2).mul_(xf).mul_(-2.0 * alpha * beta / size).add_(g_scaled)
        return dx.reshape(n, c, h, w).to(x.dtype), None, None, None, None, None


def local_response_norm(
    x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1
) -> Tensor:
    """LRN of x (N, C, H, W) within each of `groups` equal blocks of channels (the columns)."""
    if x.dim() != 4 or x.shape[1] % groups:
        raise ValueError(f"expected (N, C, H, W) with C divisible by {groups}, got {tuple(x.shape)}")
    return _LRN.apply(x, size, alpha, beta, k, groups)


class LocalResponseNorm(nn.Module):
    """LRN with the paper's constants (k=2, n=5, alpha=1e-4, beta=0.75), per column; alpha is divided
    by n, as in the authors' code (the paper's formula does not divide: see the module docstring)."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 2):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: Tensor) -> Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"
