"""What every notebook does first: the device, the seeds, the data, where outputs go, and loading the weights.

Paths follow one rule (:mod:`celeba_vae.paths`): a relative path is relative to the repository root.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from celeba_vae.checkpoint import checkpoint_run_id
from celeba_vae.paths import RunFiles, run_files
from celeba_vae.recipes import Recipe, choose_recipe
from celeba_vae.runtime import output_folder
from helper_data import DatasetChoice, get_cached_dataloaders_celeba, get_dataloaders_celeba, prepare_dataset
from helper_plotting import save_figures_to
from helper_utils import get_device, load_model, set_all_seeds, update_metrics
from model import DECODERS


@dataclass(frozen=True)
class NotebookRun:
    """The run a notebook reads or writes, as its first cell settled it: device, data, recipe and where its files go."""

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

    def dataloaders(self, loader: str = "fast", data_on_gpu: bool | str = "auto",
                    precision: str = "auto") -> tuple[Iterable, Iterable, Iterable]:
        """Training, validation and test loaders of this run's data, batch size and image counts.

        ``loader="fast"`` decodes every JPEG once into a uint8 cache (:func:`helper_data.get_cached_dataloaders_celeba`,
        ``data_on_gpu`` and ``precision`` say where and in which type batches wait); ``"lecture"`` is the lecture's
        ``DataLoader`` (:func:`helper_data.get_dataloaders_celeba`), which decodes every image in every epoch."""
        plan = self.recipe
        if loader == "fast":
            return get_cached_dataloaders_celeba(plan.batch_size, self.device, root=self.data, data_on_gpu=data_on_gpu,
                                                 precision=precision, train_images=plan.train_images,
                                                 eval_images=plan.eval_images, seed=self.seed)
        if loader == "lecture":
            return get_dataloaders_celeba(plan.batch_size, num_workers=2, root=self.data,
                                          train_images=plan.train_images, eval_images=plan.eval_images, seed=self.seed)
        raise ValueError(f"loader={loader!r} is not one of 'fast', 'lecture'")

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
    num_epochs: int | None = None,
    batch_size: int | None = None,
    train_images: int | None = None,
    eval_images: int | None = None,
) -> NotebookRun:
    """Choose the device, seed everything, find the data (saying plainly when it is synthetic) and print where
    everything is, as absolute paths. Nothing is written under ``notebooks/``.

    ``download=True`` fetches CelebA from the Hugging Face Hub into ``data_root`` when it is found neither there
    nor where Kaggle attaches it (see :func:`helper_data.prepare_dataset`). ``drive=True`` (Colab) mounts Google
    Drive and keeps the outputs there, so a disconnected runtime resumes from its last epoch; on Kaggle they go to
    ``/kaggle/working/outputs`` (see :func:`celeba_vae.runtime.output_folder`). ``runtime`` (``"colab"``,
    ``"kaggle"``, ``"local"``) is detected when ``None``. ``num_epochs``, ``batch_size``, ``train_images`` and
    ``eval_images`` override the recipe (said in one line). Titled figures are written to the run's figures folder
    from now on (:func:`helper_plotting.save_figures_to`), their titles marked when the faces are synthetic.
    """
    data = prepare_dataset(dataset, data_root, num_synthetic, random_seed, download=download)
    print(data.message)
    chosen = get_device(device)
    set_all_seeds(random_seed)
    outputs = output_folder(output_dir, drive, runtime)
    plan = choose_recipe(recipe, chosen, data.kind).override(num_epochs=num_epochs, batch_size=batch_size,
                                                             train_images=train_images, eval_images=eval_images)
    run = NotebookRun(chosen, data, outputs, decoder, random_seed, plan)
    save_figures_to(run.figures, prefix=f"{decoder}_",
                    title_note=" (SYNTHETIC faces, not CelebA)" if data.kind == "synthetic" else "")
    print(f"Device: {chosen} | data: {data.root} | outputs: {run.output_dir}")
    return run
