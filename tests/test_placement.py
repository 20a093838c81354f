"""Placement: the two-column layout computes the grouped model's function; DDP makes one process's update."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import alexkit.model.placement as placement_module
from alexkit.errors import AlexkitError
from alexkit.model import AlexNet
from alexkit.model.columns import ColumnAlexNet
from alexkit.model.placement import Placement, alexnet_state_dict, load_alexnet_state_dict, place, setup
from alexkit.recipe import make_optimizer, train_step
from alexkit.train import TrainConfig


def test_ddp_ranks_are_global_never_local(monkeypatch):
    """Node 2 of 2, its second process: RANK 3, LOCAL_RANK 1. Shards follow RANK (a LOCAL_RANK shard
    would give two nodes the same images)."""
    import torch.distributed as dist

    for name, value in dict(RANK="3", LOCAL_RANK="1", WORLD_SIZE="4", LOCAL_WORLD_SIZE="2").items():
        monkeypatch.setenv(name, value)
    joined = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(placement_module, "join", lambda *how: joined.append(how))
    placement = setup("ddp", "cpu")
    assert (placement.rank, placement.world_size, joined) == (3, 4, [("gloo", 3, 4, None, "cpu")])

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


def test_columns_take_the_models_lrn_settings():
    """A model whose LRN was changed (the paper's alpha read literally, say) keeps its function in
    the column layout: the columns copy its settings, not the defaults."""
    from alexkit.model.lrn import LocalResponseNorm

    torch.manual_seed(0)
    model = AlexNet(10, **DDP_NET)  # sturdy init: the LRN's settings show in the logits
    x = torch.randn(2, 3, 63, 63) * 60
    default = model(x)
    model.lrn = LocalResponseNorm(size=3, alpha=5e-3, beta=0.5, k=1.0, groups=2)
    changed = model(x)
    assert (changed - default).abs().max() > 100 * (changed.abs().max() * 1e-4 + 1e-5)  # far outside the tolerance below
    torch.testing.assert_close(ColumnAlexNet(model, CPU2)(x), changed, rtol=1e-4, atol=1e-5)


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


def test_an_error_handed_to_setup_alone_is_raised(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(AlexkitError, match="^x$"):
        setup("none", "cpu", AlexkitError("x"))


@pytest.mark.parametrize("only", [None, "RANK", "WORLD_SIZE"])
def test_ddp_needs_torchrun(monkeypatch, only):
    """torchrun sets both RANK and WORLD_SIZE; one of them alone (exported by a container, say) is not torchrun."""
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    if only:
        monkeypatch.setenv(only, "0" if only == "RANK" else "2")
    with pytest.raises(AlexkitError, match="--parallel ddp needs torchrun"):
        setup("ddp", "cpu")


@pytest.mark.parametrize("parallel", ["none", "columns"])
def test_training_under_torchrun_without_ddp_is_refused(monkeypatch, tmp_path, parallel):
    """Every process would think it is rank 0 and train the same run into the same folder."""
    from alexkit import train as train_module
    from alexkit.train import TrainConfig, train

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    joined = []  # the error goes to setup as a ddp join, which raises it in every process (test_ranks.py)

    def setup(parallel, device, error):
        joined.append((parallel, str(error)))
        raise error

    monkeypatch.setattr(train_module, "setup", setup)
    with pytest.raises(AlexkitError, match=f"--parallel {parallel} under torchrun with 2 processes .* pass --parallel ddp"):
        train(TrainConfig(data=tmp_path, parallel=parallel, device="cpu"))
    assert [p for p, _ in joined] == ["ddp"] and joined[0][1].startswith(f"--parallel {parallel} under torchrun")


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


def _agreeing_worker(rank: int, out: str) -> None:
    """What each of two processes says when asked to agree on errors, checkpoints and stores."""
    from types import SimpleNamespace

    import numpy as np

    from alexkit.ranks import agree, on_every_rank, same_checkpoint_everywhere, same_flags_everywhere, same_store_everywhere

    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    said = []

    def say(check) -> None:
        try:
            check()
            said.append("fine")
        except AlexkitError as exc:
            said.append(f"{exc.exit_code} {exc}")

    try:
        say(lambda: agree(None))
        say(lambda: agree(AlexkitError("store /nfs/s does not exist") if rank == 1 else None))  # one node's own files

        def fails_on_rank_0():
            if rank == 0:
                raise AlexkitError("--json out/e.json: its folder out does not exist")

        say(lambda: on_every_rank(fails_on_rank_0))

        def unreadable_on_rank_1():
            if rank == 1:
                raise PermissionError(13, "Permission denied", "/nfs/s/manifest.json")

        say(lambda: on_every_rank(unreadable_on_rank_1))
        for epochs in ((3, 3), (3, 4)):  # the same checkpoint in both processes; then rank 1 reads a newer one
            ckpt = dict(epoch=epochs[rank], metrics=[{"epoch": e} for e in range(1, epochs[rank] + 1)], config={"lr": 0.01})
            say(lambda: same_checkpoint_everywhere(ckpt, Path(out, "run", "last.pt"), "--resume"))
        for means in ((1.0, 1.0), (1.0, 2.0)):  # the same store; then node-local copies that differ
            stats = SimpleNamespace(mean_image=np.full((4, 4, 3), means[rank], np.float32), eigval=np.ones(3), eigvec=np.eye(3))
            store = SimpleNamespace(path=Path(out, "store"), manifest={"settings": {"size": 4}, "splits": {}}, classes=[], stats=stats)
            say(lambda: same_store_everywhere(store))
        history = [{"epoch": e, "val_top1_err": 0.5 + 0.1 * rank * (e == 3)} for e in (1, 2, 3)]  # one epoch, two runs
        ckpt = dict(epoch=3, metrics=history, config={"lr": 0.01})
        say(lambda: same_checkpoint_everywhere(ckpt, Path(out, "run", "last.pt"), "--resume"))
        own = ("device", "progress", "data", "out", "resume")
        for cfg in (TrainConfig(device=f"cuda:{rank}", data=Path(f"store{rank}")), TrainConfig(lr=(0.01, 0.5)[rank], epochs=2 + rank)):
            say(lambda: same_flags_everywhere(cfg, own))  # a device and a path of their own; then another lr and epochs
        Path(out, f"rank{rank}.txt").write_text("\n".join(said))
    finally:
        torch.distributed.destroy_process_group()


def test_the_processes_of_a_job_raise_one_error_together(tmp_path):
    """Under torchrun a process that stopped alone at a check of its own files would leave the others
    waiting in their next collective: every error is raised in every process, naming where it arose;
    the checkpoint and the store read must be the same ones (a training may replace last.pt while the
    processes start; nodes may hold different copies at one path)."""
    import socket

    mp.spawn(_agreeing_worker, args=(str(tmp_path),), nprocs=2, join=True)
    host = socket.gethostname()
    said = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in range(2)]
    assert [s[0] for s in said] == ["fine", "fine"]
    assert said[1][1] == "2 store /nfs/s does not exist"
    assert said[0][1] == f"2 store /nfs/s does not exist (said by process 1 on {host})"
    assert said[0][2] == "2 --json out/e.json: its folder out does not exist"
    assert said[1][2] == f"2 --json out/e.json: its folder out does not exist (said by process 0 on {host})"
    refused = "1 /nfs/s/manifest.json: Permission denied; check that path (its folder, permissions) or choose another"
    assert said[1][3] == refused and said[0][3] == f"{refused} (said by process 1 on {host})"
    said = [s[:3] + s[4:] for s in said]
    assert [s[3] for s in said] == ["fine", "fine"] and [s[5] for s in said] == ["fine", "fine"]
    ckpt = f"{host}:{tmp_path / 'run' / 'last.pt'}"
    for s in said:
        assert s[4] == (f"2 the processes read different checkpoints ({ckpt} at epoch 3; {ckpt} at epoch 4); a training "
                        "replaced it while they started, or the nodes see different files there: pass an absolute "
                        "--resume on a file system all nodes share, and run again")
        assert s[6] == (f"2 the processes read different stores ({host}:{tmp_path / 'store'}; {host}:{tmp_path / 'store'}); "
                        "pass --data a store on a file system all nodes share, or the same copy on every node")
        assert s[7].startswith(f"2 the processes read different checkpoints ({ckpt} at epoch 3; {ckpt} at epoch 3); ")
        assert s[8:] == ["fine", "2 the processes were given different --epochs: 2 on process 0; 3 on process 1 (and 1 other "
                                 "flag); start every process with the same command line"]  # fmt: skip


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


def test_a_collective_that_lost_its_peer_is_told_from_other_failures():
    from alexkit.ranks import lost_peer, peer_lost

    assert lost_peer(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:45266: Connection reset by peer"))
    assert lost_peer(RuntimeError("NCCL communicator was aborted on rank 3"))
    gloo = RuntimeError("[pair.cc:537] Read error [127.0.0.1]:45266: Connection reset by peer. This is typically caused "
                        "by a remote worker hanging or bugs in the application. GLHF!")  # fmt: skip
    assert str(peer_lost(gloo, "run again")) == ("another process of this job stopped or lost its connection (RuntimeError: "
                                                 "[pair.cc:537] Read error [127.0.0.1]:45266: Connection reset by peer); "
                                                 "see its own error, then run again")  # fmt: skip
    assert not lost_peer(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))


def test_idle_gpus_are_named_with_the_torchrun_line_that_uses_them(monkeypatch):
    """A plain run on an 8-GPU machine uses one GPU, and says how to use the eight."""
    from alexkit.model.placement import idle_gpus_note

    gpu = lambda i: torch.device("cuda", i)  # noqa: E731 (a device object: no CUDA needed to make one)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    one = Placement("none", 0, 1, (gpu(0),))
    assert idle_gpus_note(one, visible=8) == ("note: 8 GPUs are visible and this node uses 1; to train on all of them: "
                                              "torchrun --standalone --nproc-per-node=8 -m alexkit train --parallel ddp ...")  # fmt: skip
    assert idle_gpus_note(one, visible=1) is None
    columns = idle_gpus_note(Placement("columns", 0, 1, (gpu(0), gpu(1))), visible=8)
    assert "this node uses 2;" in columns and "--nproc-per-node=4 -m alexkit train --parallel ddp-columns" in columns
    columns = Placement("columns", 0, 1, (gpu(0), gpu(1)))  # columns take GPUs two at a time
    assert idle_gpus_note(columns, visible=3) is None  # one process more would need a fourth
    assert idle_gpus_note(columns, visible=5).endswith("to train on 4 of them: torchrun --standalone --nproc-per-node=2 -m "
                                                       "alexkit train --parallel ddp-columns ...")  # fmt: skip
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun with eight processes on this node
    assert idle_gpus_note(Placement("ddp", 0, 16, (gpu(0),)), visible=8) is None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # under torchrun (maybe on several nodes): no --standalone line
    assert idle_gpus_note(Placement("ddp", 0, 4, (gpu(0),)), visible=8) == ("note: 8 GPUs are visible and this node uses 2; "
                                                                            "to train on all of them, start torchrun with "
                                                                            "--nproc-per-node=8")  # fmt: skip
    assert idle_gpus_note(Placement("none", 0, 1, (torch.device("cpu"),)), visible=8) is None


def test_each_process_takes_its_own_gpus_and_joins_with_nccl(monkeypatch):
    """CUDA faked as 4 GPUs (no GPU needed; nothing here starts CUDA): process 1 of ddp-columns takes
    GPUs 2 and 3; ddp places by LOCAL_RANK whatever cuda:N says; a GPU past the last is a one-line
    error, handed to the join (which raises it in every process: test_ranks.py); GPU processes join
    with NCCL."""
    import torch.distributed as dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    joined = []

    def join(backend, rank, world_size, error, device):
        joined.append(backend)
        if error is not None:
            raise error

    monkeypatch.setattr(placement_module, "join", join)
    for name, value in dict(RANK="1", LOCAL_RANK="1", WORLD_SIZE="2").items():
        monkeypatch.setenv(name, value)
    assert [d.index for d in setup("ddp-columns", "cuda").devices] == [2, 3]
    assert [d.index for d in setup("ddp", "cuda:0").devices] == [1]
    assert joined == ["nccl", "nccl"] and current == [torch.device("cuda", 2), torch.device("cuda", 1)]  # column 0's
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(AlexkitError, match="needs GPU 4, but only 4 are visible"):
        setup("ddp", "cuda")
    assert joined[-1] is None  # no backend: this process met an error
    monkeypatch.setenv("LOCAL_RANK", "1")

    def busy(device):
        raise RuntimeError("CUDA error: CUDA-capable device(s) is/are busy or unavailable")

    monkeypatch.setattr(torch.cuda, "set_device", busy)  # the first CUDA call: it joins the meeting too
    with pytest.raises(AlexkitError, match=r"^cuda:1 on .* cannot be used \(RuntimeError: CUDA error: CUDA-capable device\(s\) "
                                           r"is/are busy or unavailable\); check it with nvidia-smi"):  # fmt: skip
        setup("ddp", "cuda")
    assert joined[-1] is None


def _last_write_worker(rank: int, out: str) -> None:
    import torch.distributed as dist

    from alexkit.ranks import PeerLost, lost_peers_said

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    said = "fine"
    try:
        with lost_peers_said(lambda: "run again"):
            if rank == 0:
                raise AlexkitError("disk full")  # rank 0 fails its last write; rank 1 has finished
    except PeerLost as exc:
        said = f"PeerLost {exc.exit_code}"
    except AlexkitError as exc:
        said = str(exc)
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.txt").write_text(said)


def test_a_process_whose_peer_failed_its_last_write_says_so(tmp_path):
    """The others wait at lost_peers_said's closing barrier, so they say PeerLost, not gloo's text."""
    mp.spawn(_last_write_worker, args=(str(tmp_path),), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["disk full", "PeerLost 1"]
