"""AlexNet as in Krizhevsky, Sutskever & Hinton (2012): two columns, on one device.

Paper sections: 3.5 and Figure 2 (the architecture), 3.1 (ReLU), 3.2 (the two columns), 3.3 (LRN,
lrn.py), 3.4 (overlapping pooling: 3x3 windows at stride 2), 4.2 (dropout), 5 (initialisation).

The two GPU columns of the paper become groups=2 convolutions (group 0 = column 0's channels
first) on conv2, conv4 and conv5; conv3, fc6, fc7 and fc8 see both columns; LRN normalises within
each column. `alexkit.model.placement` puts the columns on two devices instead.

Geometry (224 input, the defaults):
    conv1 11x11/4 -> 55x55x96   LRN, pool 3/2 -> 27x27x96
    conv2 5x5 p2  -> 27x27x256  LRN, pool 3/2 -> 13x13x256
    conv3 3x3 p1  -> 13x13x384
    conv4 3x3 p1  -> 13x13x384
    conv5 3x3 p1  -> 13x13x256  pool 3/2 -> 6x6x256 -> fc6 4096 -> fc7 4096 -> fc8 num_classes
How 224 gives 55: the authors' code counts conv1's outputs rounding up, ceil((224 - 11) / 4) + 1 = 55,
so its last window reads 3 zero pixels past the bottom/right edge of the crop. We pad exactly that:
zeros on the bottom and right only, (-(S - 11)) mod 4 of them (3 for 224). Pools round up the same
way (ceil_mode), which changes nothing for 224 (55, 27 and 13 pool exactly) and lets small crops
(36 and up, e.g. 56 for the CPU demo) reach a 1x1 map instead of an empty one.

Input: (N, 3, S, S) float, 0-255 RGB with the training set's mean image subtracted.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexkit.model.lrn import LocalResponseNorm

COLUMNS = 2
MIN_INPUT_SIZE = 36  # the smallest crop whose pool5 output is not empty
Init = Literal["paper", "sturdy"]
# Inputs per output unit of each layer in the paper's net (224 input, width 1): conv2 sees 48 channels x 5 x 5.
PAPER_FAN_IN = dict(conv1=3 * 11 * 11, conv2=48 * 5 * 5, conv3=256 * 3 * 3, conv4=192 * 3 * 3, conv5=192 * 3 * 3,
                    fc6=256 * 6 * 6, fc7=4096, fc8=4096)  # fmt: skip


def conv1_pad(input_size: int) -> int:
    """Zero rows/columns added at the bottom/right so conv1's last window fits (3 for 224)."""
    return (-(input_size - 11)) % 4


def _pooled(size: int) -> int:
    return math.ceil((size - 3) / 2) + 1 if size >= 2 else 0


def feature_size(input_size: int) -> int:
    """Side of pool5's output for an S x S input: 6 for 224, 1 for 56."""
    if input_size < 11:
        return 0
    conv1 = (input_size + conv1_pad(input_size) - 11) // 4 + 1  # 55 for 224
    return _pooled(_pooled(_pooled(conv1)))  # conv2..conv5 keep the size (padding 2, 1, 1, 1)


def _channels(paper: int, width: float) -> int:
    """The paper's channel count scaled by `width`, even so both columns get the same number."""
    return max(COLUMNS, COLUMNS * round(paper * width / COLUMNS))


class AlexNet(nn.Module):
    """The paper's network; `width`, `fc_features` and `input_size` shrink it for quick runs."""

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        width: float = 1.0,
        fc_features: int = 4096,
        input_size: int = 224,
        dropout: float = 0.5,
        init: Init = "paper",
    ):
        super().__init__()
        if num_classes < 1 or width <= 0 or fc_features < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"bad AlexNet size: {num_classes=} {width=} {fc_features=} {dropout=}")
        if feature_size(input_size) < 1:
            raise ValueError(f"input_size {input_size} is too small for AlexNet: use {MIN_INPUT_SIZE} or more")
        if init not in ("paper", "sturdy"):
            raise ValueError(f"init must be 'paper' or 'sturdy', got {init!r}")
        self.args = dict(num_classes=num_classes, width=width, fc_features=fc_features,
                         input_size=input_size, dropout=dropout, init=init)  # fmt: skip
        c1, c2, c3, c4, c5 = (_channels(c, width) for c in (96, 256, 384, 384, 256))
        self.pad1 = conv1_pad(input_size)
        self.conv1 = nn.Conv2d(3, c1, 11, stride=4)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=COLUMNS)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)  # crosses the columns
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=COLUMNS)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=COLUMNS)
        self.lrn = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, groups=COLUMNS)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.dropout = nn.Dropout(dropout)
        self.fc6 = nn.Linear(c5 * feature_size(input_size) ** 2, fc_features)
        self.fc7 = nn.Linear(fc_features, fc_features)
        self.fc8 = nn.Linear(fc_features, num_classes)
        init_weights(self, init)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, self.pad1, 0, self.pad1))  # (N, 3, 227, 227) for 224
        x = self.pool(self.lrn(F.relu(self.conv1(x))))  # (N, 96, 27, 27)
        x = self.pool(self.lrn(F.relu(self.conv2(x))))  # (N, 256, 13, 13)
        x = F.relu(self.conv3(x))  # (N, 384, 13, 13)
        x = F.relu(self.conv4(x))  # (N, 384, 13, 13)
        x = self.pool(F.relu(self.conv5(x)))  # (N, 256, 6, 6)
        x = torch.flatten(x, 1)  # (N, 9216): column 0's 128 channels first
        x = self.dropout(F.relu(self.fc6(x)))  # (N, 4096)
        x = self.dropout(F.relu(self.fc7(x)))  # (N, 4096)
        return self.fc8(x)  # (N, num_classes) logits


def init_weights(model: AlexNet, init: Init) -> None:
    """'paper' (section 5): weights N(0, 0.01), bias 1 on conv2, conv4, conv5, fc6, fc7 and 0 elsewhere.

    'sturdy': bias 0.1 instead of 1 (the change Caffe users made when the paper's init left the
    loss flat), and weights N(0, 0.01 * sqrt(paper fan-in / fan-in)): the paper's 0.01 at full
    width, larger for narrowed layers so that each layer keeps the full net's gain. Use it when
    the paper's init stalls: the loss sits at ln(num_classes) for thousands of steps. That is the
    rule for narrow nets (width < 1, small fc) and small inputs, where N(0, 0.01) shrinks the
    signal ~10x per layer; on the full net it happens with some seeds and batch sizes.
    (He-style init is not offered: its scale assumes inputs of about unit spread, and alexkit feeds
    0-255 pixels minus the mean, as the paper does.)
    """
    bias_one = ("conv2", "conv4", "conv5", "fc6", "fc7")
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = getattr(model, name)
        std = 0.01
        if init == "sturdy":
            std *= math.sqrt(PAPER_FAN_IN[name] / layer.weight[0].numel())
        nn.init.normal_(layer.weight, 0.0, std)
        bias = (1.0 if init == "paper" else 0.1) if name in bias_one else 0.0
        nn.init.constant_(layer.bias, bias)
