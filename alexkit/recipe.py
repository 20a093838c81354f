"""The paper's recipe, piece by piece: the optimizer, the lr and its schedule, one step, dropout's seed.

    SGD, global batch 128, momentum 0.9, weight decay 5e-4 on weights only (as the authors' code),
    lr 0.01 divided by 10 when validation top-1 error stops improving for `patience` epochs, at most
    3 times, then stop; at most 90 epochs. Optional linear lr scaling (lr * batch / 128) with warm-up.
    The paper's section 5 writes the update as v <- 0.9 v - 0.0005 lr w - lr dL/dw, w <- w + v;
    README.md ("Where the paper leaves a choice") says where alexkit's differs and why.

alexkit/train.py runs them: its TrainConfig holds the values, its loop calls them in order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from alexkit.train import TrainConfig

PAPER_BATCH = 128  # the batch the paper's lr 0.01 goes with; linear scaling is relative to it


def base_lr(cfg: TrainConfig) -> float:
    """The lr before any drop or warm-up: --lr, times batch / 128 with --lr-scaling linear."""
    return cfg.lr * (cfg.batch_size / PAPER_BATCH if cfg.lr_scaling == "linear" else 1.0)


class PlateauSchedule:
    """lr / 10 after `patience` epochs without a lower val top-1 error; after `max_drops` drops, stop."""

    def __init__(self, lr: float, patience: int, max_drops: int):
        self.lr, self.patience, self.max_drops = lr, patience, max_drops
        self.best, self.bad_epochs, self.drops, self.stopped = math.inf, 0, 0, False

    def step(self, val_error: float) -> None:
        if val_error < self.best:
            self.best, self.bad_epochs = val_error, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            if self.drops == self.max_drops:
                self.stopped = True
            else:
                self.lr, self.drops, self.bad_epochs = self.lr / 10, self.drops + 1, 0

    def state_dict(self) -> dict:
        return dict(lr=self.lr, best=self.best, bad_epochs=self.bad_epochs, drops=self.drops, stopped=self.stopped)

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.best, self.bad_epochs = state["lr"], state["best"], state["bad_epochs"]
        self.drops, self.stopped = state["drops"], state["stopped"]


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD with weight decay on weights (conv kernels, fc matrices) and, if asked, on biases."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim <= 1]
    groups = [dict(params=weights, weight_decay=cfg.weight_decay),
              dict(params=biases, weight_decay=cfg.weight_decay if cfg.decay_biases else 0.0)]  # fmt: skip
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               amp: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One SGD step on a batch; returns the loss and the logits, detached."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(images)  # (N, num_classes)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def warmup_factor(epoch: int, step: int, steps: int, warmup_epochs: int) -> float:
    """Linear ramp from 1/(warmup steps) to 1 over the first `warmup_epochs` epochs."""
    total = warmup_epochs * steps
    done = epoch * steps + step + 1
    return min(1.0, done / total) if total else 1.0


def dropout_seed(seed: int, epoch: int, rank: int) -> int:
    """Dropout's seed for one epoch of one process: ranks draw different masks, and a resumed epoch the same."""
    return seed * 1_000_003 + epoch * 1009 + rank
