"""What every notebook does first: the device, the seeds, the data, where outputs go, and loading the weights.

Paths follow one rule (:mod:`celeba_vae.paths`): a relative path is relative to the repository root.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from celeba_vae.checkpoint import checkpoint_run_id
from celeba_vae.paths import RunFiles, run_files
from celeba_vae.recipes import Recipe, choose_recipe
from celeba_vae.runtime import output_folder
from helper_data import DatasetChoice, prepare_dataset
from helper_train import EpochImages
from helper_utils import get_device, load_model, set_all_seeds, update_metrics
from model import DECODERS


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
    def checkpoint(self) -> Path:
        return self.files().checkpoint

    @property
    def figures(self) -> Path:
        return self.files().figures

    @property
    def metrics(self) -> Path:
        return self.files().metrics

    def record(self, section: str, values: dict[str, object]) -> None:
        """Write ``values`` into ``section`` of this run's ``metrics.json``, tied to the weights they measured: an
        entry keyed by a decoder is recorded with the run id of that decoder's checkpoint, and results measured on
        weights a new run has since replaced are dropped (:func:`helper_utils.update_metrics`)."""
        run_ids = {decoder: checkpoint_run_id(path) for decoder in DECODERS
                   if (path := self.files(decoder).checkpoint).is_file()}
        update_metrics(self.metrics, section, values, run_ids)

    def training_options(self, plan: Recipe, train_loader: Iterable, valid_loader: Iterable,
                         test_loader: Iterable, latent_dim: int, resume: bool, precision: str,
                         compile: bool) -> dict[str, Any]:
        """The keyword arguments of :func:`helper_train.train_vae_v1` that go beyond the lecture: validation,
        where the checkpoint, the lecture's ``vae_celeba_02.pt`` and the per-epoch pictures of test faces go,
        resuming, precision, ``torch.compile``, and what the checkpoint records about the run."""
        files = self.files()
        return {
            "valid_loader": valid_loader,
            "checkpoint_path": files.checkpoint,
            "resume": resume,
            "precision": precision,
            "compile": compile,
            "settings": self.checkpoint_settings(plan, len(train_loader.dataset)),
            "save_model": files.weights,
            "epoch_images": EpochImages.from_loader(test_loader, files.epoch_images, seed=self.seed,
                                                    latent_dim=latent_dim),
        }

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
