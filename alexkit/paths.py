"""Where things are by default, and which folder is a run: the default locations, run folders and
their checkpoints, and paths as the user types them and reads them.

The default locations are chosen so that `prepare` -> `train` -> `eval` chain with no flags; all are
relative to the current directory: run the three commands from the same place. What makes a folder
a run folder (is_run), its checkpoint (checkpoint_in), and the latest run (latest_run, latest_run_noted); a path as a
word of a command printed for the user to copy (word), and one given with a `~` (expand_home); how
many cores this process may use (usable_cores). Locks are in locks.py, writing files in outputs.py.
"""

import re
import shlex
from pathlib import Path

DEFAULT_STORE = Path("alexkit-store")  # written by `alexkit prepare`, read by train/eval
DEFAULT_RUNS = Path("alexkit-runs")  # one sub-directory per `alexkit train` run


def word(path) -> str:
    """A path as one word of a command printed for the user to copy into a shell: quoted where it
    needs to be (spaces, quotes), and a relative path that starts with "-" as ./-..., not an option."""
    text = str(path)
    return shlex.quote("./" + text if text.startswith("-") else text)


def is_run(folder: Path) -> bool:
    """Whether `folder` is a run folder, one `alexkit train` took for a run: it holds the .train.lock train
    makes there first (and leaves there), or the config.json it writes next. Checkpoints or a metrics.jsonl
    alone (copies; another program's *.pt) make none, though eval and plot read them all the same."""
    return (Path(folder) / ".train.lock").is_file() or (Path(folder) / "config.json").is_file()


def checkpoint_in(run: Path, prefer: tuple[str, ...] = ("best.pt", "last.pt")) -> Path | None:
    """The run folder's first of the checkpoints `prefer` that is there, or None."""
    return next((Path(run) / n for n in prefer if (Path(run) / n).is_file()), None)


def latest_run(runs: Path = DEFAULT_RUNS, having: tuple[str, ...] = ("best.pt", "last.pt")) -> Path | None:
    """The most recently created run directory under `runs` (names sort by creation time) that holds
    one of the files `having`: a run stopped in its first epoch has no checkpoint yet and is passed over."""
    if not runs.is_dir():
        return None
    candidates = [p for p in runs.iterdir() if is_run(p) and any((p / n).is_file() for n in having)]
    return max(candidates, key=_creation_order, default=None)


def latest_run_noted(having: tuple[str, ...], lacking: str, say: bool = True) -> Path | None:
    """latest_run under DEFAULT_RUNS, with a note on stderr (if `say`) where a newer run has none of
    `having` yet (a training still in its first epoch, or stopped there): the run used is then not the
    one just started, and the user should know. `lacking`: what that run has not, in the note's words."""
    import sys

    run = latest_run(having=having)
    if run is None or not say:  # the runs folder listed a second time only for the note
        return run
    newest = latest_run(having=(".train.lock", "config.json"))  # any run folder: is_run's own marks
    if newest is not None and _creation_order(newest) > _creation_order(run):
        print(f"note: {newest} has {lacking} yet; using {run}", file=sys.stderr)
    return run


def _creation_order(run: Path) -> tuple[str, int]:
    """A run folder's place in time: YYYYmmdd-HHMMSS, then the -N of runs started in the same second
    (numerically: -10 comes after -9)."""
    same_second = re.fullmatch(r"(\d{8}-\d{6})-(\d+)", run.name)
    return (same_second[1], int(same_second[2])) if same_second else (run.name, 1)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def expand_home(path: str | Path) -> Path:
    """`path` with a leading `~` or `~user` expanded, as the shell does; `~nosuchuser` (or no home)
    left as it is, as the shell leaves it, for the error about a missing path to name."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory"
        return Path(path)
