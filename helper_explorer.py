"""A latent explorer: sliders along latent directions in a live Jupyter, a static grid everywhere else."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from helper_latent import decode
from helper_plotting import save_figure, show_image

if TYPE_CHECKING:
    import ipywidgets

EXPLORER_STRENGTHS = (-3.0, -1.5, 0.0, 1.5, 3.0)
STATIC_EXPLORER_ENV = "CELEBA_VAE_STATIC_WIDGETS"


def _shifted_code(
    z_base: torch.Tensor, directions: Mapping[str, torch.Tensor], strengths: Mapping[str, float]
) -> torch.Tensor:
    unknown = set(strengths) - set(directions)
    if unknown:
        raise KeyError(f"strengths for unknown directions {sorted(unknown)}; known: {list(directions)}")
    z = z_base.detach().cpu().float().reshape(-1).clone()
    for name, strength in strengths.items():
        z += float(strength) * directions[name].detach().cpu().float().reshape(-1)
    return z


def explorer_image(
    model: torch.nn.Module,
    z_base: torch.Tensor,
    directions: Mapping[str, torch.Tensor],
    strengths: Mapping[str, float],
    device: str | torch.device,
) -> torch.Tensor:
    """Decode ``z_base + sum(strengths[name] * directions[name])`` in eval mode: one (3, H, W) image on the CPU.

    Directions missing from ``strengths`` count as strength 0; a strength for an unknown direction is a KeyError.
    """
    return decode(model, _shifted_code(z_base, directions, strengths), device)[0]


def top_variance_dimensions(z_mean: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The ``k`` latent dimensions whose posterior means vary most, largest first, as ``{"z[j]": direction}``.

    Each direction is one-hot at ``j`` scaled by that dimension's standard deviation, so strength 1 is one std.
    """
    z_mean = z_mean.detach().cpu().float()
    std = z_mean.std(dim=0)
    values, indices = torch.topk(std, min(k, len(std)))
    directions = {}
    for value, j in zip(values.tolist(), indices.tolist(), strict=True):
        direction = torch.zeros_like(std)
        direction[j] = value
        directions[f"z[{j}]"] = direction
    return directions


def _live_frontend() -> bool:
    """True in a Jupyter kernel with ipywidgets, unless ``CELEBA_VAE_STATIC_WIDGETS`` is set (papermill runs)."""
    if os.environ.get(STATIC_EXPLORER_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if importlib.util.find_spec("ipywidgets") is None or importlib.util.find_spec("ipykernel") is None:
        return False
    from ipykernel.zmqshell import ZMQInteractiveShell
    from IPython import get_ipython

    return isinstance(get_ipython(), ZMQInteractiveShell)


def latent_explorer(
    model: torch.nn.Module,
    z_base: torch.Tensor,
    directions: Mapping[str, torch.Tensor],
    device: str | torch.device,
    interactive: bool | None = None,
    strengths: Sequence[float] = EXPLORER_STRENGTHS,
    slider_range: float = 3.0,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> ipywidgets.interactive | Figure:
    """Explore the latent space around ``z_base`` along ``directions``: sliders or a static grid.

    ``interactive=True`` returns an ``ipywidgets.interactive`` with one FloatSlider (-``slider_range``..
    ``slider_range``) per direction that redraws :func:`explorer_image` (its ``result`` is the image).
    ``interactive=False`` returns a Figure: one row per direction, one column per strength in ``strengths``
    (saved to ``save_path`` if given). ``None`` means interactive only in a Jupyter kernel with ipywidgets;
    papermill also runs a real kernel where nobody sees widgets, so headless runs pass ``interactive=False``
    (e.g. as a notebook parameter) or set the environment variable ``CELEBA_VAE_STATIC_WIDGETS=1``.
    """
    if not directions:
        raise ValueError("directions is empty: pass e.g. top_variance_dimensions(z_mean, k=5)")
    if interactive is None:
        interactive = _live_frontend()
    if interactive:
        return _explorer_widget(model, z_base, directions, device, slider_range)
    codes = torch.stack([_shifted_code(z_base, directions, {name: s}) for name in directions for s in strengths])
    images = decode(model, codes, device)
    images = images.view(len(directions), len(strengths), *images.shape[1:])
    fig, axes = plt.subplots(len(directions), len(strengths), figsize=(1.6 * len(strengths), 1.7 * len(directions)),
                             squeeze=False)
    for row, name in enumerate(directions):
        for col, strength in enumerate(strengths):
            show_image(axes[row][col], images[row, col])
            if row == 0:
                axes[row][col].set_title(f"{strength:+g}", fontsize=9)
        axes[row][0].text(-0.1, 0.5, name, transform=axes[row][0].transAxes, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, save_path, title)


def _explorer_widget(
    model: torch.nn.Module,
    z_base: torch.Tensor,
    directions: Mapping[str, torch.Tensor],
    device: str | torch.device,
    slider_range: float,
) -> ipywidgets.interactive:
    import ipywidgets
    from IPython.display import display

    def redraw(**strengths: float) -> torch.Tensor:
        image = explorer_image(model, z_base, directions, strengths, device)
        fig, ax = plt.subplots(figsize=(3, 3))
        show_image(ax, image)
        display(fig)
        plt.close(fig)
        return image

    sliders = {name: ipywidgets.FloatSlider(value=0.0, min=-slider_range, max=slider_range, step=0.1,
                                            description=name, continuous_update=False)
               for name in directions}
    return ipywidgets.interactive(redraw, **sliders)

