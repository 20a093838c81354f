"""The loader end to end: a store written here -> DALI (CPU operators) -> torch batches.

Synthetic images encode their own index in their pixels, so order, labels, sharding and
augmentation can be checked exactly against the stored images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alexkit.errors import AlexkitError
from alexkit.pipeline.augment import lighting_offsets, reference_center, reference_tencrop, reference_train, train_params
from alexkit.pipeline.beton import MODE_JPG, MODE_RAW, BetonWriter
from alexkit.pipeline.constants import crop_size
from alexkit.pipeline.loader import STREAM_AUGMENT, LoaderConfig, epoch_rng, make_loader, shard_positions, shard_size
from alexkit.pipeline.store import Store
from tests.test_pipeline import jpeg, pil_decode, smooth_images

SIZE = 16  # stored side; crops are 14
CLASSES = 7


def index_image(i: int, size: int = SIZE) -> np.ndarray:
    """A flat image whose R, G hold its index (i % 256, i // 256) and B a constant."""
    img = np.empty((size, size, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = i % 256, i // 256, 77
    return img


def label_of(i: int) -> int:
    return (i * 3 + 1) % CLASSES


def write_store(root: Path, splits: dict[str, list[np.ndarray]], *, fmt: str = "raw", size: int = SIZE,
                mean_image: np.ndarray | None = None, eigval=(0.0, 0.0, 0.0), eigvec=None) -> Store:
    """A store directory as prepare writes it: <split>.beton, stats.npz, classes.json, manifest.json."""
    root.mkdir(parents=True, exist_ok=True)
    for name, images in splits.items():
        writer = BetonWriter(root / f"{name}.beton", len(images))
        for i, img in enumerate(images):
            data = jpeg(img) if fmt == "jpg" else img
            writer.add(data, label_of(i), mode=MODE_JPG if fmt == "jpg" else MODE_RAW, width=size, height=size)
        writer.close()
    mean = np.zeros((size, size, 3), np.float32) if mean_image is None else mean_image
    np.savez(root / "stats.npz", mean_image=mean, eigval=np.asarray(eigval, float), eigvec=np.eye(3) if eigvec is None else eigvec)
    (root / "classes.json").write_text(json.dumps([{"index": k, "wnid": f"c{k}", "name": f"class {k}"} for k in range(CLASSES)]))
    (root / "manifest.json").write_text(json.dumps({"format_version": 1, "settings": {"size": size}}))
    return Store(root)


def decode_index(images: torch.Tensor) -> np.ndarray:
    """Indices read back from flat index images (mean zero, no lighting): R + 256 G at any pixel."""
    px = images.float().numpy()[..., 0, 0]  # (N, 3) or (N, 10, 3)
    assert np.all(images.float().numpy() == px[..., None, None]), "views of a flat image must be flat"
    return (px[..., 0] + 256 * px[..., 1]).astype(np.int64)


@pytest.fixture(scope="module")
def index_store(tmp_path_factory) -> Store:
    splits = {"train": [index_image(i) for i in range(103)], "val": [index_image(i) for i in range(45)]}
    return write_store(tmp_path_factory.mktemp("index"), splits)


def collect(loader) -> tuple[list[np.ndarray], list[np.ndarray]]:
    idx, lab = [], []
    for images, labels, indices in loader:
        got = decode_index(images)
        assert np.array_equal(got if got.ndim == 1 else got[:, 0], indices.numpy()), "images and indices out of step"
        idx.append(indices.numpy())
        lab.append(labels.numpy())
    return idx, lab


@pytest.mark.parametrize("mode", ["train", "center", "tencrop"])
def test_images_labels_and_indices_stay_aligned(index_store, mode):
    split = "train" if mode == "train" else "val"
    loader = make_loader(index_store, split, mode=mode, batch_size=10, seed=3)
    idx, lab = collect(loader)
    assert len(idx) == len(loader)
    all_idx, all_lab = np.concatenate(idx), np.concatenate(lab)
    assert np.array_equal(all_lab, [label_of(i) for i in all_idx])
    if mode == "train":  # shuffled, the last partial batch dropped: 103 -> 100
        assert len(all_idx) == 100 and len(set(all_idx.tolist())) == 100 and not np.array_equal(all_idx, np.sort(all_idx))
    else:  # stored order, nothing dropped
        assert np.array_equal(all_idx, np.arange(45))


def test_epochs_reshuffle_deterministically(index_store):
    def order(epoch, seed=0):
        loader = make_loader(index_store, "train", batch_size=10, seed=seed)
        loader.set_epoch(epoch)
        return np.concatenate(collect(loader)[0])

    assert np.array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))
    assert not np.array_equal(order(0), order(0, seed=1))
    loader = make_loader(index_store, "train", batch_size=10)
    loader.set_epoch(5)
    assert np.array_equal(np.concatenate(collect(loader)[0]), loader.positions(5))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shards_cover_the_split_once(world):
    n, B = 103, 8
    for epoch in (0, 1):
        val = [shard_positions(n, LoaderConfig("val", mode="center", batch_size=B, rank=r, world_size=world), epoch) for r in range(world)]
        assert sorted(np.concatenate(val).tolist()) == list(range(n))  # every image exactly once, no padding
        train = [shard_positions(n, LoaderConfig("train", batch_size=B, rank=r, world_size=world, seed=9), epoch) for r in range(world)]
        flat = np.concatenate(train)
        assert len(set(flat.tolist())) == len(flat) == n // (world * B) * world * B  # whole global batches, no duplicates
        assert len({len(t) for t in train}) == 1  # every rank runs the same number of steps
        keep_all = [LoaderConfig("train", batch_size=B, rank=r, world_size=world, drop_last=False) for r in range(world)]
        everything = [shard_positions(n, cfg, epoch) for cfg in keep_all]
        assert sorted(np.concatenate(everything).tolist()) == list(range(n))
        for cfg, got in zip(keep_all, everything):  # what len(loader) counts, without the permutation
            assert shard_size(n, cfg) == len(got)
        for r, got in enumerate(train):
            assert shard_size(n, LoaderConfig("train", batch_size=B, rank=r, world_size=world)) == len(got)
        for r, got in enumerate(val):
            assert shard_size(n, LoaderConfig("val", mode="center", batch_size=B, rank=r, world_size=world)) == len(got)


def test_ranks_simulated_in_one_process_read_disjoint_shards(index_store):
    world = 3
    seen = {"train": [], "val": []}
    for rank in range(world):
        train = make_loader(index_store, "train", batch_size=4, rank=rank, world_size=world, seed=1)
        seen["train"] += np.concatenate(collect(train)[0]).tolist()
        val = make_loader(index_store, "val", mode="center", batch_size=4, rank=rank, world_size=world)
        seen["val"] += np.concatenate(collect(val)[0]).tolist()
    assert sorted(seen["val"]) == list(range(45))
    assert len(seen["train"]) == len(set(seen["train"])) == 103 // 12 * 12


def test_train_loader_equals_numpy_reference(tmp_path):
    """The whole flow (memmap -> graph inputs -> DALI -> torch) against reference_train with the
    parameters recomputed from the documented random streams."""
    rng = np.random.default_rng(0)
    size, n, B, seed, epoch, rank, world = 24, 40, 8, 11, 2, 1, 2
    C = crop_size(size)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    eigvec, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    eigval = np.array([3000.0, 200.0, 30.0])
    store = write_store(tmp_path / "s", {"train": images}, size=size, mean_image=mean, eigval=eigval, eigvec=eigvec)
    loader = make_loader(store, "train", batch_size=B, rank=rank, world_size=world, seed=seed)
    loader.set_epoch(epoch)
    params = epoch_rng(seed, epoch, STREAM_AUGMENT, rank)
    batches = 0
    for views, labels, indices in loader:
        x, y, flip, alpha = train_params(params, len(indices), size, C)
        offset = lighting_offsets(alpha, eigval, eigvec)
        ref = np.stack([reference_train(images[i], mean, x[k], y[k], flip[k], offset[k]) for k, i in enumerate(indices.tolist())])
        np.testing.assert_array_equal(views.numpy(), ref)  # the same float32 steps, in the same order
        batches += 1
    assert batches == len(loader) == n // (B * world)


@pytest.mark.parametrize("channels_last", [False, True])
def test_train_loader_on_a_jpeg_store_matches_the_decoded_store(tmp_path, channels_last):
    """The CPU JPEG train graph (mean windows fed as views, read in place) against reference_train
    of the decoded images, batch after batch over two epochs, so a stale or reused window would show."""
    rng = np.random.default_rng(3)
    size, n, B, seed = 32, 24, 4, 5
    C = crop_size(size)
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    eigvec, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    eigval = np.array([3000.0, 200.0, 30.0])
    store = write_store(tmp_path / "s", {"train": smooth_images(rng, n, size)}, fmt="jpg", size=size, mean_image=mean,
                        eigval=eigval, eigvec=eigvec)  # fmt: skip
    reader = store.split("train")
    loader = make_loader(store, "train", batch_size=B, seed=seed, decoder="cpu", channels_last=channels_last)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        params = epoch_rng(seed, epoch, STREAM_AUGMENT, 0)
        compared = 0
        for views, _, indices in loader:
            x, y, flip, alpha = train_params(params, len(indices), size, C)
            offset = lighting_offsets(alpha, eigval, eigvec)
            ref = np.stack([reference_train(reader.pixels(i), mean, x[k], y[k], flip[k], offset[k]) for k, i in enumerate(indices.tolist())])
            assert np.abs(views.numpy() - ref).max() <= 1.0 + 1e-3  # DALI's decode vs PIL's: identical here
            compared += 1
        assert compared == len(loader) == n // B


@pytest.mark.parametrize("fmt", ["raw", "jpg"])
def test_one_pass_kernel_and_dalis_operators_load_the_same_batches(tmp_path, fmt):
    """Through the whole loader (arrays read in place, prefetch, two epochs), the CPU train graph
    with the one-pass kernel gives the batches of DALI's operators alone: bit for bit from JPEG
    (the same arithmetic), within float32 rounding from raw pixels (DALI's raw graph computes
    pixels - (mean - offset))."""
    rng = np.random.default_rng(9)
    size, n, B = 32, 40, 4
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    eigvec, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    store = write_store(tmp_path / "s", {"train": smooth_images(rng, n, size)}, fmt=fmt, size=size, mean_image=mean,
                        eigval=(3000.0, 200.0, 30.0), eigvec=eigvec)  # fmt: skip
    fused, dali = (make_loader(store, "train", batch_size=B, seed=4, fused=f) for f in (True, False))
    for epoch in (0, 1):
        fused.set_epoch(epoch)
        dali.set_epoch(epoch)
        for (a, _, ia), (b, _, ib) in zip(fused, dali, strict=True):
            assert torch.equal(ia, ib)
            if fmt == "jpg":
                assert torch.equal(a, b), f"epoch {epoch}: batch {ia.tolist()} differs"
            else:
                torch.testing.assert_close(a, b, atol=1e-3, rtol=0)


def test_eval_runs_the_kernel_only_where_it_pays_for_its_compilation(index_store, monkeypatch):
    """Train always runs the one-pass kernel; a small evaluation pass runs DALI's operators
    unless this process has compiled the kernel already (the same outputs either way)."""
    from alexkit.pipeline import kernel, loader

    monkeypatch.setattr(kernel, "_COMPILED", {})  # a process that has not compiled it yet
    center, tencrop = (make_loader(index_store, "val", mode=m, batch_size=4) for m in ("center", "tencrop"))
    n = len(center.positions())
    assert make_loader(index_store, "train", batch_size=4)._fused()
    assert not center._fused() and not tencrop._fused()
    assert not make_loader(index_store, "val", mode="center", batch_size=4, fused=False)._fused()
    monkeypatch.setattr(loader, "KERNEL_PAYS_VIEWS", 10 * n)  # counted in views: ten per image for tencrop
    assert tencrop._fused() and not center._fused()
    monkeypatch.setattr(loader, "KERNEL_PAYS_VIEWS", 40_000)
    assert kernel.one_pass_op(False) is not None  # compiled (numba comes with FFCV): free from now on
    assert center._fused() and tencrop._fused()
    assert not make_loader(index_store, "val", mode="center", batch_size=4, channels_last=True)._fused()  # another layout


def test_eval_loaders_on_a_jpeg_store_match_the_decoded_store(tmp_path):
    rng = np.random.default_rng(1)
    size, n = 32, 12
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    store = write_store(tmp_path / "s", {"val": smooth_images(rng, n, size)}, fmt="jpg", size=size, mean_image=mean)
    reader = store.split("val")
    for mode, reference in [("center", reference_center), ("tencrop", reference_tencrop)]:
        loader = make_loader(store, "val", mode=mode, batch_size=5, decoder="cpu")
        for views, _, indices in loader:
            ref = np.stack([reference(reader.pixels(i), mean) for i in indices.tolist()])
            assert views.shape == ref.shape
            assert np.abs(views.numpy() - ref).max() <= 1.0 + 1e-4  # DALI's decode vs PIL's: identical here
    assert np.array_equal(reader.pixels(0), pil_decode(np.asarray(reader.raw_bytes(0))))


def test_dtypes_and_channels_last(index_store):
    base = next(iter(make_loader(index_store, "val", mode="center", batch_size=6)))[0]
    for dtype in (torch.bfloat16, torch.float16):
        for channels_last in (False, True):
            images = next(iter(make_loader(index_store, "val", mode="center", batch_size=6, dtype=dtype, channels_last=channels_last)))[0]
            assert images.shape == base.shape and images.dtype == dtype
            assert images.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            assert torch.equal(images, base.to(dtype))
    ten = next(iter(make_loader(index_store, "val", mode="tencrop", batch_size=6, channels_last=True)))[0]
    assert ten.shape == (6, 10, 3, 14, 14) and ten.stride(2) == 1  # channels last; .flatten(0, 1) is a view
    assert ten.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_leaving_an_epoch_early_does_not_disturb_the_next(index_store):
    loader = make_loader(index_store, "train", batch_size=10, seed=2)
    full = np.concatenate(collect(loader)[0])
    for _ in range(2):
        for step, _ in enumerate(loader):
            if step == 1:
                break
    next(iter(loader))  # abandoned after one batch, as a quick look at a batch does
    assert np.array_equal(np.concatenate(collect(loader)[0]), full)
    stale = iter(loader)
    next(stale)
    fresh = iter(loader)
    next(fresh)
    with pytest.raises(RuntimeError):
        next(stale)
    # An older iteration that has yielded its last batch ends without draining a newer one's.
    old = iter(loader)
    firsts = [next(old)[2] for _ in range(len(loader))]
    new = iter(loader)
    taken = [next(new)[2]]
    with pytest.raises(StopIteration):
        next(old)
    taken += [idx for _, _, idx in new]
    assert np.array_equal(np.concatenate(taken), np.concatenate(firsts))


def test_the_next_epoch_is_fed_across_the_boundary(tmp_path):
    """Train epochs in sequence run without a drain between them (the pipeline already works on
    epoch e + 1 while e ends), and give the batches a fresh loader gives for each epoch; a repeated
    or skipped epoch costs one drain and is still exact."""
    rng = np.random.default_rng(5)
    size, n, B = 24, 30, 4
    eigvec, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    store = write_store(tmp_path / "s", {"train": [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]},
                        size=size, mean_image=rng.uniform(0, 255, (size, size, 3)).astype(np.float32),
                        eigval=(3000.0, 200.0, 30.0), eigvec=eigvec)  # fmt: skip

    def batches(loader, epoch):
        loader.set_epoch(epoch)
        return [(views, indices) for views, _, indices in loader]

    loader = make_loader(store, "train", batch_size=B, seed=8)
    next(iter(loader))  # builds the pipeline; abandoned after one batch
    resets = []
    real_reset = loader._pipe.reset
    loader._pipe.reset = lambda: (resets.append(loader.epoch), real_reset())[1]  # counts, and still resets
    for epochs, drains in [((0, 1, 2, 3), [0]), ((3,), [3]), ((6, 7), [6])]:
        resets.clear()
        for epoch in epochs:
            fresh = batches(make_loader(store, "train", batch_size=B, seed=8), epoch)
            got = batches(loader, epoch)
            assert len(got) == len(fresh) == n // B
            for (a, ia), (b, ib) in zip(got, fresh):
                assert torch.equal(ia, ib) and torch.equal(a, b), f"epoch {epoch}"
        assert resets == drains  # a drain only where the epoch is not the one fed next
    # A set_epoch during a pass is for the next pass; what was fed ahead is the epoch after the pass's.
    loader.set_epoch(0)
    for step, _ in enumerate(loader):
        if step == len(loader) - 1:
            loader.set_epoch(5)
    for epoch in (6, 7):
        fresh = batches(make_loader(store, "train", batch_size=B, seed=8), epoch)
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches(loader, epoch), fresh, strict=True))


@pytest.mark.parametrize("options", [dict(prefetch=4, batch_size=40), dict(feed_ahead=False, batch_size=4)])
def test_epochs_stay_exact_where_the_feed_cannot_or_may_not_run_ahead(index_store, options):
    """prefetch 4 with 2 batches an epoch: DALI reads past the whole next epoch and stops; and
    feed_ahead=False (what bench loader runs): each epoch ends with the pipeline empty."""
    loader = make_loader(index_store, "train", seed=8, **options)
    for epoch in range(4):
        loader.set_epoch(epoch)
        fresh = make_loader(index_store, "train", seed=8, **options)
        fresh.set_epoch(epoch)
        assert np.array_equal(np.concatenate(collect(loader)[0]), np.concatenate(collect(fresh)[0])), epoch


def test_bad_usage_fails_with_one_line(index_store, tmp_path):
    with pytest.raises(AlexkitError, match="decoder 'mixed'"):
        make_loader(index_store, "val", mode="center", decoder="mixed")
    with pytest.raises(AlexkitError, match="drop_last"):
        make_loader(index_store, "val", mode="center", drop_last=True)
    with pytest.raises(AlexkitError, match="fewer than one batch"):
        make_loader(index_store, "train", batch_size=64, world_size=2)
    with pytest.raises(AlexkitError, match="rank 2"):
        make_loader(index_store, "train", rank=2, world_size=2)
    with pytest.raises(AlexkitError, match="mode"):
        make_loader(index_store, "val", mode="five-crop")
    with pytest.raises(AlexkitError, match="dtype"):
        make_loader(index_store, "val", mode="center", dtype=torch.int8)
    with pytest.raises(AlexkitError, match="no test.beton"):
        make_loader(index_store, "test", mode="center")
    with pytest.raises(AlexkitError, match="prepare"):
        make_loader(tmp_path / "nothing", "train")


@pytest.mark.gpu
def test_gpu_loader_agrees_with_cpu_loader(index_store, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA")
    rng = np.random.default_rng(2)
    size = 32
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    images = smooth_images(rng, 24, size)
    raw = write_store(tmp_path / "raw", {"train": images, "val": images}, size=size, mean_image=mean, eigval=(900.0, 50.0, 5.0))
    jpg = write_store(tmp_path / "jpg", {"train": images, "val": images}, fmt="jpg", size=size, mean_image=mean, eigval=(900.0, 50.0, 5.0))
    for store, decoder, tolerance in [(raw, "auto", 1e-3), (jpg, "cpu", 1e-3), (jpg, "mixed", 16.0)]:
        for mode in ("train", "center", "tencrop"):
            split = "train" if mode == "train" else "val"
            common = dict(mode=mode, batch_size=8, seed=4, channels_last=True)
            on_cpu = list(make_loader(store, split, **common))
            on_gpu = list(make_loader(store, split, device="cuda", decoder=decoder, **common))
            assert len(on_cpu) == len(on_gpu) > 0
            for (a, la, ia), (b, lb, ib) in zip(on_cpu, on_gpu):
                assert b.is_cuda and lb.is_cuda and torch.equal(ia, ib) and torch.equal(la, lb.cpu())
                diff = (a - b.cpu()).abs()
                assert diff.max() <= tolerance and diff.mean() < 1.0, (mode, decoder, diff.max())
    on_gpu = make_loader(index_store, "val", mode="center", batch_size=10, device="cuda", dtype=torch.bfloat16)
    assert np.array_equal(np.concatenate([decode_index(v.cpu()) for v, _, _ in on_gpu]), np.arange(45))


def test_a_broken_manifest_is_a_one_line_error(index_store, tmp_path):
    import shutil

    store = tmp_path / "s"
    shutil.copytree(index_store.path, store)
    for text, why in [("{not json", "is not a store manifest"), ('{"settings": {"size": 32}}', "KeyError"),
                      ('{"format_version": 9, "settings": {"size": 32}}', "is of store format 9; this alexkit reads format 1")]:  # fmt: skip
        (store / "manifest.json").write_text(text)
        with pytest.raises(AlexkitError, match=why) as err:
            Store(store)
        assert str(store / "manifest.json") in str(err.value) and "--force" in str(err.value)


def test_a_file_given_as_the_store_is_told_to_pass_a_folder(index_store, tmp_path):
    """`prepare SRC --out afile` would fail too: the fix is the store's folder, that of the file where it is in one."""
    with pytest.raises(AlexkitError) as err:
        Store(index_store.path / "manifest.json")
    assert str(err.value) == (f"store {index_store.path / 'manifest.json'} is a file, not a store folder; "
                              f"pass the store's folder instead: {index_store.path}")  # fmt: skip
    (tmp_path / "afile").write_text("")
    with pytest.raises(AlexkitError) as err:
        Store(tmp_path / "afile")
    assert str(err.value) == (f"store {tmp_path / 'afile'} is a file, not a store folder; pass the store's folder instead "
                              "(the --out of `alexkit prepare`, holding stats.npz, classes.json, manifest.json)")  # fmt: skip
    with pytest.raises(AlexkitError) as err:  # a path under a file: `prepare --out` that path could not write it either
        Store(index_store.path / "manifest.json" / "x")
    assert str(err.value) == (f"store {index_store.path / 'manifest.json' / 'x'} is under {index_store.path / 'manifest.json'}, "
                              f"which is a file; pass the store's folder instead: {index_store.path}")  # fmt: skip


def test_a_dataset_given_as_the_store_is_told_to_prepare_it(tmp_path):
    """`--data` naming the raw dataset (a common slip): prepare it into a store, not a store into it."""
    (tmp_path / "imagenet" / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(AlexkitError) as err:
        Store(tmp_path / "imagenet")
    assert str(err.value) == (f"store {tmp_path / 'imagenet'} has no stats.npz, classes.json, manifest.json: it looks like a "
                              f"dataset, not a store; run `alexkit prepare {tmp_path / 'imagenet'} --out STORE` and pass that STORE")  # fmt: skip
    with pytest.raises(AlexkitError, match=r"; run `alexkit prepare SRC --out .*empty` first$"):
        Store(tmp_path / "empty")


def test_a_run_folder_or_a_folder_of_images_given_as_the_store_is_not_told_to_prepare_into_it(tmp_path):
    """`prepare SRC --out` a folder that holds other files is refused, so that is no fix: a run folder is
    sent to the store its config.json names, a folder of images to a store of prepare's."""
    run, store = tmp_path / "run", tmp_path / "store"
    run.mkdir()
    store.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"data": str(store)}}))
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(AlexkitError) as err:
        Store(run)
    assert str(err.value) == (f"store {run} is a run folder (of `alexkit train`), not a store; pass the store it was trained "
                              f"on: {store} (its config.json names it)")  # fmt: skip
    store.rmdir()
    with pytest.raises(AlexkitError, match=rf"trained on \(its config.json names {store}, which is not there now\)$"):
        Store(run)
    (run / "config.json").unlink()  # the lock train made there: a run all the same
    (run / ".train.lock").write_bytes(b"")
    with pytest.raises(AlexkitError, match=r"is a run folder .*; pass the store it was trained on \(the --out of `alexkit prepare`"):
        Store(run)
    (run / ".train.lock").unlink()  # checkpoints alone (or another program's *.pt): no run of train's
    with pytest.raises(AlexkitError, match=r"is a folder that holds no store but other files \(last.pt\); pass the --out"):
        Store(run)
    (tmp_path / "photos").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "photos" / name).write_bytes(b"x")
    with pytest.raises(AlexkitError) as err:
        Store(tmp_path / "photos")
    assert str(err.value) == (f"store {tmp_path / 'photos'} is a folder that holds no store but other files (a.jpg, b.jpg); pass the "
                              "--out folder of `alexkit prepare`, or run `alexkit prepare SRC --out STORE` and pass that STORE")  # fmt: skip


def test_a_damaged_jpeg_in_the_store_is_one_line_naming_the_file(tmp_path):
    rng = np.random.default_rng(3)
    store = write_store(tmp_path / "s", {"train": smooth_images(rng, 8, SIZE)}, fmt="jpg")
    reader = store.split("train")
    where = int(reader.ptr[5]) + 200  # inside sample 5's entropy-coded data
    del reader
    with open(store.path / "train.beton", "r+b") as f:
        f.seek(where)
        f.write(b"\xff\xd9" * 40)  # end-of-image markers where the scan should go on
    loader = make_loader(Store(store.path), "train", batch_size=4, seed=0)
    with pytest.raises(AlexkitError, match=r"train.beton: DALI could not process a batch of epoch 1 \(.+\); the store is "
                                            r"damaged: rewrite the store with `alexkit prepare .+ --force`") as info:
        list(loader)
    assert f" --out {store.path} " in str(info.value)  # the store's folder, not the .beton
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", ["wider", "mixed"])
def test_a_split_of_other_sizes_or_of_both_formats_is_refused(tmp_path, bad):
    """An image wider than the manifest's size, or JPEG among raw pixels: one line, not a crash in DALI."""
    store = write_store(tmp_path / "store", {"train": [np.zeros((SIZE, SIZE, 3), np.uint8)] * 2})
    writer = BetonWriter(store.path / "train.beton", 2)
    writer.add(np.zeros((SIZE, SIZE, 3), np.uint8), 0, mode=MODE_RAW, width=SIZE, height=SIZE)
    if bad == "wider":
        writer.add(np.zeros((SIZE, SIZE + 1, 3), np.uint8), 1, mode=MODE_RAW, width=SIZE + 1, height=SIZE)
    else:
        writer.add(jpeg(np.zeros((SIZE, SIZE, 3), np.uint8)), 1, mode=MODE_JPG, width=SIZE, height=SIZE)
    writer.close()
    why = f"images are not all {SIZE}x{SIZE} as manifest.json says" if bad == "wider" else "mixes JPEG and raw images"
    with pytest.raises(AlexkitError, match=f"train.beton.*{why}.*; re-run `alexkit prepare`"):
        make_loader(store, "train", batch_size=2)
