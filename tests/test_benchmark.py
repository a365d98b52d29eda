"""The benchmark script leaves the user's data alone and reports CPU fp32 vs bf16 side by side."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from celeba_vae.decoded_cache import build_decoded_cache
from celeba_vae.synthetic import write_synthetic_celeba

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_pipeline.py"
Snapshot = dict[str, tuple[bytes, int]]


def snapshot(root: Path) -> Snapshot:
    """Every file under ``root``: its bytes and its mtime in nanoseconds."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Snapshot, Snapshot, dict[str, Any]]:
    """One tiny CPU benchmark run on a user's CelebA folder whose decoded cache was built beforehand: the folder
    before, after, and the JSON results."""
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
    code = benchmark.main(["--data-root", str(root), "--device", "cpu", "--batch-size", "8", "--train-steps", "2",
                           "--warmup-steps", "1", "--data-batches", "1", "--check-loss-steps", "1",
                           "--output", str(output)])
    assert code == 0
    return before, snapshot(root), json.loads(output.read_text())


def test_benchmark_never_touches_the_users_cache(benchmark_run: tuple[Snapshot, Snapshot, dict[str, Any]]) -> None:
    before, after, results = benchmark_run
    assert after.keys() == before.keys()
    for name, (content, mtime) in before.items():
        assert after[name][0] == content, f"{name} changed"
        assert after[name][1] == mtime, f"{name} was rewritten"
    assert results["cache_build_s"] > 0


def test_benchmark_reports_cpu_precision_side_by_side(
    benchmark_run: tuple[Snapshot, Snapshot, dict[str, Any]],
) -> None:
    results = benchmark_run[2]
    assert results["machine"]["cpu_capability"]
    assert results["machine"]["cpu_cores"] >= 1
    precision = results["cpu_precision"]
    assert len(precision["runs"]) == 3
    for run in precision["runs"]:
        assert run["fp32_img_s"] > 0 and run["bf16_img_s"] > 0
        assert run["fp32_loss"] != run["bf16_loss"], "bf16 gave fp32's exact loss: autocast did not run"
        assert (run["fp32_loss"], run["bf16_loss"]) == (precision["fp32_loss"], precision["bf16_loss"])
    assert precision["bf16_speedup"] == statistics.median(r["bf16_img_s"] / r["fp32_img_s"] for r in precision["runs"])
    assert precision["loss_relative_difference"] < 0.05


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
