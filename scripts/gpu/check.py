"""GPU acceptance checks for alexkit in one run: every step runs, each with its own time limit.

Run from the repository root (on an offline GPU machine: after unpacking scripts/gpu/bundle_offline.sh's
parts, with PYTHONPATH and CHECK_STORE set as scripts/gpu/README.md says):
    python3 scripts/gpu/check.py
Writes $OUT/check.log (every step's command, output, exit code and seconds, as they run) and
$OUT/summary.json (rewritten after each step), and prints a summary; $OUT defaults to /tmp/gpu-check.
A failing step never stops the others; without CUDA the GPU steps are reported as "skipped: no CUDA".
Where CHECK_STORE holds no store, the store step builds one (scripts/gpu/make_store.py). The whole
run stays inside CHECK_BUDGET_S seconds (default 450), plus 10 s where a step had to be stopped.
CHECK_STEPS=train,eval_tta (names, comma-separated) reruns only those steps. Two files only, so that
the results are easy to copy back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Absolute: the steps run from the repository root, whatever folder this was started from.
OUT = Path(os.environ.get("OUT") or "/tmp/gpu-check").resolve()
STORE = Path(os.environ.get("CHECK_STORE", ROOT / ".store")).resolve()
RUN_DIR = Path(os.environ.get("CHECK_RUN_DIR", "/tmp/alexkit-check-run")).resolve()  # many files: not under $OUT
LOADER_JSON = RUN_DIR.parent / "alexkit-check-loader.json"
ONLY = [s for s in os.environ.get("CHECK_STEPS", "").split(",") if s]  # a rerun of some steps only
BUDGET_S = float(os.environ.get("CHECK_BUDGET_S", "450"))
PY = sys.executable
PIPELINE_GPU_TESTS = ["tests/test_pipeline.py", "tests/test_loader.py"]  # GPU == CPU graphs and loader: no compile, quick
TRAIN_GPU_TESTS = ["tests/test_train.py", "tests/test_placement.py"]  # a compiled 4-epoch run; two-GPU columns

INSTALL = """
import importlib, importlib.metadata as md, os, sys
print("python", sys.version.split()[0], sys.executable)
print("PYTHONPATH", os.environ.get("PYTHONPATH"))
for dist in ["nvidia-dali-cuda130", "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg", "nvidia-libnvcomp-cu13", "libcst",
             "optree", "nvtx", "numpy", "numba", "torch", "typer", "click", "pydantic", "rich", "shellingham",
             "typing-extensions", "pillow", "scipy", "opencv-python-headless", "pytest"]:
    try:
        print(f"{dist:24s} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist:24s} not installed")
try:  # alexkit's commands need typer.TyperException (typer >= 0.27.2)
    import typer
    print("typer", typer.__file__, "TyperException:", hasattr(typer, "TyperException"))
except Exception as exc:
    print(f"typer does not import: {exc.__class__.__name__}: {exc}")
try:  # a DALI that does not import must not hide the torch lines below
    import nvidia, nvidia.dali as dali
    print("nvidia.__path__", list(nvidia.__path__))
    print("nvidia.dali", dali.__version__, dali.__file__)
except Exception as exc:
    print(f"nvidia.dali does not import: {exc.__class__.__name__}: {exc}")
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    print("matmul ok", float((x @ x).float().abs().mean()))
    import shutil, time
    print("C compiler (Triton builds its launchers with it):", shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
    start = time.perf_counter()
    try:
        torch.compile(lambda t: t.sin() + 1)(torch.randn(8, device="cuda"))
        print(f"torch.compile on CUDA: ok ({time.perf_counter() - start:.0f} s)")
    except Exception as exc:  # the steps that compile then run with --compile off
        print(f"torch.compile on CUDA failed: {exc.__class__.__name__}: {str(exc)[:300]}")
"""
COMPILE_FAILED = "torch.compile on CUDA failed"  # what INSTALL prints where it does not compile
COMPILING = ("bench_train", "train")  # steps that compile by default on CUDA: --compile off where INSTALL could not

# alexkit's loader on the GPU: nvJPEG ("mixed") decode, bf16 channels-last output, as training uses it.
# `alexkit bench loader` times the CPU graphs only (it has no --device), hence this step.
GPU_LOADER = """
import json, sys, time, torch
from alexkit.pipeline.loader import make_loader
from alexkit.pipeline.store import Store
store, epochs, rows = Store(sys.argv[1]), int(sys.argv[2]), []
for mode in ("train", "center", "tencrop"):
    # The train split for all three: the val split make_store.py builds (250 images) is two batches, too few to time.
    loader = make_loader(store, "train", mode=mode, batch_size=128, device="cuda", decoder="mixed",
                         dtype=torch.bfloat16, channels_last=True, seed=0)
    steady, whole = [], []  # images/s after each epoch's first batch; and over the whole epoch
    for e in range(epochs):  # epoch 0: warm-up (graph build, nvJPEG start)
        loader.set_epoch(e)
        torch.cuda.synchronize()
        start, n = time.perf_counter(), 0
        for images, labels, _ in loader:
            if n == 0:  # the first batch: the pipeline's fill, unless it was fed ahead (train)
                torch.cuda.synchronize()
                first, n_first, shape = time.perf_counter(), len(labels), list(images.shape)  # a full batch
            n += len(labels)
        torch.cuda.synchronize()
        end = time.perf_counter()
        if e:
            steady.append((n - n_first) / (end - first))
            whole.append(n / (end - start))
    steady.sort()
    row = dict(mode=mode, images_per_epoch=n, images_per_s=steady[len(steady) // 2], min=steady[0], max=steady[-1],
               whole_epochs=sorted(whole)[len(whole) // 2], shape=shape, dtype=str(images.dtype))
    print(f"gpu loader {mode:8s} {row['images_per_s']:9,.0f} images/s ({row['min']:,.0f}-{row['max']:,.0f}) after each "
          f"epoch's first batch, {row['whole_epochs']:,.0f} over whole epochs of {n}; batch {row['shape']} {row['dtype']}", flush=True)
    rows.append(row)
    del loader
print("JSON " + json.dumps(rows))
"""


def steps() -> list[dict]:
    """(name, command, time limit in s, least time worth starting it with, needs CUDA). Ordered by how
    much each result matters, the quicker of two alike first: the store they all read, the
    measurements the issues ask for, the GPU == CPU tests, NCCL's join (quick: nothing compiles), one
    run end to end, then the slower tests of training."""
    alexkit = [PY, "-m", "alexkit"]
    pytest_gpu = [PY, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider"]
    return [
        dict(name="install", cmd=[PY, "-c", INSTALL], limit=90, least=10, gpu=False),
        dict(name="store", cmd=[PY, "scripts/gpu/make_store.py", str(STORE)], limit=150, least=30, gpu=False,
             note="1,000 train + 250 val photo-like JPEGs through `alexkit prepare` at 256 px, q90"),
        dict(name="nvidia_smi", cmd=["nvidia-smi"], limit=20, least=5, gpu=True),
        dict(name="gpu_loader", cmd=[PY, "-c", GPU_LOADER, str(STORE), "5"], limit=90, least=40, gpu=True),
        dict(name="pytest_gpu_pipeline", cmd=[*pytest_gpu, *PIPELINE_GPU_TESTS], limit=90, least=30, gpu=True),
        # --local-addr: the address torchrun hands its workers as MASTER_ADDR, and binds its store to. Without
        # it that is socket.getfqdn(), a name an offline machine may not resolve; --standalone only places
        # the rendezvous at localhost.
        dict(name="ddp_nccl", cmd=[PY, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1",
                                   "--nproc-per-node=1", "-m", "alexkit", "train", "--parallel", "ddp", "--data", str(STORE),
                                   "--epochs", "1", "--batch-size", "125", "--compile", "off", "--out", f"{RUN_DIR}-ddp",
                                   "--progress", "plain"],
             limit=120, least=45, gpu=True, note="one process: the meeting in torchrun's store, then NCCL's join"),
        dict(name="bench_train", cmd=[*alexkit, "bench", "train", "--data", str(STORE), "--steps", "60", "--repeats", "3",
                                      "--warmup", "15"], limit=200, least=90, gpu=True,
             note="full width; bf16 (on GPUs with bf16 tensor cores), channels-last, torch.compile: auto on CUDA"),
        # Batch 125: the store's 250 val images in two equal batches, so validation compiles once
        # (training compiles its own graph; a partial last batch would add a third).
        dict(name="train", cmd=[*alexkit, "train", "--data", str(STORE), "--epochs", "1", "--batch-size", "125",
                                "--out", str(RUN_DIR), "--progress", "plain"], limit=180, least=60, gpu=True),
        dict(name="eval_tta", cmd=[*alexkit, "eval", "--checkpoint", str(RUN_DIR), "--data", str(STORE), "--tta",
                                   "--json", str(RUN_DIR / "eval.json")], limit=90, least=30, gpu=True, after="train"),
        dict(name="pytest_gpu_train", cmd=[*pytest_gpu, *TRAIN_GPU_TESTS], limit=180, least=60, gpu=True,
             note="the two-GPU placement test skips on one GPU"),
        # COLUMNS: rich's table as wide as its rows, so that each row is one line to read back.
        dict(name="doctor", cmd=[*alexkit, "doctor"], limit=60, least=10, gpu=False, ok_rc=(0, 2), env=dict(COLUMNS="200"),
             note="exits 2 where ffcv is not installed (its rows fail); failed where a DALI row fails, or on CUDA "
                  "without the 'dali gpu pipeline' row running"),
        dict(name="bench_loader_cpu", cmd=[*alexkit, "bench", "loader", "--store", str(STORE), "--no-baselines",
                                           "--epochs", "4", "--json", str(LOADER_JSON)],
             limit=150, least=40, gpu=False, note="DALI CPU graphs on the machine's cores (the bench has no GPU mode)"),
    ]  # fmt: skip


def run_step(step: dict, deadline: float, log) -> dict:
    """Run one step in its own process group; stop it (stop()) at its limit or at the deadline. Its
    output goes straight into the log (so a whole call killed from outside still leaves it there)."""
    limit = min(step["limit"], deadline - time.monotonic())
    log.write(f"\n===== {step['name']}: {' '.join(step['cmd'])[:300]}\n===== limit {limit:.0f} s\n")
    log.flush()
    begin = log.tell()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               TORCHINDUCTOR_CACHE_DIR=os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/tmp/alexkit-inductor"), **step.get("env", {}))  # fmt: skip
    start = time.monotonic()
    try:
        proc = subprocess.Popen(step["cmd"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return dict(status="failed", rc=None, seconds=0.0, reason=f"{exc.__class__.__name__}: {exc}", tail=[], output="")
    try:
        proc.wait(timeout=max(limit, 1))
        status = "ok" if proc.returncode in step.get("ok_rc", (0,)) else "failed"
    except subprocess.TimeoutExpired:
        stop(proc)
        status = "timeout"
    seconds = time.monotonic() - start
    with open(log.name, errors="replace") as f:  # what the step wrote
        f.seek(begin)
        output = f.read()
    log.write(f"\n===== {step['name']}: {status}, exit code {proc.returncode}, {seconds:.1f} s\n")
    log.flush()
    lines = [line for line in output.splitlines() if line.strip()]
    return dict(status=status, rc=proc.returncode, seconds=round(seconds, 1), tail=lines[-25:], output=output)


def stop(proc: subprocess.Popen) -> None:
    """End a step and every process under it. torchrun starts its workers in sessions of their own,
    outside the step's process group: SIGTERM to the group first lets torchrun stop them; whatever
    is left after 10 s gets SIGKILL, the group and each process found under the step before or after."""
    below = descendants([proc.pid])  # before: once torchrun is gone its workers are no longer under it
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    below |= descendants([proc.pid, *below])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def descendants(roots: list[int]) -> set[int]:
    """The processes under `roots` (children, theirs, ...), from each process's parent in
    /proc/PID/stat (/proc/PID/task/*/children needs a kernel option that not every kernel has)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # the name in parentheses may hold spaces: the parent is the second field after it
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def doctor_rows(output: str) -> dict[str, tuple[str, str]]:
    """`alexkit doctor`'s table as {name: (detail, "ok" or "MISSING")}, each row's first line."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line)]  # rich draws ASCII bars where the output is not UTF-8
        if len(cells) == 5 and cells[1] and cells[3] in ("ok", "MISSING"):
            rows[cells[1]] = (cells[2], cells[3])
    return rows


def doctor_failure(output: str, cuda: bool) -> str | None:
    """Why the doctor step failed although doctor exited 0 or 2 (2: ffcv, absent there, is expected)."""
    rows = doctor_rows(output)
    bad = [f"{name}: {detail}" for name, (detail, ok) in rows.items() if "dali" in name and (ok != "ok" or detail.startswith("fails"))]
    if bad:
        return "; ".join(bad)
    if cuda and "dali gpu pipeline" not in rows:  # doctor tries it only where DALI imports
        return "no 'dali gpu pipeline' row on a CUDA machine"
    return None


def figures(name: str, output: str) -> object:
    """The measured numbers a step printed, in a form the summary can hold."""
    if name == "gpu_loader":
        return next((json.loads(line[5:]) for line in output.splitlines() if line.startswith("JSON ")), None)
    if name == "bench_loader_cpu":
        return json.loads(LOADER_JSON.read_text())["rows"] if LOADER_JSON.is_file() else None
    if name == "eval_tta" and (RUN_DIR / "eval.json").is_file():
        result = json.loads((RUN_DIR / "eval.json").read_text())
        return {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    if name == "doctor":
        rows = doctor_rows(output)
        errors = [line[:200] for line in output.splitlines() if line.startswith("error: ")]
        return [f"{k}: {rows[k][0]} ({rows[k][1]})" for k in rows if "dali" in k or k in ("numba (one-pass CPU kernels)", "typer", "cuda")] + errors
    if name in ("bench_train", "pytest_gpu_pipeline", "pytest_gpu_train", "train", "ddp_nccl"):
        keep = ("images/s", "passed", "skipped", "failed", "error", "synthetic", "real pipeline", "epoch")
        return [line for line in output.splitlines() if any(k in line for k in keep)][-12:]
    return None


def main() -> int:
    deadline = time.monotonic() + BUDGET_S
    unknown = set(ONLY) - {step["name"] for step in steps()}
    if unknown:
        print(f"CHECK_STEPS names no step called {', '.join(sorted(unknown))}; the steps: {', '.join(s['name'] for s in steps())}")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    if not ONLY or "train" in ONLY:  # a rerun on a warm machine: no earlier run or figures
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    if not ONLY or "ddp_nccl" in ONLY:  # its --out must not hold an earlier run
        shutil.rmtree(f"{RUN_DIR}-ddp", ignore_errors=True)
    LOADER_JSON.unlink(missing_ok=True)
    RUN_DIR.parent.mkdir(parents=True, exist_ok=True)
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception as exc:  # a broken torch is itself a finding; the steps still run
        cuda = False
        print(f"torch does not import: {exc}")
    summary = dict(cuda=cuda, store=str(STORE), store_ok=(STORE / "manifest.json").is_file(), budget_s=BUDGET_S, steps={},
                   total_s=0.0)  # fmt: skip
    done: dict[str, str] = {}
    compile_off = False  # set where the install step found torch.compile failing on CUDA
    (OUT / "check.log").write_text("")
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))  # there from the start, however the run ends
    with open(OUT / "check.log", "a") as log:  # appended to by the steps' processes too
        for step in steps():
            name = step["name"]
            if ONLY and name not in ONLY:
                continue
            if compile_off and name in COMPILING:
                step = dict(step, cmd=[*step["cmd"], "--compile", "off"],
                            note=f"{step.get('note', '')}; --compile off: torch.compile failed in the install step")  # fmt: skip
            if step["gpu"] and not cuda:
                result = dict(status="skipped", reason="skipped: no CUDA")
            elif name == "store" and summary["store_ok"]:
                result = dict(status="skipped", reason=f"skipped: {STORE} holds a store")
            elif step.get("after") and done.get(step["after"], "ok") != "ok":  # not run now (CHECK_STEPS): not waited for
                result = dict(status="skipped", reason=f"skipped: {step['after']} did not succeed")
            elif name != "store" and str(STORE) in step["cmd"] and not summary["store_ok"]:
                result = dict(status="skipped", reason=f"skipped: no store at {STORE} (the store step builds one)")
            elif deadline - time.monotonic() < step["least"]:
                result = dict(status="skipped", reason=f"skipped: less than {step['least']} s left (CHECK_BUDGET_S)")
            else:
                print(f"[{time.monotonic() - deadline + BUDGET_S:5.0f} s] {name} ...", flush=True)
                result = run_step(step, deadline, log)
                output = result.pop("output")
                compile_off = compile_off or (name == "install" and COMPILE_FAILED in output)
                if name == "store":
                    summary["store_ok"] = (STORE / "manifest.json").is_file()
                if name == "doctor" and result["status"] == "ok" and (why := doctor_failure(output, cuda)):
                    result.update(status="failed", reason=f"failed: {why}")
                try:  # figures of this run only, and never a reason to lose the summary
                    result["figures"] = figures(name, output) if result["status"] == "ok" or name == "doctor" else None
                except Exception as exc:
                    result["figures"] = f"unreadable: {exc.__class__.__name__}: {exc}"
            if step.get("note"):
                result["note"] = step["note"]
            if result["status"] == "skipped":
                log.write(f"\n===== {name}: {result['reason']}\n")
            done[name] = result["status"]
            summary["steps"][name] = result
            summary["total_s"] = round(time.monotonic() - deadline + BUDGET_S, 1)
            (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    print(f"\nalexkit GPU checks: CUDA {'yes' if summary['cuda'] else 'no'}, store {summary['store']} "
          f"({'ok' if summary['store_ok'] else 'missing'}), {summary['total_s']:.0f} s of {summary['budget_s']:.0f}")  # fmt: skip
    for name, r in summary["steps"].items():
        detail = r.get("reason") or f"exit {r['rc']}, {r['seconds']:.0f} s"
        print(f"  {name:18s} {r['status']:8s} {detail}")
    for name, r in summary["steps"].items():
        fig = r.get("figures")
        if fig:
            print(f"--- {name}")
            for item in fig if isinstance(fig, list) else [fig]:
                print(f"  {item if isinstance(item, str) else json.dumps(item)}")
        elif r["status"] in ("failed", "timeout"):
            print(f"--- {name} ({r['status']}), last lines:")
            for line in r.get("tail", [])[-8:]:
                print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
