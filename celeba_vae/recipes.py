"""How much training a run does: the lecture's settings, the laptop recipe for a CPU, the mps recipe for an Apple
GPU, and the demo."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from celeba_vae.celeba_files import OFFICIAL_SPLIT_SIZES


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
    "mps": Recipe("mps", 10, 128, 40_000, 5_000),
}


def choose_recipe(recipe: str, device: torch.device, data_kind: str) -> Recipe:
    """``recipe`` by name; ``"auto"`` is the demo on synthetic faces, the lecture on a CUDA GPU, the mps recipe on an
    Apple GPU and the laptop recipe on a CPU, said in one line with the way to the lecture's full settings."""
    if recipe not in (*RECIPES, "auto"):
        raise ValueError(f"recipe={recipe!r} is not one of {(*RECIPES, 'auto')}")
    name = recipe
    if recipe == "auto":
        name = "demo" if data_kind == "synthetic" else {"cpu": "laptop", "mps": "mps"}.get(device.type, "lecture")
    chosen = RECIPES[name]
    line = f"Recipe: {name} ({chosen.describe()})"
    if recipe == "auto" and name == "laptop":
        line += (". No GPU, so not the lecture's 11-hour CPU run: recipe='lecture' (run_lecture.py --recipe lecture) "
                 "gives the full settings")
    if recipe == "auto" and name == "mps":
        lecture = RECIPES["lecture"]
        line += (f". Apple GPU: {_image_steps(chosen):,} image-steps, {_image_steps(lecture) // _image_steps(chosen)}x "
                 f"fewer than the lecture's {lecture.num_epochs} epochs, which stream the 7.45 GiB training split from "
                 "disk every epoch: recipe='lecture' (run_lecture.py --recipe lecture) gives the full settings")
    print(line)
    return chosen


def _image_steps(recipe: Recipe) -> int:
    """Images the recipe trains on, counted once per epoch (the full training split when it takes all of it)."""
    return (recipe.train_images or OFFICIAL_SPLIT_SIZES["train"]) * recipe.num_epochs
