"""Evaluation on the store's val split: the centre crop, or the paper's ten views (`tta=True`).

    checkpoint -> AlexNet -> val loader (mode "center" or "tencrop") -> predict_top per batch
    -> per-image top-5 on each rank -> gathered on every rank -> errors, per-class table, CSV/JSON

Ten-crop (Krizhevsky et al. 2012, section 4.1): the four corner crops and the centre crop of the
mean-subtracted stored image, each with its mirror; the softmax outputs of the ten are averaged.
Test-time augmentation is `predict_log_probs`, a function outside the model's forward.

Under torchrun each rank reads a disjoint shard of val.beton; the per-image results are gathered on
every rank, which checks that every image was seen exactly once before counting anything (rank 0
alone prints and writes files).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexkit.errors import FREE_GPU, AlexkitError, OutOfMemory, PathRefused, out_of_memory, too_large
from alexkit.outputs import check_output, is_stream, say_written, shown, write_output
from alexkit.paths import is_run
from alexkit.progress import PROGRESS_MODES, Progress, counted
from alexkit.ranges import AT_LEAST_1, check_ranges
from alexkit.launcher import launched
from alexkit.ranks import before_joining, lost_peers_said, on_every_rank
from alexkit.ranks import same_checkpoint_everywhere, same_flags_everywhere, same_store_everywhere
from alexkit.runs import RUN_FILES, check_same_store, find_checkpoint, store_of

TOP_K = 5
LOADER_MODE = {False: "center", True: "tencrop"}  # tta -> the val loader's mode


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path | None = None  # a .pt file or a run directory; None: the latest run's best.pt, else its last.pt
    data: Path | None = None  # the store; None: the one the checkpoint's config names, else DEFAULT_STORE
    tta: bool = False  # average the softmax over the paper's ten views instead of the centre crop
    batch_size: int = 128  # images per batch (a ten-crop batch feeds 10x as many views)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    json_path: Path | None = None  # write the results (with per-class figures) here
    predictions_path: Path | None = None  # write one CSV row per val image here
    show_classes: int = 5  # how many best and worst classes to print
    progress: str = "auto"  # auto | rich | plain | none (alexkit/progress.py); rank 0 only

    def __post_init__(self):
        check_ranges(("--batch-size", self.batch_size, AT_LEAST_1))
        from alexkit.model.placement import check_device

        check_device(self.device)
        if self.show_classes < 0:
            raise AlexkitError(f"show_classes {self.show_classes}: must be 0 or more")
        if self.progress not in PROGRESS_MODES:
            raise AlexkitError(f"--progress {self.progress!r} is not one of {', '.join(PROGRESS_MODES)}")
        if launched() == 1:  # under torchrun: evaluate() checks, once all have joined
            self.check_outputs()
        if self.json_path is not None and self.predictions_path is not None and \
                Path(self.json_path).resolve() == Path(self.predictions_path).resolve():  # fmt: skip
            if is_stream(self.json_path):  # `-` twice, say: the CSV and the JSON one after the other, which no parser reads
                raise AlexkitError(f"--json and --predictions both write to {shown(self.json_path)}, where the CSV and the "
                                   "JSON would run together; give one of them a file")  # fmt: skip
            raise AlexkitError(f"--json and --predictions both name {self.json_path}; give each its own file")

    def check_outputs(self) -> None:
        """Refuse now output files that could not be written: before an evaluation whose results would be lost."""
        for path, flag in ((self.json_path, "--json"), (self.predictions_path, "--predictions")):
            if path is not None:
                check_output(path, flag)

    def check_spares(self, ckpt_path: Path, store_path: Path) -> None:
        """Refuse output files that would overwrite what eval reads or what `train` writes: a file in
        the store's folder (or below it) or another store's, the checkpoint, a run file's name beside it or
        in another run, or any other existing checkpoint or store file."""
        from alexkit.pipeline.store import store_around

        for path, flag in ((self.json_path, "--json"), (self.predictions_path, "--predictions")):
            if path is None:
                continue
            target = Path(path).resolve()
            if (store := store_around(target, [store_path])) is not None:  # the one read, or another: its files are prepare's
                what = f"is in the folder of the store {store}"
            elif target.parent == ckpt_path.resolve().parent and target.name in RUN_FILES:
                what = f"would overwrite the {target.name} of the run {ckpt_path.parent}"
            elif target.name in RUN_FILES and target.is_file() and is_run(target.parent):
                what = f"would overwrite the {target.name} of the run {target.parent}"
            elif target.suffix in (".pt", ".beton", ".npz") and target.is_file():
                what = f"would overwrite a {target.suffix} file"
            else:
                continue
            raise AlexkitError(f"{flag} {shown(path)} {what}; name another file")


def predict_log_probs(model, images):
    """Log of the class probabilities averaged over views (the paper averages the softmax, not the
    logits); `model` in eval mode, no grad needed. In log space because a class whose logit is more
    than about 103 below the best one has probability 0 in float32, and a ranking of zeros is arbitrary.

    images: (N, 3, C, C) one view per image, or (N, V, 3, C, C) V views per image (ten-crop: V = 10).
    Returns (N, K) float32.
    """
    import torch

    if images.dim() == 4:
        return torch.log_softmax(model(images).float(), dim=1)  # (N, K)
    n, v = images.shape[:2]
    logits = model(images.flatten(0, 1)).float()  # (N*V, K), image i's views at rows i*V .. i*V+V-1
    log_p = torch.log_softmax(logits, dim=1).view(n, v, -1)  # (N, V, K)
    return torch.logsumexp(log_p, dim=1) - math.log(v)  # (N, K): log of the mean over the views


def predict_top(model, images, k: int):
    """(probabilities, classes), each (N, min(k, K)), best first."""
    log_p = predict_log_probs(model, images)  # (N, K)
    log_p, top = log_p.topk(min(k, log_p.shape[1]), dim=1)
    return log_p.exp(), top


def evaluate(cfg: EvalConfig) -> dict:
    """Evaluate a checkpoint on the val split; print a summary on rank 0 and return the results.

    Returns (on every rank) {"top1_err", "top5_err", "top1_acc", "top5_acc", "n", "tta", "checkpoint",
    "store", "epoch", "seconds", "images_per_s", "per_class": [...]}; rank 0 also writes
    cfg.json_path and cfg.predictions_path.
    """
    import torch.distributed as dist

    from alexkit.checkpoints import load_model
    from alexkit.model.placement import setup, teardown
    from alexkit.pipeline.store import reading

    world = launched()

    def loaded() -> tuple[Path, object, dict]:
        ckpt_path = find_checkpoint(cfg.checkpoint)
        return (ckpt_path, *load_model(ckpt_path))

    found, error = before_joining(loaded)
    ckpt_path, model, ckpt = found or (None, None, None)
    joined = dist.is_initialized()  # called from a process that already runs a group: leave it be
    placement = setup("ddp" if world > 1 else "none", cfg.device, error)
    try:
        same_flags_everywhere(cfg, own=("device", "checkpoint", "data", "json_path", "predictions_path", "show_classes", "progress"))
        on_every_rank(lambda: cfg.check_outputs() if placement.is_main and world > 1 else None)  # rank 0 writes them
        same_checkpoint_everywhere(ckpt, ckpt_path, "--checkpoint")
        store_path = on_every_rank(lambda: store_of(ckpt, ckpt_path, cfg.data))
        on_every_rank(lambda: cfg.check_spares(ckpt_path, store_path) if placement.is_main else None)  # before the work
        with contextlib.ExitStack() as held:
            on_every_rank(lambda: held.enter_context(reading(store_path)))  # no `prepare --force` replaces it meanwhile
            with lost_peers_said(lambda: "run again"):
                results = _evaluate(cfg, model, ckpt, ckpt_path, store_path, placement)
    except BaseException:
        if not joined:
            teardown(wait=False)
        raise
    if not joined:
        teardown()
    return results


def _evaluate(cfg: EvalConfig, model, ckpt: dict, ckpt_path: Path, store_path: Path, placement) -> dict:
    import torch

    from alexkit.pipeline.loader import make_loader
    from alexkit.pipeline.store import Store

    def open_store():
        store = Store(store_path).check("val")  # in every process, before the loader
        check_same_store(ckpt_path.parent, store, ckpt_path, model.args)  # against the run's copies, where it has them
        return store

    store = on_every_rank(open_store)
    same_store_everywhere(store)
    model = model.to(placement.device)
    total = len(store.split("val"))
    share = -(-total // placement.world_size)  # the most images a process reads: a larger batch would only take memory
    batch = min(cfg.batch_size, share)
    loader = make_loader(store, "val", mode=LOADER_MODE[cfg.tta], batch_size=batch, device=placement.device,
                         rank=placement.rank, world_size=placement.world_size, drop_last=False)  # fmt: skip
    parts: list[dict] = []
    start = time.perf_counter()
    done = 0
    with torch.inference_mode(), Progress("eval", total, mode=cfg.progress if placement.is_main else "none") as progress:
        for images, labels, indices in loader:
            try:
                p, top = predict_top(model, images, TOP_K)  # (N, min(5, K)) each, best first
            except torch.OutOfMemoryError as exc:  # another job on the GPU, or a batch too large for it
                raise _out_of_memory(exc, batch, cfg.tta, placement.device) from exc
            parts.append({"index": indices.cpu().numpy(), "label": labels.cpu().numpy(),
                          "top": top.cpu().numpy(), "p": p.cpu().numpy()})  # fmt: skip
            done = min(done + len(indices) * placement.world_size, total)  # an estimate of all ranks' progress
            progress.update(done)
    seconds = time.perf_counter() - start
    rows = _gather(_concat(parts), placement.world_size)
    _check_each_once(rows["index"], total, store)
    results = summarize(rows, store.classes)
    results.update(tta=cfg.tta, checkpoint=str(ckpt_path.absolute()), store=str(store.path.absolute()), epoch=ckpt.get("epoch"),
                   seconds=seconds, images_per_s=results["n"] / seconds, processes=placement.world_size,
                   device=str(placement.device))  # fmt: skip
    if placement.is_main:
        try:
            print("\n".join(report(results, cfg.show_classes)))  # first: the figures are never lost to a failing write
        finally:  # nor the files to a failing print (stdout a pipe whose reader has gone)
            _write_files(cfg, rows, results)
    return results


def _out_of_memory(exc: Exception, batch: int, tta: bool, device) -> OutOfMemory:
    """torch's out-of-memory error as one line with the fix: eval's --batch-size is per process, and with
    --tta each image is 10 views, so the paper's net at 128 images takes several GB (fp32: the
    activations of 1,280 crops); half the batch takes about half of that."""
    views = " x 10 views" if tta else ""
    lower = f" or pass a lower --batch-size, e.g. --batch-size {batch // 2}" if batch > 1 else ""  # at 1: the GPU alone
    return out_of_memory(exc, f"{counted(batch, 'image')}{views} per process on {device}", FREE_GPU + lower)


def _write_files(cfg: EvalConfig, rows: dict, results: dict) -> None:
    """--predictions and --json, each tried even where the other fails (a full disk, a folder removed
    meanwhile), so that what can be written is; then one error naming each that failed, and the one
    written; else a `wrote PATH` line for each file (not for a stream: its reader has what was written)."""
    writes = [(cfg.predictions_path, "--predictions", lambda path: write_predictions(path, rows)),
              (cfg.json_path, "--json", lambda path: write_output(path, json.dumps(results, indent=1) + "\n"))]  # fmt: skip
    failed, written = [], []
    for path, flag, write in writes:
        if path is None:
            continue
        try:
            write(path)
            written.append((flag, path))
        except (OSError, AlexkitError) as exc:
            failed.append((f"{exc.filename or shown(path)}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc), exc))
    if failed and all(isinstance(exc, BrokenPipeError) for _, exc in failed):
        raise failed[0][1]  # `-` into a closed stdout (`| head`): the closed-stdout exit, what could be written written
    if len(failed) == 1 and not written:
        raise failed[0][1]  # as it came: the one file asked for
    if failed:
        said = "; ".join(text for text, _ in failed)
        kept = f" ({written[0][0]} {shown(written[0][1])} was written)" if written else ""
        those = "those paths (their folders" if len(failed) > 1 else "that path (its folder"
        large = [too_large(exc) for _, exc in failed if isinstance(exc, OSError) and too_large(exc)]
        fixes = [large[0]] if large else []  # EFBIG: the size limit, which free space does not help
        if len(large) < len(failed):
            fixes.append(f"check {those}, permissions, free space) or choose another")
        raise PathRefused(f"{said}{kept}; {'; '.join(fixes)}") from failed[0][1]
    for _, path in written:  # once all are written: a print to a closed stdout (`| head`) stops no write
        say_written(path)


def summarize(rows: dict, classes: list[dict]) -> dict:
    """Top-1/top-5 error overall and per class from per-image rows sorted by index."""
    label, top = rows["label"], rows["top"]
    hit1 = top[:, 0] == label  # (n,) bool
    hit5 = (top == label[:, None]).any(axis=1)  # (n,) bool: label among the top 5
    n = len(label)
    per_class = []
    for c in classes:
        mine = label == c["index"]
        k = int(mine.sum())
        per_class.append({"index": c["index"], "wnid": c.get("wnid"), "name": c.get("name"), "n": k,
                          "top1_err": float((~hit1[mine]).mean()) if k else None,
                          "top5_err": float((~hit5[mine]).mean()) if k else None})  # fmt: skip
    top1_err = float((~hit1).mean()) if n else float("nan")  # misses / n exactly (1 - mean carries float noise)
    top5_err = float((~hit5).mean()) if n else float("nan")
    return {"top1_err": top1_err, "top5_err": top5_err, "top1_acc": 1 - top1_err, "top5_acc": 1 - top5_err,
            "n": n, "per_class": per_class}  # fmt: skip


ILSVRC2012_VAL = 50_000  # images in ImageNet's validation set: the set of the paper's figures


def report(results: dict, show_classes: int) -> list[str]:
    """Lines for people: errors with n, best and worst classes, throughput."""
    views = "ten-crop (10 views, softmax averaged)" if results["tta"] else "centre crop"
    epoch = f", epoch {results['epoch']}" if results.get("epoch") is not None else ""
    classes = len(results["per_class"])
    top5 = (f"top-5 error {100 * results['top5_err']:.2f}% (accuracy {100 * results['top5_acc']:.2f}%)" if classes > TOP_K
            else f"top-5 error not meaningful with {classes} classes")  # fmt: skip
    lines = [
        f"checkpoint {results['checkpoint']}{epoch}; store {results['store']} val; {views}",
        f"top-1 error {100 * results['top1_err']:.2f}% (accuracy {100 * results['top1_acc']:.2f}%)  {top5}  n={results['n']:,}",
    ]
    if results["tta"] and results["n"] == ILSVRC2012_VAL and len(results["per_class"]) == 1000:
        lines.append("the paper, one network on ten views (its Table 2): top-1 error 40.7%, top-5 error 18.2%")
    seen = sorted((c for c in results["per_class"] if c["n"]), key=lambda c: (c["top1_err"], c["top5_err"], c["index"]))
    if show_classes and len(seen) > 1:
        k = min(show_classes, len(seen) // 2)
        top5_of = (lambda c: f", {100 * c['top5_err']:5.1f}% top-5") if classes > TOP_K else (lambda c: "")  # noqa: E731
        fmt = lambda c: f"  {100 * c['top1_err']:5.1f}% top-1{top5_of(c)}  (n={c['n']})  {c['index']} {c['name']}"  # noqa: E731
        lines += ["best classes (top-1 error):"] + [fmt(c) for c in seen[:k]]
        worst = sorted(seen, key=lambda c: (-c["top1_err"], -c["top5_err"], c["index"]))  # ties in index order
        lines += ["worst classes:"] + [fmt(c) for c in worst[:k]]
    per_view = f" ({10 * results['images_per_s']:,.0f} views/s)" if results["tta"] else ""
    n = results["processes"]
    lines.append(f"throughput {results['images_per_s']:,.0f} images/s{per_view} on {results['device']} x "
                 f"{n} process{'es' * (n != 1)}, {results['seconds']:.1f} s")  # fmt: skip
    return lines


def write_predictions(path: Path, rows: dict) -> None:
    """CSV, one row per val image sorted by index: index, label, top1..top5, p1..p5."""
    k = rows["top"].shape[1]
    header = ["index", "label"] + [f"top{i + 1}" for i in range(k)] + [f"p{i + 1}" for i in range(k)]
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    for i in range(len(rows["index"])):
        w.writerow([int(rows["index"][i]), int(rows["label"][i]), *rows["top"][i].tolist(),
                    *(f"{p:.6g}" for p in rows["p"][i].tolist())])  # fmt: skip
    write_output(path, text.getvalue())


def _concat(parts: list[dict]) -> dict:
    if not parts:
        return {"index": np.zeros(0, np.int64), "label": np.zeros(0, np.int64),
                "top": np.zeros((0, TOP_K), np.int64), "p": np.zeros((0, TOP_K), np.float32)}  # fmt: skip
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _gather(rows: dict, world_size: int) -> dict:
    """Every rank's rows on every rank, sorted by index (gloo on CPU, NCCL on GPUs)."""
    if world_size > 1:
        import torch.distributed as dist

        everyone: list = [None] * world_size
        dist.all_gather_object(everyone, rows)
        everyone = [r for r in everyone if len(r["index"])]
        rows = {key: np.concatenate([r[key] for r in everyone]) for key in rows} if everyone else rows
    order = np.argsort(rows["index"], kind="stable")
    return {key: value[order] for key, value in rows.items()}


def _check_each_once(index: np.ndarray, total: int, store) -> None:
    """The loader must have delivered each val image exactly once, over all ranks together."""
    if len(index) != total or not np.array_equal(index, np.arange(total)):
        repeated = int(len(index) - len(np.unique(index)))
        missing = int(total - len(np.unique(index)))
        raise AlexkitError(f"the val loader of {store.path} gave {len(index)} predictions for {total} images "
                           f"({repeated} repeated, {missing} missing); every image must count exactly once")  # fmt: skip
