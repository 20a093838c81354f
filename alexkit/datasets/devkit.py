"""The label files that come beside the images: the ILSVRC2012 devkit and Kaggle's csv/txt.

The devkit (`ILSVRC2012_devkit_t12`, a folder or the `.tar.gz`) holds `data/meta.mat` (a struct
array `synsets`; the 1000 classes are the rows with num_children == 0) and
`data/ILSVRC2012_validation_ground_truth.txt` (line i = the ILSVRC2012_ID of val image i, i.e. of
`ILSVRC2012_val_<i, 8 digits>.JPEG`). ILSVRC2012_IDs are never labels: labels are wnid ranks.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from alexkit.errors import AlexkitError

DEVKIT_NAME = "ILSVRC2012_devkit_t12"
DEVKIT_TARS = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12.tar")
META_FILE = "meta.mat"
GROUND_TRUTH_FILE = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"

_VAL_NUMBER = re.compile(r"^ILSVRC2012_val_(\d+)\.[^.]+$")
# Folders never searched for the devkit: they hold the images (up to 1.28M files).
_NOT_SEARCHED = {"train", "val", "test", "ILSVRC"}


@dataclass(frozen=True)
class Devkit:
    """What the devkit says: leaf classes by ILSVRC2012_ID, and the ID of every val image."""

    source: str  # where it was read, for messages
    leaves: dict[int, tuple[str, str]]  # ILSVRC2012_ID -> (wnid, words)
    val_ids: tuple[int, ...]  # val_ids[i - 1] = ILSVRC2012_ID of ILSVRC2012_val_<i>

    def names(self) -> dict[str, str]:
        """wnid -> readable name ("tench, Tinca tinca")."""
        return {wnid: words for wnid, words in self.leaves.values()}

    def val_wnid(self, file_name: str, where: str | None = None) -> str:
        """The wnid of a val image, from the number in its name (ILSVRC2012_val_00000001.JPEG = line 1);
        `where` names the file in errors (its path, or its name in a tar), so the user can find it."""
        number = val_number(file_name)
        where = where or file_name
        if number is None:
            raise AlexkitError(
                f"{where}: flat val files must be named ILSVRC2012_val_<number>.JPEG to match "
                f"{GROUND_TRUTH_FILE}; for val images of your own, use val/<class>/ folders"
            )
        if not 1 <= number <= len(self.val_ids):
            raise AlexkitError(
                f"{where}: no line {number} in {GROUND_TRUTH_FILE} ({len(self.val_ids)} lines, "
                f"from {self.source}); use the devkit that came with these val images"
            )
        return self.leaves[self.val_ids[number - 1]][0]


def val_number(file_name: str) -> int | None:
    """1 for "ILSVRC2012_val_00000001.JPEG"; None for names without the number."""
    match = _VAL_NUMBER.match(os.path.basename(file_name))
    return int(match.group(1)) if match else None


def find_devkit(src: Path) -> Devkit | None:
    """Read the devkit found in `src`: a folder holding meta.mat and the ground truth, else the tar."""
    folder = _find_devkit_folder(src)
    if folder is not None:
        meta, truth = folder / META_FILE, folder / GROUND_TRUTH_FILE
        with open(meta, "rb") as f:
            leaves = parse_meta(f, source=str(meta))
        return Devkit(str(folder), leaves, parse_ground_truth(truth.read_text(), leaves, source=str(truth)))
    for name in DEVKIT_TARS:
        if (src / name).is_file():
            return read_devkit_tar(src / name)
    return None


def read_devkit_tar(path: Path) -> Devkit:
    """Read meta.mat and the ground truth straight out of ILSVRC2012_devkit_t12.tar.gz."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name.rsplit("/", 1)[-1]: m for m in tar if m.isfile()}
            missing = [n for n in (META_FILE, GROUND_TRUTH_FILE) if n not in members]
            if missing:
                raise AlexkitError(
                    f"{path}: no {' or '.join(missing)} inside; download ILSVRC2012_devkit_t12.tar.gz again"
                )
            meta = tar.extractfile(members[META_FILE]).read()
            truth = tar.extractfile(members[GROUND_TRUTH_FILE]).read().decode()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AlexkitError(f"{path}: cannot read the devkit tar ({exc}); download it again") from exc
    leaves = parse_meta(io.BytesIO(meta), source=f"{path}:{META_FILE}")
    return Devkit(str(path), leaves, parse_ground_truth(truth, leaves, source=f"{path}:{GROUND_TRUTH_FILE}"))


def parse_meta(fileobj, *, source: str) -> dict[int, tuple[str, str]]:
    """ILSVRC2012_ID -> (wnid, words) for the leaf rows (num_children == 0) of meta.mat's `synsets`."""
    import scipy.io

    try:
        synsets = scipy.io.loadmat(fileobj, squeeze_me=True)["synsets"].ravel()
        rows = zip(synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["words"], synsets["num_children"])
        leaves = {int(i): (str(wnid), str(words)) for i, wnid, words, children in rows if int(children) == 0}
    except Exception as exc:  # not a .mat file, no `synsets`, a field missing
        raise AlexkitError(
            f"{source}: not an ImageNet devkit meta.mat ({exc.__class__.__name__}: {exc}); "
            f"use data/meta.mat from {DEVKIT_NAME}"
        ) from exc
    if not leaves:
        raise AlexkitError(
            f"{source}: no leaf classes (num_children == 0) in `synsets`; use data/meta.mat from {DEVKIT_NAME}"
        )
    return leaves


def parse_ground_truth(text: str, leaves: dict[int, tuple[str, str]], *, source: str) -> tuple[int, ...]:
    """The ILSVRC2012_IDs of the val images, one per line, each checked against meta.mat's leaves."""
    ids = []
    for line_number, line in enumerate(text.split(), start=1):
        try:
            ilsvrc_id = int(line)
        except ValueError:
            raise AlexkitError(
                f"{source} line {line_number}: {line!r} is not an ILSVRC2012_ID; download the devkit again"
            ) from None
        if ilsvrc_id not in leaves:
            raise AlexkitError(
                f"{source} line {line_number}: ILSVRC2012_ID {ilsvrc_id} is not a leaf class in meta.mat; "
                f"use meta.mat and the ground truth from the same {DEVKIT_NAME}"
            )
        ids.append(ilsvrc_id)
    return tuple(ids)


def read_synset_mapping(path: Path) -> dict[str, str]:
    """wnid -> names from Kaggle's LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca")."""
    names = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():  # -sig: a byte-order mark re-saved by an editor
        parts = line.strip().split(maxsplit=1)
        if parts:
            names[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return names


def read_kaggle_solution(path: Path) -> dict[str, str]:
    """ImageId (file name without extension) -> wnid, the first token of PredictionString."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark from a spreadsheet
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise AlexkitError(f"{path}: expected the header ImageId,PredictionString; use Kaggle's {KAGGLE_SOLUTION}")
        solution = {}
        for row in rows:
            if not row:
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens:
                raise AlexkitError(
                    f"{path} line {rows.line_num}: no class in PredictionString; use Kaggle's {KAGGLE_SOLUTION}"
                )
            solution[row[0].strip()] = tokens[0]
    return solution


def _find_devkit_folder(src: Path, depth: int = 3) -> Path | None:
    """The shallowest folder under `src` holding both meta.mat and the ground truth (image folders skipped)."""
    level = [src]
    for _ in range(depth + 1):
        for folder in level:
            if (folder / META_FILE).is_file() and (folder / GROUND_TRUTH_FILE).is_file():
                return folder
        below = []
        for folder in level:
            try:
                subdirs = sorted(
                    e.name for e in os.scandir(folder)
                    if e.is_dir() and not e.name.startswith(".") and e.name not in _NOT_SEARCHED
                )
            except OSError:
                continue
            if len(subdirs) <= 100:  # a folder of class folders is not where a devkit lives
                below += [folder / name for name in subdirs]
        level = below
    return None
