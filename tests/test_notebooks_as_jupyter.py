"""The four notebooks run as a learner runs them: Jupyter's kernel in notebooks/, CelebA in the repository's data/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from celeba_vae.synthetic import write_synthetic_celeba

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("1_train_vae.ipynb", "2_sample_and_reconstruct.ipynb", "3_latent_histograms.ipynb",
             "4_latent_arithmetic.ipynb")


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _printed(executed: Path) -> str:
    book = nbformat.read(executed, as_version=4)
    return "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs)


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project whose data/ holds a CelebA-shaped folder, imported by the kernels in place of this one."""
    root = tmp_path / "celeba-vae"
    (root / "notebooks").mkdir(parents=True)
    for module in REPO.glob("*.py"):
        shutil.copy2(module, root / module.name)
    shutil.copytree(REPO / "celeba_vae", root / "celeba_vae", ignore=shutil.ignore_patterns("__pycache__"))
    for notebook in NOTEBOOKS:
        shutil.copy2(REPO / "notebooks" / notebook, root / "notebooks" / notebook)
    write_synthetic_celeba(root / "data", num_images=120, seed=5, layout="kaggle")
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.delenv("CELEBA_VAE_DATA", raising=False)
    monkeypatch.delenv("CELEBA_VAE_OUTPUTS", raising=False)
    return root


def test_notebooks_run_from_notebooks_folder_with_the_repository_data(checkout: Path, tmp_path: Path) -> None:
    before = _files_under(checkout / "notebooks")
    executed = tmp_path / "executed"
    executed.mkdir()
    user_changes = {"device": "cpu", "batch_size": 32}
    for notebook in NOTEBOOKS:
        parameters = {**user_changes, "num_epochs": 1} if notebook.startswith("1_") else user_changes
        pm.execute_notebook(checkout / "notebooks" / notebook, executed / notebook, parameters=parameters,
                            cwd=str(checkout / "notebooks"), progress_bar=False, kernel_name="python3")
    assert _files_under(checkout / "notebooks") == before, "something was written under notebooks/"
    outputs = checkout / "outputs"
    assert (outputs / "transpose" / "checkpoint.pt").is_file() and (outputs / "figures").is_dir()
    metrics = json.loads((outputs / "metrics.json").read_text())
    assert metrics["runs"]["transpose"]["dataset"] == "celeba"
    assert metrics["latent"]["transpose"]["dataset"] == "celeba"
    first = _printed(executed / NOTEBOOKS[0])
    assert "SYNTHETIC" not in first and "NOT found" not in first
    assert f"data: {checkout / 'data'}" in first and f"outputs: {outputs}" in first
    for notebook in NOTEBOOKS[1:]:
        assert "SYNTHETIC" not in _printed(executed / notebook)
