"""The processes of a torchrun job meet before joining: an error met by one is raised by all, at once."""

from __future__ import annotations

import functools
import gc
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from alexkit.errors import AlexkitError, PathRefused
from alexkit.ranks import PeerLost, meet

HOST = socket.gethostname()


def together(*processes, apart: float = 0.0, within: float = 60) -> None:
    """Run the processes (threads standing in for them) at once, or `apart` seconds apart in order;
    all must end within `within` seconds (a meeting that waits out its own wait fails here, not by
    hanging the tests)."""
    threads = [threading.Thread(target=process, daemon=True) for process in processes]
    for i, t in enumerate(threads):
        if i:
            time.sleep(apart)
        t.start()
    for t in threads:
        t.join(timeout=within)
    assert not any(t.is_alive() for t in threads), "a process still waits"


def meeting(said: list[tuple], wait: timedelta = timedelta(seconds=60), server: dist.TCPStore | None = None) -> list:
    """Each process (a thread here, with its own client of one real TCPStore: `server`, else a new
    one) meets with its (backend, error[, device]); what each raised, or None."""
    server = server or dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    raised: list = [None] * len(said)

    def process(rank: int) -> None:
        store = dist.TCPStore("127.0.0.1", server.port, is_master=False)
        try:
            meet(store, rank, len(said), *said[rank], wait=wait)
        except AlexkitError as exc:
            raised[rank] = exc

    together(*(functools.partial(process, rank) for rank in range(len(said))), within=120)
    return raised


def test_processes_that_met_no_error_and_chose_one_backend_go_on():
    assert meeting([("gloo", None)] * 3) == [None] * 3
    assert meeting([("nccl", None)] * 2) == [None] * 2


def test_the_first_error_is_raised_in_every_process_with_its_exit_code():
    """Process 1 found no store, process 2 was refused a path: all three raise process 1's error, the
    others naming where it came from, and none joins (a process that stopped alone before joining left
    the others waiting to join)."""
    refused = PathRefused("/nfs/s/manifest.json: Permission denied; check that path")
    raised = meeting([("gloo", None), (None, AlexkitError("store /nfs/s does not exist")), (None, refused)])
    assert [str(e) for e in raised] == [f"store /nfs/s does not exist (said by process 1 on {HOST})",
                                        "store /nfs/s does not exist",
                                        f"store /nfs/s does not exist (said by process 1 on {HOST})"]  # fmt: skip
    assert [(e.exit_code, e.everywhere) for e in raised] == [(2, True)] * 3
    raised = meeting([(None, refused), ("gloo", None)])
    assert [(str(e).split(" (said")[0], e.exit_code) for e in raised] == [(str(refused), 1)] * 2


AUTO_FIX = f"{HOST} finds no CUDA: fix its GPUs (nvidia-smi lists them), or pass --device cpu to all"


@pytest.mark.parametrize("said, cuda, cpu, fix", [
    ([("gloo", None), ("nccl", None), ("gloo", None)], 1, 0, AUTO_FIX),
    ([("nccl", None), ("nccl", None), ("gloo", None)], 0, 2, AUTO_FIX),
    ([("nccl", None, "auto"), ("gloo", None, "cpu")], 0, 1, "pass the same --device to all"),
])  # fmt: skip
def test_a_process_on_the_cpu_among_processes_on_gpus_is_named(said, cuda, cpu, fix):
    """`--device auto` on a node whose GPUs are not seen, or `--device cpu` on one node only: it would
    join with gloo, the others with NCCL."""
    raised = meeting(said)
    devices = [one[2] if len(one) > 2 else "auto" for one in said]
    text = (f"process {cuda} on {HOST} would train on GPUs (--device {devices[cuda]}) and process {cpu} on {HOST} on "
            f"the CPU (--device {devices[cpu]}), and a job's processes must all use GPUs or all the CPU; {fix}")
    assert [str(e) for e in raised] == [text] * len(said)


def test_a_process_that_never_comes_is_named_after_the_wait(capfd):
    """Said by process 0 for all the processes waiting, unless process 0 is the one missing; and only
    that (torch logs two lines of its own on stderr for every store.wait that runs out)."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    with pytest.raises(PeerLost) as raised:
        meet(server, 0, 3, "gloo", None, wait=timedelta(seconds=1))
    assert str(raised.value) == ("processes 1, 2 of this job did not come within 1 s (stopped before joining, or still "
                                 "starting); see their own error, then run again")  # fmt: skip
    assert raised.value.everywhere
    other = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    with pytest.raises(PeerLost, match=r"^process 0 of this job did not come within 1 s .*; see its own error") as raised:
        meet(other, 1, 2, "gloo", None, wait=timedelta(seconds=1))
    assert not raised.value.everywhere  # process 0 is not there to say it
    assert capfd.readouterr().err == ""


QUIET = ("waitForInput", "timed out after")  # in the two lines torch logs for a store.wait that runs out


@pytest.mark.slow
def test_a_process_waiting_for_a_late_one_waits_quietly(capfd):
    """Process 1 comes 6 s after process 0 (a slow node): process 0 waits for it without a line on
    stderr, and both go on."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    raised: list = []

    def process(rank: int) -> None:
        store = server if rank == 0 else dist.TCPStore("127.0.0.1", server.port, is_master=False)
        try:
            meet(store, rank, 2, "gloo", None, wait=timedelta(seconds=30))
        except AlexkitError as exc:
            raised.append(exc)

    together(functools.partial(process, 0), functools.partial(process, 1), apart=6, within=20)
    assert raised == []
    assert not [line for line in capfd.readouterr().err.splitlines() if any(w in line for w in QUIET)]


WORKER = '''
import os, sys
import torch
rank = int(os.environ["RANK"])
if rank == 1 and os.environ["GPUS"] != "0":  # a node that sees GPUS GPUs, where process 0 sees none (faked)
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: int(os.environ["GPUS"])
    torch.cuda.set_device = lambda device: None
from alexkit.errors import AlexkitError
from alexkit.model.placement import setup
before = AlexkitError("--resume r/last.pt does not exist") if rank == 1 and os.environ["GPUS"] == "0" else None
try:
    setup("ddp", "auto", before)
    said = "joined"
except AlexkitError as exc:
    said = f"{exc.exit_code} {exc}"
open(os.path.join(sys.argv[1], f"rank{rank}.txt"), "w").write(said)
'''


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_under_torchrun_each_process_says_the_error_another_met_before_joining(tmp_path, gpus):
    """torchrun, two processes. With 0, process 1 hands setup() an error it met before (a checkpoint
    missing on its node); else it sees faked GPUs: with one, it has no GPU for LOCAL_RANK 1; with two
    it would join with NCCL and process 0 with gloo. Each process says the error itself (it is not
    stopped by torchrun's agent, which is on another node when the job has several)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1",
                          "--nproc-per-node=2", str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "GPUS": str(gpus)})  # fmt: skip
    said = [(tmp_path / f"rank{r}.txt").read_text() if (tmp_path / f"rank{r}.txt").exists() else run.stderr[-2000:]
            for r in range(2)]  # fmt: skip
    if gpus == 0:
        assert said == [f"2 --resume r/last.pt does not exist (said by process 1 on {HOST})", "2 --resume r/last.pt does not exist"]
    elif gpus == 1:
        error = "--parallel ddp needs GPU 1, but only 1 are visible; use fewer processes per node"
        assert said == [f"2 {error} (said by process 1 on {HOST})", f"2 {error}"]
    else:
        assert said == [f"2 process 1 on {HOST} would train on GPUs (--device auto) and process 0 on {HOST} on the CPU "
                        f"(--device auto), and a job's processes must all use GPUs or all the CPU; {AUTO_FIX}"] * 2


def restarted_pair(port: int, late: int) -> list:
    """Processes 0 and 1 of a restarted job meeting in the store at `port`, with no error, process
    `late` arriving half a second after the other; what each raised, or None."""
    raised: list = ["not yet", "not yet"]

    def process(rank: int) -> None:
        try:
            meet(dist.TCPStore("127.0.0.1", port, is_master=False), rank, 2, "gloo", None, wait=timedelta(seconds=30))
            raised[rank] = None
        except AlexkitError as exc:
            raised[rank] = exc

    together(functools.partial(process, 1 - late), functools.partial(process, late), apart=0.5)
    return raised


def test_after_a_restart_the_new_processes_meet_in_the_store_the_old_ones_left():
    """torchrun --max-restarts keeps the store. Process 1 stopped before its meeting while process 0
    waited in it: the restarted pair meets, process 1 first (it finds process 0's old key). Process 1
    met an error, and both stopped: the restarted pair, process 1 late, does not read it again."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    with pytest.raises(PeerLost, match="^process 1 of this job did not come"):
        meet(dist.TCPStore("127.0.0.1", server.port, is_master=False), 0, 2, "gloo", None, wait=timedelta(seconds=1))
    assert restarted_pair(server.port, late=0) == [None, None]
    said = [("gloo", None), (None, AlexkitError("x"))]
    assert [str(e) for e in meeting(said, server=server)] == [f"x (said by process 1 on {HOST})", "x"]
    assert restarted_pair(server.port, late=1) == [None, None]


class SlowReads:
    """A client of the store over a slow link: each read arrives half a second late."""

    def __init__(self, store: dist.Store):
        self.store = store

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def get(self, key: str) -> bytes:
        time.sleep(0.5)
        return self.store.get(key)


def test_process_0_holding_the_store_leaves_only_once_the_others_have_read_it():
    """Without torchrun's agent (env:// by hand) process 0 holds the store and stops at the error it
    met: a slow reader must still get that error, not a broken connection."""
    held = {"store": dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)}
    port = held["store"].port
    raised: list = [None, None]

    def process0() -> None:
        try:
            meet(held["store"], 0, 2, None, AlexkitError("no store here"), wait=timedelta(seconds=30))
        except AlexkitError as exc:
            raised[0] = str(exc)
        held.clear()
        gc.collect()  # the process ends: the store it held goes with it

    def process1() -> None:
        try:
            meet(SlowReads(dist.TCPStore("127.0.0.1", port, is_master=False)), 1, 2, "gloo", None, wait=timedelta(seconds=30))
        except AlexkitError as exc:
            raised[1] = str(exc)

    together(process0, process1)
    assert raised == ["no store here", f"no store here (said by process 0 on {HOST})"]


def test_ranks_set_by_hand_without_the_rendezvous_address_are_one_line(monkeypatch):
    from alexkit.model.placement import setup

    for name, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(AlexkitError, match="env:// rendezvous: .*MASTER_ADDR.*; start the job with torchrun, which sets it$"):
        setup("ddp", "cpu")


@pytest.mark.parametrize("env, said", [
    (dict(WORLD_SIZE="2"), "WORLD_SIZE=2 is set but RANK is not, and torchrun sets both; unset WORLD_SIZE, or start the job with torchrun"),
    (dict(WORLD_SIZE="abc"), "WORLD_SIZE='abc' in the environment is not a count of processes; unset it"),
    (dict(WORLD_SIZE="0"), "WORLD_SIZE='0' in the environment is not a count of processes"),
    (dict(WORLD_SIZE="2", RANK="x"), "RANK='x' in the environment is not a process number; unset it"),
])  # fmt: skip
def test_launcher_variables_left_in_the_shell_are_one_line_naming_them(env, said, tmp_path):
    """Not torchrun's `--parallel ddp needs torchrun` for a training that never asked for ddp, nor
    a ValueError from int()."""
    for parallel in ("none", "ddp"):
        r = subprocess.run([sys.executable, "-m", "alexkit", "train", "--data", str(tmp_path), "--parallel", parallel, "--device", "cpu"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300", **env})  # fmt: skip
        assert r.returncode == 2 and r.stderr.startswith("error: ") and said in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_where_the_store_goes_with_process_0_after_it_came_process_0_has_said_why():
    """Process 0, on the node that holds the store, names process 2 and stops, and the store goes with
    it: process 1 then says the store is gone at once (not after its own 10-minute wait), and leaves
    the saying to process 0 (one line a job)."""
    held = {"store": dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)}
    port = held["store"].port
    raised: list = [None, None]

    def process0() -> None:
        try:
            meet(held["store"], 0, 3, "gloo", None, wait=timedelta(seconds=2))
        except PeerLost as exc:
            raised[0] = (str(exc), exc.everywhere)  # not exc: its traceback would keep the store alive
        held.clear()
        gc.collect()

    def process1() -> None:
        try:
            meet(dist.TCPStore("127.0.0.1", port, is_master=False), 1, 3, "gloo", None)  # MEET_WAIT: 10 min
        except PeerLost as exc:
            raised[1] = (str(exc), exc.everywhere)

    together(process0, process1)  # process 1 must not wait for a store that is gone
    assert raised[0][0].startswith("process 2 of this job did not come within 2 s") and raised[0][1]
    assert raised[1][0].startswith("another process of this job stopped or lost its connection") and raised[1][1]


def test_a_meeting_whose_wait_ran_out_as_the_last_process_came_goes_on():
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    meet(server, 0, 1, "gloo", None, wait=timedelta(0))  # nobody missing at the deadline: no error


def test_process_0_alone_with_an_error_raises_it_at_once():
    """Without torchrun's agent process 0 waits for the readers before it raises: here it is the last
    reader itself, so it must not wait out that wait's 60 s."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    raised: list = []

    def process0() -> None:
        try:
            meet(server, 0, 1, None, AlexkitError("x"), wait=timedelta(seconds=5))
        except AlexkitError as exc:
            raised.append(str(exc))

    together(process0, within=30)
    assert raised == ["x"]


def test_a_process_that_came_before_process_0_learns_that_it_came():
    """Process 1 comes first and waits; process 0 comes a second later, holding the store, names the
    missing process 2 and stops, and the store goes with it. Process 1 checks between waits whether
    process 0 came, so it leaves the saying to process 0 (one line a job)."""
    held = {"store": dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)}
    port = held["store"].port
    raised: dict = {}

    def process(rank: int, wait: timedelta) -> None:
        store = held["store"] if rank == 0 else dist.TCPStore("127.0.0.1", port, is_master=False)
        try:
            meet(store, rank, 3, "gloo", None, wait=wait)
        except PeerLost as exc:
            raised[rank] = (str(exc), exc.everywhere)
        if rank == 0:
            del store
            held.clear()
            gc.collect()

    together(functools.partial(process, 1, timedelta(minutes=10)), functools.partial(process, 0, timedelta(seconds=7)),
             apart=1)  # fmt: skip
    assert raised[0] == ("process 2 of this job did not come within 7 s (stopped before joining, or still starting); "
                         "see its own error, then run again", True)  # fmt: skip
    assert raised[1][0].startswith("another process of this job stopped or lost its connection") and raised[1][1]


def test_a_store_nobody_holds_is_named_after_the_meetings_wait(monkeypatch):
    """RANK, WORLD_SIZE and MASTER_* set by hand, and process 0 never started: the join gives up after
    MEET_WAIT (here 2 s; torch's client retries stretch it), naming the store."""
    import alexkit.ranks as ranks

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    monkeypatch.setattr(ranks, "MEET_WAIT", timedelta(seconds=2))
    for name, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="False").items():
        monkeypatch.setenv(name, value)
    raised: list = []

    def process1() -> None:
        try:
            ranks.join("gloo", 1, 2, None, "cpu")
        except PeerLost as exc:
            raised.append(str(exc))

    together(process1)  # within 60 s, not torch's 30 minutes
    assert raised[0].startswith(f"the processes of this job did not all reach its store at 127.0.0.1:{port} ")


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_after_the_meeting_the_store_gets_torchs_own_timeout_back(monkeypatch, backend):
    """The rendezvous waits at most MEET_WAIT; the group then keeps torch's default for the backend."""
    import alexkit.ranks as ranks
    from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="False").items():
        monkeypatch.setenv(name, value)
    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, store, rank, world_size: joined.append(store))
    ranks.join(backend, 0, 1, None, "cpu")
    expected = (default_pg_nccl_timeout if backend == "nccl" else None) or default_pg_timeout
    assert joined[0].underlying_store.timeout == expected


def test_the_run_folder_is_looked_for_again_before_a_process_is_said_not_to_see_it(tmp_path):
    """A folder process 0 makes a moment after this process first looked (an NFS client may keep
    answering "no such entry" for a while) is found by looking again; one never made is not."""
    from alexkit.ranks import _sees

    late = tmp_path / "late"
    threading.Timer(0.8, late.mkdir).start()
    assert _sees(late, wait=10.0)
    started = time.monotonic()
    assert not _sees(tmp_path / "never", wait=1.0)
    assert 1.0 <= time.monotonic() - started < 5.0


RUN_FOLDER_LATE = """
import os, sys, time
from pathlib import Path
import torch.distributed as dist
from alexkit.ranks import same_folder_everywhere
rank, folder = int(os.environ["RANK"]), Path(sys.argv[1])
dist.init_process_group("gloo", rank=rank, world_size=2, init_method="tcp://127.0.0.1:" + sys.argv[2])
if rank == 0:  # process 1 looks first, and finds nothing yet
    time.sleep(1.5)
    folder.mkdir()
same_folder_everywhere(folder, "--out")
print("seen")
dist.destroy_process_group()
"""


def test_every_process_looks_again_for_a_run_folder_made_after_it_first_looked(tmp_path):
    """Two processes: process 1 checks the run folder before process 0 has made it (as an NFS client's
    cached "no such entry" would have it); it looks again, and the job goes on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    folder = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-c", RUN_FOLDER_LATE, str(folder), port], env={**os.environ, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]  # fmt: skip
    said = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and [out for out, _ in said] == ["seen\n", "seen\n"], said
