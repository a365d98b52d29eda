"""metrics.json never presents two models' results as one: entries are tied to the weights they measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celeba_vae.checkpoint import save_checkpoint
from helper_setup import start_notebook
from helper_utils import read_metrics, update_metrics
from model import VAE


def test_results_of_replaced_weights_are_dropped_and_kept_in_a_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "metrics.json"
    update_metrics(path, "runs", {"transpose": {"epochs": 5}, "nearest": {"epochs": 5}}, {"transpose": "old",
                                                                                          "nearest": "n1"})
    update_metrics(path, "probe", {"transpose": {"Smiling": 0.9}, "nearest": {"Smiling": 0.8}},
                   {"transpose": "old", "nearest": "n1"})
    update_metrics(path, "knobs", {"latent_dim=2": {"test_loss": 1.0}})
    before = read_metrics(path)
    capsys.readouterr()
    update_metrics(path, "runs", {"transpose": {"epochs": 1}}, {"transpose": "new", "nearest": "n1"})
    after = read_metrics(path)
    assert after["runs"] == {"transpose": {"epochs": 1}, "nearest": {"epochs": 5}}
    assert after["probe"] == {"nearest": {"Smiling": 0.8}}
    assert after["knobs"] == before["knobs"]
    assert after["run_ids"] == {"runs": {"transpose": "new", "nearest": "n1"}, "probe": {"nearest": "n1"}}
    assert json.loads((tmp_path / "metrics.json.bak").read_text()) == before
    said = capsys.readouterr().out.strip()
    assert said.count("\n") == 0 and "probe (transpose)" in said and "metrics.json.bak" in said


def test_the_same_weights_measured_again_drop_nothing(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    update_metrics(path, "runs", {"transpose": {"epochs": 5}}, {"transpose": "a"})
    update_metrics(path, "latent", {"transpose": {"active_units": 3}}, {"transpose": "a"})
    update_metrics(path, "latent", {"transpose": {"active_units": 4}}, {"transpose": "a"})
    assert read_metrics(path)["runs"] == {"transpose": {"epochs": 5}}
    assert not (tmp_path / "metrics.json.bak").exists()


def test_record_ties_each_decoders_entry_to_its_checkpoint(tmp_path: Path) -> None:
    s = start_notebook(dataset="synthetic", data_root=tmp_path / "data", output_dir=tmp_path / "out", device="cpu",
                       num_synthetic=12)
    save_checkpoint(s.files("transpose").checkpoint, VAE(), epoch=1, run_id="first")
    s.record("latent", {"transpose": {"active_units": 3}})
    save_checkpoint(s.files("transpose").checkpoint, VAE(), epoch=1, run_id="second")
    s.record("runs", {"transpose": {"epochs": 1}})
    metrics = read_metrics(s.metrics)
    assert metrics["latent"] == {} and metrics["run_ids"]["runs"] == {"transpose": "second"}


def test_the_run_holds_the_overridden_recipe_and_its_loaders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = start_notebook(dataset="synthetic", data_root=tmp_path / "data", output_dir=tmp_path / "out", device="cpu",
                         num_synthetic=30, batch_size=8, train_images=10)
    assert "Training instead: demo, batch_size=8, train_images=10" in capsys.readouterr().out
    assert (run.recipe.batch_size, run.recipe.train_images) == (8, 10)
    for kind in ("fast", "lecture"):
        train, _, _ = run.dataloaders(kind)
        assert len(train.dataset) == 10 and len(next(iter(train))[0]) == 8, kind
    with pytest.raises(ValueError, match="loader='slow'"):
        run.dataloaders("slow")
