"""Seeds, devices, eval mode, loading the weights and the metrics file: the small utilities the notebooks use."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from IPython.display import Markdown

from celeba_vae.atomic_files import atomic_write
from celeba_vae.checkpoint import check_settings, load_checkpoint
from model import VAE


def set_all_seeds(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic() -> None:
    """Ask PyTorch for deterministic algorithms (warn, not fail, where none exists)."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or the best available one: cuda > mps > cpu."""
    if device not in (None, "auto"):
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was requested but CUDA is not available; use 'cpu' or 'auto'")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device={device!r} was requested but MPS is not available; use 'cpu' or 'auto'")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode inside the block and restore its previous mode afterwards, also on errors.

    Combine with ``torch.no_grad()``: ``with eval_mode(model), torch.no_grad(): ...``.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)



def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    model: torch.nn.Module | None = None,
    data: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Load weights from ``path`` into ``model`` (built from the checkpoint's settings when ``None``), in eval mode.

    Given ``data`` (the run's ``settings["data"]``), refuse weights trained on other data (:func:`check_data`).
    """
    checkpoint = load_checkpoint(path, map_location="cpu")
    if model is None:
        settings = checkpoint.get("settings", {})
        model = VAE(latent_dim=settings.get("latent_dim", 200), decoder=settings.get("decoder", "transpose"))
    check_settings(checkpoint, model, path, data)
    model.load_state_dict(checkpoint["model"], strict=True)
    return model.to(device).eval()


def update_metrics(path: str | Path, section: str, values: dict[str, Any]) -> None:
    """Merge ``values`` into ``section`` of the metrics JSON at ``path`` (written atomically); :func:`read_metrics`
    reads it back. Returns nothing, so a notebook cell that ends with it prints nothing."""
    path = Path(path)
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics.setdefault(section, {}).update(values)
    atomic_write(path, lambda f: f.write(json.dumps(metrics, indent=2).encode()))


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The metrics JSON at ``path`` (empty when it does not exist yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], numbers_from: int = 1) -> Markdown:
    """A table Jupyter renders (its Markdown text is ``.data``); columns from ``numbers_from`` on are right-aligned."""
    rule = ["---" if i < numbers_from else "---:" for i in range(len(header))]
    lines = [header, rule, *rows]
    return Markdown("\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines))


def format_number(value: float | None, digits: int) -> str:
    """``value`` with ``digits`` decimals, or ``-`` where it was not measured (``None`` or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"
