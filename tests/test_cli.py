"""The command line: help, exit codes, one-line errors, doctor."""

import os
import subprocess
import sys

import pytest

EXPECTED = ["doctor", "sample", "prepare", "train", "eval", "predict", "show-batch", "plot", "bench"]


def run(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
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


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, a folder no one can create files in")
def test_a_path_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    r = run("sample", "/proc/alexkit-sample", "--classes", "1", "--train-per-class", "1", "--val-per-class", "0")
    assert r.returncode == 1, r.stderr
    [line] = [l for l in r.stderr.splitlines() if l.strip()]
    assert line.startswith("error: /proc/alexkit-sample: ") and "choose another" in line, line


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
                 ["bench", "train"], ["show-batch", "--out", str(tmp_path / "pics")]):  # fmt: skip
        r = run(*args, cwd=tmp_path)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"error: `alexkit {args[0]}` runs in one process, but torchrun started 2")
    assert list(tmp_path.iterdir()) == []


def test_an_error_every_process_raises_is_printed_by_rank_0_alone(monkeypatch, capsys):
    """ranks.agree raises one error in every process of a torchrun job: one line per job, not per process."""
    import alexkit.train
    from alexkit.cli.main import main
    from alexkit.errors import AlexkitError

    def fails_everywhere(cfg, given=None):
        error = AlexkitError("store /nfs/s does not exist (said by process 1 on node2)")
        error.everywhere = True
        raise error

    monkeypatch.setattr(alexkit.train, "train", fails_everywhere)
    for rank, printed in (("1", ""), ("0", "error: store /nfs/s does not exist (said by process 1 on node2)\n")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as done:
            main(["train"])
        assert done.value.code == 2 and capsys.readouterr().err == printed


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
    ("show_batch", "alexkit.pictures:ShowBatchConfig", {}),
    ("plot", "alexkit.pictures:PlotConfig", {}),
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
