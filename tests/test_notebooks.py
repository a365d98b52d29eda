"""The four notebooks, run headless by the README's runner on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from PIL import Image

import run_lecture
from helper_data import CelebAFaces

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


LECTURE_NOTEBOOKS = {"1_train_vae.ipynb", "2_sample_and_reconstruct.ipynb", "3_latent_histograms.ipynb",
                     "4_latent_arithmetic.ipynb"}


def test_notebooks_are_committed_without_outputs_and_readable() -> None:
    assert LECTURE_NOTEBOOKS <= {path.name for path in NOTEBOOKS}
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        assert any("parameters" in c.metadata.get("tags", []) for c in code), path.name
        assert not any("class VAE" in c.source for c in code), path.name
        long = [line for c in code for line in c.source.splitlines() if len(line) > 90]
        assert not long, f"{path.name}: code lines over 90 characters: {long}"


def test_runner_executes_all_notebooks_for_both_decoders(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "outputs"
    assert run_lecture.main(["--dataset", "synthetic", "--num-synthetic", "120", "--epochs", "1", "--batch-size", "32",
                             "--decoder", "both", "--device", "cpu", "--num-latent-images", "40",
                             "--data-root", str(tmp_path / "data"), "--output-dir", str(out)]) == 0
    assert len(list((out / "notebooks").glob("*.ipynb"))) == 8
    metrics = json.loads((out / "metrics.json").read_text())
    train_size = len(CelebAFaces(tmp_path / "data" / "synthetic-celeba-120-seed123", "train"))
    for decoder in ("transpose", "nearest"):
        run = metrics["runs"][decoder]
        assert run["dataset"] == "synthetic" and run["epochs"] == 1
        assert {"train", "valid", "test"} <= set(run) and run["test"]["combined"] > 0
        assert metrics["latent"][decoder]["images"] == min(40, train_size)
        assert (out / decoder / "checkpoint.pt").is_file() and (out / decoder / "vae_celeba_02.pt").is_file()
    figures = {p.name for p in (out / "figures").iterdir()}
    expected = {"transpose_training_loss_per_minibatch_combined.png", "nearest_training_loss_per_minibatch_kl.png",
                "transpose_test_faces_and_their_reconstructions.png",
                "nearest_16_samples_codes_drawn_from_n_0_i_decoded.png",
                "transpose_zoomed_crops.png", "transpose_checkerboard_score_per_epoch.png",
                "nearest_reconstructions_by_decoder.png", "nearest_samples_by_decoder.png",
                "transpose_training_faces.png", "transpose_power_spectra.png", "transpose_epochs.gif",
                "transpose_latent_codes_of_train_faces.png", "transpose_all_latent_dimensions.png",
                "transpose_average_faces.png", "transpose_adding_and_removing_eyeglasses.png",
                "transpose_adding_smiling_pixels_or_codes.png", "nearest_decoded_average_codes.png",
                "nearest_interpolation.png", "nearest_interpolation.gif", "nearest_what_the_latent_space_knows.png",
                "transpose_latent_explorer.png"}
    assert expected <= figures
    for name in {n for n in expected if n.endswith(".png")}:
        with Image.open(out / "figures" / name) as image:
            assert image.width > 100 and image.height > 100
    printed = capfd.readouterr()
    assert "without encryption" not in printed.out + printed.err
    for decoder in ("transpose", "nearest"):
        quality = metrics["runs"][decoder]["test_quality"]
        assert 0 < quality["ssim"] <= 1 and quality["psnr"] > 0 and quality["mse"] > 0
        assert metrics["spectra"][decoder]["reconstruction_nyquist_ratio"] > 0
        assert 0 <= metrics["probe"][decoder]["Smiling"] <= 1
    executed = nbformat.read(out / "notebooks" / "2_sample_and_reconstruct_nearest.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    tables = "".join(o.get("data", {}).get("text/markdown", "") for c in executed.cells if c.cell_type == "code"
                     for o in c.outputs)
    assert "| nearest |" in tables and "| transpose |" in tables and "SYNTHETIC" in text
