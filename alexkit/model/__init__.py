"""The network (AlexNet, two columns) and how it is placed on devices."""

from __future__ import annotations

from alexkit.model.alexnet import MIN_INPUT_SIZE, AlexNet, feature_size, init_weights
from alexkit.model.lrn import LocalResponseNorm, local_response_norm

__all__ = [
    "MIN_INPUT_SIZE",
    "AlexNet",
    "LocalResponseNorm",
    "build_from_checkpoint",
    "feature_size",
    "init_weights",
    "local_response_norm",
]


def build_from_checkpoint(ckpt: dict) -> AlexNet:
    """The trained AlexNet of a checkpoint dict written by `alexkit train` (`last.pt`/`best.pt`), on CPU.

    Rebuilds the net from the constructor arguments stored with it (`ckpt["model_args"]`) and
    loads `ckpt["model"]`; call `.eval()` and move it to a device as needed.
    """
    model = AlexNet(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model
