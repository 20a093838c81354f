"""The paper's two-column network on two devices: `ColumnAlexNet`, the same function as `AlexNet`
(whose columns are groups=2 convolutions on one device) with column i's layers on devices[i].

The columns exchange activations only where the paper does: conv3's input, fc6's, fc7's and fc8's.
fc8 lives on column 0's device. Checkpoints hold `AlexNet`'s layout (`alexnet_state_dict`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexkit.errors import AlexkitError
from alexkit.model.alexnet import COLUMNS, AlexNet
from alexkit.model.lrn import LocalResponseNorm

SPLIT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")  # halved by output rows


def _half(layer: nn.Conv2d | nn.Linear, column: int, device: torch.device) -> nn.Module:
    """Column `column`'s half of `layer`'s outputs, as an ungrouped layer on `device`.

    A groups=2 conv's group g reads only column g's inputs, so its output rows [g*C/2, (g+1)*C/2)
    are an ordinary conv on that column; conv3 and the fc layers read both columns.
    """
    rows = layer.weight.shape[0] // COLUMNS
    if isinstance(layer, nn.Conv2d):
        half = nn.Conv2d(layer.weight.shape[1], rows, layer.kernel_size, stride=layer.stride, padding=layer.padding)
    else:
        half = nn.Linear(layer.weight.shape[1], rows)
    with torch.no_grad():
        half.weight.copy_(layer.weight[column * rows : (column + 1) * rows])
        half.bias.copy_(layer.bias[column * rows : (column + 1) * rows])
    return half.to(device)


class _Column(nn.Module):
    def __init__(self, model: AlexNet, column: int, device: torch.device):
        super().__init__()
        for name in SPLIT_LAYERS:
            setattr(self, name, _half(getattr(model, name), column, device))


class ColumnAlexNet(nn.Module):
    """`model`'s weights laid out as the paper's two columns, column i on devices[i]."""

    def __init__(self, model: AlexNet, devices: tuple[torch.device, torch.device]):
        super().__init__()
        if model.fc6.out_features % COLUMNS:
            raise AlexkitError(f"fc_features {model.fc6.out_features} must be even to split fc6/fc7 into two columns")
        self.args, self.pad1, self.devices = dict(model.args), model.pad1, devices
        self.columns = nn.ModuleList(_Column(model, i, devices[i]) for i in range(COLUMNS))
        self.fc8 = _copy(model.fc8, devices[0])
        lrn = model.lrn  # its settings, whatever they are; each column normalises its own channels
        self.lrn = LocalResponseNorm(lrn.size, lrn.alpha, lrn.beta, lrn.k, groups=1)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.dropout = nn.Dropout(model.args["dropout"])

    def forward(self, x: Tensor) -> Tensor:
        cols = list(zip(self.columns, self.devices))
        x = F.pad(x, (0, self.pad1, 0, self.pad1))  # (N, 3, 227, 227) for 224
        a = [self.pool(self.lrn(F.relu(c.conv1(x.to(d))))) for c, d in cols]  # 2 x (N, 48, 27, 27)
        a = [self.pool(self.lrn(F.relu(c.conv2(a_i)))) for (c, _), a_i in zip(cols, a)]  # 2 x (N, 128, 13, 13)
        a = [F.relu(c.conv3(_gather(a, d))) for c, d in cols]  # exchange: conv3 reads both columns
        a = [self.pool(F.relu(c.conv5(F.relu(c.conv4(a_i))))) for (c, _), a_i in zip(cols, a)]  # 2 x (N, 128, 6, 6)
        h = [torch.flatten(a_i, 1) for a_i in a]  # 2 x (N, 4608); side by side = AlexNet's (N, 9216)
        h = [self.dropout(F.relu(c.fc6(_gather(h, d)))) for c, d in cols]  # exchange; 2 x (N, 2048)
        h = [self.dropout(F.relu(c.fc7(_gather(h, d)))) for c, d in cols]  # exchange; 2 x (N, 2048)
        return self.fc8(_gather(h, self.devices[0]))  # exchange; (N, num_classes) on column 0's device

    def alexnet_state_dict(self) -> dict[str, Tensor]:
        """The weights in `AlexNet`'s layout, on CPU."""
        state = {}
        for name in SPLIT_LAYERS:
            halves = [getattr(c, name) for c in self.columns]
            state[f"{name}.weight"] = torch.cat([h.weight.detach().cpu() for h in halves])
            state[f"{name}.bias"] = torch.cat([h.bias.detach().cpu() for h in halves])
        state["fc8.weight"], state["fc8.bias"] = self.fc8.weight.detach().cpu(), self.fc8.bias.detach().cpu()
        return state

    def load_alexnet_state_dict(self, state: dict[str, Tensor]) -> None:
        model = AlexNet(**self.args)
        model.load_state_dict(state)
        fresh = ColumnAlexNet(model, self.devices)
        with torch.no_grad():
            for mine, theirs in zip(self.parameters(), fresh.parameters()):
                mine.copy_(theirs)


def _gather(parts: list[Tensor], device: torch.device) -> Tensor:
    """Both columns' activations side by side (column 0 first) on `device`: a cross-column link."""
    return torch.cat([p.to(device) for p in parts], dim=1)


def _copy(layer: nn.Linear, device: torch.device) -> nn.Linear:
    copy = nn.Linear(layer.in_features, layer.out_features)
    copy.load_state_dict(layer.state_dict())
    return copy.to(device)
