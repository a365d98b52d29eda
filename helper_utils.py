"""Seeds, devices, eval mode, loading the weights and the metrics file: the small utilities the notebooks use."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from IPython.display import Markdown

from celeba_vae.atomic_files import atomic_write
from celeba_vae.checkpoint import check_settings, load_checkpoint
from celeba_vae.runtime import cuda_usable, unsupported_gpu
from model import VAE

RUN_IDS = "run_ids"  # metrics.json's section saying which weights (run id per decoder) each entry measured


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
    """The requested device, or the best available one: cuda > mps > cpu.

    A CUDA card the installed torch cannot drive (Kaggle's P100, say) is never chosen: ``"auto"`` says why in two
    lines and picks the CPU; ``"cuda"`` stops with that reason.
    """
    if device not in (None, "auto"):
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was requested but CUDA is not available; use 'cpu' or 'auto'")
        if chosen.type == "cuda" and (reason := unsupported_gpu()):
            raise RuntimeError(f"device={device!r}: {reason} Or use device='auto' or 'cpu'.")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device={device!r} was requested but MPS is not available; use 'cpu' or 'auto'")
        return chosen
    if cuda_usable():
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


def update_metrics(
    path: str | Path, section: str, values: dict[str, Any], run_ids: Mapping[str, str | None] | None = None
) -> None:
    """Merge ``values`` into ``section`` of the metrics JSON at ``path`` (written atomically); :func:`read_metrics`
    reads it back. Returns nothing, so a notebook cell that ends with it prints nothing.

    Given ``run_ids`` (the run id of each decoder's weights now on disk), the file never presents two models'
    results as one: the entries of ``values`` keyed by a decoder are recorded, in the file's ``"run_ids"`` section,
    as measured on those weights, and every entry measured on other weights of that decoder is dropped (the file as
    it was is kept as ``metrics.json.bak``), said calmly in one line: nothing is printed on a first run.
    """
    path = Path(path)
    metrics = read_metrics(path)
    if run_ids is not None:
        stamps = metrics.setdefault(RUN_IDS, {})
        stale = [(name, decoder) for name, entries in metrics.items() if name != RUN_IDS and isinstance(entries, dict)
                 for decoder in entries if decoder in run_ids and stamps.get(name, {}).get(decoder) != run_ids[decoder]
                 and not (name == section and decoder in values)]
        if stale:
            atomic_write(path.with_name(path.name + ".bak"), lambda f: f.write(path.read_bytes()))
            for name, decoder in stale:
                del metrics[name][decoder]
                stamps.get(name, {}).pop(decoder, None)
            print(f"{path.name}: {', '.join(f'{name} ({decoder})' for name, decoder in stale)} measured the weights "
                  f"this run replaced; kept in {path.name}.bak, measured again by the notebooks that follow")
        stamps.setdefault(section, {}).update({key: run_ids[key] for key in values if key in run_ids})
    metrics.setdefault(section, {}).update(values)
    atomic_write(path, lambda f: f.write(json.dumps(metrics, indent=2).encode()))


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The metrics JSON at ``path`` (empty when it does not exist yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


@torch.no_grad()
def layer_table(model: torch.nn.Module, input_size: Sequence[int] = (1, 3, 128, 128)) -> Markdown:
    """Every layer of ``model`` in the order an input of ``input_size`` passes them (in eval mode), each with its
    output shape without the batch dimension and its number of parameters, and the total: a table Jupyter renders."""
    shapes: dict[str, tuple[int, ...]] = {}
    leaves = {name: module for name, module in model.named_modules() if not any(module.children())}

    def hook(name: str) -> Callable[..., None]:
        def record(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            shapes.setdefault(name, tuple(output.shape[1:]))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in leaves.items()]
    try:
        with eval_mode(model):
            model(torch.zeros(tuple(input_size), device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    rows = [[f"`{name}`", f"`{leaves[name]}`", " x ".join(map(str, shape)),
             f"{sum(p.numel() for p in leaves[name].parameters()):,}"] for name, shape in shapes.items()]
    total = sum(p.numel() for p in model.parameters())
    return markdown_table(["layer", "module", "output shape", "parameters"],
                          [*rows, ["**total**", "", "", f"**{total:,}**"]], numbers_from=2)


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
