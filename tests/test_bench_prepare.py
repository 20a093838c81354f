"""`alexkit bench prepare`: a tiny smoke run (figures are printed, never asserted)."""

import numpy as np

from alexkit.bench.prepare import BenchPrepareConfig, bench_prepare, photo_like


def test_photo_like_images_have_photo_statistics():
    img = photo_like(np.random.default_rng(0), 120, 90)
    assert img.shape == (90, 120, 3) and img.dtype == np.uint8
    assert 20 < img.std() < 90  # neither flat nor saturated noise


def test_bench_runs_all_three_routes(capsys):
    r = bench_prepare(BenchPrepareConfig(images=6, workers=2, size=32, repeats=1))
    assert set(r["routes"]) == {"(a) one process, PIL", "(b) FFCV DatasetWriter", "(c) alexkit prepare"}
    assert all(len(v) == 1 and v[0] > 0 for v in r["routes"].values())
    assert r["agreement_mean_abs"] < 3  # (a) and (c) make the same pictures
    out = capsys.readouterr().out
    assert "vs (b)" in out and "generated photo-like JPEGs" in out
