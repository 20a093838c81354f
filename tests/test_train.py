"""The trainer on a tiny prepared sample store: learning, exact resume, checkpoints, schedule, CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexkit.errors import AlexkitError
from alexkit.model import AlexNet, build_from_checkpoint
from alexkit.recipe import PlateauSchedule, dropout_seed, make_optimizer, warmup_factor
from alexkit.train import TrainConfig, resolve_auto, train, validate

NUM_CLASSES = 4
# The CPU demo's net at the store's 56 px crops: fast, and it learns the sample classes in seconds.
TINY = dict(batch_size=16, width=0.25, fc_features=128, init="sturdy", progress="none", device="cpu")


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    from alexkit.datasets import write_sample_dataset
    from alexkit.pipeline.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("train-store")
    write_sample_dataset(root / "src", num_classes=NUM_CLASSES, train_per_class=48, val_per_class=16, seed=0)
    return prepare(PrepareConfig(src=root / "src", out=root / "store", size=64, workers=1))


@pytest.fixture(scope="session")
def learned_run(store, tmp_path_factory):
    """Six epochs on 192 training images: 72 steps (no dropout: it learns the same in fewer steps)."""
    return train(TrainConfig(data=store, out=tmp_path_factory.mktemp("runs") / "learn", epochs=6, dropout=0.0, **TINY))


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_accuracy_beats_chance(learned_run):
    rows = _metrics(learned_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert set(rows[0]) == {"epoch", "lr", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err",
                            "images_per_s", "data_wait", "seconds"}  # fmt: skip
    assert all(0 <= r["data_wait"] < 1 for r in rows)
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    chance = 1 - 1 / NUM_CLASSES
    best = min(r["val_top1_err"] for r in rows)
    assert best < chance - 0.35, f"val top-1 error {best:.2f}, chance {chance:.2f}"
    assert all(r["val_top5_err"] == 0.0 for r in rows)  # 4 classes: the top 5 always hold the label


def test_eval_of_the_last_epoch_says_the_val_errors_training_recorded(learned_run, store):
    """Both count misses / n over the same centre crops: the figures are equal, not merely close."""
    from alexkit.evaluate import EvalConfig, evaluate

    results = evaluate(EvalConfig(checkpoint=learned_run / "last.pt", data=store, device="cpu"))
    last = _metrics(learned_run)[-1]
    assert (results["top1_err"], results["top5_err"]) == (last["val_top1_err"], last["val_top5_err"])


def test_run_directory_and_checkpoints(learned_run, store):
    names = {p.name for p in learned_run.iterdir()}
    assert names == {"config.json", "metrics.jsonl", "last.pt", "best.pt", "stats.npz", "classes.json", ".train.lock"}
    assert (learned_run / "classes.json").read_bytes() == (store / "classes.json").read_bytes()
    config = json.loads((learned_run / "config.json").read_text())
    assert config["config"]["epochs"] == 6 and config["model_args"]["input_size"] == 56
    assert config["versions"]["torch"] == torch.__version__  # with the build tag, which CUDA wheels' metadata lacks
    assert config["versions"]["cuda"] == torch.version.cuda
    import PIL  # their decoding and resizing make the demo's figures: recorded with the rest
    from importlib import metadata

    assert config["versions"]["pillow"] == PIL.__version__
    assert config["versions"]["opencv-python"] == metadata.version("opencv-python")
    last = torch.load(learned_run / "last.pt", weights_only=True)
    assert {"format_version", "model", "model_args", "optimizer", "scheduler", "epoch", "config", "metrics", "rng"} <= set(last)
    assert last["epoch"] == 6 and last["metrics"] == _metrics(learned_run)
    best = torch.load(learned_run / "best.pt", weights_only=True)
    best_row = min(last["metrics"], key=lambda r: (r["val_top1_err"], -r["epoch"]))
    assert best["epoch"] == best_row["epoch"]
    model = build_from_checkpoint(last).eval()
    assert isinstance(model, AlexNet) and model.args == last["model_args"]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in last["model"])


def test_resume_continues_exactly(store, tmp_path):
    """Across an lr drop: with patience 1, epoch 2 does not improve on epoch 1, so epoch 3 runs at lr / 10.
    Every generator a checkpoint records is seeded, NumPy's and Python's too, whatever the process's
    own state: the saved states are the seed's, not noise."""
    import random

    def scrambled():  # the process's global generators in some state of their own
        np.random.seed(None)
        random.seed(None)

    scrambled()
    whole = train(TrainConfig(data=store, out=tmp_path / "whole", epochs=3, patience=1, **TINY))
    assert [r["lr"] for r in _metrics(whole)] == pytest.approx([0.01, 0.01, 0.001])
    scrambled()
    part = train(TrainConfig(data=store, out=tmp_path / "part", epochs=2, patience=1, **TINY))
    assert len(_metrics(part)) == 2
    scrambled()
    resumed = train(TrainConfig(resume=part, epochs=3))  # everything else comes from the run itself
    assert resumed == part

    def timeless(rows):
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "data_wait", "seconds")} for r in rows]

    assert timeless(_metrics(resumed)) == timeless(_metrics(whole))
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (whole, resumed))
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(state_a["momentum_buffer"], state_b["momentum_buffer"])
    (np_a, np_b), (py_a, py_b) = (a["rng"]["numpy"], b["rng"]["numpy"]), (a["rng"]["python"], b["rng"]["python"])
    assert torch.equal(np_a[1], np_b[1]) and np_a[2:] == np_b[2:] and py_a == py_b
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_resume_refuses_a_changed_recipe(store, tmp_path):
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    with pytest.raises(AlexkitError, match="--lr 0.5 differs"):
        train(TrainConfig(resume=run, epochs=2, lr=0.5))
    (run / "eval.json").write_text("{}")  # as `alexkit eval --json RUN/eval.json` leaves
    with pytest.raises(AlexkitError, match="already holds a run; continue it with --resume"):
        train(TrainConfig(data=store, out=run, epochs=1, **TINY))
    (run / "eval.json").unlink()
    (run / "last.pt").unlink()  # removed to save space: a new run must not overwrite best.pt and the metrics
    with pytest.raises(AlexkitError, match=rf"already holds a run's best.pt; go on from it with --resume {run / 'best.pt'} or"):
        train(TrainConfig(data=store, out=run, epochs=1, **TINY))
    (run / "best.pt").unlink()
    with pytest.raises(AlexkitError, match=r"holds the metrics.jsonl of a run of 1 epoch, whose checkpoints are gone; pick another"):
        train(TrainConfig(data=store, out=run, epochs=1, **TINY))
    with pytest.raises(AlexkitError, match=r"has no last.pt: its checkpoints are gone \(its metrics.jsonl records 1 epoch\), "
                                           "so there is nothing to go on from"):  # not "stopped before its first epoch ended"
        train(TrainConfig(resume=run, epochs=2))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_new_run_goes_only_into_a_folder_of_no_other_files(store, tmp_path):
    """--out naming the store, a dataset or the working folder would scatter the run's files among
    theirs: refused, nothing written there (no lock file either); an empty folder is taken."""
    before = sorted(p.name for p in store.iterdir())
    for out in (store, store / "runs" / "r"):
        with pytest.raises(AlexkitError, match=rf"^--out {out} is in the folder of the store {store}, whose files are `alexkit prepare`'s \(a --force rebuild renames new ones "
                           r"over them, and a store may be deleted whole to prepare it again\): pick a folder outside it$"):
            train(TrainConfig(data=store, out=out, epochs=1, **TINY))
    assert sorted(p.name for p in store.iterdir()) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("")
    with pytest.raises(AlexkitError, match=r"holds what is not a run's \(todo.txt\)"):
        train(TrainConfig(data=store, out=tmp_path / "notes", epochs=1, **TINY))
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]
    for out, said in (("todo.txt", "is a file"), ("todo.txt/run", f"is under {tmp_path}/notes/todo.txt, which is a file")):
        with pytest.raises(AlexkitError, match=f"^--out {tmp_path}/notes/{out} {said}; give a folder$") as refused:
            train(TrainConfig(data=store, out=tmp_path / "notes" / out, epochs=1, **TINY))
        assert refused.value.exit_code == 2
    (tmp_path / "empty").mkdir()
    assert (train(TrainConfig(data=store, out=tmp_path / "empty", epochs=1, **TINY)) / "last.pt").is_file()


def test_defaults_are_the_papers_recipe_and_the_command_line_keeps_them():
    import typer.main

    from alexkit.cli.main import app

    cfg = TrainConfig()
    paper = dict(epochs=90, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4, decay_biases=False,
                 patience=5, max_lr_drops=3, width=1.0, fc_features=4096, dropout=0.5, init="paper")  # fmt: skip
    assert {k: getattr(cfg, k) for k in paper} == paper
    command = typer.main.get_command(app).commands["train"]
    flags = {p.name: p.default for p in command.params if p.name not in ("data", "out", "resume")}
    assert flags == {k: getattr(cfg, k) for k in flags}


def test_validation_counts_top1_and_top5_among_ten_classes():
    """Labels at rank 1, 5, 6 and 10 of 10 classes, over two batches: top-1 error 3/4, top-5 error 2/4."""
    logits = torch.arange(10.0).flip(0).repeat(4, 1)  # (4, 10): class 0 best, class 9 worst
    labels = torch.tensor([0, 4, 5, 9])
    batches = [(logits[:3], labels[:3], None), (logits[3:], labels[3:], None)]
    seen = []
    top1, top5 = validate(torch.nn.Identity(), batches, amp=False, device=torch.device("cpu"), seen=seen.append)
    assert (top1, top5) == (0.75, 0.5)
    assert seen == [0, 3, 4]  # images so far, at the start and after each batch: what the progress line counts


def test_a_long_validation_shows_progress(store, tmp_path, monkeypatch, capsys):
    """The sample's validation, made to count as long (2 s: Ticks' own test), has its own lines; with
    --progress none, none."""
    import functools

    import alexkit.train as trainer

    monkeypatch.setattr(trainer, "Ticks", functools.partial(trainer.Ticks, after_s=0))
    train(TrainConfig(data=store, out=tmp_path / "long", epochs=1, **dict(TINY, progress="plain")))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("validation")]
    assert lines and lines[-1].startswith("validation 1/1: 64/64 (100%)"), lines
    train(TrainConfig(data=store, out=tmp_path / "silent", epochs=1, **TINY))  # --progress none
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("validation")]


def test_too_little_free_space_for_the_checkpoints_is_a_warning_before_training(store, tmp_path, monkeypatch, capsys):
    """Free space below the checkpoints' peak (two for a one-epoch run; three later: best.pt, last.pt and a
    temporary), less a resumed run's own, is one warning line at the start, sizes said; the run goes on.
    (A full disk cannot be made here: the free space the check reads is set.)"""
    import re

    run = tmp_path / "run"
    train(TrainConfig(data=store, out=tmp_path / "roomy", epochs=1, **TINY))
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6))
    train(TrainConfig(data=store, out=run, epochs=1, **TINY))
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith(f"warning: {run} has 1.0 MB free; its checkpoints (best.pt and last.pt, about "), said
    each, need = map(float, re.search(r"about ([\d.]+) MB each\) need about ([\d.]+) MB: on a full disk", said[0]).groups())
    assert abs(each - (run / "last.pt").stat().st_size / 1e6) < 0.1 and abs(need - 2 * each) <= 0.1, said
    train(TrainConfig(resume=run, epochs=2))  # the next save may hold three at once, two of them there now
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and re.fullmatch(rf"warning: {run} has 1.0 MB free; its checkpoints \(best.pt, last.pt and the temporary "
                                           r"of the one being written, about [\d.]+ MB each\) need about [\d.]+ MB beside the "
                                           r"[\d.]+ MB there now: on a full disk the run stops as it saves an epoch, and loses "
                                           r"that epoch", said[0]), said  # fmt: skip
    assert len(_metrics(run)) == 2


def test_a_full_disk_on_epoch_1s_last_pt_says_to_go_on_from_best_pt(store, tmp_path, monkeypatch):
    """best.pt saved, last.pt not (the disk filled between them): the same command again would be
    refused (the folder holds a run's best.pt), so the one line names --resume RUN/best.pt, which goes on."""
    import errno

    from alexkit import checkpoints

    real = checkpoints.write_atomic

    def full_at_last_pt(path, data):
        if path.name == "last.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(checkpoints, "write_atomic", full_at_last_pt)
    run = tmp_path / "full"
    with pytest.raises(AlexkitError, match=f"last.pt: No space left on device; fix that \\(free space, permissions\\), "
                                           f"then continue with `alexkit train --resume {run / 'best.pt'}`$"):  # fmt: skip
        train(TrainConfig(data=store, out=run, epochs=2, **TINY))
    assert not (run / "last.pt").exists() and torch.load(run / "best.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(checkpoints, "write_atomic", real)
    train(TrainConfig(resume=run / "best.pt", epochs=2))
    assert [r["epoch"] for r in _metrics(run)] == [1, 2] and torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_resuming_a_finished_run_changes_none_of_its_files(learned_run, capsys):
    def files():  # the lock file is opened (so touched) by every training of the run
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in learned_run.iterdir() if p.name != ".train.lock"}

    before = files()
    assert train(TrainConfig(resume=learned_run, epochs=3)) == learned_run  # it has 6 epochs already
    assert files() == before
    assert "already has 6 epochs; pass a larger --epochs" in capsys.readouterr().out  # said with --progress none too


def test_a_full_disk_in_the_last_epoch_is_one_line_and_a_resume_mends_metrics(store, tmp_path, monkeypatch, capsys):
    """The disk fills between the last checkpoint and its metrics line: one line, exit code 1, the fix;
    then a resume of the finished run brings metrics.jsonl up to last.pt (and plot reads it all)."""
    import errno

    from alexkit import train as train_module

    real, calls = train_module.write_metrics, []

    def full_the_second_time(run_dir, metrics, **kw):
        calls.append(len(metrics))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "metrics.jsonl"))
        return real(run_dir, metrics, **kw)

    monkeypatch.setattr(train_module, "write_metrics", full_the_second_time)
    run = tmp_path / "full"
    with pytest.raises(AlexkitError, match=f"metrics.jsonl: No space left on device; fix that \\(free space, permissions\\), "
                                           f"then continue with `alexkit train --resume {run}`") as failed:  # fmt: skip
        train(TrainConfig(data=store, out=run, epochs=2, **TINY))
    assert failed.value.exit_code == 1
    assert len(_metrics(run)) == 1 and torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(train_module, "write_metrics", real)
    capsys.readouterr()
    train(TrainConfig(resume=run, epochs=2))
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]
    assert "metrics.jsonl did not match last.pt (an epoch behind, or damaged); rewritten from it" in capsys.readouterr().out
    branch = tmp_path / "branch"  # resumed from a best.pt copied out, the note names that file
    branch.mkdir()
    shutil.copy(run / "best.pt", branch / "best.pt")
    best_epoch = torch.load(branch / "best.pt", weights_only=True)["epoch"]
    train(TrainConfig(resume=branch / "best.pt", epochs=best_epoch))
    assert f"{branch}/metrics.jsonl did not match best.pt (an epoch behind, or damaged); rewritten from it" in capsys.readouterr().out


@pytest.mark.parametrize("epoch", [1, 2])
def test_running_out_of_gpu_memory_is_one_line_with_the_fix_and_the_resume(store, tmp_path, monkeypatch, epoch):
    """torch's OutOfMemoryError (raised here by hand: this machine has no GPU): what torch said up to
    the free memory, the batch per process, the fix, and how to go on; exit code 1. In epoch 1 the
    run starts again, with a lower --batch-size; once it has a last.pt it goes on only with its own
    (a resume refuses another), so the way to less memory per GPU is more of them, or a new run."""
    from alexkit import train as train_module

    real, steps = train_module.train_step, []

    def out_of_memory(*args):
        steps.append(1)
        if len(steps) > 12 * (epoch - 1):  # 192 images / 16: 12 steps an epoch
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                         "79.19 GiB of which 1.06 GiB is free. Including non-PyTorch memory, ...")  # fmt: skip
        return real(*args)

    monkeypatch.setattr(train_module, "train_step", out_of_memory)
    run = tmp_path / "run"
    with pytest.raises(AlexkitError) as failed:
        train(TrainConfig(data=store, out=run, epochs=2, **TINY))
    said = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB is "
            "free (at 16 images per process on cpu); free the GPU (nvidia-smi lists what holds it)")  # fmt: skip
    assert failed.value.exit_code == 1
    if epoch == 1:
        assert str(failed.value) == f"{said} or lower --batch-size, then run again"
        assert not (run / "last.pt").exists()
        return
    assert str(failed.value) == (f"{said}, then continue with `alexkit train --resume {run}`; a resumed run keeps its "
                                 "--batch-size 16, so for less memory per GPU resume it under torchrun with --parallel ddp "
                                 "on more GPUs (N processes take 16 / N images each), or start a new run with a lower "
                                 "--batch-size")  # fmt: skip
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    with pytest.raises(AlexkitError, match="--batch-size 8 differs from the resumed run's 16"):  # what the advice steers clear of
        train(TrainConfig(resume=run, epochs=2, batch_size=8))


@pytest.mark.parametrize("stop", ["memory", "ctrl_c"])
def test_a_branch_of_best_pt_that_stops_is_told_to_go_on_from_best_pt(store, tmp_path, monkeypatch, capsys, stop):
    """A run folder holding a best.pt alone (a branch copied off a run) is resumable: stopped before
    it saves an epoch, it is told to go on with --resume NEW/best.pt (and, out of memory, that a resume
    keeps its --batch-size), not to lower --batch-size or run the same command again, which are refused."""
    from alexkit import train as train_module

    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    branch = tmp_path / "branch"
    branch.mkdir()
    shutil.copy(run / "best.pt", branch / "best.pt")

    def stopped(*args):
        if stop == "memory":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_step", stopped)
    go_on = f"continue with `alexkit train --resume {branch}/best.pt`"
    if stop == "memory":
        with pytest.raises(AlexkitError) as failed:
            train(TrainConfig(resume=branch / "best.pt", epochs=2))
        assert f"{go_on}; a resumed run keeps its --batch-size 16" in str(failed.value), failed.value
    else:
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(resume=branch / "best.pt", epochs=2))
        assert f"note: the run keeps its last whole epoch; {go_on}" in capsys.readouterr().err
    assert not (branch / "last.pt").exists()


def test_resume_flags_that_cannot_apply_are_one_line_errors(store, tmp_path):
    moved = tmp_path / "store"
    shutil.copytree(store, moved)
    run = train(TrainConfig(data=moved, out=tmp_path / "run", epochs=1, **TINY))
    with pytest.raises(AlexkitError, match=r"--out .*elsewhere: a resumed run stays in its own folder .*; drop --out"):
        train(TrainConfig(resume=run, epochs=2, out=tmp_path / "elsewhere"))
    moved.rename(tmp_path / "store-now")
    with pytest.raises(AlexkitError, match=r"store .*store does not exist; pass --data with where the store that .*run was"):
        train(TrainConfig(resume=run, epochs=2))
    assert len(_metrics(train(TrainConfig(resume=run, epochs=2, data=tmp_path / "store-now")))) == 2


def test_a_resume_after_the_project_folder_moved_reads_its_store_there(store, tmp_path, monkeypatch, capsys):
    first = tmp_path / "first"
    shutil.copytree(store, first / "alexkit-store")
    train(TrainConfig(data=first / "alexkit-store", out=first / "alexkit-runs" / "r", epochs=1, **TINY))
    first.rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)  # not the project folder: the store is found beside the runs folder
    with pytest.raises(AlexkitError, match="store .*typo does not exist"):  # a --data given is never replaced
        train(TrainConfig(resume=Path("moved/alexkit-runs/r"), epochs=2, data=Path("typo")), given={"resume", "epochs", "data"})
    run = train(TrainConfig(resume=Path("moved/alexkit-runs/r"), epochs=2), given={"resume", "epochs"})
    assert len(_metrics(run)) == 2 and "first/alexkit-store, which is not there; reading" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["data"] == str(tmp_path / "moved" / "alexkit-store")  # the next eval or resume finds it directly


def test_a_damaged_store_is_refused_before_the_run_folder_is_made(store, tmp_path):
    """A stats.npz that does not load, or whose mean image is not of the store's size: the fix is the
    prepare line that writes this store again, from the source its manifest names."""
    damaged = tmp_path / "store"
    shutil.copytree(store, damaged)
    rewrite = f"rewrite the store with `alexkit prepare {store.parent / 'src'} --out {damaged} --size 64 --force`"
    (damaged / "stats.npz").write_bytes(b"")
    with pytest.raises(AlexkitError, match=r"stats.npz is not a stats.npz written by `alexkit prepare` \(EOFError.*\); ") as info:
        train(TrainConfig(data=damaged, out=tmp_path / "run", epochs=1, **TINY))
    assert str(info.value).endswith(rewrite)
    with np.load(store / "stats.npz") as z:
        np.savez(damaged / "stats.npz", **dict(z, mean_image=z["mean_image"][:32]))
    with pytest.raises(AlexkitError, match=r"stats.npz holds a 32x64 mean image, but the store's images are 64x64") as info:
        train(TrainConfig(data=damaged, out=tmp_path / "run", epochs=1, **TINY))
    assert str(info.value).endswith(rewrite)
    with np.load(store / "stats.npz") as z:
        np.savez(damaged / "stats.npz", **dict(z, mean_image=z["mean_image"][:, :32]))
    with pytest.raises(AlexkitError, match=r"stats.npz holds a 64x32 mean image"):
        train(TrainConfig(data=damaged, out=tmp_path / "run", epochs=1, **TINY))
    assert not (tmp_path / "run").exists()


def test_warm_up_epochs_are_no_plateau(store, tmp_path):
    """At lr 1e-9 the val error cannot move: with patience 1 and no drop left, epoch 2 would end the
    run, but epochs 1 and 2 are warm-up, so the plateau count starts at epoch 3."""
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=5, lr=1e-9, warmup_epochs=2, patience=1,
                            max_lr_drops=0, **TINY))  # fmt: skip
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3, 4]  # epoch 3 sets the best; epoch 4, no better, ends it


def test_validation_reads_the_centre_crop_and_training_the_train_graph(store, tmp_path, monkeypatch):
    import alexkit.pipeline.loader as loader

    made, real = [], loader.make_loader
    monkeypatch.setattr(loader, "make_loader", lambda store, split, **kw: made.append((split, kw["mode"])) or real(store, split, **kw))
    train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    assert sorted(made) == [("train", "train"), ("val", "center")]


def test_linear_lr_scaling_is_lr_times_batch_over_128(store, tmp_path):
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, lr_scaling="linear", **dict(TINY, batch_size=32)))
    assert _metrics(run)[0]["lr"] == pytest.approx(0.01 * 32 / 128)


def test_best_pt_holds_the_epoch_of_lowest_val_error_the_latest_of_equals(store, tmp_path, monkeypatch):
    import alexkit.train as train_module

    errors = iter([0.6, 0.4, 0.5, 0.4, 0.45])  # top-1 error per epoch: epochs 2 and 4 tie for the lowest
    monkeypatch.setattr(train_module, "validate", lambda *args: (next(errors), 0.25))
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=5, patience=10, **TINY))
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 4


def test_resuming_on_another_number_of_processes_says_it_is_no_longer_exact(store, tmp_path, capsys):
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["world_size"] == 1
    torch.save(dict(last, world_size=2), run / "last.pt")  # as if epoch 1 had run under torchrun with 2 processes
    train(TrainConfig(resume=run, epochs=2))
    assert "ran on 2 processes so far and goes on with 1: it will not equal" in capsys.readouterr().out
    last = {k: v for k, v in torch.load(run / "last.pt", weights_only=True).items() if k != "world_size"}
    torch.save(last, run / "last.pt")  # a checkpoint from before world_size: config.json says how many
    config = json.loads((run / "config.json").read_text())
    config["resolved"]["world_size"] = 3
    (run / "config.json").write_text(json.dumps(config))
    train(TrainConfig(resume=run, epochs=3))
    assert "ran on 3 processes so far and goes on with 1" in capsys.readouterr().out


def test_plateau_schedule_drops_three_times_then_stops():
    schedule = PlateauSchedule(0.01, patience=2, max_drops=3)
    lrs = []
    for err in [0.9, 0.8, 0.8, 0.8, 0.7, 0.75, 0.71, 0.7, 0.7, 0.7, 0.7, 0.7]:
        schedule.step(err)
        lrs.append(schedule.lr)
        if schedule.stopped:
            break
    assert schedule.drops == 3 and schedule.stopped
    assert [round(lr, 6) for lr in lrs] == [0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.0001, 0.0001, 0.00001, 0.00001, 0.00001]
    restored = PlateauSchedule(1.0, 1, 0)
    restored.load_state_dict(schedule.state_dict())
    assert restored.state_dict() == schedule.state_dict()


def test_images_per_s_leave_out_the_first_step(monkeypatch):
    """The first step carries the start-up (graph build, compilation): the rate starts after it."""
    from alexkit import train_report

    clock = iter([10.0, 10.5, 11.0])  # the first step ends 10 s into the epoch; the next two take 0.5 s each
    monkeypatch.setattr(train_report.time, "perf_counter", lambda: next(clock))
    rate = train_report.Rate(batch=64)
    assert rate.step(waited=3.0) is None and rate.rate() is None and rate.wait_share() is None
    assert rate.step(waited=0.1) == pytest.approx(64 / 0.5) and rate.step(waited=0.2) == pytest.approx(2 * 64 / 1.0)
    assert rate.wait_share() == pytest.approx(0.3 / 1.0)  # the first step's wait (the start-up) left out
    assert rate.waited_all == pytest.approx(3.3)
    assert rate.start_up(started=0.0) == pytest.approx(10.0 - 0.5)  # the first step, less a steady step's 0.5 s


def test_data_wait_is_the_time_spent_asking_for_batches(monkeypatch):
    """timed hands on each batch with the seconds between asking and getting it, and lets the
    iterable finish (a loader's end-of-epoch work runs after its last batch)."""
    from alexkit import train_report

    ended = []

    def batches():
        yield "a"
        yield "b"
        ended.append(True)

    clock = iter([0.0, 0.25, 1.0, 1.5, 2.0])  # asked at 0 and 1 and 2; got a at 0.25, b at 1.5; 2: the end
    monkeypatch.setattr(train_report.time, "perf_counter", lambda: next(clock))
    assert list(train_report.timed(batches())) == [("a", 0.25), ("b", 0.5)]
    assert ended == [True]


def test_warmup_is_linear_per_step():
    assert [warmup_factor(0, s, 4, 2) for s in range(4)] == [1 / 8, 2 / 8, 3 / 8, 4 / 8]
    assert warmup_factor(1, 3, 4, 2) == 1.0 and warmup_factor(5, 0, 4, 2) == 1.0
    assert warmup_factor(0, 0, 4, 0) == 1.0


def test_weight_decay_skips_biases_unless_asked():
    model = AlexNet(10, width=0.25, fc_features=32, input_size=56)
    for decay_biases, bias_decay in [(False, 0.0), (True, 5e-4)]:
        weights, biases = make_optimizer(model, TrainConfig(decay_biases=decay_biases), lr=0.01).param_groups
        assert len(weights["params"]) == 8 and all(p.ndim == 4 or p.ndim == 2 for p in weights["params"])
        assert weights["weight_decay"] == 5e-4 and biases["weight_decay"] == bias_decay
        assert len(biases["params"]) == 8 and all(p.ndim == 1 for p in biases["params"])
        assert weights["momentum"] == 0.9 and weights["lr"] == 0.01


def test_resume_refuses_an_earlier_checkpoint_of_the_run_but_can_branch_from_a_copy(store, tmp_path):
    import shutil

    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    with pytest.raises(AlexkitError, match=rf"overwrite the epochs after it; pass --resume {run}, or copy {run}/best.pt into a new "
                                           "folder NEW and branch off with --resume NEW/best.pt$"):  # fmt: skip
        train(TrainConfig(resume=run / "best.pt", epochs=2))
    with pytest.raises(AlexkitError, match=rf"^--resume {run}/config.json is no checkpoint; a run continues from its last.pt: pass --resume {run}$"):
        train(TrainConfig(resume=run / "config.json", epochs=2))
    (tmp_path / "branch").mkdir()
    shutil.copyfile(run / "best.pt", tmp_path / "branch" / "best.pt")
    branch = train(TrainConfig(resume=tmp_path / "branch" / "best.pt", epochs=2))
    assert branch == tmp_path / "branch" and [r["epoch"] for r in _metrics(branch)] == [1, 2]
    assert len(_metrics(run)) == 1  # the original run is untouched
    (tmp_path / "copy").mkdir()  # best.pt alone, copied into a new folder: no run stopped there
    shutil.copyfile(run / "best.pt", tmp_path / "copy" / "best.pt")
    with pytest.raises(AlexkitError, match=r"copy has best.pt but no last.pt \(nor a run's config.json\); go on from best.pt: "
                                           f"alexkit train --resume {tmp_path}/copy/best.pt$"):  # fmt: skip
        train(TrainConfig(resume=tmp_path / "copy", epochs=2))
    (run / "last.pt").unlink()  # as if killed between best.pt's save and last.pt's in its first epoch,
    (run / "metrics.jsonl").write_text("")  # which metrics.jsonl is written after
    with pytest.raises(AlexkitError, match=f"run {run} has best.pt but no last.pt: it was stopped while saving its first "
                                           f"epoch; go on from best.pt: alexkit train --resume {run}/best.pt"):  # fmt: skip
        train(TrainConfig(resume=run, epochs=2))
    assert train(TrainConfig(resume=run / "best.pt", epochs=2)) == run  # as the message says
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]


def test_resume_refuses_another_store(store, tmp_path):
    import shutil

    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    other = tmp_path / "other"
    shutil.copytree(store, other)
    classes = json.loads((other / "classes.json").read_text())
    classes[0]["name"] = "something else"
    (other / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(AlexkitError, match="has other classes than"):
        train(TrainConfig(resume=run, data=other, epochs=2))
    shutil.copyfile(store / "classes.json", other / "classes.json")
    with np.load(other / "stats.npz") as z:
        stats = dict(z)
    np.savez(other / "stats.npz", **dict(stats, mean_image=stats["mean_image"] + 1))
    with pytest.raises(AlexkitError, match="has another mean image than"):
        train(TrainConfig(resume=run, data=other, epochs=2))
    assert np.array_equal(np.load(run / "stats.npz")["mean_image"], stats["mean_image"])  # the run's copy is kept
    shutil.copyfile(store / "stats.npz", other / "stats.npz")
    assert train(TrainConfig(resume=run, data=other, epochs=2)) == run  # a moved copy of the same store is fine


def test_stores_it_cannot_train_on_are_refused_before_training(tmp_path):
    from tests.test_loader import index_image, write_store

    small = write_store(tmp_path / "small", {"train": [index_image(i, 32) for i in range(8)], "val": [index_image(0, 32)]}, size=32)
    with pytest.raises(AlexkitError, match="too small for AlexNet; prepare one with --size 42 or more"):
        train(TrainConfig(data=small.path, out=tmp_path / "a", epochs=1, **TINY))
    no_val = write_store(tmp_path / "no-val", {"train": [index_image(i, 48) for i in range(32)], "val": []}, size=48)
    with pytest.raises(AlexkitError, match="val.beton holds no images"):
        train(TrainConfig(data=no_val.path, out=tmp_path / "b", epochs=1, **TINY))


def test_one_run_directory_one_writer(store, tmp_path, monkeypatch):
    from alexkit import runs
    from alexkit.locks import only_writer

    run = tmp_path / "busy"
    run.mkdir()
    with only_writer(run / ".train.lock", "held"):  # as if another training were writing it
        with pytest.raises(AlexkitError, match="another `alexkit train` is writing .*busy"):
            train(TrainConfig(data=store, out=run, epochs=1, **TINY))
    assert not (run / "config.json").exists()
    monkeypatch.setattr(runs, "DEFAULT_RUNS", tmp_path / "runs")  # two default names claimed in one second
    monkeypatch.setattr(runs.time, "strftime", lambda fmt: "20261129-120000")
    assert runs.run_dir(None, None, True).name == "20261129-120000"
    assert runs.run_dir(None, None, True).name == "20261129-120000-2"


def test_a_run_still_in_its_first_epoch_is_said_to_be_training_not_stopped(store, tmp_path):
    """Another process holds the run's .train.lock (real flock, as `alexkit train` does) and no
    checkpoint is written yet: resume and eval say it is still training; once it lets go, stopped."""
    from alexkit.evaluate import EvalConfig, evaluate
    from alexkit.locks import only_writer

    run = tmp_path / "young"
    run.mkdir()
    (run / "config.json").write_text("{}")
    hold = "import sys; from alexkit.locks import only_writer\nwith only_writer(sys.argv[1], 'busy'): print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run / ".train.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(AlexkitError, match=f"run {run} is still in its first epoch .* writes its last.pt when that epoch ends; "
                                               f"it is still training; resume it once that training has ended"):  # fmt: skip
            train(TrainConfig(resume=run, epochs=2))
        with pytest.raises(AlexkitError, match="still in its first epoch .* writes its best.pt and last.pt when that epoch "
                                               "ends; wait for that, then run this command again"):  # fmt: skip
            evaluate(EvalConfig(checkpoint=run, data=store, device="cpu"))
        with pytest.raises(AlexkitError, match=f"run {run} is still in its first epoch .* writes its last.pt when that "
                                               "epoch ends; it is still training"):  # the file named, not the folder
            train(TrainConfig(resume=run / "last.pt", epochs=2))
        with pytest.raises(AlexkitError, match="still in its first epoch .* writes its best.pt when that epoch ends; wait"):
            evaluate(EvalConfig(checkpoint=run / "best.pt", data=store, device="cpu"))
        with pytest.raises(AlexkitError, match="held"):  # the holder still holds it
            with only_writer(run / ".train.lock", "held"):
                pass
    finally:
        holder.communicate("", timeout=30)
    with pytest.raises(AlexkitError, match="it stopped before its first epoch ended; train it again"):
        train(TrainConfig(resume=run, epochs=2))
    with pytest.raises(AlexkitError, match="checkpoint .*last.pt does not exist"):
        train(TrainConfig(resume=run / "last.pt", epochs=2))
    (run / ".train.lock").unlink()  # a run folder without a lock file: none is made by looking
    with pytest.raises(AlexkitError, match="it stopped before its first epoch ended"):
        evaluate(EvalConfig(checkpoint=run, data=store, device="cpu"))
    assert not (run / ".train.lock").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, where no one can make a folder")
def test_a_run_folder_that_cannot_be_made_is_one_line(store, tmp_path):
    with pytest.raises(AlexkitError, match=r"^--out /proc/alexkit-run cannot be created: no folder can be made in /proc \(No such file or "
                       r"directory\); choose another path$") as refused:
        train(TrainConfig(data=store, out=Path("/proc/alexkit-run"), epochs=1, **TINY))
    assert refused.value.exit_code == 1  # the system refused it (a file in the way is a bad --out: exit 2)


def test_a_store_that_prepare_is_writing_is_not_trained_on(store, tmp_path):
    from alexkit.pipeline.prepare import _only_writer

    with _only_writer(store):  # as if `alexkit prepare --force` were rewriting it
        with pytest.raises(AlexkitError, match=f"`alexkit prepare` is writing store {store}; wait for it to end"):
            train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    assert not (tmp_path / "run").exists()


def test_the_latest_of_runs_started_in_one_second_is_the_last_numbered(tmp_path):
    """A job array starts many runs at once: -10 comes after -9, not between the first and -2."""
    from alexkit.paths import latest_run

    for name in ["20261129-115959", "20261129-120000", *(f"20261129-120000-{n}" for n in range(2, 12))]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "best.pt").write_bytes(b"")
    assert latest_run(tmp_path).name == "20261129-120000-11"


def _no_locks(monkeypatch) -> None:
    """flock fails as on NFS without its lock service, or Lustre without -o flock."""
    import errno
    import fcntl

    def no_locks(f, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)


def test_a_file_system_without_locks_is_one_line_and_leaves_no_run_folder(store, tmp_path, monkeypatch):
    _no_locks(monkeypatch)
    with pytest.raises(AlexkitError, match=r"cannot lock .*\.train\.lock: No locks available; its file system offers no "
                                           r"file locks: use a folder on one that does") as failed:  # fmt: skip
        train(TrainConfig(data=store, out=tmp_path / "nfs-run", epochs=1, **TINY))
    assert failed.value.exit_code == 1 and not (tmp_path / "nfs-run").exists()


def test_a_file_system_without_locks_never_says_a_run_is_in_its_first_epoch(tmp_path, monkeypatch):
    """Where flock fails, no lock can be held: a run without a checkpoint is not "still training"."""
    from alexkit.locks import held_by_another

    (tmp_path / ".train.lock").touch()
    _no_locks(monkeypatch)
    assert not held_by_another(tmp_path / ".train.lock")


def test_a_resume_that_another_training_overtook_is_refused(store, tmp_path, monkeypatch):
    """B reads last.pt; before B holds the lock, A (another resume of the run) writes a newer one."""
    import os

    from alexkit import train as train_module

    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    real_setup = train_module.setup

    def overtaken(*args, **kw):
        later = (run / "last.pt").stat().st_mtime_ns + 10**9
        os.utime(run / "last.pt", ns=(later, later))  # as if A had just saved epoch 2
        return real_setup(*args, **kw)

    monkeypatch.setattr(train_module, "setup", overtaken)
    with pytest.raises(AlexkitError, match="last.pt changed while this run was starting"):
        train(TrainConfig(resume=run, epochs=3))
    assert len(_metrics(run)) == 1


def test_resume_removes_what_a_kill_during_a_save_left(store, tmp_path):
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    (run / ".best.pt.host-4242-0a0b0c0d.partial").write_bytes(b"half a checkpoint")
    (run / "last.pt.partial").write_bytes(b"half a checkpoint")  # the name older versions used
    train(TrainConfig(resume=run, epochs=1))
    assert not list(run.glob("*.partial"))


def test_best_pt_is_written_before_last_pt(tmp_path):
    """A kill between the two leaves last.pt an epoch behind (trained again on resume), never
    best.pt behind the best epoch. Here last.pt cannot be replaced (a folder stands in its way)."""
    from alexkit.checkpoints import save_checkpoint

    (tmp_path / "last.pt").mkdir()
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, dict(epoch=3), is_best=True)
    assert torch.load(tmp_path / "best.pt", weights_only=True) == dict(epoch=3)


def test_a_failed_run_leaves_no_empty_folder(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AlexkitError, match="fewer than one batch"):
        train(TrainConfig(data=store, epochs=1, **dict(TINY, batch_size=100_000)))
    assert not any((tmp_path / "alexkit-runs").iterdir())


def test_validation_errors_are_misses_over_n_exactly():
    """63 images of 7 classes, 3 of them with their class ranked last: 3/63 for top-1 and top-5 alike,
    the figure eval gives, not 1 - 60/63."""
    from torch import nn
    from torch.nn import functional as F

    from alexkit.train import error_rate, validate

    labels = torch.arange(63) % 7
    logits = F.one_hot(labels, 7).float()  # the class first
    logits[:3] = 1 - logits[:3]  # the class last (top-5 of 7 leaves it out)
    batches = [(logits[i : i + 16], labels[i : i + 16], torch.arange(i, min(i + 16, 63))) for i in range(0, 63, 16)]
    grad = []
    net = nn.Identity()
    net.register_forward_hook(lambda module, inputs, output: grad.append(torch.is_grad_enabled()))
    assert validate(net, batches, amp=False, device=torch.device("cpu")) == (3 / 63, 3 / 63)
    assert grad == [False] * 4  # no autograd graph is built while validating
    assert error_rate(60, 63) == 3 / 63 != 1 - 60 / 63


def test_bad_values_are_one_line_errors():
    with pytest.raises(AlexkitError, match="--seed -1"):
        TrainConfig(seed=-1)
    with pytest.raises(AlexkitError, match="--batch-size 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(AlexkitError, match="--parallel 'model'"):
        TrainConfig(parallel="model")
    with pytest.raises(AlexkitError, match="--device"):
        TrainConfig(device="tpu")
    for flag, value, allowed in (("lr", math.inf, "above 0"), ("lr", math.nan, "above 0"), ("weight_decay", math.inf, "at least 0"),
                                 ("width", 9.0, "above 0, at most 8"), ("fc_features", 10**20, "from 2 to 16,384"),
                                 ("seed", 2**32, "from 0 to 4,294,967,295"), ("dropout", 1.0, "from 0 to below 1"),
                                 ("momentum", 1.0, "from 0 to below 1")):  # fmt: skip
        with pytest.raises(AlexkitError, match=f"^--{flag.replace('_', '-')} {value} is out of range: {allowed}$"):
            TrainConfig(**{flag: value})
    with pytest.raises(AlexkitError, match=r"^--lr 1e\+308 scaled linearly to --batch-size 256 is not a finite number; pass a smaller --lr$"):
        TrainConfig(lr=1e308, lr_scaling="linear", batch_size=256)
    for parallel in ("columns", "ddp-columns"):  # fc6 and fc7 split in halves, one per column
        with pytest.raises(AlexkitError, match=f"^--fc-features 63 cannot split fc6 and fc7 into --parallel {parallel}'s two columns; "
                                               r"pass an even number \(62 or 64\)$"):  # fmt: skip
            TrainConfig(fc_features=63, parallel=parallel)
    TrainConfig(fc_features=63)  # one device: any number


def test_epoch_lines_say_how_long_the_rest_would_take_at_most():
    """...and show the top-5 error only where it can be above 0: with more than 5 classes."""
    from alexkit.train_report import summary as _summary

    row = dict(epoch=1, lr=0.01, train_loss=6.9, train_top1_err=0.999, val_top1_err=0.998, val_top5_err=0.99,
               images_per_s=3000.0, data_wait=0.021, seconds=427.0)  # fmt: skip
    assert _summary(row, epochs_left=89, classes=1000) == (
        "epoch 1: lr 0.01 train loss 6.900 top-1 err 99.9% | val top-1 err 99.8% top-5 err 99.0% | 3,000 images/s, "
        "data wait 2%, 7m07s | 89 epochs to go at most, 10h33m23s")  # fmt: skip
    assert _summary(row, epochs_left=89, classes=1000, start_up=27.0).endswith("| 89 epochs to go at most, 9h53m20s")  # 400 s each
    assert _summary(dict(row, epoch=89), epochs_left=1, classes=1000).endswith("| 1 epoch to go at most, 7m07s")
    assert _summary(dict(row, epoch=90), epochs_left=0, classes=1000).endswith("images/s, data wait 2%, 7m07s")
    assert "val top-1 err 99.8% | 3,000 images/s" in _summary(row, epochs_left=0, classes=5)


def test_a_first_epoch_at_chance_with_the_papers_init_points_to_sturdy(store, tmp_path, capsys):
    """The paper's init leaves a narrow net's loss at ln(classes): after epoch 1 the run says which
    flag trains it; a loss below chance, another init, or a later epoch says nothing."""
    from alexkit.train_report import stall_note

    assert stall_note(6.88, 1000, "paper").startswith("note: the training loss (6.880) is no better than chance, "
                                                      "ln(1000) = 6.908, after epoch 1")  # fmt: skip
    assert stall_note(6.80, 1000, "paper") is None and stall_note(6.9, 1000, "sturdy") is None
    assert stall_note(0.0, 1, "paper") is None  # one class: no chance to compare with
    train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **dict(TINY, init="paper")))
    assert "train anew with --init sturdy" in capsys.readouterr().out
    train(TrainConfig(resume=tmp_path / "run", epochs=2))
    assert "--init sturdy" not in capsys.readouterr().out


def test_cli_trains_and_resumes(store, tmp_path, capsys):
    from alexkit.cli.main import main

    out = tmp_path / "cli-run"
    args = ["train", "--data", str(store), "--out", str(out), "--epochs", "1", "--batch-size", "32", "--width", "0.25",
            "--fc-features", "64", "--init", "sturdy", "--progress", "plain", "--device", "cpu"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "epoch 1: lr 0.01 train loss" in printed and f"run: {out}" in printed
    with pytest.raises(SystemExit) as done:  # a flag given at its default value still counts as given
        main(["train", "--resume", str(out), "--epochs", "2", "--batch-size", "128"])
    assert done.value.code == 2 and "--batch-size 128 differs from the resumed run's 32" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["train", "--resume", str(out), "--epochs", "2", "--progress", "auto"])
    assert done.value.code == 0
    assert json.loads((out / "config.json").read_text())["config"]["progress"] == "auto"  # not the run's "plain"
    assert [r["epoch"] for r in _metrics(out)] == [1, 2]
    assert math.isfinite(_metrics(out)[-1]["train_loss"])
    assert np.load(out / "stats.npz")["mean_image"].shape == (64, 64, 3)


def test_dropout_draws_differ_by_rank_and_epoch():
    """Ranks of one DDP step must not drop the same units; each epoch draws anew, the same on a resume."""
    seeds = [dropout_seed(s, e, r) for s in range(3) for e in range(90) for r in range(64)]
    assert len(set(seeds)) == len(seeds)


def test_ddp_training_under_torchrun(store, tmp_path):
    """Two gloo processes train one run and resume it: rank 0 alone reports and writes, and the
    checkpoint loads alone. Resumed without torchrun, the run says how (not that a --parallel the
    user never gave needs torchrun), and goes on alone with --parallel none."""
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1", "--nproc-per-node=2",
                "-m", "alexkit", "train"]  # fmt: skip
    first = ["--parallel", "ddp", "--data", str(store), "--out", str(out), "--epochs", "1", "--batch-size", "32",
             "--width", "0.25", "--fc-features", "64", "--init", "sturdy", "--progress", "plain", "--device", "cpu"]  # fmt: skip
    printed = ""
    for args in (first, ["--resume", str(out), "--epochs", "2"]):
        r = subprocess.run(torchrun + args, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stdout + r.stderr
        printed += r.stdout
    assert printed.count("epoch 1: lr") == 1 and printed.count("epoch 2: lr") == 1, printed
    assert [row["epoch"] for row in _metrics(out)] == [1, 2]
    assert all(0 <= row["data_wait"] < 1 for row in _metrics(out))  # the most of the two processes
    assert json.loads((out / "config.json").read_text())["resolved"]["world_size"] == 2
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and last["epoch"] == 2
    assert not any(k.startswith("module.") for k in last["model"])  # the unwrapped model, loadable alone
    build_from_checkpoint(last)
    alone = [sys.executable, "-m", "alexkit", "train", "--resume", str(out), "--epochs", "3", "--device", "cpu"]
    r = subprocess.run(alone, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"error: {out} was trained with --parallel ddp by 2 processes; resume it under torchrun as it was started (on one "
        f"node: torchrun --nproc-per-node=2 -m alexkit train --resume {out} --epochs 3 --device cpu), or in this one process "
        "with --parallel none"], r.stderr  # fmt: skip: the flags given, kept
    with pytest.raises(AlexkitError, match="trained with --parallel ddp by 2 processes; resume it under torchrun"):  # given=None
        train(TrainConfig(resume=out, epochs=3, device="cpu"))
    told = TrainConfig(resume=out, epochs=3, parallel="none", device="cpu", progress="none")  # as the message says
    train(told, {"resume", "epochs", "parallel", "device", "progress"})  # --parallel none given, though it is the default
    assert [row["epoch"] for row in _metrics(out)] == [1, 2, 3]
    (tmp_path / "columns").mkdir()  # a run of ddp-columns goes on alone with --parallel columns
    last = torch.load(out / "last.pt", weights_only=True)
    del last["world_size"]  # and a process count not known (an older run's checkpoint, alone)
    torch.save(dict(last, config=dict(last["config"], parallel="ddp-columns")), tmp_path / "columns" / "last.pt")
    with pytest.raises(AlexkitError, match=r"trained with --parallel ddp-columns; resume it under torchrun as it was started "
                                           r"\(torchrun -m alexkit train --resume .*columns --device cpu\), or in this one process with "
                                           r"--parallel columns$"):  # fmt: skip
        train(TrainConfig(resume=tmp_path / "columns", device="cpu"), {"resume", "device"})


NODE_DISK = """if [ "$RANK" = 1 ]; then  # its own view of the files, $SHARED an empty folder in it, as on another node
  exec unshare -m --propagation private sh -c 'mount --bind "$EMPTY" "$SHARED" && exec "$0" "$@"' "$@"
fi
exec "$@"
"""


def _own_mounts() -> bool:
    """Whether a process here may have its own view of the files (root, unshare and mount at hand)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _own_mounts(), reason="needs root and unshare -m")
def test_a_run_folder_that_not_every_process_sees_is_refused_at_the_start(store, tmp_path):
    """torchrun, two processes; --out is on a disk process 1 does not see (its own mount of an empty
    folder there, as a node's local disk would be): refused before any epoch, naming process 1,
    and the folder process 0 made goes."""
    shared, empty = tmp_path / "shared", tmp_path / "empty"
    shared.mkdir()
    empty.mkdir()
    (tmp_path / "node.sh").write_text(NODE_DISK)
    out = shared / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1", "--nproc-per-node=2",
                "--no-python", "sh", str(tmp_path / "node.sh"), sys.executable, "-m", "alexkit", "train", "--parallel", "ddp",
                "--data", str(store), "--out", str(out), "--epochs", "1", "--batch-size", "32", "--width", "0.25",
                "--fc-features", "64", "--init", "sturdy", "--progress", "none", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHARED": str(shared), "EMPTY": str(empty)}
    r = subprocess.run(torchrun, capture_output=True, text=True, timeout=300, env=env)
    host = socket.gethostname()
    assert r.returncode != 0 and [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        f"error: the run folder {out} of process 0 on {host} is not there for process 1 on {host}; pass --out a folder on "
        "a file system all nodes share"], r.stdout + r.stderr  # fmt: skip
    assert not out.exists() and not any(empty.iterdir())


def test_a_cpu_run_on_a_gpu_machine_leaves_cuda_alone(store, tmp_path):
    """Its checkpoints hold no CUDA RNG states, so saving them never started CUDA (a context on GPU 0).
    In a fresh process: on a GPU machine, GPU tests earlier in this one have started CUDA."""
    code = f"""if True:
        import torch, torch.cuda.random
        torch.cuda.is_available = lambda: True  # as on a GPU machine, where starting CUDA would work;
        torch.cuda.random.device_count = lambda: 1  # on a CPU build it raises instead
        from pathlib import Path
        from alexkit.train import TrainConfig, train
        run = train(TrainConfig(data=Path({str(store)!r}), out=Path({str(tmp_path / "run")!r}), epochs=1, **{TINY!r}))
        assert torch.load(run / "last.pt", weights_only=True)["rng"]["cuda"] == []
        assert not torch.cuda.is_initialized()
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_defaults_train_and_checkpoints_load_on_cpu(store, tmp_path):
    """On CUDA the defaults turn on channels-last, torch.compile and, on GPUs with bf16 tensor cores,
    bf16 autocast."""
    run = train(TrainConfig(data=store, out=tmp_path / "gpu", epochs=4, dropout=0.0,
                            **{**TINY, "device": "cuda"}))  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["channels_last"] and config["resolved"]["compile"]
    assert config["resolved"]["amp"] == (torch.cuda.get_device_capability()[0] >= 8)
    rows = _metrics(run)
    assert all(math.isfinite(r["train_loss"]) for r in rows) and rows[-1]["train_loss"] < rows[0]["train_loss"]
    model = build_from_checkpoint(torch.load(run / "last.pt", map_location="cpu", weights_only=True))
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_auto_speedups_are_off_on_the_cpu_and_flags_win():
    cpu = torch.device("cpu")
    assert resolve_auto("auto", "auto", "auto", cpu) == (False, False, False)
    assert resolve_auto("on", "on", "on", cpu) == (True, True, True)
    assert resolve_auto("off", "on", "off", cpu) == (False, True, False)


def test_each_speedup_flag_reaches_its_own_setting(store, tmp_path):
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, amp="on", channels_last="off", compile="off", **TINY))
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert (resolved["amp"], resolved["channels_last"], resolved["compile"]) == (True, False, False)


@pytest.mark.parametrize("tensor_cores", [True, False])
def test_auto_bf16_on_cuda_follows_the_gpus_bf16_tensor_cores(monkeypatch, tensor_cores):
    """torch's is_bf16_supported() counts emulation as support (a T4 says True); only the answer
    without emulation turns bf16 on. Channels-last and compile are on for CUDA either way. (torch's
    answer is stood in for here: no CUDA on this machine; resolve_auto reads only the device's type.)"""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or tensor_cores)
    cuda = torch.device("cuda")
    assert resolve_auto("auto", "auto", "auto", cuda) == (tensor_cores, True, True)
    assert resolve_auto("on", "off", "auto", cuda) == (True, False, True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own import
def test_the_gpu_defaults_run_on_the_cpu_too(store, tmp_path):
    """bf16 autocast (the loader then gives bf16 images), channels-last and torch.compile are the
    defaults on CUDA. Turned on here, the same code trains, saves plain AlexNet's weights (not the
    compiled wrapper's), resumes and evaluates on the CPU (about a minute: the compile)."""
    from alexkit.evaluate import EvalConfig, evaluate

    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, amp="on", channels_last="on", compile="on", **TINY))
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["amp"] and config["resolved"]["channels_last"] and config["resolved"]["compile"]
    last = torch.load(run / "last.pt", weights_only=True)
    assert set(last["model"]) == set(AlexNet(**last["model_args"]).state_dict())
    assert all(v.dtype == torch.float32 for v in last["model"].values())  # autocast leaves the weights in fp32
    train(TrainConfig(resume=run, epochs=2))
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and all(math.isfinite(r["train_loss"]) for r in rows)
    results = evaluate(EvalConfig(checkpoint=run / "last.pt", tta=True, device="cpu"))
    assert results["n"] == NUM_CLASSES * 16 and results["tta"] and 0 <= results["top1_err"] < 1 - 1 / NUM_CLASSES


def test_compiling_drops_only_dynamos_profiler_label_warning():
    """Under DDP every process printed dynamo's warning that DDP's record_function is not traced
    (`torchrun ... train --parallel ddp --compile on` showed it from each rank); other warnings stay."""
    import logging

    from alexkit.train import compile_quietly

    logger = logging.getLogger("torch._dynamo.variables.ctx_manager")  # where dynamo warns it
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        compile_quietly(torch.nn.Linear(2, 2))  # lazy: nothing compiles until called
        logger.warning("Profiler record function %s will be ignored", "<class 'record_function'>")
        logger.warning("Graph break: %s", "something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Graph break: something else"]


def test_a_resume_on_a_file_system_without_locks_keeps_the_run(store, tmp_path, monkeypatch):
    """The no-locks refusal removes a folder it made itself, never a run it was asked to resume."""
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    _no_locks(monkeypatch)
    with pytest.raises(AlexkitError, match="its file system offers no file locks"):
        train(TrainConfig(resume=run, epochs=2))
    assert (run / "last.pt").is_file() and (run / "metrics.jsonl").is_file()


def test_a_resume_may_repeat_the_runs_flags_and_change_its_parallel_but_not_its_columns(tmp_path):
    from alexkit.resume import resumed_config
    from alexkit.train import _config_dict

    saved = _config_dict(TrainConfig(data=tmp_path, lr=0.02))  # --parallel none
    same = resumed_config(TrainConfig(resume=tmp_path, lr=0.02), saved, {"resume", "lr"}, tmp_path)  # its own --lr again
    assert same.lr == 0.02
    ddp = resumed_config(TrainConfig(resume=tmp_path, parallel="ddp"), saved, {"resume", "parallel"}, tmp_path)
    assert ddp.parallel == "ddp"
    with pytest.raises(AlexkitError, match="laid out differently"):
        resumed_config(TrainConfig(resume=tmp_path, parallel="columns"), saved, {"resume", "parallel"}, tmp_path)


def test_the_data_wait_in_metrics_is_the_time_spent_waiting_for_batches(store, tmp_path, monkeypatch):
    from alexkit import train as train_module

    monkeypatch.setattr(train_module, "timed", lambda batches: ((b, 10.0) for b in batches))  # as if 10 s per batch
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    assert _metrics(run)[0]["data_wait"] > 1  # more waiting than the steps' real time: the figure is the waits'


def test_resuming_a_run_the_plateau_ended_trains_no_more(store, tmp_path, capsys):
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=5, lr=1e-9, patience=1, max_lr_drops=0, **TINY))
    assert len(_metrics(run)) < 5
    before = (run / "config.json").read_bytes()
    train(TrainConfig(resume=run, epochs=9))
    assert "already ended after its last lr drop" in capsys.readouterr().out
    assert (run / "config.json").read_bytes() == before


def test_a_run_starts_with_one_line_saying_what_it_will_do(store, tmp_path, capsys):
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=3, lr=1e-9, patience=1, **TINY))
    params = sum(p.numel() for p in AlexNet(NUM_CLASSES, width=0.25, fc_features=128, input_size=56).parameters())
    assert capsys.readouterr().out.splitlines()[0] == (
        f"run {run}: AlexNet of {params:,} parameters on cpu (float32); 192 train / 64 val images; "
        "batch 16, lr 1e-09, at most 3 epochs")  # fmt: skip
    now = torch.load(run / "last.pt", weights_only=True)["scheduler"]["lr"]
    assert now < 1e-9  # the lr has dropped: a resume says the lr it goes on with
    train(TrainConfig(resume=run, epochs=4))
    assert capsys.readouterr().out.startswith(f"run {run}: resuming after epoch 3; AlexNet of {params:,} parameters on cpu "
                                              f"(float32); 192 train / 64 val images; batch 16, lr {now:g}, at most 4 epochs")  # fmt: skip


def test_the_start_line_says_where_the_processes_run():
    from alexkit.model.placement import Placement
    from alexkit.train_report import where as _where

    gpu = lambda i: torch.device("cuda", i)  # noqa: E731 (a device object: no CUDA needed)
    cpu = torch.device("cpu")
    assert _where(Placement("none", 0, 1, (gpu(3),))) == "cuda:3"
    assert _where(Placement("columns", 0, 1, (gpu(0), gpu(1)))) == "cuda:0 and cuda:1, a column each"
    assert _where(Placement("columns", 0, 1, (cpu, cpu))) == "cpu, both columns"
    assert _where(Placement("ddp", 0, 8, (gpu(0),))) == "8 processes x 1 GPU with ddp"
    assert _where(Placement("ddp-columns", 0, 2, (gpu(0), gpu(1)))) == "2 processes x 2 GPUs with ddp-columns"
    assert _where(Placement("ddp", 0, 2, (cpu,))) == "2 processes on cpu with ddp"


def _waits_worker(rank: int, out: str) -> None:
    import torch.distributed as dist

    from alexkit.train_report import Rate as _Rate, most_waited

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    try:
        clock = _Rate(batch=16)
        clock.since, clock.now, clock.steps, clock.waited = 0.0, 1.0, 5, (0.1, 0.4)[rank]  # rank 1 waited longer
        Path(out, f"rank{rank}.txt").write_text(str(most_waited(clock, 2.0, torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_under_torchrun_the_data_wait_is_the_most_of_any_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_waits_worker, args=(str(tmp_path),), nprocs=2, join=True)
    assert [float((tmp_path / f"rank{r}.txt").read_text()) for r in range(2)] == [0.4, 0.4]


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_processes_is_said_before_they_join(store, tmp_path, monkeypatch):
    """torchrun, two processes, --batch-size 15: said with its fix, once (each node's first process
    alone prints it: every process meets it alike), before any process joins, opens the store (here
    missing) or writes a file. A resumed run keeps its batch: the number of processes must change."""
    from alexkit.train import _resume_from

    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1", "--nproc-per-node=2",
                "-m", "alexkit", "train", "--parallel", "ddp", "--batch-size", "15", "--data", str(tmp_path / "missing"),
                "--out", str(out), "--device", "cpu"]  # fmt: skip
    r = subprocess.run(torchrun, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0 and [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        "error: --batch-size 15 (the global batch) does not split evenly over 2 processes; pass a --batch-size divisible "
        "by 2 (14 or 16), or run a number of processes that divides 15 (1, 3, 5, 15)"], r.stderr  # fmt: skip
    assert not out.exists()
    run = train(TrainConfig(data=store, out=tmp_path / "one", epochs=1, **TINY))  # batch 16
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets them: known before joining
    with pytest.raises(AlexkitError, match=r"^the run's global batch, --batch-size 16, does not split evenly over 3 processes "
                                           r"\(a resumed run keeps its batch\); resume it on a number of processes that "
                                           r"divides 16 \(1, 2, 4, 8, 16\)$") as raised:  # fmt: skip
        _resume_from(TrainConfig(resume=run, parallel="ddp"), {"resume", "parallel"})
    assert raised.value.everywhere


def _train_cli(store: Path, run: Path, epochs: int, fc: int = 128) -> list[str]:
    """A real `alexkit train` of a tiny AlexNet, for the tests that signal it or close its stdout (the
    sturdy init: with the paper's, epoch 1's line is followed by a note that the loss is at chance)."""
    return [sys.executable, "-m", "alexkit", "train", "--data", str(store), "--out", str(run), "--epochs", str(epochs),
            "--batch-size", "16", "--width", "0.25", "--fc-features", str(fc), "--init", "sturdy", "--device", "cpu",
            "--progress", "none"]  # fmt: skip


def test_a_checkpoint_over_the_file_size_limit_names_the_limit_not_free_space(store, tmp_path):
    """EFBIG (`ulimit -f`, or FAT32's 4 GiB) on best.pt: the fix is the limit or another file system; a
    limit below a checkpoint's size is warned of at the start."""
    import re

    from tests.test_prepare import file_size_limit

    run = tmp_path / "run"
    r = subprocess.run(_train_cli(store, run, epochs=1, fc=64), capture_output=True, text=True, timeout=300,
                       preexec_fn=file_size_limit(512 << 10))  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert re.search(r"^warning: the per-file size limit \(`ulimit -f`: 512 KiB\) is below a checkpoint's size \(about 1\.\d MB\): "
                     "saving an epoch will fail, and lose it; raise the limit first$", r.stderr, re.M), r.stderr  # before training
    assert r.stderr.splitlines()[-1] == (f"error: {run}/best.pt: File too large; raise the per-file size limit (`ulimit -f`: "
                                         "512 KiB here) or write to a file system that holds files this large, then run "
                                         "again"), r.stderr  # fmt: skip


@pytest.mark.parametrize("sig, code, said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_ctrl_c_or_sigterm_says_how_to_go_on_once_an_epoch_is_saved(store, tmp_path, sig, code, said):
    """SIGINT (Ctrl-C), or SIGTERM (kill, a batch system's time limit), to a real `alexkit train` after its
    first checkpoint: exit 130 or 143, and the resume line (with the run's folder quoted for the shell)
    besides "interrupted" or "terminated"."""
    import signal
    import time

    run = tmp_path / "a run"
    cmd = _train_cli(store, run, epochs=200)
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a first epoch on a loaded 2-core machine (other tests alongside) can take minutes
    while not (run / "last.pt").is_file() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (run / "last.pt").is_file(), f"no epoch saved in {time.monotonic() - deadline + 300:.0f} s: {child.poll()}"
    child.send_signal(getattr(signal, sig))
    _, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    assert f"note: the run keeps its last whole epoch; continue with `alexkit train --resume '{run}'`" in err, err
    assert err.rstrip().endswith(said), err
    assert not list(run.glob(".*.partial")), list(run.iterdir())


def test_a_stop_before_the_run_folder_holds_anything_names_no_folder_to_reuse(store, tmp_path, monkeypatch, capsys):
    """claim_run takes away a folder it made for a run that wrote nothing: the note must not send the
    user to it."""
    import alexkit.train as stage

    def stopped(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "_train", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    assert not (tmp_path / "run").exists()
    assert capsys.readouterr().err.strip() == "note: no epoch had ended, so there is nothing to continue; run the same command again"


def test_ctrl_c_in_the_first_epoch_says_to_run_again(store, tmp_path):
    """Nothing to continue yet: the note says so, and names the folder to run in again."""
    import signal
    import time

    from tests.test_pipeline import sigint_as_default

    run = tmp_path / "run"
    cmd = _train_cli(store, run, epochs=1)
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default)
    deadline = time.monotonic() + 300
    while not (run / "config.json").is_file() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    if (run / "last.pt").is_file():
        pytest.skip("the epoch ended before the signal came (a fast machine)")
    assert child.returncode == 130, err
    assert (f"note: no epoch had ended, so there is nothing to continue; run the same command again (--out {run} "
            "reuses this run's folder)") in err, err  # fmt: skip


def test_a_closed_stdout_loses_no_epoch_and_says_how_to_go_on(store, tmp_path):
    """`alexkit train | head -2`: the epoch whose summary cannot be printed is saved first, and the
    resume line goes to stderr."""
    import torch

    run = tmp_path / "run"
    cmd = _train_cli(store, run, epochs=3, fc=64)
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = [child.stdout.readline() for _ in range(2)]  # the run's line, then epoch 1's summary
    assert first[1].startswith("epoch 1:"), first
    child.stdout.close()  # as head does once it has its lines
    err = child.stderr.read()
    assert child.wait(timeout=300) == 1, err
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2  # epoch 2 ended, unsaid
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert f"note: the run keeps its last whole epoch; continue with `alexkit train --resume {run}`" in err, err


def test_how_to_go_on_after_a_stop_names_torchrun_for_a_ddp_run(tmp_path):
    """A ddp run's processes came from torchrun, and one process alone would be refused its resume."""
    from alexkit.resume import how_to_go_on

    run = tmp_path / "a run"
    run.mkdir()
    assert how_to_go_on("none", run) == "run again"  # no epoch saved yet
    (run / "best.pt").write_bytes(b"")  # epoch 1's last.pt not written (a full disk): on from best.pt
    assert how_to_go_on("none", run) == f"continue with `alexkit train --resume '{run}/best.pt'`"
    (run / "last.pt").write_bytes(b"")
    assert how_to_go_on("columns", run) == f"continue with `alexkit train --resume '{run}'`"
    for parallel in ("ddp", "ddp-columns"):
        assert how_to_go_on(parallel, run) == ("continue with torchrun started as this job was, running "
                                               f"`-m alexkit train --resume '{run}'`")  # fmt: skip


def test_a_diverging_run_stops_with_a_line_that_says_what_can_be_done(store, tmp_path):
    """In epoch 1: a lower --lr or the sturdy init. Later (here a resumed run whose weights went NaN):
    the run keeps its last epoch but cannot go on with another --lr, so the line says to train anew."""
    with pytest.raises(AlexkitError, match=r"^the training loss became (nan|inf) in epoch 1; lower --lr or use --init sturdy$"):
        train(TrainConfig(data=store, out=tmp_path / "a", epochs=1, **{**TINY, "lr": 1e6}))
    run = train(TrainConfig(data=store, out=tmp_path / "b", epochs=1, **TINY))
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["model"]["fc8.weight"][0, 0] = float("nan")
    torch.save(ckpt, run / "last.pt")
    with pytest.raises(AlexkitError, match=r"in epoch 2; last.pt keeps epoch 1, but a run goes on only with its own --lr: "
                                           "train anew with a lower --lr$"):  # fmt: skip
        train(TrainConfig(resume=run, epochs=2))


def test_a_resume_on_the_store_prepared_otherwise_says_so(store, tmp_path, capsys):
    """Same images, mean and classes, but another --quality or --format: the resume goes on (it is
    the run's data), with a note that its epochs now see other pixels."""
    run = train(TrainConfig(data=store, out=tmp_path / "run", epochs=1, **TINY))
    assert json.loads((run / "config.json").read_text())["store_settings"]["quality"] == 90
    other = tmp_path / "store-q50"
    shutil.copytree(store, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["settings"]["quality"] = 50  # as `alexkit prepare --quality 50` records it
    (other / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    train(TrainConfig(resume=run, data=other, epochs=2))
    assert (f"note: store {other} holds the run's images stored otherwise (quality 50 where the run's had 90): what "
            "follows sees other pixels than the run has so far") in capsys.readouterr().err
