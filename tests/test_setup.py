"""One setup for the four notebooks: paths independent of the working directory, plain words about the data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from celeba_vae.celeba_files import find_celeba, read_index
from celeba_vae.checkpoint import save_checkpoint
from celeba_vae.paths import REPO_ROOT, project_path
from celeba_vae.recipes import RECIPES, choose_recipe
from celeba_vae.synthetic import write_synthetic_celeba
from helper_plotting import save_figure
from helper_setup import start_notebook
from model import VAE


def test_relative_paths_mean_the_repository_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELEBA_VAE_DATA", raising=False)
    monkeypatch.delenv("CELEBA_VAE_OUTPUTS", raising=False)
    for cwd in (REPO_ROOT / "notebooks", REPO_ROOT, tmp_path):
        monkeypatch.chdir(cwd)
        assert project_path("data", "data") == REPO_ROOT / "data"
        assert project_path(None, "outputs") == REPO_ROOT / "outputs"
        assert project_path("runs/try1", "outputs") == REPO_ROOT / "runs" / "try1"
        assert project_path(tmp_path / "x", "data") == tmp_path / "x"
    assert project_path("~/celeba", "data") == Path(os.path.expanduser("~/celeba"))


def test_environment_variables_move_the_defaults_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELEBA_VAE_DATA", str(tmp_path / "celeba-data"))
    monkeypatch.setenv("CELEBA_VAE_OUTPUTS", str(tmp_path / "runs"))
    assert project_path("data", "data") == tmp_path / "celeba-data"
    assert project_path(None, "outputs") == tmp_path / "runs"
    assert project_path("elsewhere", "data") == REPO_ROOT / "elsewhere"


def test_without_celeba_the_first_lines_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup = start_notebook(dataset="auto", data_root=tmp_path / "empty",
                           output_dir=tmp_path / "out", device="cpu", num_synthetic=12)
    printed = capsys.readouterr().out.splitlines()
    assert set(printed[0]) == {"="}
    assert "CelebA was NOT found" in printed[1] and "SYNTHETIC" in printed[1]
    text = "\n".join(printed)
    assert str(tmp_path / "empty") in text and "img_align_celeba" in text and "--download" in text
    assert setup.data.kind == "synthetic" and setup.recipe.name == "demo"
    assert f"outputs: {tmp_path / 'out'}" in text
    figure = plt.figure()
    save_figure(figure, title="Samples")
    assert figure._suptitle.get_text() == "Samples (SYNTHETIC faces, not CelebA)"
    assert (tmp_path / "out" / "figures" / "transpose_samples.png").is_file()


def test_with_celeba_it_says_which_and_where(celeba_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    setup = start_notebook(dataset="auto", data_root=celeba_root, output_dir=tmp_path / "out", device="cpu")
    printed = capsys.readouterr().out
    assert printed.startswith(f"Using CelebA (torchvision layout) from {celeba_root}")
    assert "SYNTHETIC" not in printed
    figure = plt.figure()
    save_figure(figure, title="Samples")
    assert figure._suptitle.get_text() == "Samples"
    identity = read_index(find_celeba(celeba_root)).identity()
    assert setup.data.record(10) == {"kind": "celeba", "layout": "torchvision", "root": str(celeba_root), **identity,
                                     "images": 10}
    assert setup.files().checkpoint == tmp_path / "out" / "transpose" / "checkpoint.pt"


def test_auto_recipe_follows_device_and_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert choose_recipe("auto", torch.device("cuda"), "celeba") == RECIPES["lecture"]
    assert choose_recipe("auto", torch.device("mps"), "celeba") == RECIPES["mps"]
    assert choose_recipe("auto", torch.device("cpu"), "synthetic") == RECIPES["demo"]
    capsys.readouterr()
    assert choose_recipe("auto", torch.device("cpu"), "celeba") == RECIPES["laptop"]
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "laptop" in line and "recipe='lecture'" in line
    with pytest.raises(ValueError, match="recipe='fast'"):
        choose_recipe("fast", torch.device("cpu"), "celeba")


def test_recipe_overrides_are_checked() -> None:
    laptop = RECIPES["laptop"]
    assert laptop.override(num_epochs=None) == laptop
    changed = laptop.override(num_epochs=2, train_images=100)
    assert (changed.num_epochs, changed.train_images, changed.batch_size) == (2, 100, laptop.batch_size)
    for bad in (0, -3, 2.5, "10", True):
        with pytest.raises(ValueError, match="num_epochs="):
            laptop.override(num_epochs=bad)


def test_notebooks_without_weights_say_which_notebook_to_run(tmp_path: Path, celeba_root: Path) -> None:
    setup = start_notebook(dataset="celeba", data_root=celeba_root,
                           output_dir=tmp_path / "out", decoder="nearest", device="cpu")
    with pytest.raises(FileNotFoundError, match=r"1_train_vae\.ipynb.*decoder='nearest'"):
        setup.load_model()


def test_weights_from_synthetic_faces_are_refused_once_celeba_is_there(
    tmp_path: Path, celeba_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = start_notebook(dataset="auto", data_root=tmp_path / "empty",
                          output_dir=tmp_path / "out", device="cpu", num_synthetic=12)
    save_checkpoint(demo.files().checkpoint, VAE(), epoch=1, settings=demo.checkpoint_settings(demo.recipe, 9))
    assert isinstance(demo.load_model(), VAE)
    with_celeba = start_notebook(dataset="auto", data_root=celeba_root, output_dir=tmp_path / "out", device="cpu")
    with pytest.raises(ValueError, match=r"(?s)trained on synthetic.*synthetic-celeba-12-seed123.*uses CelebA"):
        with_celeba.load_model()


def test_weights_travel_with_the_data_not_with_their_path(tmp_path: Path, celeba_root: Path) -> None:
    trained = start_notebook(dataset="celeba", data_root=celeba_root, output_dir=tmp_path / "out", device="cpu")
    save_checkpoint(trained.files().checkpoint, VAE(), epoch=1,
                    settings=trained.checkpoint_settings(trained.recipe, 48))
    moved = write_synthetic_celeba(tmp_path / "moved", num_images=60, seed=7, layout="kaggle")
    assert isinstance(start_notebook(dataset="celeba", data_root=moved,
                                     output_dir=tmp_path / "out", device="cpu").load_model(), VAE)
    subset = Path(shutil.copytree(celeba_root, tmp_path / "subset"))
    partition = subset / "celeba" / "list_eval_partition.txt"
    partition.write_text("".join(partition.read_text().splitlines(keepends=True)[:-1]))
    other = start_notebook(dataset="celeba", data_root=subset, output_dir=tmp_path / "out", device="cpu")
    with pytest.raises(ValueError, match=rf"(?s)trained on CelebA \(torchvision layout, 48/6/6 .*{celeba_root}.*"
                                         rf"uses CelebA \(torchvision layout, 48/6/5 .*{subset}"):
        other.load_model()


def test_older_checkpoints_recording_the_root_still_load_elsewhere(tmp_path: Path, celeba_root: Path) -> None:
    legacy = {"kind": "celeba", "layout": "torchvision", "root": "/content/data", "images": 48}
    path = save_checkpoint(tmp_path / "out" / "transpose" / "checkpoint.pt", VAE(), epoch=1, settings={"data": legacy})
    assert isinstance(start_notebook(dataset="celeba", data_root=celeba_root,
                                     output_dir=tmp_path / "out", device="cpu").load_model(), VAE)
    save_checkpoint(path, VAE(), epoch=1, settings={"data": {**legacy, "layout": "kaggle"}})
    with pytest.raises(ValueError, match="trained on CelebA \\(kaggle layout, /content/data"):
        start_notebook(dataset="celeba", data_root=celeba_root, output_dir=tmp_path / "out", device="cpu").load_model()


def test_a_changed_recipe_says_what_runs_instead(capsys: pytest.CaptureFixture[str]) -> None:
    demo = RECIPES["demo"]
    assert demo.override(num_epochs=None, batch_size=demo.batch_size) is demo
    assert capsys.readouterr().out == ""
    changed = demo.override(num_epochs=1)
    line = capsys.readouterr().out.strip()
    assert changed.name == "demo, num_epochs=1" and changed.num_epochs == 1
    assert line == "Training instead: demo, num_epochs=1 (all training images, 1 epoch, batch size 64)"
