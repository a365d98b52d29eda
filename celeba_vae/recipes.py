"""How much training a run does: the lecture's settings, the laptop recipe for a CPU, the mps recipe for an Apple
GPU, and the demo; and the knobs notebook 5 turns, with their values. Light on purpose: ``run_lecture.py --help`` reads
these names without importing torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The knobs notebook 5 turns and the values it tries (the lecture's among them); the runner's --knobs reads the names.
KNOB_VALUES: dict[str, tuple[Any, ...]] = {
    "latent_dim": (2, 16, 200),
    "reconstruction_term_weight": (0.1, 1.0, 10.0),
    "decoder": ("transpose", "nearest"),
    "learning_rate": (1e-4, 5e-4, 2e-3),
}
KNOB_NAMES = tuple(KNOB_VALUES)


def knob_runs(results: Sequence[Mapping[str, Any]], knob: str) -> list[Mapping[str, Any]]:
    """The runs of a sweep's ``results`` that change ``knob``, and the lecture's (``"knob": "baseline"``), ordered by
    the knob's value."""
    if knob not in KNOB_VALUES:
        raise ValueError(f"unknown knob {knob!r}; choose from {list(KNOB_VALUES)}")
    return sorted((r for r in results if r["knob"] in ("baseline", knob)), key=lambda r: r[knob])


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
        epochs = f"{self.num_epochs} epoch{'' if self.num_epochs == 1 else 's'}"
        return f"{images}, {epochs}, batch size {self.batch_size}{capped}"

    def override(self, *, say: bool = True, **values: int | None) -> Recipe:
        """This recipe with every value that is not ``None`` replaced; its name says what changed
        (``"demo, num_epochs=1"``). ``say``: print in one line what training does instead (nothing when unchanged)."""
        changes = {k: v for k, v in values.items() if v is not None and v != getattr(self, k)}
        for key, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r} must be a whole number of at least 1")
        if not changes:
            return self
        named = ", ".join(f"{key}={value}" for key, value in changes.items())
        recipe = replace(self, name=f"{self.name}, {named}", **changes)
        if say:
            print(f"Training instead: {recipe.name} ({recipe.describe()})")
        return recipe


RECIPES = {
    "lecture": Recipe("lecture", 50, 256, None, None),
    "laptop": Recipe("laptop", 10, 64, 8_000, 2_000),
    "demo": Recipe("demo", 5, 64, None, None),
    "mps": Recipe("mps", 10, 128, 40_000, 5_000),
}


def recipe_name(recipe: str, device_type: str, data_kind: str) -> str:
    """The recipe ``recipe`` names; ``"auto"`` is the demo on synthetic faces, the lecture on a CUDA GPU, the mps
    recipe on an Apple GPU and the laptop recipe on a CPU."""
    if recipe not in (*RECIPES, "auto"):
        raise ValueError(f"recipe={recipe!r} is not one of {(*RECIPES, 'auto')}")
    if recipe != "auto":
        return recipe
    return "demo" if data_kind == "synthetic" else {"cpu": "laptop", "mps": "mps"}.get(device_type, "lecture")


def recipe_line(recipe: str, chosen: Recipe) -> str:
    """One line saying what ``chosen`` trains and, when ``recipe="auto"`` chose less than the lecture, how to get
    the lecture's full settings."""
    line = f"Recipe: {chosen.name} ({chosen.describe()})"
    base = chosen.name.split(",")[0]  # "laptop, num_epochs=1" is the laptop recipe, changed
    if recipe == "auto" and base == "laptop":
        line += (". No GPU, so not the lecture's 11-hour CPU run: recipe='lecture' (run_lecture.py --recipe lecture) "
                 "gives the full settings")
    if recipe == "auto" and base == "mps":
        lecture = RECIPES["lecture"]
        line += (f". Apple GPU: {_image_steps(chosen):,} image-steps, {_image_steps(lecture) // _image_steps(chosen)}x "
                 f"fewer than the lecture's {lecture.num_epochs} epochs, which stream the 7.45 GiB training split from "
                 "disk every epoch: recipe='lecture' (run_lecture.py --recipe lecture) gives the full settings")
    return line


def choose_recipe(recipe: str, device: torch.device, data_kind: str) -> Recipe:
    """The recipe :func:`recipe_name` picks, said in one line (:func:`recipe_line`)."""
    chosen = RECIPES[recipe_name(recipe, device.type, data_kind)]
    print(recipe_line(recipe, chosen))
    return chosen


def _image_steps(recipe: Recipe) -> int:
    """Images the recipe trains on, counted once per epoch (the full training split when it takes all of it)."""
    from celeba_vae.celeba_files import OFFICIAL_SPLIT_SIZES  # numpy and Pillow: only when a line needs it

    return (recipe.train_images or OFFICIAL_SPLIT_SIZES["train"]) * recipe.num_epochs
