"""The typer commands (one module each, registered in main.py), and the checks several of them share."""

from __future__ import annotations

from pathlib import Path

from alexkit.errors import AlexkitError


def check_folder(path: Path | None, flag: str) -> None:
    """A folder that `flag` names, made or reused later: refused now, before any work, if it or a folder
    above it is a file (paths.check_output does the same for a file)."""
    if path is None:
        return
    above = next((p for p in (path, *path.parents) if p.exists()), None)
    if above is not None and not above.is_dir():
        where = "is a file" if above == path else f"is inside {above}, which is a file"
        raise AlexkitError(f"{flag} {path} {where}; name a folder or choose another path")
