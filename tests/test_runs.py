"""runs.py and paths.py on their own, without training: the run folder's claim, metrics.jsonl, the
hints printed for the user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from alexkit import checkpoints, runs
from alexkit.errors import AlexkitError
from alexkit.stops import held


def test_a_finished_runs_metrics_are_left_as_they_are_when_they_already_say_so(tmp_path):
    """A resume of a finished run rewrites metrics.jsonl (and says so) only where it differs from last.pt."""
    metrics = [{"epoch": 1, "loss": 1.5}, {"epoch": 2, "loss": 1.25}]
    assert runs.write_metrics(tmp_path, metrics)
    os.utime(tmp_path / "metrics.jsonl", ns=(10**9, 10**9))
    assert not runs.write_metrics(tmp_path, metrics, only_if_different=True)
    assert (tmp_path / "metrics.jsonl").stat().st_mtime_ns == 10**9
    assert runs.write_metrics(tmp_path, metrics[:1], only_if_different=True)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1, "loss": 1.5}\n'


def test_a_resume_whose_last_pt_went_away_while_it_started_says_to_check_it(tmp_path):
    """The run folder is the resumed run's own: the fix is to look at it, not to choose another --out."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    gone = dict(path=run / "last.pt", stat=(123, 456))  # read, then removed before the claim
    with pytest.raises(AlexkitError, match=r"last.pt: No such file or directory; check it and resume again$") as failed:
        with runs.claim_run(run, True, gone):
            pass
    assert failed.value.exit_code == 1 and (run / "config.json").is_file()


@pytest.mark.parametrize("out, said", [
    ("link", "--out {t}/link is a link to {t}/gone, which does not exist"),
    ("link/run", "--out {t}/link/run is under {t}/link, a link to {t}/gone, which does not exist"),
])  # fmt: skip
def test_a_run_folder_that_is_a_link_to_nothing_is_named_with_where_it_points(tmp_path, out, said):
    """`train --out LINK` where LINK points nowhere: mkdir would say only "File exists"."""
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(AlexkitError) as failed:
        with runs.claim_run(tmp_path / out, True, None):
            pass
    assert str(failed.value) == said.format(t=tmp_path) + "; make that folder, or remove the link"
    assert failed.value.exit_code == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["link"]


def test_a_new_run_that_lost_the_race_for_an_empty_folder_leaves_the_winners_folder(tmp_path, monkeypatch):
    """Two `alexkit train --out RUN` started at once into a missing folder: the second finds the
    first's lock and gives up, removing nothing (the folder is the first's now)."""
    import contextlib

    run = tmp_path / "run"

    @contextlib.contextmanager
    def won_by_another(lock, busy, being_read=None):
        (run / "config.json").write_text("{}")  # the other training, holding the lock, writes its files
        raise AlexkitError(busy)
        yield

    monkeypatch.setattr(runs, "only_writer", won_by_another)
    with pytest.raises(AlexkitError, match="another `alexkit train` is writing .*run; wait for it to end, or choose another --out"):
        with runs.claim_run(run, True, None):
            pass
    assert (run / "config.json").is_file()


def test_a_ctrl_c_while_a_new_run_claims_its_folder_leaves_no_folder(tmp_path, monkeypatch):
    """Between making the folder (and its lock file) and the first run file, a Ctrl-C used to leave a
    folder of only .train.lock behind."""
    run = tmp_path / "run"

    def interrupted(run_dir):
        raise KeyboardInterrupt  # as if Ctrl-C came while the folder was being claimed

    monkeypatch.setattr(runs, "_mend", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with runs.claim_run(run, True, None):
            pass
    assert not run.exists()


def test_a_checkpoint_missing_under_torchrun_says_every_node_must_see_it(tmp_path, monkeypatch):
    """Each process finds the checkpoint itself: a node that does not see it says so (in every
    process, after the others' error: ranks.agree), with the fix where the job has several."""
    gone = tmp_path / "run" / "last.pt"
    with pytest.raises(AlexkitError, match=r"^checkpoint .*last.pt does not exist; pass a run directory or a .pt file$"):
        runs.find_checkpoint(gone)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(AlexkitError, match=r"^checkpoint .*last.pt does not exist; pass a run directory or a .pt file; under "
                                           r"torchrun every node must see it: on a file system all nodes share$"):  # fmt: skip
        runs.find_checkpoint(gone)


def test_a_checkpoint_of_another_format_version_is_refused_by_name(tmp_path):
    """A checkpoint of a later (or no) format_version, model_args and all, is one line naming the
    version found, not loaded as if its layout were this version's."""
    import torch

    model_args = dict(num_classes=4, input_size=56)
    for version, found in ((2, "2"), (None, "None")):
        torch.save(dict(format_version=version, model_args=model_args, model={}), tmp_path / "last.pt")
        with pytest.raises(AlexkitError, match=rf"last.pt is not an alexkit checkpoint of format 1 \(found {found}\); pass a best.pt"):
            checkpoints.read_checkpoint(tmp_path / "last.pt")
    torch.save(dict(format_version=1, model_args=model_args, model={}), tmp_path / "last.pt")
    assert checkpoints.read_checkpoint(tmp_path / "last.pt")["model_args"] == model_args


def test_a_path_in_a_printed_command_is_one_word_and_never_an_option():
    from alexkit.paths import word

    assert word("-run") == "./-run"  # `--resume -run` would be read as an option
    assert word("a run") == "'a run'"
    assert word("/abs/-run") == "/abs/-run"


def test_the_latest_run_is_a_run_folder_not_any_folder_holding_a_checkpoint(tmp_path):
    """A folder beside the runs with a copied best.pt but no config.json is not taken for the latest run."""
    from alexkit.paths import latest_run

    (tmp_path / "20261129-120000").mkdir()
    (tmp_path / "20261129-120000" / "config.json").write_text("{}")
    (tmp_path / "20261129-120000" / "best.pt").write_bytes(b"")
    (tmp_path / "zz-copies").mkdir()  # sorts after every YYYYmmdd name
    (tmp_path / "zz-copies" / "best.pt").write_bytes(b"")
    assert latest_run(tmp_path).name == "20261129-120000"


def test_a_folder_train_took_is_a_run_by_its_lock_file_too(tmp_path):
    """is_run: .train.lock (made first, and left) or config.json. A run that lost its config.json is still
    the latest run; one killed before writing config.json is told it stopped, not to pass a .pt file."""
    from alexkit.paths import is_run, latest_run

    older, newer = tmp_path / "20261129-120000", tmp_path / "20261129-120001"
    for run in (older, newer):
        run.mkdir()
        (run / "best.pt").write_bytes(b"")
    (older / "config.json").write_text("{}")
    (newer / ".train.lock").write_bytes(b"")  # its config.json gone
    assert is_run(older) and is_run(newer) and latest_run(tmp_path) == newer
    (newer / "best.pt").unlink()  # the lock alone: killed before config.json was written
    with pytest.raises(AlexkitError, match=r"has no best.pt or last.pt: it stopped before its first epoch ended; train it"):
        runs.find_checkpoint(newer)
    (newer / ".train.lock").unlink()
    (newer / "metrics.jsonl").write_text('{"epoch": 1}\n')  # a copy of a run's metrics alone: no run
    assert not is_run(newer)


def test_a_folder_a_run_left_before_its_first_epoch_ended_takes_a_new_run(tmp_path):
    """A run killed before its first last.pt leaves its lock file, some run files and write_atomic's
    temporaries: a new run may go there; a file of another kind refuses the folder."""
    from alexkit.runs import _check_only_runs_files

    for name in (".train.lock", "config.json", "stats.npz", ".metrics.jsonl.abc123.partial", "last.pt.partial"):
        (tmp_path / name).write_bytes(b"")
    _check_only_runs_files(tmp_path)
    (tmp_path / "todo.txt").write_text("")
    with pytest.raises(AlexkitError, match=r"holds what is not a run's \(todo.txt\); pick a new or empty folder"):
        _check_only_runs_files(tmp_path)
    for name in ("a.txt", "b.txt", ".hidden"):
        (tmp_path / name).write_text("")
    with pytest.raises(AlexkitError, match=r"holds what is not a run's \(a.txt, b.txt, todo.txt and 1 other\); pick"):
        _check_only_runs_files(tmp_path)


@pytest.mark.parametrize("argv, parallel, said", [
    (["/v/bin/alexkit", "--debug", "train", "--out", "elsewhere", "--epochs", "3", "--data", "my store"], "none",
     "train it again: `alexkit train --epochs 3 --data '/s/my store' --out {run}`"),
    (["/a/__main__.py", "train", "--out=x", "--data=rel", "--parallel", "ddp"], "ddp",
     "train it again under torchrun as it was started, running `-m alexkit train --parallel ddp --data '/s/my store' --out {run}`"),
    (["alexkit", "train", "--epochs", "2"], "none", "train it again: `alexkit train --epochs 2 --data '/s/my store' --out {run}`"),
])  # fmt: skip
def test_a_run_stopped_in_its_first_epoch_is_told_the_line_that_started_it(tmp_path, monkeypatch, argv, parallel, said):
    """From config.json's argv, with the store and the run's own folder as absolute paths (those given may
    have been relative to another working folder, or absent; the run is named here relatively)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"parallel": parallel, "data": "/s/my store"}, "argv": argv}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AlexkitError) as error:
        runs.find_checkpoint(Path("run"), prefer=("last.pt",))
    assert str(error.value).endswith(said.format(run=run)), str(error.value)


def test_a_run_whose_last_pt_is_gone_is_told_so_and_to_go_on_from_best_pt(tmp_path):
    """Not "stopped while saving its first epoch" when metrics.jsonl records epochs."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "best.pt").write_bytes(b"")
    with pytest.raises(AlexkitError, match="it was stopped while saving its first epoch; go on from best.pt"):
        runs.find_checkpoint(run, prefer=("last.pt",))
    (run / "metrics.jsonl").write_bytes(b"\xff\xfe")  # not UTF-8: no epoch can be read from it
    with pytest.raises(AlexkitError, match="it was stopped while saving its first epoch; go on from best.pt"):
        runs.find_checkpoint(run, prefer=("last.pt",))
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    with pytest.raises(AlexkitError) as error:
        runs.find_checkpoint(run, prefer=("last.pt",))
    assert str(error.value) == (f"run {run} has best.pt but no last.pt, which is gone (its metrics.jsonl records 2 "
                                f"epochs); go on from best.pt: alexkit train --resume {run / 'best.pt'}")  # fmt: skip


@pytest.mark.parametrize("loaded, swapped_in, refused", [("good", "damaged", False), ("damaged", "good", True)])
def test_the_crcs_checked_are_those_of_the_file_that_was_loaded(tmp_path, monkeypatch, loaded, swapped_in, refused):
    """A checkpoint renamed over the path between the load and the CRC check (a training saving its
    next epoch while an eval reads) changes nothing: the file read is the one opened."""
    import torch

    path = tmp_path / "last.pt"
    torch.save({"format_version": checkpoints.CHECKPOINT_FORMAT, "model_args": {}, "w": torch.arange(4096.0)}, path)
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2 : len(good) // 2 + 100] = bytes(100)  # inside the tensor: torch.load does not see it
    files = {"good": good, "damaged": bytes(damaged)}
    path.write_bytes(files[loaded])
    real_load = torch.load

    def load_then_swap(*args, **kw):
        ckpt = real_load(*args, **kw)
        (tmp_path / "next.pt").write_bytes(files[swapped_in])
        os.replace(tmp_path / "next.pt", path)
        return ckpt

    monkeypatch.setattr(checkpoints.torch, "load", load_then_swap)
    if refused:
        with pytest.raises(AlexkitError, match="fails its CRC-32 check"):
            checkpoints.read_checkpoint(path)
    else:
        assert checkpoints.read_checkpoint(path)["format_version"] == checkpoints.CHECKPOINT_FORMAT


def test_home_leaves_an_unknown_user_alone():
    """As the shell does: `~nosuchuser/a` stays as typed, and is then a path like any other."""
    from alexkit.cli.main import _home

    assert _home(Path("~no_such_user_x/a")) == Path("~no_such_user_x/a")
    assert _home([Path("~/a"), "text"]) == [Path("~/a").expanduser(), "text"]
    # the configs that expand paths given as text, or from Python, do the same (they raised RuntimeError)
    from alexkit.pipeline.prepare import PrepareConfig
    from alexkit.predict import PredictConfig
    from alexkit.train import TrainConfig

    assert PrepareConfig(src="~no_such_user_x/src", out="~no_such_user_x/o").src == Path("~no_such_user_x/src")
    assert TrainConfig(data=Path("~no_such_user_x/s"), device="cpu").data == Path("~no_such_user_x/s").absolute()
    assert PredictConfig(images=("~no_such_user_x/i.jpg",), device="cpu").images == (Path("~no_such_user_x/i.jpg"),)


def test_only_rank_0_talks(monkeypatch):
    """The first process of every other node (LOCAL_RANK 0) keeps quiet: one voice per job."""
    from alexkit.launcher import talks

    monkeypatch.delenv("RANK", raising=False)
    assert talks()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "2")
    assert not talks()
    monkeypatch.setenv("RANK", "0")
    assert talks()


def test_ctrl_c_during_a_checkpoint_save_comes_after_it(tmp_path, monkeypatch):
    """A KeyboardInterrupt inside torch.save left its zip writer half done and torch raised a
    RuntimeError of its own instead: the Ctrl-C waits for the end of the save, then is raised."""
    import signal

    import torch

    real_save = torch.save

    def interrupted_save(obj, f):
        signal.raise_signal(signal.SIGINT)  # as if Ctrl-C came now, in the middle of the save
        real_save(obj, f)

    monkeypatch.setattr(checkpoints.torch, "save", interrupted_save)
    ckpt = {"format_version": checkpoints.CHECKPOINT_FORMAT, "model_args": {}, "w": torch.arange(1000.0)}
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(tmp_path, ckpt, is_best=True)
    monkeypatch.undo()
    for name in ("best.pt", "last.pt"):  # both whole
        assert torch.equal(checkpoints.read_checkpoint(tmp_path / name)["w"], ckpt["w"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # train holds the save and the epoch's metrics line together: a Ctrl-C in the save waits for both
    monkeypatch.setattr(checkpoints.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        with held(signal.SIGINT, signal.SIGTERM):
            checkpoints.save_checkpoint(tmp_path, {**ckpt, "epoch": 2}, is_best=False)
            runs.write_metrics(tmp_path, [{"epoch": 1}, {"epoch": 2}])
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler



@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_git_commit_recorded_is_alexkits_own_checkouts_marked_dirty_when_changed(tmp_path):
    """A checkout (REPO/alexkit/) gives its HEAD, with -dirty once a tracked file changes (an untracked one
    does not count); a copy installed in a .venv inside another repo gives None, not that repo's commit."""

    def git(repo, *args):
        env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, env=env,
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip

    checkout, project = tmp_path / "checkout", tmp_path / "project"  # alexkit's repo; a user's, alexkit installed in it
    packages = {checkout: checkout / "alexkit", project: project / ".venv" / "lib" / "site-packages" / "alexkit"}
    for repo, package in packages.items():
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "first"]):
            git(repo, *args)
    head = git(checkout, "rev-parse", "HEAD")
    assert runs._git_commit(packages[checkout]) == head
    (checkout / "alexkit" / "new.py").write_text("")
    assert runs._git_commit(packages[checkout]) == head
    (checkout / "alexkit" / "__init__.py").write_text("x = 1\n")
    assert runs._git_commit(packages[checkout]) == f"{head}-dirty"
    assert runs._git_commit(packages[project]) is None
