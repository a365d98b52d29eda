"""Notebook 5's sweep: one knob at a time, finished runs skipped, interrupted runs continued, every measure reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import nbformat
import pytest
import torch
from PIL import Image

import helper_knobs
import run_lecture
from celeba_vae.recipes import KNOB_VALUES, Recipe
from helper_data import get_cached_dataloaders_celeba
from helper_findings import knob_findings
from helper_knobs import (
    BASELINE,
    MEASURES,
    KnobSweep,
    SweepResults,
    knob_grid,
    knob_table,
    plot_knob,
    plot_knob_faces,
    show_knob,
)
from helper_quality import FrechetScore

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "5_what_the_knobs_do.ipynb"
TWO_LATENT_SIZES = {"latent_dim": (2, 200)}


class MeanColours(torch.nn.Module):
    """A stand-in for Inception-v3 (no download): mean colour of each quarter of the image, 12 features."""

    num_features = 12

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


@pytest.fixture
def sweep(celeba_copy: Path, tmp_path: Path) -> KnobSweep:
    loaders = get_cached_dataloaders_celeba(16, "cpu", root=celeba_copy, cache_dir=tmp_path / "cache", progress=False)
    return KnobSweep(tmp_path / "knobs", Recipe("tiny", 1, 16, None, None), *loaders, "cpu",
                     {"data": {"kind": "synthetic", "root": str(celeba_copy)}}, num_samples=12, probe_images=20)


def test_the_grid_changes_one_knob_at_a_time_from_the_lectures_settings() -> None:
    assert KNOB_VALUES["reconstruction_term_weight"] == (0.1, 1.0, 10.0)  # 0.5 and 2 hide in one seed's noise
    full = knob_grid()
    assert full[0] == BASELINE and len(full) == 1 + sum(len(v) - 1 for v in KNOB_VALUES.values())
    assert len({run.name for run in full}) == len(full)
    assert [run.changed_knob for run in knob_grid(["decoder"])] == ["baseline", "decoder"]
    assert knob_grid([]) == [BASELINE]
    with pytest.raises(ValueError, match="unknown knob.*'depth'"):
        knob_grid(["depth"])


def test_the_sweep_saves_every_run_skips_finished_ones_and_continues_an_interrupted_one(
    sweep: KnobSweep, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = knob_grid(["latent_dim"], TWO_LATENT_SIZES)
    assert sweep.print_plan(runs) > 0
    assert "2 runs (0 already finished and skipped, 2 to train)" in capsys.readouterr().out
    results = sweep.run(runs, FrechetScore(sweep.real_images, MeanColours()))
    trained = capsys.readouterr().out
    assert "resume=True" not in trained, "a resume the learner never asked for is reported"
    assert trained.count("***Epoch: 001/001") == 2 and "| Batch " not in trained, "each epoch once per run"
    for run, result in zip(runs, results, strict=True):
        files = sweep.files(run)
        assert files.checkpoint.is_file() and (files.run_dir / "faces.pt").is_file()
        assert files.checkpoint.parent == sweep.folder / run.name / run.decoder
        assert json.loads(files.metrics.read_text())["name"] == result["name"] == run.name
        assert all(result[key] is not None for key, _, _ in MEASURES), result
        assert result["fid"] >= 0 and result["active_units"] <= run.latent_dim
    assert [r["latent_dim"] for r in results] == [200, 2]
    table = knob_table(results, "latent_dim").data.splitlines()
    assert table[0].split(" | ")[1:] == [label for _, label, _ in MEASURES[:-1]] + [f"{MEASURES[-1][1]} |"]
    assert table[2].startswith("| 2 |") and table[3].startswith("| 200 (lecture) |") and len(table) == 4
    plot_knob(results, "latent_dim", save_path=tmp_path / "bars.png")
    plot_knob_faces(results, "latent_dim", sweep.folder, sweep.real_images, save_path=tmp_path / "faces.png")
    for name in ("bars.png", "faces.png"):
        with Image.open(tmp_path / name) as image:
            assert image.width > 300 and image.height > 200

    finished = sweep.files(runs[0]).metrics
    finished_before = finished.stat().st_mtime_ns
    sweep.files(runs[1]).metrics.unlink()  # stopped after training, before it was measured
    capsys.readouterr()
    again = sweep.run(runs)
    printed = capsys.readouterr().out
    assert f"{runs[0].name}: finished before, skipped" in printed
    assert "Resuming from" in printed and "1 of 1 epochs already done" in printed
    assert finished.stat().st_mtime_ns == finished_before
    assert again[0] == results[0] and again[1]["fid"] is None
    assert sweep.print_plan(runs) == 0


def test_a_saved_run_with_other_settings_is_refused_with_its_folder(sweep: KnobSweep) -> None:
    sweep.run([BASELINE])
    longer = KnobSweep(sweep.folder, Recipe("tiny", 2, 16, None, None), sweep.train_loader, sweep.valid_loader,
                       sweep.test_loader, "cpu", sweep.data_settings, num_samples=12, probe_images=20)
    with pytest.raises(ValueError, match=f"{BASELINE.name} holds a finished run.*epochs: 1 saved, 2 now"):
        longer.run([BASELINE])


def test_without_frechet_no_frechet_metric_is_built(sweep: KnobSweep, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> FrechetScore:
        raise AssertionError("a Fréchet metric was built although frechet=False")

    monkeypatch.setattr(helper_knobs, "FrechetScore", refuse)
    sweep.frechet = False
    [result] = sweep.run([BASELINE])
    assert result["fd_baseline_encoder"] is None and result["fid"] is None and result["psnr"] > 0


def test_the_runner_runs_notebook_5_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr(run_lecture, "run_notebook", lambda notebook, out, parameters: ran.append((notebook,
                                                                                                     parameters)))
    common = ["--dataset", "synthetic", "--num-synthetic", "30", "--device", "cpu", "--epochs", "1",
              "--data-root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]
    assert run_lecture.main(common) == 0
    assert run_lecture.KNOBS not in [notebook for notebook, _ in ran]
    ran.clear()
    assert run_lecture.main([*common, "--knobs", "decoder"]) == 0
    notebook, parameters = ran[-1]
    assert notebook == run_lecture.KNOBS and parameters["knobs"] == ["decoder"] and parameters["num_epochs"] == 1
    settings = next(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
                    if "parameters" in c.metadata.get("tags", []))
    declared = {line.split("=")[0].strip() for line in settings.splitlines()}
    assert set(parameters) <= declared


def test_notebook_5_runs_headless_with_a_tiny_grid(tmp_path: Path) -> None:
    book = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.outputs and c.execution_count is None for c in book.cells if c.cell_type == "code")
    out = tmp_path / "outputs"
    run_lecture.run_notebook(run_lecture.KNOBS, tmp_path / "executed.ipynb", {
        "dataset": "synthetic", "num_synthetic": 60, "data_root": str(tmp_path / "data"), "output_dir": str(out),
        "device": "cpu", "knobs": ["latent_dim"], "num_epochs": 1, "batch_size": 16, "measure_fid": False})
    metrics = json.loads((out / "metrics.json").read_text())["knobs"]
    assert sorted(run["latent_dim"] for run in metrics.values()) == [2, 16, 200]
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"transpose_latent_dim_one_short_run_per_value.png",
            "transpose_latent_dim_reconstructions_and_samples.png"} <= figures, figures
    assert not any("decoder" in name or "learning_rate" in name for name in figures), "figures of knobs not run"
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "3 runs (0 already finished and skipped, 3 to train)" in printed
    assert "FID and the encoder-space Fréchet distance not measured" in printed and "SYNTHETIC" in printed
    assert "resume=True" not in printed and printed.count("***Epoch: 001/001") == 3
    assert not [o for o in outputs if o.get("output_type") == "execute_result" and set(o["data"]) == {"text/plain"}
                and not o["data"]["text/plain"].startswith("<Figure")], "a cell shows a stray value"
    for knob in ("reconstruction_term_weight", "decoder", "learning_rate"):
        assert f"{knob} was not swept" in printed
    figures_shown = sum("image/png" in o.get("data", {}) or o.get("data", {}).get("text/plain", "").startswith(
        "<Figure") for o in outputs)  # an image, or its text where the kernel's backend is Agg
    assert figures_shown == 2, "one bar chart and one face grid: latent_dim's section only"
    assert all(run["fd_baseline_encoder"] is None for run in metrics.values())
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| 16 |" in shown
    by_size = {run["latent_dim"]: run for run in metrics.values()}
    small, base = by_size[2], by_size[200]
    assert (f"{small['test_reconstruction']:.0f} vs {base['test_reconstruction']:.0f}), PSNR {small['psnr']:.1f} vs "
            f"{base['psnr']:.1f} dB") in shown
    assert f"Every run: {base['epochs']} epoch(s) over " in shown
    collapsed = [run["name"] for run in metrics.values() if run["active_units"] < run["latent_dim"]]
    assert all(name in shown for name in collapsed) and ("no collapse is seen" in shown) == (not collapsed)


def fake_run(knob: Any = BASELINE, **measures: Any) -> dict[str, Any]:
    """A finished run's metrics as :meth:`KnobSweep.run` returns them, with ``measures`` overriding the defaults."""
    return {"name": knob.name, "knob": knob.changed_knob, **asdict(knob), "epochs": 2, "num_samples": 300,
            "test_loss": 1000.0, "test_reconstruction": 900.0, "test_kl": 100.0, "psnr": 18.0, "ssim": 0.4,
            "checkerboard": 10.0, "active_units": knob.latent_dim, "probe_balanced_accuracy": 0.6,
            "fd_baseline_encoder": 50.0, "fid": None, **measures}


def weight(value: float) -> Any:
    return replace(BASELINE, reconstruction_term_weight=value)


def test_the_findings_state_the_runs_numbers_and_follow_them() -> None:
    results = [fake_run(), fake_run(replace(BASELINE, latent_dim=2), test_reconstruction=2000.0, psnr=14.0,
                                    probe_balanced_accuracy=0.5),
               fake_run(weight(0.1), test_reconstruction=1100.0, test_kl=50.0, fd_baseline_encoder=40.0),
               fake_run(weight(10.0), test_reconstruction=800.0, test_kl=200.0, fd_baseline_encoder=60.0),
               fake_run(replace(BASELINE, decoder="nearest"), ssim=0.5, test_loss=950.0, checkerboard=1.1),
               fake_run(replace(BASELINE, learning_rate=1e-4), test_loss=2000.0),
               {**fake_run(replace(BASELINE, learning_rate=2e-3)), "diverged": "loss became nan at epoch 1"}]
    text = knob_findings(results, 2400).data
    assert "2 epoch(s) over 2,400 images, about 0.059% of the lecture's image-steps (4,800 of 8,138,500" in text
    assert "2.2 times the 200-dimensional model's (2000 vs 900), PSNR 14.0 vs 18.0 dB, probe 0.50 vs 0.60" in text
    assert "weight** 0.1 / 1 / 10: reconstruction 1100 / 900 / 800 (falls), KL 50 / 100 / 200 (rises)" in text
    assert "Fréchet distance rises with the weight (40.0 / 50.0 / 60.0): 300 samples, one seed" in text
    assert "SSIM 0.500 with nearest-neighbour upsampling vs 0.400 with transposed convolutions (+0.100)" in text
    assert "checkerboard of samples 1.10 vs 10.00" in text
    assert "Learning rate 0.0001**: test loss 2000, 2.00 times the lecture rate's 1000" in text
    assert "Learning rate 0.002** diverged: loss became nan at epoch 1" in text
    assert "every run kept all its latent dimensions active: no collapse is seen in runs of 2 epoch(s)" in text

    results[2]["test_reconstruction"], results[0]["active_units"] = 700.0, 150
    results[2]["fd_baseline_encoder"] = None
    results[0].update(probe_fit_images=20, probe_test_images=30)
    changed = knob_findings(results, 2400).data
    assert "reconstruction 700 / 900 / 800 (goes up and down)" in changed and "Fréchet" not in changed
    assert f"collapsed to the prior in {BASELINE.name} (150 of 200)" in changed and "no collapse" not in changed
    assert "probe is fitted on 20 validation codes and scored on 30 test codes" in changed


def test_the_findings_say_only_what_the_swept_knobs_measured() -> None:
    alone = knob_findings([fake_run()], 2400).data
    assert "Decoder" not in alone and "Learning rate" not in alone and "Latent size" not in alone
    assert "missing or diverged" in knob_findings([fake_run(replace(BASELINE, latent_dim=2))], 2400).data


def test_a_knob_that_was_not_swept_gets_one_line_and_no_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    results = SweepResults([fake_run(), fake_run(replace(BASELINE, decoder="nearest"))], tmp_path,
                           torch.rand(8, 3, 16, 16), 100)
    assert results.swept("decoder") and not results.swept("latent_dim")
    shown: list[object] = []
    monkeypatch.setattr(helper_knobs, "display", shown.append)
    show_knob(results, "latent_dim")
    assert not shown and "latent_dim was not swept" in capsys.readouterr().out
    show_knob(results, "decoder")
    table = shown[0].data.splitlines()
    assert len(table) == 4 and table[2].startswith("| nearest |") and "transpose (lecture)" in table[3]
    assert len(shown) == 3 and "latent_dim was not swept" not in capsys.readouterr().out


def test_importing_the_helpers_of_notebooks_3_to_5_loads_neither_scikit_learn_nor_widgets() -> None:
    code = ("import sys, helper_explorer, helper_findings, helper_knobs, helper_latent, helper_probe\n"
            "print(sorted(m for m in ('sklearn', 'ipywidgets') if m in sys.modules))")
    repo = NOTEBOOK.parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=False,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
