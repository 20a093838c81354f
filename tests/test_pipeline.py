"""The DALI graphs against the NumPy references in augment.py, with pinned crops, flips and lighting.

Raw pixels are compared exactly (the graph and the reference do the same float32 arithmetic;
tolerance 1e-4 to be safe); JPEG input is compared with PIL's decode of the same bytes.
"""

from __future__ import annotations

import io
import signal

import numpy as np
import pytest

from alexkit.pipeline.augment import (
    TEN_VIEWS,
    center_corner,
    lighting_offsets,
    reference_center,
    reference_tencrop,
    reference_train,
    ten_view_windows,
    train_params,
)
from alexkit.pipeline.constants import LIGHTING_STD, crop_size
from alexkit.pipeline.graphs import GraphConfig, build_graph, eval_inputs, train_inputs

EXACT = 0.0  # the references round as the graphs do: (pixel - mean) + offset, in float32
GPU_ROUNDING = 1e-4  # the GPU's operators may round (or fuse) the float32 steps differently
DALI_RAW_TRAIN = 1e-4  # DALI's operators on raw pixels compute pixel - (mean - offset): equal within rounding


def random_images(rng, n: int, size: int) -> list[np.ndarray]:
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def smooth_images(rng, n: int, size: int) -> list[np.ndarray]:
    """Photo-like images (smooth gradients plus mild noise) that JPEG reproduces closely."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(40, 200, (3, 3))
        img = a + b * 0.5 * xx[..., None] + c * 0.3 * yy[..., None] + rng.normal(0, 4, (size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def pil_decode(data: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB"))


def run_graph(cfg: GraphConfig, mean_image: np.ndarray, batch: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Run one batch through a graph; views come back as NCHW (N, [10,] 3, C, C) float32 arrays."""
    pipe = build_graph(cfg, mean_image, lambda: batch)
    pipe.build()
    views, index = pipe.run()
    views, index = np.asarray(views.as_cpu().as_array()), np.asarray(index.as_array())
    if cfg.channels_last:
        views = np.moveaxis(views, -1, -3)
    return views, index


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("size,channels_last", [(32, False), (37, True), (16, False)])
def test_train_graph_equals_reference_on_raw_pixels(size, channels_last, fused):
    rng = np.random.default_rng(size)
    C, n = crop_size(size), 12
    images = random_images(rng, n, size)
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    x, y, flip, _ = train_params(rng, n, size, C)
    x[:4], y[:4], flip[:4] = [0, size - C, 0, size - C], [0, 0, size - C, size - C], [False, True, True, False]  # every corner
    offset = rng.normal(0, 8, (n, 3)).astype(np.float32)
    cfg = GraphConfig("train", size, C, encoded=False, channels_last=channels_last, batch_size=16, fused=fused)
    views, index = run_graph(cfg, mean, train_inputs(images, np.arange(n) + 100, x, y, flip, offset))
    ref = np.stack([reference_train(images[i], mean, x[i], y[i], flip[i], offset[i]) for i in range(n)])
    assert views.shape == (n, 3, C, C) and views.dtype == np.float32
    np.testing.assert_allclose(views, ref, atol=EXACT if fused else DALI_RAW_TRAIN, rtol=0)
    assert index.tolist() == list(range(100, 100 + n))


@pytest.mark.parametrize("fused", [True, False])
def test_train_graph_on_jpeg_matches_reference_of_decoded_bytes(fused):
    """The CPU graph decodes only the window; DALI's decoder and PIL (both libjpeg-turbo, accurate
    IDCT, fancy upsampling) give identical pixels here; one level of slack is allowed for other builds."""
    size, n = 48, 8
    C, rng = crop_size(size), np.random.default_rng(1)
    data = [jpeg(im) for im in smooth_images(rng, n, size)]
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    x, y, flip, _ = train_params(rng, n, size, C)
    x[:4], y[:4] = [0, size - C, 0, size - C], [0, 0, size - C, size - C]  # the decoder's window at every corner
    offset = rng.normal(0, 5, (n, 3)).astype(np.float32)
    views, _ = run_graph(GraphConfig("train", size, C, encoded=True, batch_size=n, fused=fused), mean,
                         train_inputs(data, np.arange(n), x, y, flip, offset))
    ref = np.stack([reference_train(pil_decode(d), mean, x[i], y[i], flip[i], offset[i]) for i, d in enumerate(data)])
    diff = np.abs(views - ref)
    assert diff.max() <= 1.0 + EXACT and diff.mean() < 0.05, (diff.max(), diff.mean())  # identical here (both libjpeg-turbo)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("encoded", [True, False])
@pytest.mark.parametrize("mode", ["train", "center", "tencrop"])
def test_one_pass_kernels_equal_dalis_operators_bit_for_bit(mode, encoded, channels_last):
    """On the CPU the Numba kernels and DALI's operators do the same float32 arithmetic
    ((pixel - mean) + offset; offset 0 for eval), so their outputs are identical, not merely close;
    the kernel really is in the graph (numba comes with FFCV). The one exception is train from raw
    pixels, where DALI's operators compute pixel - (mean - offset): equal within rounding."""
    from alexkit.pipeline.graphs import _Graph

    size, n = 40, 10
    C, rng = crop_size(size), np.random.default_rng(7)
    images = smooth_images(rng, n, size)
    data = [jpeg(im) for im in images] if encoded else images
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    x, y, flip, _ = train_params(rng, n, size, C)
    flip[:2] = [True, False]
    if mode == "train":
        batch = train_inputs(data, np.arange(n), x, y, flip, rng.normal(0, 5, (n, 3)))
    else:
        batch = eval_inputs(data, np.arange(n))
    fused, dali = (GraphConfig(mode, size, C, encoded=encoded, channels_last=channels_last, batch_size=n, fused=f) for f in (True, False))
    assert _Graph(fused, mean).kernel is not None and _Graph(dali, mean).kernel is None
    one, _ = run_graph(fused, mean, batch)
    two, _ = run_graph(dali, mean, batch)
    assert one.shape == ((n, 10, 3, C, C) if mode == "tencrop" else (n, 3, C, C))
    if mode == "train" and not encoded:
        np.testing.assert_allclose(one, two, atol=1e-3, rtol=0)
    else:
        np.testing.assert_array_equal(one, two)


def test_a_kernel_numba_cannot_compile_leaves_dalis_operators(monkeypatch):
    """Where numba imports but cannot compile the kernel (a numba older than the numpy beside it),
    the fused graphs run DALI's operators instead, with the references' outputs, as without numba."""
    plugin = pytest.importorskip("nvidia.dali.plugin.numba")
    from numba.core.errors import TypingError

    from alexkit.pipeline import kernel
    from alexkit.pipeline.graphs import _Graph

    def does_not_compile(**kwargs):
        raise TypingError("Failed in nopython mode pipeline (step: nopython frontend)")

    monkeypatch.setattr(plugin, "NumbaFunction", does_not_compile)
    monkeypatch.setattr(kernel, "_COMPILED", {})  # a process that has not compiled it yet
    size, n = 35, 6
    C, rng = crop_size(size), np.random.default_rng(3)
    images = random_images(rng, n, size)
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    center_cfg = GraphConfig("center", size, C, encoded=False, batch_size=n, fused=True)
    assert _Graph(center_cfg, mean).kernel is None
    center, _ = run_graph(center_cfg, mean, eval_inputs(images, np.arange(n)))
    np.testing.assert_allclose(center, np.stack([reference_center(im, mean) for im in images]), atol=EXACT, rtol=0)
    x, y, flip, _ = train_params(rng, n, size, C)
    flip[:2] = [True, False]
    offset = rng.normal(0, 8, (n, 3)).astype(np.float32)
    train_cfg = GraphConfig("train", size, C, encoded=False, batch_size=n, fused=True)
    views, _ = run_graph(train_cfg, mean, train_inputs(images, np.arange(n), x, y, flip, offset))
    ref = np.stack([reference_train(images[i], mean, x[i], y[i], flip[i], offset[i]) for i in range(n)])
    np.testing.assert_allclose(views, ref, atol=DALI_RAW_TRAIN, rtol=0)
    assert kernel._COMPILED == {False: None}  # tried once: every later pipeline goes straight to DALI's operators


@pytest.mark.parametrize("channels_last", [False, True])
def test_center_and_ten_crops_equal_numpy_crops(channels_last):
    size, n = 35, 5  # 35 -> 30: an odd margin, so the centre window rounds down to corner 2
    C, rng = crop_size(size), np.random.default_rng(2)
    images = random_images(rng, n, size)
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    batch = eval_inputs(images, np.arange(n))
    center, _ = run_graph(GraphConfig("center", size, C, encoded=False, channels_last=channels_last, batch_size=n), mean, batch)
    ten, index = run_graph(GraphConfig("tencrop", size, C, encoded=False, channels_last=channels_last, batch_size=n), mean, batch)
    assert center.shape == (n, 3, C, C) and ten.shape == (n, 10, 3, C, C)
    np.testing.assert_allclose(center, np.stack([reference_center(im, mean) for im in images]), atol=EXACT, rtol=0)
    np.testing.assert_allclose(ten, np.stack([reference_tencrop(im, mean) for im in images]), atol=EXACT, rtol=0)
    # The reference itself against plain slicing: view k is window k of ten_view_windows.
    m = center_corner(size, C)
    assert m == 2 and ten_view_windows(size, C)[4] == (m, m, False)
    for k, (x, y, f) in enumerate(ten_view_windows(size, C)):
        crop = images[0][y : y + C, x : x + C].astype(np.float32) - mean[y : y + C, x : x + C]
        np.testing.assert_allclose(ten[0, k], (crop[:, ::-1] if f else crop).transpose(2, 0, 1), atol=EXACT, rtol=0)
    assert index.tolist() == list(range(n))


def test_ten_views_are_the_papers_in_readmes_order():
    """The order is part of the interface (README, the evaluator's averaging, show-batch): written out."""
    assert TEN_VIEWS == (("top-left", False), ("top-right", False), ("bottom-left", False), ("bottom-right", False),
                         ("centre", False), ("top-left", True), ("top-right", True), ("bottom-left", True),
                         ("bottom-right", True), ("centre", True))  # fmt: skip


def test_ten_views_are_in_the_documented_order():
    """Pixels encode their own coordinates (R = column, G = row): each view's corners show where it sits."""
    size = 40
    C = crop_size(size)
    rows, cols = np.mgrid[0:size, 0:size]
    image = np.stack([cols, rows, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    zero = np.zeros((size, size, 3), np.float32)
    ten, _ = run_graph(GraphConfig("tencrop", size, C, encoded=False, batch_size=1), zero, eval_inputs([image], [0]))
    far, mid = size - C, center_corner(size, C)
    expected_left_top = {"top-left": (0, 0), "top-right": (far, 0), "bottom-left": (0, far), "bottom-right": (far, far),
                         "centre": (mid, mid)}  # fmt: skip
    for view, (where, mirrored) in zip(ten[0], TEN_VIEWS):
        col, row = view[0], view[1]  # (C, C) each
        left, top = expected_left_top[where]
        assert row[0, 0] == top and row[-1, 0] == top + C - 1
        # Unmirrored: the first output column is the window's left edge; mirrored: its right edge.
        assert col[0, 0] == (left + C - 1 if mirrored else left)
        assert col[0, -1] == (left if mirrored else left + C - 1)


def test_mean_window_moves_with_the_crop_and_flip():
    """With the mean image equal to the image itself, every view is exactly zero, whatever the
    corner and flip: the mean is cut from the same window and mirrored the same way."""
    size, n = 24, 16
    C, rng = crop_size(size), np.random.default_rng(3)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mean = image.astype(np.float32)
    x, y, flip, _ = train_params(rng, n, size, C)
    for mode in ("train", "center", "tencrop"):
        batch = (train_inputs([image] * n, np.arange(n), x, y, flip, np.zeros((n, 3)))
                 if mode == "train" else eval_inputs([image] * n, np.arange(n)))
        views, _ = run_graph(GraphConfig(mode, size, C, encoded=False, batch_size=n), mean, batch)
        assert np.abs(views).max() == 0.0, mode


def test_lighting_adds_one_rgb_shift_per_image():
    size, n = 16, 6
    C, rng = crop_size(size), np.random.default_rng(4)
    images = random_images(rng, n, size)
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    x, y, flip, _ = train_params(rng, n, size, C)
    offset = rng.normal(0, 10, (n, 3)).astype(np.float32)
    cfg = GraphConfig("train", size, C, encoded=False, batch_size=n)
    lit, _ = run_graph(cfg, mean, train_inputs(images, np.arange(n), x, y, flip, offset))
    dark, _ = run_graph(cfg, mean, train_inputs(images, np.arange(n), x, y, flip, np.zeros((n, 3))))
    shift = lit - dark  # (n, 3, C, C): constant over each image's pixels, per channel
    np.testing.assert_allclose(shift, np.broadcast_to(offset[:, :, None, None], shift.shape), atol=1e-3)


def test_train_params_ranges_and_determinism():
    size, n = 256, 20000
    C = crop_size(size)
    x, y, flip, alpha = train_params(np.random.default_rng(7), n, size, C)
    assert x.min() == 0 and x.max() == size - C and y.min() == 0 and y.max() == size - C  # both ends reachable
    assert abs(flip.mean() - 0.5) < 0.02
    assert abs(alpha.std() - LIGHTING_STD) < 0.005 and alpha.shape == (n, 3)
    again = train_params(np.random.default_rng(7), n, size, C)
    assert all(np.array_equal(a, b) for a, b in zip((x, y, flip, alpha), again))


def test_lighting_offsets_follow_the_stored_eigendecomposition():
    """Covariance of the shifts ~ eigvec diag(0.01 * eigval) eigvec^T, in 0-255 units."""
    rng = np.random.default_rng(5)
    eigvec, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    eigval = np.array([4200.0, 250.0, 40.0])  # variances of the order of a photo set's RGB spread (std ~65, 16, 6)
    _, _, _, alpha = train_params(rng, 200_000, 256, 224)
    offsets = lighting_offsets(alpha, eigval, eigvec).astype(np.float64)
    expected = eigvec @ np.diag(LIGHTING_STD**2 * eigval) @ eigvec.T
    np.testing.assert_allclose(np.cov(offsets.T), expected, atol=0.02 * expected.max())
    # Along each principal axis the shift's standard deviation is a tenth of the pixels' own.
    np.testing.assert_allclose((offsets @ eigvec).std(axis=0), LIGHTING_STD * np.sqrt(eigval), rtol=0.02)
    # Magnitude: a few levels of 255, never absurd.
    assert 3 < np.abs(offsets).max(axis=1).mean() < 15


@pytest.mark.gpu
def test_gpu_graph_agrees_with_cpu_graph():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA")
    size, n = 64, 8
    C, rng = crop_size(size), np.random.default_rng(6)
    raw = random_images(rng, n, size)
    encoded = [jpeg(im) for im in smooth_images(rng, n, size)]
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    x, y, flip, _ = train_params(rng, n, size, C)
    offset = rng.normal(0, 5, (n, 3)).astype(np.float32)
    for mode in ("train", "center", "tencrop"):
        for data, decoder in [(raw, "cpu"), (encoded, "cpu"), (encoded, "mixed")]:
            is_jpeg = data is encoded
            batch = (train_inputs(data, np.arange(n), x, y, flip, offset)
                     if mode == "train" else eval_inputs(data, np.arange(n)))
            on_cpu, _ = run_graph(GraphConfig(mode, size, C, encoded=is_jpeg, batch_size=n), mean, batch)
            on_gpu, _ = run_graph(GraphConfig(mode, size, C, encoded=is_jpeg, decoder=decoder, device_id=0, batch_size=n), mean, batch)
            diff = np.abs(on_gpu - on_cpu)
            if decoder == "mixed":  # nvJPEG vs libjpeg-turbo: different IDCTs, a few levels apart at most
                assert diff.mean() < 1.0 and diff.max() <= 16, (mode, diff.mean(), diff.max())
            else:
                assert diff.max() <= GPU_ROUNDING, (mode, decoder, diff.max())


def sigint_as_default() -> None:
    """For a child process: SIGINT as a terminal's Ctrl-C gives it, which Python turns into
    KeyboardInterrupt. A process started with SIGINT ignored (a background job of a script) passes
    that on, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_the_kernel_compiles_is_not_lost():
    """Numba's compilation drops a KeyboardInterrupt that lands in one of llvmlite's callbacks;
    the kernel holds Ctrl-C until it has compiled, then raises it. A fresh process each time, the
    signal at five points of the compilation as timed here first (without the hold, one try in
    four or so was lost). A try whose signal went out only after its compilation had ended (a busy
    machine's timer runs late) proves nothing and is passed over."""
    import subprocess
    import sys

    code = """if True:
        import os, signal, sys, threading, time
        import nvidia.dali.plugin.numba
        from alexkit.pipeline import kernel
        sent = []
        def interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            sent.append(time.perf_counter())  # after the kill: the signal was sent by then
        if float(sys.argv[1]) > 0:
            threading.Timer(float(sys.argv[1]), interrupt).start()
        start = time.perf_counter()
        try:
            kernel.one_pass_op(False)
            compiled = time.perf_counter()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a signal after the compilation is not the test's
        except KeyboardInterrupt:
            os._exit(130)
        print(compiled - start, sent[0] - start if sent else float("inf"), flush=True)
        os._exit(0)
    """
    run = [sys.executable, "-c", code]
    compile_s = float(subprocess.run([*run, "0"], capture_output=True, text=True, timeout=120).stdout.split()[0])
    for part in (0.15, 0.35, 0.5, 0.65, 0.85):
        at = part * compile_s
        r = subprocess.run([*run, str(at)], capture_output=True, text=True, timeout=120, preexec_fn=sigint_as_default)
        if r.returncode == 0:
            took, sent = map(float, r.stdout.split())
            if sent > took:
                continue  # on a busy machine the timer can fire after the compilation: nothing to hold
        assert r.returncode == 130, f"Ctrl-C {at:.1f} s into a {compile_s:.1f} s compilation was lost: {r.stdout}{r.stderr}"


def test_no_copy_keeps_every_fed_batch_alive_until_the_pipeline_returns_it():
    """With no_copy DALI reads the fed arrays in place and holds no reference to them: the graph
    must, for each batch until the pipeline has returned it (and for the ones fed after it)."""
    import gc
    import weakref

    S, n, fed = 16, 4, []

    def source():
        k = len(fed)
        batch = eval_inputs([np.full((S, S, 3), k, np.uint8) for _ in range(n)], np.arange(k * n, k * n + n))
        fed.append([weakref.ref(a) for a in batch[0]] + [weakref.ref(batch[1])])
        return batch

    cfg = GraphConfig(mode="center", size=S, crop=crop_size(S), encoded=False, batch_size=n, prefetch=2, fused=False)
    pipe = build_graph(cfg, np.zeros((S, S, 3), np.float32), source, no_copy=True)
    pipe.build()
    for step in range(6):
        views, index = pipe.run()
        gc.collect()
        assert np.asarray(index.as_array()).tolist() == list(range(step * n, step * n + n))
        assert np.all(np.asarray(views.as_array()) == step)
        assert all(ref() is not None for refs in fed[step:] for ref in refs), f"a batch fed at or after {step} was freed"
    assert len(fed) > 6  # the pipeline fed ahead of what it returned
