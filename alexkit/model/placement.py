"""Where the network runs: one device, the paper's two columns on two devices, DDP, or both.

    none         one device; the columns are groups=2 convolutions (`AlexNet` itself)
    columns      column 0 on one GPU, column 1 on another (`ColumnAlexNet`), as in the paper
    ddp          data parallel over every process torchrun starts (NCCL on GPUs, gloo on CPU)
    ddp-columns  both: each process holds two GPUs, 2*LOCAL_RANK and 2*LOCAL_RANK + 1

The split network itself is model/columns.py. Checkpoints always hold `AlexNet`'s state_dict,
whatever the placement (`alexnet_state_dict`, `load_alexnet_state_dict`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from alexkit.errors import AlexkitError, why
from alexkit.model.alexnet import AlexNet
from alexkit.model.columns import ColumnAlexNet
from alexkit.launcher import from_launcher, under_torchrun
from alexkit.ranks import agree, before_joining, join

Parallel = Literal["none", "columns", "ddp", "ddp-columns"]


def unwrap(model: nn.Module) -> nn.Module:
    """The AlexNet or ColumnAlexNet inside DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def alexnet_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """`AlexNet`'s state_dict (CPU tensors) of a placed model, whatever its placement."""
    inner = unwrap(model)
    if isinstance(inner, ColumnAlexNet):
        return inner.alexnet_state_dict()
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


def load_alexnet_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    inner = unwrap(model)
    if isinstance(inner, ColumnAlexNet):
        inner.load_alexnet_state_dict(state)
    else:
        inner.load_state_dict(state)


@dataclass(frozen=True)
class Placement:
    """Where this process runs: its rank among `world_size` processes and its device(s)."""

    parallel: Parallel
    rank: int
    world_size: int
    devices: tuple[torch.device, ...]  # one, or one per column

    @property
    def device(self) -> torch.device:
        """Where inputs go and outputs come out (column 0's device)."""
        return self.devices[0]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def idle_gpus_note(placement: Placement, visible: int) -> str | None:
    """A note when this node has GPUs the job leaves idle: a plain `alexkit train` on an 8-GPU machine
    uses one of them. `visible`: torch.cuda.device_count()."""
    if placement.device.type != "cuda":
        return None
    per_process = len(placement.devices)
    on_node = from_launcher("LOCAL_WORLD_SIZE", 0, least=1)  # processes torchrun started on this node; 0: none
    used = max(on_node, 1) * per_process  # this node's share
    usable = visible // per_process * per_process  # columns take GPUs two at a time
    if usable <= used:
        return None
    which = "all" if usable == visible else usable
    said = f"note: {visible} GPUs are visible and this node uses {used}; to train on {which} of them"
    nproc = f"--nproc-per-node={usable // per_process}"
    if on_node:  # under torchrun already, maybe on several nodes: its other flags stand
        return f"{said}, start torchrun with {nproc}"
    parallel = "ddp-columns" if per_process == 2 else "ddp"
    return f"{said}: torchrun --standalone {nproc} -m alexkit train --parallel {parallel} ..."


def check_device(device: str) -> None:
    """A --device value must be auto, cpu, cuda or cuda:N."""
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise AlexkitError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")


def setup(parallel: Parallel, device: str, error: AlexkitError | None = None) -> Placement:
    """Pick this process's device(s); for DDP, join the process group torchrun describes. `error`: one
    this process met before (ranks.before_joining): raised in every process, before any joins."""
    rank, world_size, local_rank = 0, 1, 0
    ddp = parallel.startswith("ddp")
    if ddp:
        if not under_torchrun():  # `error`: one met alone (only WORLD_SIZE set, by hand), which said to meet the others
            raise error or AlexkitError(f"--parallel {parallel} needs torchrun: torchrun --nproc-per-node=N -m alexkit train ...")
        rank, world_size = from_launcher("RANK", 0), from_launcher("WORLD_SIZE", 1, least=1)
        local_rank = from_launcher("LOCAL_RANK", 0)
    chosen, mine = before_joining(lambda: _use(_devices(parallel, device, local_rank)))
    if ddp and not dist.is_initialized():
        backend = None if chosen is None else "nccl" if chosen[0].type == "cuda" else "gloo"
        join(backend, rank, world_size, error or mine, device)
    else:  # alone, or in a group that the caller joined
        agree(error or mine)
    return Placement(parallel, rank, world_size, chosen)


def _devices(parallel: Parallel, device: str, local_rank: int) -> tuple[torch.device, ...]:
    """This process's device(s): one, or two for the columns."""
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise AlexkitError(f"--device {device}: CUDA is not available here; use --device cpu")
    per_process = 2 if parallel.endswith("columns") else 1
    if not want_cuda:
        return (torch.device("cpu"),) * per_process
    if device.startswith("cuda:") and not parallel.startswith("ddp"):
        first = int(device.split(":")[1])
        devices = tuple(torch.device("cuda", first + i) for i in range(per_process))
    else:
        devices = tuple(torch.device("cuda", local_rank * per_process + i) for i in range(per_process))
    if devices[-1].index >= torch.cuda.device_count():
        fix = {"columns": "use --parallel none", "ddp": "use fewer processes per node"}.get(
            parallel, "use fewer processes per node, or --parallel ddp")
        raise AlexkitError(f"--parallel {parallel} needs GPU {devices[-1].index}, but only "
                           f"{torch.cuda.device_count()} are visible; {fix}")  # fmt: skip
    return devices


def _use(devices: tuple[torch.device, ...]) -> tuple[torch.device, ...]:
    """`devices`, made current: the first CUDA call, where a busy or broken GPU fails."""
    if devices[0].type == "cuda":
        try:
            torch.cuda.set_device(devices[0])
        except RuntimeError as exc:
            raise AlexkitError(f"{devices[0]} on {socket.gethostname()} cannot be used ({why(exc)}); check it with "
                               "nvidia-smi (busy, exclusive mode, driver), or hide it with CUDA_VISIBLE_DEVICES") from exc  # fmt: skip
    return devices


def place(model: AlexNet, placement: Placement, channels_last: bool = False) -> nn.Module:
    """`model` on its device(s): plain or split into columns, then wrapped in DDP if asked."""
    if placement.parallel.endswith("columns"):
        placed: nn.Module = ColumnAlexNet(model, (placement.devices[0], placement.devices[1]))
    else:
        placed = model.to(placement.device)
    if channels_last:  # before DDP, which lays out its gradient buckets like the parameters
        placed = placed.to(memory_format=torch.channels_last)
    if placement.parallel.startswith("ddp"):
        one_device = len(placement.devices) == 1 and placement.device.type == "cuda"
        # AlexNet has no buffers, so DDP's forward pass runs no collective (it syncs buffers only):
        # validation may give ranks different numbers of batches. (broadcast_buffers=False said so
        # too, but torch 2.13 deprecates it with a warning from every rank.)
        placed = DistributedDataParallel(placed, device_ids=[placement.device] if one_device else None)
    return placed


def teardown(*, wait: bool = True) -> None:
    """Leave the process group; with `wait`, first until every rank is done (a rank that leaves while
    its peers still talk can abort them). After an error, don't wait: the peers may never arrive."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
