"""The benchmark script finishes with a line per phase, leaves the user's data alone and reports the lecture's
pipeline, the project's step and the projection side by side (and CPU fp32 vs bf16)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

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
    cut = 10  # inside the first noise block
    halves = np.concatenate([synthetic.render_batch(attributes[:cut], params[:cut], base=7, start=0),
                             synthetic.render_batch(attributes[cut:], params[cut:], base=7, start=cut)])
    assert whole.shape == (n, 218, 178, 3) and whole.dtype == np.uint8
    assert np.array_equal(whole, halves)
    smiling = attributes[:, synthetic.A["Smiling"]].astype(bool)
    mouth_x, mouth_y = (89 + params[:, 0]).round().astype(int), (112 + params[:, 1] + 25).round().astype(int)
    mouths = np.array([face[y - 1:y + 2, x - 8:x + 9].astype(float).mean()
                       for face, x, y in zip(whole, mouth_x, mouth_y, strict=True)])
    assert mouths[smiling].min() > 200 and mouths[~smiling].max() < 150  # teeth show in a smile, lips otherwise


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


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, BENCHMARK.with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_gpu_checks_smoke_run_does_every_part_but_the_main_job(tmp_path: Path) -> None:
    gpu_check = load_script("gpu_check")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert gpu_check.main(["--out", str(tmp_path), "--smoke"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = {part["name"]: part for part in report["parts"]}
    assert list(parts) == ["self-check", "step probe", "benchmark", "main job"]
    assert parts["self-check"]["status"] == "ok" and parts["self-check"]["figures"]["verdict"] == "passed"
    assert [row[:34].strip() for row in parts["self-check"]["figures"]["table"]][:2] == [
        "resume 1+1 vs 2 epochs (fp32)", "one step: fp32"]
    assert parts["step probe"]["status"] == "ok" and parts["step probe"]["figures"]["eager"]["ms_per_step"] > 0
    assert parts["benchmark"]["status"] == "ok" and parts["benchmark"]["figures"]["project_eager"]["img_s"] > 0
    assert parts["main job"]["status"] == "skipped" and "--smoke runs no main job" in parts["main job"]["reason"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("\n| ") == 5 and "| main job | skipped: --smoke runs no main job" in table
    assert table in printed.getvalue()
    assert (tmp_path / "self-check.log").read_text().count("Self-check passed") == 1


def test_a_gpu_check_part_over_its_limit_is_stopped_and_said(tmp_path: Path) -> None:
    gpu_check = load_script("gpu_check")
    part, _ = gpu_check.run_part("benchmark", [sys.executable, "-c", "import time; print('started'); time.sleep(60)"],
                                 tmp_path, 2)
    assert (part.status, part.reason) == ("timed out", "stopped after its limit of 2 s; see benchmark.log")
    assert part.seconds < 30 and "started" in (tmp_path / "benchmark.log").read_text()
    assert "| benchmark | timed out: stopped after its limit of 2 s" in gpu_check.markdown(
        {"device": "X", "torch": "t", "cpus": 1, "date": "d"}, [part])


def test_gpu_check_without_cuda_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert load_script("gpu_check").main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
