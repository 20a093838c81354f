"""The `alexkit` command: a typer app whose commands turn flags into a frozen config and call one stage.

Heavy imports (torch, ffcv, DALI) happen inside the commands, so `alexkit --help` stays instant.
Every AlexkitError becomes one line on stderr and its exit code (2: bad usage or input; 1: a path
the system refuses, out of memory, a lost peer); `--debug` shows the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from alexkit.errors import AlexkitError, alike, refused

app = typer.Typer(
    name="alexkit",
    help="AlexNet (Krizhevsky et al. 2012) on ImageNet: prepare -> train -> eval --tta.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
bench_app = typer.Typer(help="Benchmarks that print images/s side by side with baselines.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

TORCHRUN_COMMANDS = ("train", "eval")  # the others would run once per process, side by side


@app.callback()
def _root(ctx: typer.Context, debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    # --debug is declared here for parsing and --help; main() reads it from the arguments itself,
    # as it handles the errors after typer has returned.
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1 and ctx.invoked_subcommand not in TORCHRUN_COMMANDS:
        raise alike(AlexkitError(f"`alexkit {ctx.invoked_subcommand}` runs in one process, but torchrun started {world} "
                                 f"(WORLD_SIZE={world}): run it without torchrun (only {' and '.join(TORCHRUN_COMMANDS)} "
                                 "use torchrun's processes), or unset WORLD_SIZE where no launcher started this"))  # fmt: skip


# --- command registration: one line per command, each module defines `command` ---
from alexkit.cli import eval as _eval  # noqa: E402
from alexkit.cli import plot as _plot  # noqa: E402
from alexkit.cli import predict as _predict  # noqa: E402
from alexkit.cli import show_batch as _show_batch  # noqa: E402
from alexkit.cli import doctor as _doctor  # noqa: E402
from alexkit.cli import sample as _sample  # noqa: E402
from alexkit.cli import prepare as _prepare  # noqa: E402
from alexkit.cli import bench_prepare as _bench_prepare  # noqa: E402
from alexkit.cli import train as _train  # noqa: E402
from alexkit.cli import bench_train as _bench_train  # noqa: E402
from alexkit.cli import bench_loader as _bench_loader  # noqa: E402

app.command("doctor")(_doctor.command)
app.command("sample")(_sample.command)
app.command("prepare")(_prepare.command)
bench_app.command("prepare")(_bench_prepare.command)
app.command("eval")(_eval.command)
app.command("predict")(_predict.command)
app.command("show-batch")(_show_batch.command)
app.command("plot")(_plot.command)
app.command("train")(_train.command)
bench_app.command("train")(_bench_train.command)
bench_app.command("loader")(_bench_loader.command)
# --- end of command registration ---


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: usage errors exit 2 (click's rule), an AlexkitError is one line and its exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, prog_name="alexkit")  # standalone: always ends with SystemExit
    except SystemExit as exc:
        if exc.code == 130:  # typer turns Ctrl-C into exit 130 itself, before the handler below
            print("interrupted", file=sys.stderr)
        raise
    except AlexkitError as exc:
        if debug:
            traceback.print_exc()  # and still the error's own exit code
        elif not getattr(exc, "everywhere", False) or os.environ.get("LOCAL_RANK", "0") == "0":  # one line per node
            print(f"error: {exc}", file=sys.stderr)  # (torchrun's LOCAL_RANK): each node's log says why it stopped
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # a path that cannot be read or written: name it, without a traceback
        if debug:
            traceback.print_exc()
            sys.exit(1)
        said = refused(exc, "check that path (its folder, permissions, free space) or choose another") if exc.filename \
            else f"{exc.strerror or exc}; run again with --debug for the traceback"  # fmt: skip
        print(f"error: {said}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        print(f"error: {exc.__class__.__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
