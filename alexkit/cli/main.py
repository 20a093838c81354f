"""The `alexkit` command: a typer app whose commands turn flags into a frozen config and call one stage.

Heavy imports (torch, ffcv, DALI) happen inside the commands, so `alexkit --help` stays instant.
Every AlexkitError becomes one line on stderr and its exit code (2: bad usage or input; 1: a path
the system refuses, out of memory, a lost peer); `--debug` shows the traceback. A usage error that
click finds (an unknown flag, a value that is not a number) is one line too, exit code 2. A closed
stdout (`| head`) ends a command with exit code 1 and no word, after what it saved: typer's own
handling of EPIPE, which it keeps with standalone_mode=False too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from alexkit import stops
from alexkit.errors import AlexkitError, alike, refused, too_large
from alexkit.launcher import first_on_node, started
from alexkit.paths import expand_home

MIN_COLUMNS = 80  # narrower, rich would cut words in help and tables to a letter or two: the terminal wraps lines instead


class _Flagged:
    """What alexkit's commands and groups add to typer's: flags shown without a metavar (a flag takes
    no value, and `--tta true` is an error), arguments shown as the paths they are, every usage error
    knowing its command, and a `~` at the start of every path expanded, as the shell does (see _home)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # typer would show <bool>
            if param.param_type_name == "argument":
                param.display_type_rich = functools.partial(_argument_type, param)
        return params

    def parse_args(self, ctx, args):
        _refuse_empty_values(self.get_params(ctx), args, ctx.command_path)
        try:
            rest = super().parse_args(ctx, args)
        except typer.TyperException as exc:
            if getattr(exc, "ctx", None) is None:  # click leaves it out of some (`--epochs` with no value)
                exc.ctx = ctx
            raise
        ctx.params = {name: _home(value) for name, value in ctx.params.items()}
        return rest


def _argument_type(param, ctx) -> str:
    """<path> or <path>... in an argument's row of -h, where typer writes <str>, <list[str]> or
    <list[Path]>: every argument of alexkit names files or folders (some are taken as text, see _home)."""
    return "<path>..." if param.nargs != 1 else "<path>"


def _refuse_empty_values(params, args: list[str], command: str) -> None:
    """An empty value given to an option (`--out ""`, `--data=$UNSET`) or as an argument (`sample ""`,
    `plot $UNSET`) is refused: as a path, typer would take it for the current folder, and a run, a
    store, an output or a dataset would land there, or be read from there."""
    takes_value = {opt for p in params if p.param_type_name == "option" and not getattr(p, "is_flag", False) for opt in p.opts}
    known = {opt for p in params if p.param_type_name == "option" for opt in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
    arguments = [p for p in params if p.param_type_name == "argument"]  # a group has none: its words name commands
    positional, options_end, value_next = 0, False, False
    for i, arg in enumerate(args):
        if value_next:  # an option's value, checked with its option
            value_next = False
            continue
        if arg == "--" and not options_end:
            options_end = True
            continue
        if arg.startswith("-") and arg != "-" and not options_end:
            name, eq, value = arg.partition("=")
            if name not in known:  # a mistyped option: click names it, and what follows it is no telling
                return
            given = value if eq else (args[i + 1] if i + 1 < len(args) else None)
            if name in takes_value and given == "":
                raise AlexkitError(f"{name} '': an empty value (an unset shell variable?); give a value or drop the flag; "
                                   f"see {command} -h")  # fmt: skip
            value_next = name in takes_value and not eq
            continue
        param = _argument_at(arguments, positional)
        if arg == "" and param is not None:
            fix = "give a path" if param.required else "give a path or leave it out"
            raise AlexkitError(f"{(param.metavar or param.name).upper()} '': an empty value (an unset shell variable?); "
                               f"{fix}; see {command} -h")  # fmt: skip
        positional += 1


def _argument_at(arguments, position: int):
    """The argument that the positional word at `position` (from 0) goes to; None past the last one."""
    for param in arguments:
        if param.nargs < 0 or position < param.nargs:  # nargs -1: all the words left
            return param
        position -= param.nargs
    return None


def _home(value):
    """A path with its `~` expanded (lists and tuples of them too; anything else as it is). The shell
    leaves `~` alone in quotes and after `=` (`--data=~/store`), and the commands would take it as a
    folder named ~. Typer has made a Path of every Path-typed value by now; prepare and predict take
    their paths as text, and expand them themselves. `~nosuchuser` stays as it is, as in the shell."""
    if isinstance(value, (list, tuple)):
        return type(value)(map(_home, value))
    return expand_home(value) if isinstance(value, Path) else value


class Command(_Flagged, TyperCommand):
    def collect_usage_pieces(self, ctx):
        """`[OPTIONS] SRC`, `IMAGE...`, `[RUN...]`, as README.md writes them (recent typers write
        a required argument as {SRC} and add a second ... to one that takes several values)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces += param.get_usage_pieces(ctx)
                continue
            name = (param.metavar or param.name).upper() + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(_Flagged, TyperGroup):
    def invoke(self, ctx):
        """The command; once it has returned or raised (stops.ended), a signal main() handles that
        comes less than a second after the one before is recorded, not raised (a later one still
        raises), where main() set the handlers (it forgets that when it puts them back)."""
        try:
            return super().invoke(ctx)
        finally:
            if _HANDLING:
                stops.ended()


app = typer.Typer(
    name="alexkit",
    cls=Group,
    help="AlexNet (Krizhevsky et al. 2012) on ImageNet: prepare -> train -> eval --tta.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
bench_app = typer.Typer(cls=Group, help="Benchmarks that print images/s side by side with baselines.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

TORCHRUN_COMMANDS = ("train", "eval")  # the others would run once per process, side by side


@app.callback()
def _root(ctx: typer.Context, debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    # --debug is declared here for parsing and --help; main() reads it from the arguments itself,
    # as it handles the errors after typer has returned.
    world = started()
    if world > 1 and ctx.invoked_subcommand not in TORCHRUN_COMMANDS:
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

app.command("doctor", cls=Command)(_doctor.command)
app.command("sample", cls=Command)(_sample.command)
app.command("prepare", cls=Command)(_prepare.command)
bench_app.command("prepare", cls=Command)(_bench_prepare.command)
app.command("eval", cls=Command)(_eval.command)
app.command("predict", cls=Command)(_predict.command)
app.command("show-batch", cls=Command)(_show_batch.command)
app.command("plot", cls=Command)(_plot.command)
app.command("train", cls=Command)(_train.command)
bench_app.command("train", cls=Command)(_bench_train.command)
bench_app.command("loader", cls=Command)(_bench_loader.command)
# --- end of command registration ---


def usage_line(exc: typer.TyperException) -> str:
    """Click's message about a usage error on one line, with the value it refused where click leaves
    it out, and the command whose help tells more: "--epochs 'abc': input should be a valid integer,
    unable to parse string as an integer; see alexkit train -h"."""
    said = " ".join(exc.format_message().split()).rstrip(".")
    errors = getattr(exc.__cause__, "errors", None)  # typer's pydantic check that refused the value
    value = errors()[0].get("input") if callable(errors) and errors() else None
    bad_value = re.fullmatch(r"Invalid value for ((?:'[^']*'(?: / )?)+): (.)(.*)", said)  # hints: "'--workers' / '-j'"
    if bad_value:
        hints, first, rest = bad_value.groups()
        flag = re.match(r"'([^']*)'", hints)[1]
        said = f"{flag}{'' if value is None else ' ' + repr(value)}: {first.lower()}{rest}"
    elif said[1:2].islower():
        said = said[0].lower() + said[1:]
    ctx = getattr(exc, "ctx", None)
    return f"{said}; see {ctx.command_path if ctx else 'alexkit'} -h"


def _wide_enough() -> None:
    """--help at least MIN_COLUMNS wide: the terminal wraps its lines, rather than rich cutting its words."""
    if shutil.get_terminal_size().columns < MIN_COLUMNS:
        from typer import rich_utils

        rich_utils.MAX_WIDTH = MIN_COLUMNS


@contextlib.contextmanager
def _sigterm_as_ctrl_c(process_ends: bool = False):
    """Raise Terminated in the main thread on SIGTERM while the block runs (its default would end the
    process at once, leaving temporary files and no word of how to go on). `process_ends`: the process
    exits after the block (the console script), so where a signal stopped the command, further ones
    are ignored from then on: one coming a moment later (a second Ctrl-C, torchrun passing the signal
    on), once the handlers were put back or while Python shuts down, ended the process by that signal
    (-2 to a caller), its exit code lost."""
    def terminate(signum, frame):  # recorded: typer may turn the exception into exit code 130 before main() sees it
        if stops.taken(stops.TERMINATED, signum):
            raise stops.Terminated()

    def interrupt(signum, frame):  # Python's own, remembered (alexkit/stops.py)
        if stops.taken(stops.INTERRUPTED, signum):
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    previous_int = signal.signal(signal.SIGINT, interrupt) if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
    _HANDLING.append(True)
    try:
        yield
    finally:
        stopped = stops.came()
        if process_ends and stopped:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # SIG_IGN, unlike a Python handler, outlives the shutdown
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stops.forget()  # taken for this command: a next main() in this process (a test's) starts afresh
        _HANDLING.pop()
        if not (process_ends and stopped):
            signal.signal(signal.SIGTERM, previous)
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)


def _sigterm_default_in_child() -> None:
    """A forked child (a multiprocessing pool's worker) does not inherit the handler: a pool's exit
    terminate()s its workers, which printed a Terminated traceback each, and a Python handler runs
    later than the kernel's default, which a pool's clean-up can wait on for ever (seen 1 in 40)."""
    if _HANDLING:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # not the main thread: cannot be (a fork's child runs in its main thread)
            pass


_HANDLING: list[bool] = []  # the handler is set (this process's, not a child's)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_sigterm_default_in_child)



def _stopped(exc: BaseException | None) -> int:
    """Say why the command stopped early, "interrupted" (Ctrl-C) or "terminated" (SIGTERM); its exit code.
    Under torchrun every process is stopped: the first of each node alone says so."""
    term = isinstance(exc, stops.Terminated) or bool(stops.TERMINATED)
    if first_on_node():
        print("terminated" if term else "interrupted", file=sys.stderr)
    return 143 if term else 130


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: a usage error or an AlexkitError is one line and its exit code."""
    with _sigterm_as_ctrl_c(process_ends=argv is None):
        _main(argv)


def _main(argv: list[str] | None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    _wide_enough()
    try:
        code = app(args=argv, prog_name="alexkit", standalone_mode=False)  # errors reach the handlers below
    except typer.TyperException as exc:  # click's usage errors: flags alone, so alike in every torchrun process
        if exc.__class__.__name__ == "NoArgsIsHelpError":  # `alexkit` alone: the help is printed already
            sys.exit(exc.exit_code)  # (typer itself tells this one by its name)
        if first_on_node():  # one line per node, as for alike() errors
            print(f"error: {usage_line(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except AlexkitError as exc:
        if debug:
            traceback.print_exc()  # and still the error's own exit code
        elif not getattr(exc, "everywhere", False) or first_on_node():  # one line per node
            print(f"error: {exc}", file=sys.stderr)  # (torchrun's LOCAL_RANK): each node's log says why it stopped
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        sys.exit(_stopped(exc))
    except OSError as exc:  # a path that cannot be read or written: name it, without a traceback
        if debug:
            traceback.print_exc()
            sys.exit(1)
        fix = too_large(exc) or "check that path (its folder, permissions, free space) or choose another"
        said = refused(exc, fix) if exc.filename \
            else f"{exc.strerror or exc}; run again with --debug for the traceback"  # fmt: skip
        print(f"error: {said}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if stops.came():  # a Ctrl-C inside an import can leave a module half made, and what uses
            sys.exit(_stopped(None))  # it then fails in its own way (numpy: a RecursionError): the Ctrl-C's doing
        if debug:
            raise
        if isinstance(exc, typer.Abort) and exc.__cause__ is not None:  # click's wrapping of an EOFError
            exc = exc.__cause__
        print(f"error: {exc.__class__.__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    if code == 130 or stops.came():  # typer turns Ctrl-C into exit code 130 itself, before
        code = _stopped(None)  # the handler above; a Ctrl-C dropped by a native library let the command run to its end
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit's code, or 0 after a command's end
