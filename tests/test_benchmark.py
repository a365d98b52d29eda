"""The benchmark script finishes with a line per phase, leaves the user's data alone and reports the lecture's
pipeline, the project's step and the projection side by side (and CPU fp32 vs bf16)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from celeba_vae import synthetic
from celeba_vae.decoded_cache import build_decoded_cache
from celeba_vae.synthetic import write_synthetic_celeba

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_pipeline.py"
Snapshot = dict[str, tuple[bytes, int]]
Run = tuple[Snapshot, Snapshot, dict[str, Any], str]


def snapshot(root: Path) -> Snapshot:
    """Every file under ``root``: its bytes and its mtime in nanoseconds."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One tiny CPU benchmark run on a user's CelebA folder whose decoded cache was built beforehand: the folder
    before, after, the JSON results and what it printed."""
    tmp = tmp_path_factory.mktemp("bench")
    root = write_synthetic_celeba(tmp / "user", num_images=40, seed=3)
    for split in ("train", "valid", "test"):
        build_decoded_cache(root, split, num_workers=1, progress=False)
    assert (root / "celeba" / "decoded_cache" / "train_128.npy").is_file()
    before = snapshot(root)
    spec = importlib.util.spec_from_file_location("benchmark_pipeline", BENCHMARK)
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    output = tmp / "results.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = benchmark.main(["--data-root", str(root), "--device", "cpu", "--batch-size", "8", "--train-steps", "2",
                               "--warmup-steps", "1", "--lecture-steps", "1", "--check-loss-steps", "1",
                               "--precision-repeats", "2", "--output", str(output)])
    assert code == 0
    return before, snapshot(root), json.loads(output.read_text()), printed.getvalue()


def test_benchmark_never_touches_the_users_cache(benchmark_run: Run) -> None:
    before, after, results, _ = benchmark_run
    assert after.keys() == before.keys()
    for name, (content, mtime) in before.items():
        assert after[name][0] == content, f"{name} changed"
        assert after[name][1] == mtime, f"{name} was rewritten"
    assert results["cache_build_s"] > 0


def test_every_phase_says_when_it_starts(benchmark_run: Run) -> None:
    printed = benchmark_run[3]
    stamped = [line for line in printed.splitlines() if re.match(r"\[ *\d+\.\d s\] ", line)]
    phases = [re.sub(r"^\[ *\d+\.\d s\] ", "", line).split(":")[0] for line in stamped]
    for phase in ("benchmark on", "data", "lecture", "project eager", "per-epoch overhead", "loss check",
                  "CPU fp32 vs bf16", "wrote"):
        assert any(p.startswith(phase) for p in phases), (phase, phases)
    stamps = [float(re.match(r"\[ *(\d+\.\d) s\]", line).group(1)) for line in stamped]
    assert stamps == sorted(stamps)


def test_benchmark_reports_the_pipelines_side_by_side(benchmark_run: Run) -> None:
    results, printed = benchmark_run[2], benchmark_run[3]
    eager = results["project_eager"]
    assert eager["ms_per_step"] > 0 and eager["img_s"] == pytest.approx(8 / eager["ms_per_step"] * 1e3)
    assert eager["long_call_s"] > 0 and eager["short_call_s"] > 0
    assert results["lecture_train_img_s"] > 0 and results["lecture_data_img_s"] > 0
    overhead = results["epoch_overhead"]
    assert overhead["total_s"] == pytest.approx(overhead["validation_s"] + overhead["epoch_picture_s"]
                                                + overhead["checkpoint_s"])
    projection = results["projection_50_epochs_min"]
    steps = -(-162_770 // 8)
    assert projection["eager"] == pytest.approx((steps * eager["ms_per_step"] / 1e3 + overhead["total_s"]) * 50 / 60)
    assert projection["lecture"] == pytest.approx(162_770 / results["lecture_train_img_s"] * 50 / 60)
    assert "lecture (DataLoader + loop)" in printed and "project eager" in printed


def test_benchmark_reports_cpu_precision_side_by_side(benchmark_run: Run) -> None:
    results = benchmark_run[2]
    assert results["machine"]["cpu_capability"]
    assert results["machine"]["cpu_cores"] >= 1
    precision = results["cpu_precision"]
    assert len(precision["runs"]) == 2
    for run in precision["runs"]:
        assert run["fp32_img_s"] > 0 and run["bf16_img_s"] > 0
        assert run["fp32_loss"] != run["bf16_loss"], "bf16 gave fp32's exact loss: autocast did not run"
        assert (run["fp32_loss"], run["bf16_loss"]) == (precision["fp32_loss"], precision["bf16_loss"])
    assert precision["bf16_speedup"] == statistics.median(r["bf16_img_s"] / r["fp32_img_s"] for r in precision["runs"])
    assert precision["loss_relative_difference"] < 0.05


def test_synthetic_faces_do_not_depend_on_how_they_are_batched() -> None:
    """Faces are drawn a batch at a time; face k's pixel noise comes from its own block, so two batches give the
    faces one batch gives (files are byte-identical whatever the chunk size or the CPU count)."""
    rng = np.random.default_rng(0)
    n = synthetic.NOISE_BLOCK + 5
    attributes, params = synthetic.sample_attributes(n, rng), synthetic._draw_params(n, rng)
    whole = synthetic.render_batch(attributes, params, base=7, start=0)
    block = synthetic.NOISE_BLOCK
    halves = np.concatenate([synthetic.render_batch(attributes[:block], params[:block], base=7, start=0),
                             synthetic.render_batch(attributes[block:], params[block:], base=7, start=block)])
    assert whole.shape == (n, 218, 178, 3) and whole.dtype == np.uint8
    assert np.array_equal(whole, halves)
    smiling = attributes[:, synthetic.A["Smiling"]].astype(bool)
    mouths = whole[:, 130:145, 75:103].astype(float).mean(axis=(1, 2, 3))  # teeth show only in a smile
    assert mouths[smiling].mean() > mouths[~smiling].mean() + 20


def test_decode_benchmark_prints_a_median_per_worker_count(celeba_root: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(celeba_root)
    script = BENCHMARK.with_name("benchmark_decode.py")
    spec = importlib.util.spec_from_file_location("benchmark_decode", script)
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main([str(celeba_root), "--workers", "1", "2", "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["1 worker(s)", "2 worker(s)"]
    assert all("images/s" in line and "CPU s per 1,000 images" in line for line in lines)
    assert snapshot(celeba_root) == before
