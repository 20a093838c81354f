"""Placement: the two-column layout computes the grouped model's function; DDP makes one process's update."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from alexkit.errors import AlexkitError
from alexkit.model import AlexNet
from alexkit.model.placement import ColumnAlexNet, Placement, alexnet_state_dict, load_alexnet_state_dict, place, setup
from alexkit.train import TrainConfig, make_optimizer, train_step


def test_ddp_ranks_are_global_never_local(monkeypatch):
    """Node 2 of 2, its second process: RANK 3, LOCAL_RANK 1. Shards follow RANK (a LOCAL_RANK shard
    would give two nodes the same images)."""
    import torch.distributed as dist

    for name, value in dict(RANK="3", LOCAL_RANK="1", WORLD_SIZE="4", LOCAL_WORLD_SIZE="2").items():
        monkeypatch.setenv(name, value)
    joined = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, rank, world_size: joined.append((backend, rank, world_size)))
    placement = setup("ddp", "cpu")
    assert (placement.rank, placement.world_size, joined) == (3, 4, [("gloo", 3, 4)])

CPU2 = (torch.device("cpu"), torch.device("cpu"))
SMALL = dict(width=0.25, fc_features=64, input_size=63, dropout=0.0)
DDP_NET = dict(SMALL, init="sturdy")  # every parameter gets a gradient that moves it visibly


def _column_grads(columns: ColumnAlexNet) -> dict[str, torch.Tensor]:
    """The column model's gradients in AlexNet's layout: halves concatenated by output rows."""
    grads = {}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        for kind in ("weight", "bias"):
            grads[f"{name}.{kind}"] = torch.cat([getattr(getattr(c, name), kind).grad for c in columns.columns])
    grads["fc8.weight"], grads["fc8.bias"] = columns.fc8.weight.grad, columns.fc8.bias.grad
    return grads


@pytest.mark.parametrize("kwargs", [SMALL, dict(width=0.5, fc_features=256, input_size=112, dropout=0.0, init="sturdy")])
def test_columns_compute_the_grouped_models_function_and_gradients(kwargs):
    torch.manual_seed(0)
    model = AlexNet(10, **kwargs)
    columns = ColumnAlexNet(model, CPU2)
    size = kwargs["input_size"]
    x = torch.randn(4, 3, size, size) * 60
    labels = torch.tensor([0, 3, 7, 9])
    grouped_out, column_out = model(x), columns(x)
    torch.testing.assert_close(column_out, grouped_out, rtol=1e-4, atol=1e-5)
    torch.nn.functional.cross_entropy(grouped_out, labels).backward()
    torch.nn.functional.cross_entropy(column_out, labels).backward()
    grads = _column_grads(columns)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_the_models_hold_no_buffers():
    """DDP then runs no collective in a forward pass, which lets validation give ranks different
    numbers of batches (place() relies on it)."""
    model = AlexNet(10, **SMALL)
    assert list(model.buffers()) == [] and list(ColumnAlexNet(model, CPU2).buffers()) == []


def test_columns_state_dict_round_trip():
    torch.manual_seed(0)
    model = AlexNet(10, **SMALL)
    columns = ColumnAlexNet(model, CPU2)
    state = alexnet_state_dict(columns)
    assert state.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name
    other = AlexNet(10, **SMALL)  # different random weights
    load_alexnet_state_dict(columns, other.state_dict())
    x = torch.randn(2, 3, 63, 63) * 60
    torch.testing.assert_close(columns(x), other(x), rtol=1e-4, atol=1e-5)


def test_columns_keep_each_lrn_window_in_its_column():
    """Column 1's activations never reach column 0 before conv3: only conv1/conv2 outputs of column 0 move."""
    torch.manual_seed(0)
    model = AlexNet(10, **SMALL)
    columns = ColumnAlexNet(model, CPU2)
    with torch.no_grad():
        columns.columns[1].conv1.weight.mul_(100)
    seen = {}
    columns.columns[0].conv2.register_forward_hook(lambda m, i, o: seen.__setitem__("c0", o))
    x = torch.randn(2, 3, 63, 63) * 60
    columns(x)
    before = seen["c0"].clone()
    with torch.no_grad():
        columns.columns[1].conv1.weight.mul_(5)
    columns(x)
    torch.testing.assert_close(seen["c0"], before)


def test_odd_fc_features_cannot_be_split():
    with pytest.raises(AlexkitError, match="even"):
        ColumnAlexNet(AlexNet(10, width=0.25, fc_features=33, input_size=56), CPU2)


def test_ddp_needs_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(AlexkitError, match="torchrun"):
        setup("ddp", "cpu")


@pytest.mark.parametrize("parallel", ["none", "columns"])
def test_training_under_torchrun_without_ddp_is_refused(monkeypatch, tmp_path, parallel):
    """Every process would think it is rank 0 and train the same run into the same folder."""
    from alexkit.train import TrainConfig, train

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(AlexkitError, match=f"--parallel {parallel} under torchrun with 2 processes .* pass --parallel ddp"):
        train(TrainConfig(data=tmp_path, parallel=parallel, device="cpu"))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(8, 3, 63, 63, generator=g) * 60, torch.randint(0, 10, (8,), generator=g)


def _two_steps(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Two SGD steps of the paper's recipe (momentum and weight decay both matter from the second)."""
    optimizer = make_optimizer(net, TrainConfig(), lr=0.01)
    for _ in range(2):
        train_step(net, optimizer, images, labels, amp=False)


def _ddp_worker(rank: int, world: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    # A file rendezvous: a free TCP port found first could be taken by another process before gloo binds it.
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    placement = setup("ddp", "cpu")  # joins the group above
    try:
        images, labels = _batch()
        half = slice(rank * 4, rank * 4 + 4)
        for parallel in ("ddp", "ddp-columns"):  # one process group for both: spawning is the slow part
            torch.manual_seed(0)
            devices = (placement.device,) * (2 if parallel == "ddp-columns" else 1)
            net = place(AlexNet(10, **DDP_NET), Placement(parallel, rank, world, devices))
            _two_steps(net, images[half], labels[half])
            torch.save(alexnet_state_dict(net), f"{out}/{parallel}-rank{rank}.pt")
            del net  # DDP's reducer must go before its process group
        torch.distributed.barrier()  # neither rank tears gloo down while the other still talks
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_makes_the_same_update_as_one_process(tmp_path):
    """Two gloo processes with half of the batch each end with one process's weights on the whole batch."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = AlexNet(10, **DDP_NET)
    start = {k: v.clone() for k, v in single.state_dict().items()}
    _two_steps(single, *_batch())
    for parallel in ("ddp", "ddp-columns"):
        ranks = [torch.load(tmp_path / f"{parallel}-rank{r}.pt", weights_only=True) for r in range(2)]
        for name, expected in single.state_dict().items():
            assert not torch.equal(expected, start[name]), f"{name} did not move"
            torch.testing.assert_close(ranks[0][name], expected, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, name=name: f"{parallel} {name}: {m}")  # fmt: skip
            assert torch.equal(ranks[0][name], ranks[1][name]), f"{parallel} {name}: ranks differ"


def _checkpoint_worker(rank: int, out: str) -> None:
    from alexkit.runs import same_checkpoint_everywhere

    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    try:
        said = []
        for epochs in ((3, 3), (3, 4)):  # the same checkpoint in both processes; then rank 1 reads a newer one
            ckpt = dict(epoch=epochs[rank], metrics=[{"epoch": e} for e in range(1, epochs[rank] + 1)], config={"lr": 0.01})
            try:
                same_checkpoint_everywhere(ckpt, Path("run/last.pt"))
                said.append("same")
            except AlexkitError as exc:
                said.append(str(exc))
        Path(out, f"rank{rank}.txt").write_text("\n".join(said))
    finally:
        torch.distributed.destroy_process_group()


def test_every_rank_must_read_the_same_checkpoint(tmp_path):
    """eval and train --resume under torchrun: a training that replaces last.pt while the ranks start
    would give them different models; every rank refuses at once, none goes on alone."""
    mp.spawn(_checkpoint_worker, args=(str(tmp_path),), nprocs=2, join=True)
    for rank in range(2):
        same, changed = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert same == "same"
        assert changed == ("the processes read different checkpoints (run/last.pt at epoch 3, run/last.pt at epoch 4): "
                           "a training replaced it while they started; run again, or pass a copy of the checkpoint")


def test_placement_on_cpu_without_ddp():
    placement = setup("none", "cpu")
    assert placement == Placement("none", 0, 1, (torch.device("cpu"),)) and placement.is_main
    net = place(AlexNet(10, **SMALL), placement)
    assert isinstance(net, AlexNet)
    assert isinstance(place(AlexNet(10, **SMALL), setup("columns", "cpu")), ColumnAlexNet)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_columns_on_two_gpus_compute_the_grouped_function():
    torch.manual_seed(0)
    model = AlexNet(10, **SMALL)
    columns = ColumnAlexNet(model, (torch.device("cuda", 0), torch.device("cuda", 1)))
    assert {p.device.index for p in columns.columns[1].parameters()} == {1}
    x = torch.randn(4, 3, 63, 63) * 60
    out = columns(x)
    assert out.device == torch.device("cuda", 0)
    torch.testing.assert_close(out.cpu(), model(x), rtol=1e-3, atol=1e-4)
