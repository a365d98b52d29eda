"""Latent-space tools beyond the lecture: encoding a data set, statistics, interpolation, aligned attribute directions
(the directions themselves: :func:`helper_data.attribute_means`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from IPython.display import Markdown

from helper_data import AttributeMeans, first_images
from helper_utils import eval_mode, markdown_table


@torch.no_grad()
def encode_dataset(
    model: torch.nn.Module, data_loader: Iterable, device: str | torch.device, max_images: int | None = None
) -> dict[str, torch.Tensor]:
    """Encode up to ``max_images`` images in eval mode: ``z`` (sampled), ``z_mean``, ``z_log_var``, ``attributes``."""
    parts: dict[str, list[torch.Tensor]] = {"z": [], "z_mean": [], "z_log_var": [], "attributes": []}
    with eval_mode(model):
        for images, labels in first_images(data_loader, max_images):
            z_mean, z_log_var = model.encode(images.to(device))
            parts["z"].append(model.reparameterize(z_mean, z_log_var).cpu())
            parts["z_mean"].append(z_mean.cpu())
            parts["z_log_var"].append(z_log_var.cpu())
            parts["attributes"].append(labels.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def latent_statistics(
    z_mean: torch.Tensor, z_log_var: torch.Tensor, active_threshold: float = 0.01
) -> dict[str, object]:
    """Per-dimension KL to the prior, active units and how far the aggregate posterior is from N(0, 1).

    A unit is active when the variance over images of its posterior mean exceeds ``active_threshold``
    (Burda et al., 2016). The aggregate posterior of dimension j is the mixture of the per-image Gaussians;
    its mean and standard deviation are compared with N(0, 1) through the KL of a Gaussian with those moments.
    """
    z_mean, z_log_var = z_mean.double(), z_log_var.double()
    kl_per_dim = (-0.5 * (1 + z_log_var - z_mean**2 - z_log_var.exp())).mean(dim=0)
    agg_mean = z_mean.mean(dim=0)
    agg_var = (z_log_var.exp() + z_mean**2).mean(dim=0) - agg_mean**2
    gaussian_kl = 0.5 * (agg_var + agg_mean**2 - 1 - agg_var.log())
    active = z_mean.var(dim=0) > active_threshold
    return {
        "kl_per_dim": kl_per_dim.float(),
        "total_kl": float(kl_per_dim.sum()),
        "active_units": int(active.sum()),
        "active_mask": active,
        "aggregate_mean": agg_mean.float(),
        "aggregate_std": agg_var.sqrt().float(),
        "aggregate_kl_to_prior": gaussian_kl.float(),
    }


@torch.no_grad()
def decode(model: torch.nn.Module, z: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Decode latent codes (B, D) or (D,) to images on the CPU, in eval mode."""
    with eval_mode(model):
        return model.decode(z.reshape(-1, z.shape[-1]).to(device)).cpu()


@torch.no_grad()
def reconstruct(model: torch.nn.Module, images: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Deterministic reconstructions: decode the posterior means of ``images``."""
    with eval_mode(model):
        return model.reconstruct(images.to(device)).cpu()


@torch.no_grad()
def interpolate(
    model: torch.nn.Module, image_a: torch.Tensor, image_b: torch.Tensor, device: str | torch.device, steps: int = 10
) -> torch.Tensor:
    """Decode ``steps`` points on the line between the posterior means of two images: (steps, 3, H, W).

    The first and last frames are the reconstructions of ``image_a`` and ``image_b``.
    """
    if steps < 2:
        raise ValueError(f"steps={steps} must be at least 2")
    with eval_mode(model):
        z_mean, _ = model.encode(torch.stack([image_a, image_b]).to(device))
    weights = torch.linspace(0, 1, steps, device=z_mean.device, dtype=z_mean.dtype).unsqueeze(1)
    return decode(model, (1 - weights) * z_mean[0] + weights * z_mean[1], device)


def aligned_attributes_table(means: AttributeMeans, attributes: Iterable[str], k: int = 4) -> Markdown:
    """For each of ``attributes``, the ``k`` other attributes whose directions point most the same way
    (:meth:`AttributeMeans.aligned_attributes`), as a table Jupyter renders."""
    rows = [[name, ", ".join(f"{other} ({cosine:+.2f})" for other, cosine in means.aligned_attributes(name, k))]
            for name in attributes]
    return markdown_table(["direction", "most aligned other directions (cosine)"], rows, numbers_from=2)
