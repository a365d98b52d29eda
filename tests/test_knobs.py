"""Notebook 5's sweep: one knob at a time, finished runs skipped, interrupted runs continued, every measure reported."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import torch
from PIL import Image

import celeba_vae.frechet
import run_lecture
from celeba_vae.frechet import FrechetScore, PosteriorMeans, inception_fid
from celeba_vae.recipes import Recipe
from helper_data import get_cached_dataloaders_celeba
from helper_knobs import (
    BASELINE,
    KNOB_VALUES,
    MEASURES,
    KnobSweep,
    knob_grid,
    knob_table,
    plot_knob,
    plot_knob_faces,
)
from model import VAE

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "5_what_the_knobs_do.ipynb"
TWO_LATENT_SIZES = {"latent_dim": (2, 200)}


def stand_in_features() -> torch.nn.Module:
    """A stand-in for Inception-v3 (no download): mean colour of each quarter of the image, 12 features."""
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())


@pytest.fixture
def sweep(celeba_copy: Path, tmp_path: Path) -> KnobSweep:
    loaders = get_cached_dataloaders_celeba(16, "cpu", root=celeba_copy, cache_dir=tmp_path / "cache", progress=False)
    return KnobSweep(tmp_path / "knobs", Recipe("tiny", 1, 16, None, None), *loaders, "cpu",
                     {"data": {"kind": "synthetic", "root": str(celeba_copy)}}, num_samples=12, probe_images=20)


def test_the_grid_changes_one_knob_at_a_time_from_the_lectures_settings() -> None:
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
    results = sweep.run(runs, FrechetScore(sweep.real_images, stand_in_features()))
    for run, result in zip(runs, results, strict=True):
        folder = sweep.folder / run.name
        assert {"checkpoint.pt", "metrics.json", "faces.pt"} <= {p.name for p in folder.iterdir()}
        assert json.loads((folder / "metrics.json").read_text())["name"] == result["name"] == run.name
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

    finished = sweep.folder / runs[0].name / "metrics.json"
    finished_before = finished.stat().st_mtime_ns
    (sweep.folder / runs[1].name / "metrics.json").unlink()  # stopped after training, before it was measured
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


def test_frechet_score_is_zero_for_the_same_images_and_grows_with_a_shift() -> None:
    real = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    score = FrechetScore(real, stand_in_features(), batch_size=16)
    assert score(real) == pytest.approx(0, abs=1e-6)
    assert 0 < score((real + 0.1).clamp(0, 1)) < score((real + 0.3).clamp(0, 1))
    encoder_space = FrechetScore(torch.rand(6, 3, 128, 128), PosteriorMeans(VAE(latent_dim=4)))
    assert encoder_space.metric.real_features_sum.shape == (4,)
    with pytest.raises(ValueError, match="at least 2 generated images"):
        score(real[:1])


def test_fid_without_its_weights_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_internet(*args: object, **kwargs: object) -> FrechetScore:
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(celeba_vae.frechet, "FrechetScore", no_internet)
    score, message = inception_fid(torch.rand(4, 3, 8, 8))
    assert score is None and "\n" not in message
    assert message.startswith("FID skipped") and "Name or service not known" in message


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
        "device": "cpu", "knobs": ["latent_dim"], "num_epochs": 1, "batch_size": 16, "num_samples": 8,
        "probe_images": 20, "measure_fid": False})
    metrics = json.loads((out / "metrics.json").read_text())["knobs"]
    assert sorted(run["latent_dim"] for run in metrics.values()) == [2, 16, 200]
    assert {"knobs_latent_dim.png", "knobs_latent_dim_faces.png", "knobs_decoder.png"} <= {
        p.name for p in (out / "figures").iterdir()}
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "3 runs (0 already finished and skipped, 3 to train)" in printed and "FID not measured" in printed
    assert "SYNTHETIC" in printed
    assert "| 16 |" in "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
