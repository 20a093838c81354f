"""`alexkit bench loader`: a tiny smoke run of every pipeline (figures are printed, never asserted)."""

from alexkit.bench.loader import BenchLoaderConfig, bench_loader
from alexkit.paths import usable_cores
from alexkit.pipeline.loader import default_threads


def test_bench_runs_every_pipeline_on_both_stores(tmp_path, capsys):
    r = bench_loader(BenchLoaderConfig(work=tmp_path, images=24, batch_size=8, epochs=2))
    rows = {(row["pipeline"], row["store"], row["mode"]) for row in r["rows"]}
    for fmt in ("jpg", "raw"):
        assert {(p, fmt, m) for p in ("alexkit DALI", "alexkit DALI ops only") for m in ("train", "center", "tencrop")} <= rows
        assert {("(b) FFCV Loader", fmt, "train"), ("(b) FFCV Loader", fmt, "center")} <= rows
    assert {("(a) PIL + DataLoader", "source JPEGs", m) for m in ("train", "center")} <= rows
    assert all(row["images_per_s"] > 0 and row["cpu_ms_per_image"] > 0 for row in r["rows"])
    assert (r["settings"]["threads"], r["settings"]["workers"]) == (default_threads(), usable_cores())
    assert all(len(epochs) == 10 for epochs in r["memory"].values())
    out = capsys.readouterr().out
    assert "alexkit jpg train vs (a)" in out and "DALI ops only" in out


def test_bad_settings_are_one_line_errors(tmp_path):
    import pytest

    from alexkit.errors import AlexkitError

    for kw, why in [(dict(threads=0), "--threads"), (dict(images=8, batch_size=16), "fewer than one --batch-size"),
                    (dict(source=tmp_path), "goes with --store")]:  # fmt: skip
        with pytest.raises(AlexkitError, match=why):
            BenchLoaderConfig(**kw)
