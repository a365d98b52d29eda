"""What every notebook does first: one rule for paths, the device, the seeds, the data, and loading the weights.

Paths follow one rule wherever the code runs (Jupyter with the kernel in ``notebooks/``, the repository root,
papermill or ``run_lecture.py``): a relative path is relative to the repository root, so the defaults ``data`` and
``outputs`` are the repository's ``data/`` and ``outputs/``. The environment variables ``CELEBA_VAE_DATA`` and
``CELEBA_VAE_OUTPUTS`` point the defaults elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from helper_data import DatasetChoice, prepare_dataset
from helper_utils import get_device, load_model, set_all_seeds

REPO_ROOT = Path(__file__).resolve().parent
DATA_ENV, OUTPUTS_ENV = "CELEBA_VAE_DATA", "CELEBA_VAE_OUTPUTS"


def project_path(path: str | Path | None, default: str) -> Path:
    """The absolute path a user means by ``path``.

    ``None`` (or the bare default name ``"data"``/``"outputs"``) means the environment variable
    (``CELEBA_VAE_DATA``/``CELEBA_VAE_OUTPUTS``) when set, else the repository's folder of that name. Any other
    relative path is taken relative to the repository root, never to the working directory; ``~`` is expanded.
    """
    env = {"data": DATA_ENV, "outputs": OUTPUTS_ENV}[default]
    if path is None or str(path) == default:
        path = os.environ.get(env) or default
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


@dataclass(frozen=True)
class Recipe:
    """How much training a run does: epochs, batch size, and how many images (``None``: the whole split)."""

    name: str
    num_epochs: int
    batch_size: int
    train_images: int | None
    eval_images: int | None

    @property
    def direction_images(self) -> int:
        """Training images averaged for notebook 4's attribute directions: this recipe's, at most 20,000."""
        return min(self.train_images or 20_000, 20_000)

    def describe(self) -> str:
        images = "all training images" if self.train_images is None else f"{self.train_images:,} training images"
        capped = "" if self.eval_images is None else f", validation/test capped at {self.eval_images:,} images"
        return f"{images}, {self.num_epochs} epochs, batch size {self.batch_size}{capped}"

    def override(self, **values: int | None) -> Recipe:
        """This recipe with every value that is not ``None`` replaced, printed in one line."""
        changed = {k: v for k, v in values.items() if v is not None}
        for key, value in changed.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r} must be a whole number of at least 1")
        recipe = replace(self, name=f"{self.name} (changed)", **changed) if changed else self
        print(f"Training: {recipe.describe()}")
        return recipe


RECIPES = {
    "lecture": Recipe("lecture", 50, 256, None, None),
    "laptop": Recipe("laptop", 10, 64, 8_000, 2_000),
    "demo": Recipe("demo", 5, 64, None, None),
}


def choose_recipe(recipe: str, device: torch.device, data_kind: str) -> Recipe:
    """``recipe`` by name; ``"auto"`` is the demo on synthetic faces, the lecture on a GPU and the laptop recipe on a
    CPU, said in one line with the way to the lecture's full settings."""
    if recipe not in (*RECIPES, "auto"):
        raise ValueError(f"recipe={recipe!r} is not one of {(*RECIPES, 'auto')}")
    name = recipe
    if recipe == "auto":
        name = "demo" if data_kind == "synthetic" else "laptop" if device.type == "cpu" else "lecture"
    chosen = RECIPES[name]
    line = f"Recipe: {name} ({chosen.describe()})"
    if recipe == "auto" and name == "laptop":
        line += (". No GPU, so not the lecture's 11-hour CPU run: recipe='lecture' (run_lecture.py --recipe lecture) "
                 "gives the full settings")
    print(line)
    return chosen


@dataclass(frozen=True)
class NotebookSetup:
    """Everything a notebook's first cell settles: device, data, and where outputs go."""

    device: torch.device
    data: DatasetChoice
    output_dir: Path
    decoder: str
    seed: int
    recipe: Recipe

    @property
    def run_dir(self) -> Path:
        """``output_dir/<decoder>``: the checkpoint and the lecture's ``vae_celeba_02.pt``."""
        return self.output_dir / self.decoder

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def figures(self) -> Path:
        return self.output_dir / "figures"

    @property
    def metrics(self) -> Path:
        return self.output_dir / "metrics.json"

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
        path = self.output_dir / (decoder or self.decoder) / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"no trained weights at {path}: run notebooks/1_train_vae.ipynb first with decoder="
                f"{decoder or self.decoder!r} and the same output_dir ({self.output_dir})"
            )
        return load_model(path, self.device, data=self.data.record())


def start_notebook(
    dataset: str = "auto",
    data_root: str | Path | None = None,
    output_dir: str | Path | None = None,
    decoder: str = "transpose",
    device: str = "auto",
    recipe: str = "auto",
    random_seed: int = 123,
    num_synthetic: int = 2000,
) -> NotebookSetup:
    """Choose the device, seed everything, find the data (saying plainly when it is synthetic) and print where
    everything is, as absolute paths. Nothing is written under ``notebooks/``."""
    data = prepare_dataset(dataset, project_path(data_root, "data"), num_synthetic, random_seed)
    print(data.message)
    chosen = get_device(device)
    set_all_seeds(random_seed)
    setup = NotebookSetup(chosen, data, project_path(output_dir, "outputs"), decoder, random_seed,
                          choose_recipe(recipe, chosen, data.kind))
    print(f"Device: {chosen} | data: {data.root} | outputs: {setup.output_dir}")
    return setup
