"""The command line: help, exit codes, one-line errors, doctor."""

import os
import re
import subprocess
import sys

import pytest

EXPECTED = ["doctor", "sample", "prepare", "train", "eval", "predict", "show-batch", "plot", "bench"]


def run(*args, cwd=None, columns=200):
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "alexkit", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    for name in EXPECTED:
        assert name in r.stdout, name


def test_help_is_instant_no_heavy_imports():
    code = "import sys; from alexkit.cli.main import app; print(sorted(m for m in ('torch', 'ffcv', 'nvidia.dali') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("cmd", [c for c in EXPECTED if c not in ("bench", "doctor")])  # doctor has no options
def test_each_command_help_shows_defaults(cmd):
    r = run(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout and "[default: " in r.stdout


def test_unknown_command_and_option_exit_2():
    assert run("no-such-command").returncode == 2
    assert run("doctor", "--no-such-flag").returncode == 2


USAGE_ERRORS = [  # (arguments, the command whose help the line points at, what the line says)
    (["train", "--epochs", "abc"], "alexkit train", "--epochs 'abc': input should be a valid integer"),
    (["train", "--seed", "1.5"], "alexkit train", "--seed '1.5': input should be a valid integer"),
    (["train", "--lr", ""], "alexkit train", "--lr '': an empty value (an unset shell variable?)"),
    (["train", "--no-such-flag"], "alexkit train", "no such option: --no-such-flag"),
    (["train", "--epochs"], "alexkit train", "option '--epochs' requires an argument"),
    (["predict"], "alexkit predict", "missing argument 'IMAGE'"),
    (["eval", "--tta", "true"], "alexkit eval", "got unexpected extra argument(s) (true)"),
    (["prepare", "src", "-j", "two"], "alexkit prepare", "--workers 'two': input should be a valid integer"),
    (["no-such-command"], "alexkit", "no such command 'no-such-command'"),
    (["bench", "no-such"], "alexkit bench", "no such command 'no-such'"),
    (["bench", "train", "--width", "wide"], "alexkit bench train", "--width 'wide': input should be a valid number"),
    (["bench", "loader", "--baselines=no"], "alexkit bench loader", "option '--baselines' does not take a value"),
    (["bench", "prepare", "--size"], "alexkit bench prepare", "option '--size' requires an argument"),
]


@pytest.mark.parametrize("args, command, said", USAGE_ERRORS, ids=[" ".join(a) for a, _, _ in USAGE_ERRORS])
def test_a_usage_error_is_one_line_naming_the_help_to_read(args, command, said):
    """Click's own message on one line, even in a narrow terminal (not a box of 6 to 12 lines), exit 2."""
    r = run(*args, columns=20)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.startswith(f"error: {said}") and r.stderr.endswith(f"; see {command} -h\n"), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


def test_help_and_doctor_stay_readable_in_a_narrow_terminal():
    """Narrower than 80 columns, rich would cut every word to a letter or two; the lines wrap instead."""
    r = run("train", "--help", columns=20)
    assert r.returncode == 0 and "…" not in r.stdout, r.stdout
    assert "Initial learning rate; with --lr-scaling" in r.stdout and "--fc-features" in r.stdout
    r = run("doctor", columns=20)
    assert r.returncode == 0 and "…" not in r.stdout and "ffcv native library" in r.stdout, r.stdout


def test_flags_show_no_metavar_and_choices_no_type_name():
    """`--tta true` is a usage error: the help must not show a flag taking a <bool>; an option of a few
    words shows them or a name, not <str>; an argument's row says <path>, not <list[str]>; the usage
    line writes arguments as README.md does."""
    usage = {"prepare": "[OPTIONS] SRC", "predict": "[OPTIONS] IMAGE...", "plot": "[OPTIONS] [RUN...]", "train": "[OPTIONS]"}
    for args in (["--help"], ["train", "-h"], ["eval", "-h"], ["predict", "-h"], ["prepare", "-h"], ["sample", "-h"],
                 ["plot", "-h"], ["bench", "-h"], ["bench", "loader", "-h"], ["bench", "train", "-h"]):  # fmt: skip
        r = run(*args)
        assert r.returncode == 0 and "--help" in r.stdout, r.stdout
        assert not re.search(r"<bool>|<str>|<list\[|\{[A-Z]+\}|\.\.\.\]?\.\.\.", r.stdout), r.stdout
        if args[0] in usage:
            assert f"Usage: alexkit {args[0]} {usage[args[0]]}" in r.stdout
    out = run("eval", "-h").stdout
    assert re.search(r"--tta +The paper's ten views", out) and re.search(r"--batch-size +<int> +Images per batch and process", out), out
    assert re.search(r"--format +jpg\|raw ", run("prepare", "-h").stdout)
    for command, row in (("prepare", r"\* +SRC +<path> +Dataset folder"), ("predict", r"\* +IMAGE +<path>\.\.\. +Image files"),
                         ("plot", r"RUN +<path>\.\.\. +Run directories")):  # fmt: skip
        assert re.search(row, run(command, "-h").stdout), command


def test_every_option_says_what_it_does():
    import typer

    from alexkit.cli.main import app

    def walk(command, path):
        for param in command.params:
            if param.param_type_name == "option":
                yield path, param
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    silent = [f"{path} {param.opts[0]}" for path, param in walk(typer.main.get_command(app), "alexkit") if not param.help]
    assert silent == []


def test_resume_help_names_the_flags_a_resume_may_change():
    import inspect

    from alexkit.cli import train
    from alexkit.resume import RESUME_MAY_CHANGE

    said = inspect.signature(train.command).parameters["resume"].default.help
    named = sorted(f.group(1) for f in re.finditer(r"--([a-z-]+)", said.split("included; only")[1]))
    assert named == sorted(f for f in RESUME_MAY_CHANGE if f != "resume"), said
    assert "refused" in said


@pytest.mark.parametrize("args, said", [
    (["train", "--momentum", "1"], "--momentum: 1.0 is out of range: from 0 to below 1; see alexkit train -h"),
    (["train", "--seed", "4294967296"], "--seed: 4294967296 is out of range: from 0 to 4,294,967,295; see alexkit train -h"),
    (["train", "--lr", "inf"], "--lr: inf is not a finite number; see alexkit train -h"),
    (["bench", "train", "--width", "0"], "--width: 0.0 is out of range: above 0, at most 8; see alexkit bench train -h"),
    (["show-batch", "--seed", "-1"], "--seed: -1 is out of range: from 0 to 4,294,967,295; see alexkit show-batch -h"),
    (["show-batch", "--seed", "4294967296"], "--seed: 4294967296 is out of range: from 0 to 4,294,967,295; see alexkit show-batch -h"),
])  # fmt: skip
def test_a_value_out_of_range_is_refused_naming_the_range_and_the_command(args, said):
    r = run(*args)
    assert r.returncode == 2 and r.stderr == f"error: {said}\n", r.stderr


def test_train_checks_each_numeric_flag_with_train_configs_range():
    """train's flags check their ranges as they are parsed (to say the range and the command), TrainConfig
    for callers from Python, both with the Range objects of ranges.TRAIN: each flag has its field's, and
    on each side of each end (and at inf) the two checks agree."""
    import inspect

    from alexkit import ranges
    from alexkit.cli import train
    from alexkit.errors import AlexkitError
    from alexkit.train import TrainConfig

    def config_takes(name, value):
        try:
            TrainConfig(**{name: value})
        except AlexkitError:
            return False
        return True

    checked = set()
    for name, param in inspect.signature(train.command).parameters.items():
        callback = getattr(param.default, "callback", None)
        if not isinstance(getattr(callback, "allowed", None), ranges.Range):
            continue
        assert callback.allowed is ranges.TRAIN[name], name
        whole = isinstance(param.default.default, int)
        step, beyond = (1, []) if whole else (1e-9, [float("inf")])  # an int flag cannot be given inf
        ends = [e for e in (callback.allowed.low, callback.allowed.high) if e != float("inf")]
        for value in [v for e in ends for v in (e - step, e, e + step)] + beyond:
            try:
                cli_takes = callback(value) == value
            except Exception:
                cli_takes = False
            assert cli_takes == config_takes(name, value), (name, value)
        checked.add(name)
    assert checked == set(ranges.TRAIN)


def test_plot_takes_a_metrics_file_and_says_what_a_folder_of_runs_is(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "20240101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    r = run("plot", str(tmp_path / "runs"))
    assert r.returncode == 2 and r.stderr == (f"error: {tmp_path / 'runs'} is a folder of runs, not a run; pass some of "
                                              f"them, e.g. the latest: {run_dir}\n"), r.stderr  # fmt: skip
    seen = stage_catcher(monkeypatch, "alexkit.plot", "plot")
    assert exit_of(["plot", str(run_dir / "metrics.jsonl"), str(run_dir), "--out", str(tmp_path / "c.svg")]) == 0
    assert seen["cfg"].runs == (run_dir, run_dir)


@pytest.mark.parametrize("args, said", [
    (["show-batch", "--out", "afile/pictures"], "--out afile/pictures is under afile, which is a file; give a folder"),
    (["show-batch", "--out", "afile"], "--out afile is a file; give a folder"),
    (["bench", "loader", "--work", "afile"], "--work afile is a file; give a folder"),
    (["bench", "loader", "--work", "afile/w"], "--work afile/w is under afile, which is a file; give a folder"),
])  # fmt: skip
def test_a_folder_flag_naming_a_file_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, args, said):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    seen = stage_catcher(monkeypatch, "alexkit.bench.loader", "bench_loader")  # no minutes of benchmark if it passes
    assert exit_of(args) == 2 and seen == {}
    assert capsys.readouterr().err == f"error: {said}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("args, said", [
    (["show-batch", "--out", "link"], "--out link is a link to gone, which does not exist"),
    (["show-batch", "--out", "link/pictures"], "--out link/pictures is under link, a link to gone, which does not exist"),
    (["bench", "loader", "--work", "link"], "--work link is a link to gone, which does not exist"),
])  # fmt: skip
def test_a_folder_flag_naming_a_link_to_nothing_says_where_it_points(tmp_path, monkeypatch, capsys, args, said):
    """Said as prepare says it, not the system's "File exists" once the work is done."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to("gone")
    seen = stage_catcher(monkeypatch, "alexkit.bench.loader", "bench_loader")
    assert exit_of(args) == 2 and seen == {}
    assert capsys.readouterr().err == f"error: {said}; make that folder, or remove the link\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, a folder no one can create files in")
def test_a_path_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    r = run("sample", "/proc/alexkit-sample", "--classes", "1", "--train-per-class", "1", "--val-per-class", "0")
    assert r.returncode == 1, r.stderr
    [line] = [l for l in r.stderr.splitlines() if l.strip()]
    assert line.startswith("error: DIR /proc/alexkit-sample cannot be created: no folder can be made in /proc (") and \
        line.endswith("); choose another path"), line


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, where no one can make a folder")
@pytest.mark.parametrize("args, flag, path", [
    (["sample", "/proc/alexkit-x/data"], "DIR", "/proc/alexkit-x/data"),
    (["prepare", "src", "--out", "/proc/alexkit-x"], "--out", "/proc/alexkit-x"),
    (["show-batch", "--out", "/proc/alexkit-x"], "--out", "/proc/alexkit-x"),
    (["bench", "loader", "--work", "/proc/alexkit-x"], "--work", "/proc/alexkit-x"),
])  # fmt: skip
def test_a_folder_flag_under_a_folder_that_takes_no_folders_is_one_line_before_any_work(tmp_path, monkeypatch, capsys,
                                                                                       args, flag, path):  # fmt: skip
    """/proc answers mkdir with "No such file or directory", which named neither the flag nor why."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    seen = stage_catcher(monkeypatch, "alexkit.bench.loader", "bench_loader")
    assert exit_of(args) == 1 and seen == {}
    assert capsys.readouterr().err == (f"error: {flag} {path} cannot be created: no folder can be made in /proc (No such "
                                       "file or directory); choose another path\n")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_bad_input_is_one_line_exit_2(tmp_path):
    r = run("prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "store"))
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_one_process_commands_refuse_torchrun(tmp_path, monkeypatch):
    """Under torchrun only train and eval share the work; the others would run N times side by side
    (N copies of predict's output, a prepare whose ranks fight over the lock)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for args in (["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "store")], ["predict", "x.JPEG"],
                 ["bench", "train"], ["bench", "loader"], ["bench", "prepare"], ["show-batch", "--out", str(tmp_path / "pics")],
                 ["sample", str(tmp_path / "sample")], ["plot"], ["doctor"]):  # fmt: skip
        r = run(*args, cwd=tmp_path)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"error: `alexkit {args[0]}` runs in one process, but torchrun started 2")
        assert lines[0].endswith("run it without torchrun (only train and eval use torchrun's processes), or unset "
                                 "WORLD_SIZE where no launcher started this")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_an_error_every_process_raises_is_printed_by_the_first_process_of_each_node(monkeypatch, capsys):
    """ranks.agree raises one error in every process of a torchrun job: one line per node (each node's
    log says why it stopped), not per process."""
    import alexkit.train
    from alexkit.cli.main import main
    from alexkit.errors import AlexkitError

    def fails_everywhere(cfg, given=None):
        error = AlexkitError("store /nfs/s does not exist (said by process 1 on node2)")
        error.everywhere = True
        raise error

    monkeypatch.setattr(alexkit.train, "train", fails_everywhere)
    line = "error: store /nfs/s does not exist (said by process 1 on node2)\n"
    for rank, local_rank, printed in (("1", "1", ""), ("0", "0", line), ("2", "0", line), ("3", "1", "")):  # 2 nodes of 2
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(SystemExit) as done:
            main(["train"])
        assert done.value.code == 2 and capsys.readouterr().err == printed
    monkeypatch.delenv("LOCAL_RANK")  # RANK and WORLD_SIZE set by hand: no node is known, each process says it
    with pytest.raises(SystemExit):
        main(["train"])
    assert capsys.readouterr().err == line


@pytest.mark.parametrize("args", [["train", "--epochs", "0"], ["eval", "--batch-size", "0"], ["show-batch"],
                                  ["train", "--epochs", "abc"], ["eval", "--no-such-flag"]])
def test_errors_of_the_flags_alone_are_printed_once_per_node(monkeypatch, capsys, args):
    """A bad flag, or a command that torchrun must not start: every process of the job meets the same
    error, and only each node's first process prints it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    said = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert exit_of(args) == 2
        said.append(capsys.readouterr().err)
    assert said[0].startswith("error: ") and len(said[0].splitlines()) == 1 and said[1] == "", said
    monkeypatch.setenv("LOCAL_RANK", "x")  # no number: the process cannot tell it is not the node's first, so it says it
    assert exit_of(args) == 2 and capsys.readouterr().err.startswith("error: ")


def test_debug_shows_traceback(tmp_path):
    r = run("--debug", "prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "store"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_doctor_tells_the_truth_here():
    r = run("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    import nvidia.dali
    import torch

    assert torch.__version__.split("+")[0] in r.stdout
    assert nvidia.dali.__version__ in r.stdout
    assert "runs a CPU pipeline" in r.stdout
    if not torch.cuda.is_available():
        assert "not available" in r.stdout


# (command module, config class, flag -> field where the names differ)
COMMANDS_AND_CONFIGS = [
    ("train", "alexkit.train:TrainConfig", {}),
    ("eval", "alexkit.evaluate:EvalConfig", {"predictions": "predictions_path"}),
    ("prepare", "alexkit.pipeline.prepare:PrepareConfig", {}),
    ("predict", "alexkit.predict:PredictConfig", {"top": "top_k"}),
    ("show_batch", "alexkit.show_batch:ShowBatchConfig", {}),
    ("plot", "alexkit.plot:PlotConfig", {}),
    ("bench_train", "alexkit.bench.train:BenchTrainConfig", {}),
    ("bench_loader", "alexkit.bench.loader:BenchLoaderConfig", {}),
    ("bench_prepare", "alexkit.bench.prepare:BenchPrepareConfig", {}),
]


@pytest.mark.parametrize("cli, config, renamed", COMMANDS_AND_CONFIGS, ids=[c[0] for c in COMMANDS_AND_CONFIGS])
def test_flag_defaults_are_the_configs_defaults(cli, config, renamed):
    """The commands repeat their configs' defaults (importing the configs would make --help import torch):
    the two must not drift apart, or `--help` would show one default and a Python caller get another."""
    import dataclasses
    import importlib
    import inspect

    command = importlib.import_module(f"alexkit.cli.{cli}").command
    module, name = config.split(":")
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    compared = 0
    for flag, param in inspect.signature(command).parameters.items():
        field = fields.get(renamed.get(flag, flag))
        flag_default = getattr(param.default, "default", param.default)
        if field is None or field.default is dataclasses.MISSING or flag_default in (None, ...):
            continue  # a flag with no field (ctx, --json), a field built by a factory, a required argument
        assert flag_default == field.default, f"{cli} --{flag}: {flag_default!r} on the command line, {field.default!r} in {name}"
        compared += 1
    assert compared >= 1


def test_doctor_marks_what_fails_and_only_that(monkeypatch):
    from alexkit import doctor

    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda m, d=None: (None, "ImportError: no") if m == "ffcv.libffcv" else real(m, d))
    rows, problems, _ = doctor.checks()
    assert {name for name, _, ok in rows if not ok} == {"ffcv native library"}
    assert len(problems) == 1 and "FFCV's native library does not load" in problems[0]


@pytest.mark.parametrize("module, row, fix", [
    ("cv2", "opencv", "opencv-python does not import (ImportError: libGL.so.1: cannot open shared object file): apt-get "
                      "install libgl1 libglib2.0-0, then run alexkit doctor again"),
    ("scipy.io", "scipy", "scipy is missing: run `make setup` (or pip install -e .)"),
    ("ffcv", "ffcv", "ffcv does not import (ModuleNotFoundError: import of cv2 halted; None in sys.modules): run `make "
                     "setup` again (or reinstall ffcv)"),
])
def test_doctor_checks_every_package_prepare_imports_and_says_each_fix(monkeypatch, module, row, fix):
    """OpenCV (prepare's decoder) and SciPy (the devkit's meta.mat) are checked too; a package that
    does not import is a problem (exit 2), with the fix for why: ffcv failing to import (its own
    error) was shown, yet doctor said that all was well."""
    from alexkit import doctor

    real = doctor._version
    errors = {"cv2": "ImportError: libGL.so.1: cannot open shared object file", "scipy.io": "ModuleNotFoundError: No module named 'scipy'",
              "ffcv": "ModuleNotFoundError: import of cv2 halted; None in sys.modules"}  # fmt: skip
    monkeypatch.setattr(doctor, "_version", lambda m, d=None: (None, errors[m]) if m == module else real(m, d))
    rows, problems, _ = doctor.checks()
    assert [name for name, _, ok in rows if not ok] == [row] and problems == [fix]
    assert doctor._at_least("2.11.0+cu130", (2, 11)) and not doctor._at_least("2.9.1", (2, 11))
    assert doctor._at_least("2.4.0", (2, 4)) and not doctor._at_least("2.4.0", (2, 5)) and doctor._at_least("2.10", (2, 4))


# --- in this process: flags reach the stages, errors reach the user ---


def exit_of(args: list[str]) -> int:
    from alexkit.cli.main import main

    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def stage_catcher(monkeypatch, module: str, name: str) -> dict:
    """Puts a recorder in place of the stage a command calls, so a test sees the config it gets."""
    import importlib

    seen = {}

    def record(cfg, *rest):
        seen["cfg"] = cfg
        return "RUN" if name == "train" else None

    monkeypatch.setattr(importlib.import_module(module), name, record)
    return seen


FLAGS_AND_FIELDS = [  # (stage module, stage, arguments with a value other than the default for every flag, fields)
    ("alexkit.train", "train",
     ["train", "--data", "D", "--out", "O", "--epochs", "3", "--batch-size", "64", "--lr", "0.02", "--momentum", "0.8",
      "--weight-decay", "0.001", "--decay-biases", "--lr-scaling", "linear", "--warmup-epochs", "1", "--patience", "2",
      "--max-lr-drops", "1", "--seed", "7", "--device", "cpu", "--parallel", "columns", "--amp", "off",
      "--channels-last", "off", "--compile", "off", "--width", "0.5", "--fc-features", "128", "--dropout", "0.3",
      "--init", "sturdy", "--progress", "plain"],
     dict(data="D", out="O", epochs=3, batch_size=64, lr=0.02, momentum=0.8, weight_decay=0.001, decay_biases=True,
          lr_scaling="linear", warmup_epochs=1, patience=2, max_lr_drops=1, seed=7, device="cpu", parallel="columns",
          amp="off", channels_last="off", compile="off", width=0.5, fc_features=128, dropout=0.3, init="sturdy",
          progress="plain")),
    ("alexkit.evaluate", "evaluate",
     ["eval", "--checkpoint", "c.pt", "--data", "D", "--tta", "--batch-size", "7", "--device", "cpu", "--json", "j.json",
      "--predictions", "p.csv"],
     dict(checkpoint="c.pt", data="D", tta=True, batch_size=7, device="cpu", json_path="j.json", predictions_path="p.csv")),
    ("alexkit.predict", "predict",
     ["predict", "a.JPEG", "b.JPEG", "--checkpoint", "c.pt", "--data", "D", "--tta", "--top", "3", "--device", "cpu"],
     dict(images=("a.JPEG", "b.JPEG"), checkpoint="c.pt", data="D", tta=True, top_k=3, device="cpu")),
    ("alexkit.pipeline.prepare", "prepare",
     ["prepare", "SRC", "--out", "O", "--size", "64", "--format", "raw", "--quality", "80", "--workers", "1", "--force"],
     dict(src="SRC", out="O", size=64, format="raw", quality=80, workers=1, force=True)),
    ("alexkit.show_batch", "show_batch",
     ["show-batch", "--data", "D", "--out", "O", "--count", "4", "--val-index", "2", "--seed", "5"],
     dict(data="D", out="O", count=4, val_index=2, seed=5)),
    ("alexkit.plot", "plot", ["plot", "r1", "r2", "--out", "x.svg"], dict(runs=("r1", "r2"), out="x.svg")),
    ("alexkit.bench.loader", "bench_loader",
     ["bench", "loader", "--prefetch", "3", "--images", "7", "--batch-size", "4", "--threads", "2", "--no-baselines",
      "--work", "W", "--epochs", "3", "--memory-epochs", "2"],
     dict(prefetch=3, images=7, batch_size=4, threads=2, baselines=False, work="W", epochs=3, memory_epochs=2)),
    ("alexkit.bench.loader", "bench_loader", ["bench", "loader", "--images", "300"], dict(images=300, work=None)),  # no --work: a temporary one
    ("alexkit.bench.train", "bench_train",
     ["bench", "train", "--data", "D", "--batch-size", "8", "--steps", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu",
      "--amp", "off", "--channels-last", "off", "--compile", "off", "--width", "0.5", "--fc-features", "16"],
     dict(data="D", batch_size=8, steps=2, repeats=1, warmup=0, device="cpu", amp="off", channels_last="off", compile="off",
          width=0.5, fc_features=16)),
    ("alexkit.train", "train", ["train", "--resume", "R", "--epochs", "5"], dict(resume="R", epochs=5)),
]


@pytest.mark.parametrize("module, stage, args, fields", FLAGS_AND_FIELDS, ids=["-".join(c[2][:2]) if c[2][0] == "bench" else " ".join(c[2][:2]) for c in FLAGS_AND_FIELDS])
def test_every_flag_reaches_its_config(monkeypatch, module, stage, args, fields):
    from pathlib import Path

    seen = stage_catcher(monkeypatch, module, stage)
    assert exit_of(args) == 0
    for field, want in fields.items():
        got = getattr(seen["cfg"], field)
        got = str(got) if isinstance(got, Path) else tuple(map(str, got)) if isinstance(got, tuple) else got
        assert got in (want, str(Path(want).resolve()) if isinstance(want, str) else want), (stage, field, got, want)


AT_HOME = [  # (stage module, stage, arguments with every path flag and argument of a command under ~, fields)
    ("alexkit.train", "train", ["train", "--data", "~/D", "--out=~/O"], ("data", "out")),
    ("alexkit.train", "train", ["train", "--resume", "~/R"], ("resume",)),
    ("alexkit.evaluate", "evaluate", ["eval", "--checkpoint", "~/c.pt", "--data=~/D", "--json", "~/j.json", "--predictions", "~/p.csv"],
     ("checkpoint", "data", "json_path", "predictions_path")),
    ("alexkit.predict", "predict", ["predict", "~/a.JPEG", "~/b", "--checkpoint", "~/c.pt", "--data", "~/D"], ("images", "checkpoint", "data")),
    ("alexkit.pipeline.prepare", "prepare", ["prepare", "~/SRC", "--out", "~/O"], ("src", "out")),
    ("alexkit.show_batch", "show_batch", ["show-batch", "--data", "~/D", "--out", "~/O"], ("data", "out")),
    ("alexkit.plot", "plot", ["plot", "~/r1", "~/r2", "--out", "~/x.svg"], ("runs", "out")),
    ("alexkit.bench.loader", "bench_loader", ["bench", "loader", "--store", "~/S", "--source", "~/J", "--work", "~/W", "--json", "~/b.json"],
     ("store", "source", "work")),
    ("alexkit.bench.prepare", "bench_prepare", ["bench", "prepare", "~/SRC"], ("src",)),
    ("alexkit.bench.train", "bench_train", ["bench", "train", "--data", "~/D"], ("data",)),
]  # fmt: skip


@pytest.mark.parametrize("module, stage, args, fields", AT_HOME, ids=[" ".join(c[2][:2]) for c in AT_HOME])
def test_a_path_starting_with_tilde_is_under_home_for_every_command(tmp_path, monkeypatch, module, stage, args, fields):
    """The shell leaves `~` alone in quotes and after `=`: each command expands it, not only prepare and train."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "S").mkdir()  # bench loader's --store and --source are checked before its stage
    (tmp_path / "S" / "manifest.json").write_text("{}")
    (tmp_path / "J").mkdir()
    seen = stage_catcher(monkeypatch, module, stage)
    assert exit_of(args) == 0
    for field in fields:
        got = getattr(seen["cfg"], field)
        for path in got if isinstance(got, tuple) else (got,):
            assert str(path).startswith(f"{tmp_path}/"), (stage, field, got)


def test_sample_under_tilde_writes_in_home_and_says_where(tmp_path, monkeypatch):
    """`alexkit sample '~/smp'` made ./~/smp and printed `next: alexkit prepare '~/smp'`, which prepare read
    as $HOME/smp. (One class is said as one class.)"""
    (tmp_path / "here").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    r = run("sample", "~/smp", "--classes", "1", "--train-per-class", "1", "--val-per-class", "1", cwd=tmp_path / "here")
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "here").iterdir()) == [] and (tmp_path / "smp" / "train").is_dir()
    assert r.stdout.endswith(f"next: alexkit prepare {tmp_path / 'smp'}\n"), r.stdout
    assert " of 1 class (red disc) to " in r.stdout, r.stdout


def test_train_says_next_eval_of_its_run(monkeypatch, capsys):
    stage_catcher(monkeypatch, "alexkit.train", "train")
    assert exit_of(["train", "--device", "cpu"]) == 0
    assert "next: alexkit eval --checkpoint RUN --tta" in capsys.readouterr().out


@pytest.mark.parametrize("error, code", [("AlexkitError", 2), ("PathRefused", 1), ("OutOfMemory", 1), ("OSError", 1), ("RuntimeError", 1)])
def test_exit_codes_one_line_on_stderr_and_debug(monkeypatch, capsys, error, code):
    """Each kind of error: its exit code, one line on stderr and nothing on stdout; --debug shows the
    traceback instead, with the same exit code (an unexpected error is Python's own: exit 1)."""
    import alexkit.errors
    import alexkit.plot
    from alexkit.cli.main import main

    raised = {"OSError": OSError(28, "No space left on device"), "RuntimeError": RuntimeError("boom")}.get(error) or \
        getattr(alexkit.errors, error)("bad")  # fmt: skip

    def fail(cfg):
        raise raised

    monkeypatch.setattr(alexkit.plot, "plot", fail)
    assert exit_of(["plot", "r"]) == code
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    if error in ("OSError", "RuntimeError"):  # no file named: where to see more
        assert "--debug" in err
    if error == "RuntimeError":
        with pytest.raises(RuntimeError):
            main(["--debug", "plot", "r"])
        return
    assert exit_of(["--debug", "plot", "r"]) == code
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.rstrip().endswith(str(raised)) and "\nerror: " not in err, err


def test_an_error_of_one_process_is_printed_by_that_process(monkeypatch, capsys):
    """An error only rank 1 raises (not one raised everywhere) is printed there: no other rank knows it."""
    import alexkit.plot
    from alexkit.errors import AlexkitError

    def fail(cfg):
        raise AlexkitError("only here")

    monkeypatch.setattr(alexkit.plot, "plot", fail)
    monkeypatch.setenv("RANK", "1")
    assert exit_of(["plot", "r"]) == 2
    assert capsys.readouterr().err == "error: only here\n"


def test_doctor_problems_exit_2_on_stderr(monkeypatch, capsys):
    from alexkit import doctor

    monkeypatch.setattr(doctor, "checks", lambda: ([("ffcv", "x", False)], ["FFCV is broken; reinstall it"], 0))
    assert exit_of(["doctor"]) == 2
    out, err = capsys.readouterr()
    assert "error: FFCV is broken; reinstall it" in err and "FFCV is broken" not in out


def test_bench_help_lists_its_three_benchmarks(capsys):
    assert exit_of(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f" {name} " in out for name in ("prepare", "train", "loader")), out
    assert exit_of(["bench", "loader", "-h"]) == 0


def test_require_names_the_module_and_the_fix(monkeypatch):
    """A module that is missing, or whose native library does not load (an OSError, not an
    ImportError): one line with the fix either way."""
    import importlib

    from alexkit.errors import MissingDependency, require

    with pytest.raises(MissingDependency, match=r"cannot import no_such_module \(ModuleNotFoundError: .*\); pip install it$"):
        require("no_such_module", fix="pip install it")

    def native_library_missing(name):
        raise OSError("libturbojpeg.so.0: cannot open shared object file")

    monkeypatch.setattr(importlib, "import_module", native_library_missing)
    with pytest.raises(MissingDependency, match="libturbojpeg.so.0.*; reinstall ffcv$"):
        require("ffcv", fix="reinstall ffcv")


@pytest.mark.parametrize("config, fields, said", [
    ("alexkit.bench.train:BenchTrainConfig", dict(steps=0), "--steps 0 is out of range: at least 1"),
    ("alexkit.bench.train:BenchTrainConfig", dict(warmup=-1), "--warmup -1 is out of range: at least 0"),
    ("alexkit.bench.loader:BenchLoaderConfig", dict(epochs=1), "--epochs 1 is out of range: at least 2 (the first is not timed)"),
    ("alexkit.bench.loader:BenchLoaderConfig", dict(prefetch=0), "--prefetch 0 is out of range: at least 1"),
    ("alexkit.bench.prepare:BenchPrepareConfig", dict(quality=101), "--quality 101 is out of range: from 1 to 100"),
    ("alexkit.evaluate:EvalConfig", dict(batch_size=0), "--batch-size 0 is out of range: at least 1"),
    ("alexkit.predict:PredictConfig", dict(images=("a.jpg",), top_k=0), "--top 0 is out of range: at least 1"),
])  # fmt: skip
def test_out_of_range_values_name_the_flag_the_value_and_the_range(config, fields, said):
    import importlib

    from alexkit.errors import AlexkitError

    module, name = config.split(":")
    with pytest.raises(AlexkitError, match=f"^{re.escape(said)}$"):
        getattr(importlib.import_module(module), name)(**fields)


def test_a_pools_workers_end_quietly_on_its_terminate():
    """A multiprocessing pool's exit terminate()s its workers: with the SIGTERM handler (SIGTERM taken
    as Ctrl-C) inherited, each printed a Terminated traceback (bench prepare's photo writer), and a
    Python handler, run later than the kernel's default, hung the pool's clean-up now and then (1 in
    40 here). A forked child starts with SIGTERM's default."""
    code = """if True:
        import multiprocessing as mp
        from alexkit.cli.main import _sigterm_as_ctrl_c
        with _sigterm_as_ctrl_c():
            for _ in range(5):
                with mp.get_context("fork").Pool(2) as pool:
                    assert pool.map(abs, range(-5, 5)) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize("args", [["train", "--out", ""], ["train", "--data="], ["train", "--resume", "", "--epochs", "2"],
                                  ["eval", "--checkpoint", ""], ["predict", "x.jpg", "--data", ""], ["plot", "--out", ""]])
def test_an_empty_option_value_is_refused_not_taken_for_the_current_folder(args, tmp_path):
    """Typer makes "" the current folder: `train --out $UNSET` would write a run among the working
    folder's files, `--resume ''` resume whatever run is there."""
    r = run(*args, cwd=tmp_path)
    flag = next(a for a in args if a.startswith("--")).rstrip("=")
    assert r.returncode == 2 and r.stderr == (f"error: {flag} '': an empty value (an unset shell variable?); give a value "
                                              f"or drop the flag; see alexkit {args[0]} -h\n"), r.stderr
    assert list(tmp_path.iterdir()) == []


EMPTY_ARGUMENTS = [  # (arguments, the argument's name, the fix said)
    (["sample", ""], "DIR", "give a path or leave it out"), (["sample", "--classes", "1", "--", ""], "DIR", "give a path or leave it out"),
    (["plot", "run", ""], "RUN", "give a path or leave it out"), (["prepare", ""], "SRC", "give a path"),
    (["predict", "x.jpg", ""], "IMAGE", "give a path"), (["bench", "prepare", "-n", "1", ""], "SRC", "give a path or leave it out"),
]


@pytest.mark.parametrize("args, name, fix", EMPTY_ARGUMENTS, ids=[" ".join(map(repr, a)) for a, _, _ in EMPTY_ARGUMENTS])
def test_an_empty_path_argument_is_refused_not_taken_for_the_current_folder(args, name, fix, tmp_path):
    """`alexkit sample $UNSET` wrote a dataset among the working folder's files, and `plot ''` read the
    run in it: an empty argument is refused as an empty option value is."""
    r = run(*args, cwd=tmp_path)
    command = " ".join(args[:2] if args[0] == "bench" else args[:1])
    assert r.returncode == 2 and r.stderr == (f"error: {name} '': an empty value (an unset shell variable?); {fix}; "
                                              f"see alexkit {command} -h\n"), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_option_before_an_empty_word_is_named_as_the_mistake():
    """`sample --outt ''`: the unknown option is the mistake, not an empty DIR (the word after an
    option it does not know could be that option's value)."""
    r = run("sample", "--outt", "")
    assert r.returncode == 2 and r.stderr == "error: no such option: --outt; see alexkit sample -h\n", r.stderr


def test_an_error_after_a_ctrl_c_is_the_ctrl_cs_doing(monkeypatch, capsys):
    """A Ctrl-C inside an import (numba importing scipy, say) can leave a module half made; what uses
    it next fails in its own way (numpy raised RecursionError: 'error: RecursionError', exit 1). Once a
    Ctrl-C has come, any such error ends the command as the Ctrl-C does: "interrupted", exit 130."""
    import signal

    import alexkit.cli.main as cli

    def half_imported(**kw):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C, taken by the handler main() sets...

    def app(**kw):
        try:
            half_imported()
        except KeyboardInterrupt:  # ...swallowed inside the import, as happens there
            pass
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train"])
    assert stopped.value.code == 130 and capsys.readouterr().err == "interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun every process stops: the node's first alone says so
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train"])
    assert stopped.value.code == 130 and capsys.readouterr().err == ""


def test_a_ctrl_c_dropped_by_a_native_library_still_stops_the_command(monkeypatch, capsys):
    """llvmlite prints and drops a KeyboardInterrupt raised inside its callbacks (numba importing or
    compiling): the next progress step raises it again; a command that has no step left to take
    still ends as interrupted, exit 130, not 0. The next command in the process starts afresh."""
    import signal

    import alexkit.cli.main as cli
    from alexkit import stops
    from alexkit.progress import Progress

    def dropped() -> None:
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:  # what the native library does with it
            pass

    steps = []

    def app(**kw):
        dropped()
        with Progress("epoch 1/1", 3, mode="none") as bar:
            for step in range(3):
                bar.update(step + 1)
                steps.append(step)
        return 0

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train"])
    assert stopped.value.code == 130 and steps == [] and capsys.readouterr().err == "interrupted\n"
    monkeypatch.setattr(cli, "app", lambda **kw: dropped())  # no step: the command ends as if none had come...
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train"])
    assert stopped.value.code == 130 and capsys.readouterr().err == "interrupted\n"  # ...but it did
    assert stops.INTERRUPTED == [] and stops.TERMINATED == []
    monkeypatch.setattr(cli, "app", lambda **kw: 0)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train"])
    assert stopped.value.code == 0


def test_a_second_signal_a_moment_after_the_first_leaves_its_clean_up_whole(monkeypatch, capsys):
    """`timeout -s INT` sends its signal twice, to the command and to its process group: the second,
    raised inside the first's clean-up, cut that short, and one during the exit ended the process by
    SIGINT (-2, not 130). It now counts (SIGTERM after Ctrl-C: exit 143) without raising; one that
    comes later (a clean-up that hangs), or outside any clean-up, still raises."""
    import signal

    import alexkit.cli.main as cli
    from alexkit import stops

    cleaned = []
    clock = [100.0]
    monkeypatch.setattr(stops.time, "monotonic", lambda: clock[0])

    def app(**kw):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            signal.raise_signal(signal.SIGINT)  # timeout's second, half a second on
            clock[0] += 0.5
            signal.raise_signal(signal.SIGTERM)
            cleaned.append("whole")
            raise

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train"])
    assert stopped.value.code == 143 and cleaned == ["whole"] and capsys.readouterr().err == "terminated\n"

    def hangs(**kw):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            clock[0] += 5  # the user waits, then presses Ctrl-C again
            signal.raise_signal(signal.SIGINT)
            cleaned.append("never")

    monkeypatch.setattr(cli, "app", hangs)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train"])
    assert stopped.value.code == 130 and cleaned == ["whole"] and capsys.readouterr().err == "interrupted\n"
    assert stops.taken(stops.INTERRUPTED, signal.SIGINT)  # outside main(), at the same moment: swallowed,
    assert stops.taken(stops.INTERRUPTED, signal.SIGINT)  # as a native library does, and no clean-up runs: raised
    stops.forget()


def test_ctrl_c_pressed_again_and_again_still_exits_130(tmp_path):
    """Ctrl-Cs that keep coming after the first (a user pressing on, torchrun passing the signal on)
    came after main() had put Python's handler back, or while Python shut down, and ended the
    process by SIGINT (-2 to a caller) instead of exit 130. Once a signal has stopped the command,
    the console script ignores the ones after it."""
    import signal
    import time

    out = tmp_path / "s"
    p = subprocess.Popen([sys.executable, "-m", "alexkit", "sample", str(out), "--classes", "224", "--train-per-class", "1300"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / ".sample-partial").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    end = time.monotonic() + 1.5
    while p.poll() is None and time.monotonic() < end:
        p.send_signal(signal.SIGINT)
        time.sleep(0.005)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err.endswith("interrupted\n"), (p.returncode, err)
    assert not out.exists()


SECOND_SIGNAL_AS_IT_ENDS = """
import signal, sys
import alexkit.cli.main as cli
said = cli._stopped
def late(exc):  # timeout's second signal, taken once typer has returned the first's exit code 130
    signal.raise_signal(signal.SIGINT)
    return said(exc)
cli._stopped = late
cli.main()
"""


def test_a_second_signal_as_the_stopped_command_ends_still_exits_130(tmp_path):
    """`timeout -s INT` signals the command, then its process group: the second signal could be taken
    after typer had turned the first's KeyboardInterrupt into exit code 130, while no exception was
    being handled; it raised a KeyboardInterrupt that nothing caught, and the process died by SIGINT
    (-2 to a caller) instead of exiting 130. Here it comes just then, every time."""
    import signal
    import time

    from tests.test_pipeline import sigint_as_default

    out = tmp_path / "s"
    p = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL_AS_IT_ENDS, "sample", str(out), "--classes", "224", "--train-per-class",
                          "1300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / ".sample-partial").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err == "interrupted\n", (p.returncode, err)
    assert not out.exists()


def test_once_the_command_has_ended_a_signal_a_second_after_the_last_still_raises():
    """After `ended`, the second of two signals less than a second apart is recorded, not raised; a later
    one raises, so that a shutdown that hangs (a DALI pipeline's, say) can still be cut short."""
    import signal

    from alexkit import stops

    stops.forget()
    try:
        stops.ended()
        assert stops.taken(stops.INTERRUPTED, signal.SIGINT)  # the first: raised
        assert not stops.taken(stops.INTERRUPTED, signal.SIGINT)  # timeout's second, microseconds later
        stops._LAST[:] = [stops._LAST[-1] - 1.5]
        assert stops.taken(stops.INTERRUPTED, signal.SIGINT)  # a clean-up that hangs: raised
        assert stops.came()
    finally:
        stops.forget()


def test_the_console_script_ignores_signals_once_one_has_stopped_it(monkeypatch, capsys):
    """main() as the console script runs it (no argv): after a stop the signals stay ignored, to the
    process's end; after a command that ran to its end, and in a test's main(argv), they are put back."""
    import signal

    import alexkit.cli.main as cli

    monkeypatch.setattr(sys, "argv", ["alexkit", "train"])
    monkeypatch.setattr(cli, "app", lambda **kw: signal.raise_signal(signal.SIGINT))
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.main()
        assert stopped.value.code == 130 and capsys.readouterr().err == "interrupted\n"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    monkeypatch.setattr(cli, "app", lambda **kw: 0)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
