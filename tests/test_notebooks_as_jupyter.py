"""The four notebooks run as a learner runs them: Jupyter's kernel in notebooks/, CelebA in the repository's data/,
the inline backend; their outputs checked as a learner sees them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from celeba_vae.synthetic import write_synthetic_celeba
from helper_data import CelebAFaces

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("1_train_vae.ipynb", "2_sample_and_reconstruct.ipynb", "3_latent_histograms.ipynb",
             "4_latent_arithmetic.ipynb")


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


MAX_TEXT_LINES = 30
WIDGET = "application/vnd.jupyter.widget-view+json"


def _printed(executed: Path) -> str:
    book = nbformat.read(executed, as_version=4)
    return "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs)


def _text_lines(cell: nbformat.NotebookNode) -> list[str]:
    """What a cell shows as plain text: printed output and values that have no richer form (image, table)."""
    lines = []
    for output in cell.outputs:
        data = output.get("data", {})
        if output.output_type == "stream":
            lines += output.text.splitlines()
        elif set(data) == {"text/plain"}:
            lines += data["text/plain"].splitlines()
    return lines


def _images(cell: nbformat.NotebookNode) -> list[str]:
    return [o.data[kind] for o in cell.outputs for kind in ("image/png", "image/gif") if kind in o.get("data", {})]


def _widgets(cell: nbformat.NotebookNode) -> list[dict]:
    return [o.data[WIDGET] for o in cell.outputs if WIDGET in o.get("data", {})]


def check_as_a_learner_sees_it(executed: Path) -> None:
    """Every figure shown once, no wall of text, tables and animations rendered, a recap and exercises at the end."""
    book = nbformat.read(executed, as_version=4)
    for number, cell in enumerate(book.cells):
        if cell.cell_type != "code":
            continue
        where = f"{executed.name}, cell {number}:\n{cell.source}"
        images = _images(cell)
        assert len(images) == len(set(images)), f"the same image is shown twice in {where}"
        text = _text_lines(cell)
        if re.search(r"\b(plot_\w+|Image|latent_explorer)\(", cell.source) and not text:
            assert images or _widgets(cell), f"no figure is shown, and nothing says why, by {where}"
        assert len(text) <= MAX_TEXT_LINES, f"{len(text)} lines of text in {where}"
        assert not any("PosixPath(" in line or line.startswith("{'") for line in text), where
    headings = [c.source for c in book.cells if c.cell_type == "markdown"]
    assert any("## Recap" in h for h in headings), f"no recap in {executed.name}"
    exercises = next((h for h in headings if "## Try this" in h), "")
    assert exercises.count("\n1. ") == 1 and "\n2. " in exercises, f"fewer than two exercises in {executed.name}"


def _markdown(executed: Path) -> str:
    book = nbformat.read(executed, as_version=4)
    return "".join(o.get("data", {}).get("text/markdown", "") for c in book.cells if c.cell_type == "code"
                   for o in c.outputs)


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
    monkeypatch.delenv("MPLBACKEND", raising=False)  # Jupyter's inline backend, which shows what a cell leaves open
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
    for notebook in NOTEBOOKS:
        check_as_a_learner_sees_it(executed / notebook)
    assert "| test |" in _markdown(executed / NOTEBOOKS[0]), "the run summary is not shown as a table"
    assert "| Smiling |" not in _markdown(executed / NOTEBOOKS[2]), "the probe is shown as a chart and a table"
    assert "| Eyeglasses |" in _markdown(executed / NOTEBOOKS[3]), "the aligned directions are not shown"
    check_statements_against_metrics(executed, metrics, train_images=len(CelebAFaces(checkout / "data", "train")))
    size = (executed / NOTEBOOKS[0]).stat().st_size
    assert size < MAX_NOTEBOOK_1_BYTES, f"executed notebook 1 holds {size:,} bytes"


MAX_NOTEBOOK_1_BYTES = 3_000_000


def check_statements_against_metrics(executed: Path, metrics: dict, train_images: int) -> None:
    """The numbers each notebook states about the run are the numbers it measured and wrote to metrics.json."""
    training = metrics["training"]["transpose"]
    first = _markdown(executed / NOTEBOOKS[0])
    assert f"First minibatch loss {training['first_minibatch_loss']:,.1f}" in first
    assert f"the training cell ran {training['minutes']:.1f} min" in first
    assert f"({training['image_steps']:,} of 8,138,500" in first and training["train_images"] == train_images
    spectra, over = metrics["spectra"]["transpose"], metrics["checkerboard_over_training"]["transpose"]
    second = _markdown(executed / NOTEBOOKS[1])
    assert f"Real test faces score {spectra['real_checkerboard_score']:.2f}" in second
    assert f"Reconstructions: {spectra['reconstruction_checkerboard_score']:,.2f}" in second
    assert f"Samples: {spectra['sample_checkerboard_score']:,.2f}" in second
    assert [entry["epoch"] for entry in over] == list(range(1, training["epochs"] + 1))
    assert f"{training['image_steps']:,} of 8,138,500" in second
    assert "| `encoder.0` |" in first and "**2,649,075**" in first, "notebook 1 does not show the model's layers"
    assert "metrics.json" not in _printed(executed / NOTEBOOKS[0]), "a first run says nothing about metrics.json"
    assert "**These reconstructions** (" in second and "**This run's samples.** The posterior means of" in second
    assert f"Real test faces score {spectra['real_checkerboard_score']:.2f} ({spectra['num_images']:,.0f} of them" \
        in second
    cells = nbformat.read(executed / NOTEBOOKS[1], as_version=4).cells
    assert not any("plausible faces" in c.source for c in cells), "samples described before they were drawn"
    latent = metrics["latent"]["transpose"]
    assert latent["images"] == train_images, "part 3 did not encode the images part 1 trained on"
    third = _markdown(executed / NOTEBOOKS[2])
    active = f"{latent['active_units']} of {latent['latent_dim']} dimensions are active over {latent['images']:,}"
    assert active in third
    assert f"the posterior means of {latent['images']:,} faces have length" in third and "sqrt(200) = 14.1" in third
    fitted = latent["images"] // 2
    assert f"probe** (fitted on {fitted:,} codes, scored on {latent['images'] - fitted:,} others)" in third
    fourth = _markdown(executed / NOTEBOOKS[3])
    assert f"**These averages** ({train_images:,} faces;" in fourth and "Measured on these 4 averages" in fourth
    row = next(line for line in fourth.splitlines() if line.startswith("| Eyeglasses |"))
    aligned = row.split("|")[2].strip().split(" (")[0]
    assert f"the Eyeglasses direction is most aligned with {aligned}'s: it points" in fourth


def test_reconstruction_term_weight_reaches_the_loss(checkout: Path, tmp_path: Path) -> None:
    weight = 3.0
    pm.execute_notebook(checkout / "notebooks" / NOTEBOOKS[0], tmp_path / NOTEBOOKS[0], cwd=str(checkout / "notebooks"),
                        parameters={"device": "cpu", "batch_size": 32, "num_epochs": 1, "output_dir": "outputs/w3",
                                    "reconstruction_term_weight": weight},
                        progress_bar=False, kernel_name="python3")
    run = json.loads((checkout / "outputs" / "w3" / "metrics.json").read_text())["runs"]["transpose"]
    assert run["reconstruction_term_weight"] == weight
    for split in ("train", "valid", "test"):
        losses = run[split]
        assert losses["combined"] == pytest.approx(weight * losses["reconstruction"] + losses["kl"], rel=1e-4), split
        assert losses["combined"] > 1.5 * (losses["reconstruction"] + losses["kl"]), split
