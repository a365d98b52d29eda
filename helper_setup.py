"""What every notebook does first: the device, the seeds, the data, where outputs go, and loading the weights.

Paths follow one rule (:mod:`celeba_vae.paths`): a relative path is relative to the repository root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from celeba_vae.paths import RunFiles, run_files
from celeba_vae.recipes import Recipe, choose_recipe
from celeba_vae.runtime import output_folder
from helper_data import DatasetChoice, prepare_dataset
from helper_utils import get_device, load_model, set_all_seeds, update_metrics


@dataclass(frozen=True)
class NotebookSetup:
    """Everything a notebook's first cell settles: device, data, and where outputs go."""

    device: torch.device
    data: DatasetChoice
    output_dir: Path
    decoder: str
    seed: int
    recipe: Recipe

    def files(self, decoder: str | None = None) -> RunFiles:
        """Where the run of ``decoder`` (default: this notebook's) keeps its checkpoint, weights and figures."""
        return run_files(self.output_dir, decoder or self.decoder)

    @property
    def run_dir(self) -> Path:
        return self.files().run_dir

    @property
    def checkpoint(self) -> Path:
        return self.files().checkpoint

    @property
    def figures(self) -> Path:
        return self.files().figures

    @property
    def metrics(self) -> Path:
        return self.files().metrics

    def record(self, section: str, values: dict[str, object]) -> None:
        """Write ``values`` into ``section`` of this run's ``metrics.json``."""
        update_metrics(self.metrics, section, values)

    def title(self, text: str) -> str:
        """A figure title that says plainly when the faces are synthetic."""
        return f"{text} (SYNTHETIC faces, not CelebA)" if self.data.kind == "synthetic" else text

    def checkpoint_settings(self, recipe: Recipe, train_images: int) -> dict[str, object]:
        """What a checkpoint records about the run: the data it was trained on and the training settings."""
        return {"data": self.data.record(train_images), "recipe": recipe.name, "batch_size": recipe.batch_size,
                "seed": self.seed, "crop": 128}

    def load_model(self, decoder: str | None = None) -> torch.nn.Module:
        """The trained weights of ``decoder`` (default: this notebook's), after checking they were trained on
        the data this notebook reads."""
        path = self.files(decoder).checkpoint
        if not path.is_file():
            raise FileNotFoundError(
                f"no trained weights at {path}: run notebooks/1_train_vae.ipynb first with decoder="
                f"{decoder or self.decoder!r} and the same output_dir ({self.output_dir})"
            )
        return load_model(path, self.device, data=self.data.record())


def start_notebook(
    *,
    dataset: str = "auto",
    data_root: str | Path | None = None,
    output_dir: str | Path | None = None,
    decoder: str = "transpose",
    device: str = "auto",
    recipe: str = "auto",
    random_seed: int = 123,
    num_synthetic: int = 2000,
    download: bool = False,
    drive: bool = False,
    runtime: str | None = None,
) -> NotebookSetup:
    """Choose the device, seed everything, find the data (saying plainly when it is synthetic) and print where
    everything is, as absolute paths. Nothing is written under ``notebooks/``.

    ``download=True`` fetches CelebA from the Hugging Face Hub into ``data_root`` when it is found neither there
    nor where Kaggle attaches it (see :func:`helper_data.prepare_dataset`). ``drive=True`` (Colab) mounts Google
    Drive and keeps the outputs there, so a disconnected runtime resumes from its last epoch; on Kaggle they go to
    ``/kaggle/working/outputs`` (see :func:`celeba_vae.runtime.output_folder`). ``runtime`` (``"colab"``,
    ``"kaggle"``, ``"local"``) is detected when ``None``.
    """
    data = prepare_dataset(dataset, data_root, num_synthetic, random_seed, download=download)
    print(data.message)
    chosen = get_device(device)
    set_all_seeds(random_seed)
    outputs = output_folder(output_dir, drive, runtime)
    setup = NotebookSetup(chosen, data, outputs, decoder, random_seed, choose_recipe(recipe, chosen, data.kind))
    print(f"Device: {chosen} | data: {data.root} | outputs: {setup.output_dir}")
    return setup
