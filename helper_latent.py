"""Latent-space tools beyond the lecture: encoding a data set, statistics, attribute directions, interpolation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from IPython.display import Markdown

from celeba_vae.celeba_files import CELEBA_ATTRIBUTE_NAMES
from helper_data import attribute_index, first_images
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


def attribute_direction(
    model: torch.nn.Module, data_loader: Iterable, attribute: str | int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(direction, mean_with, mean_without)`` in latent space for an attribute given by name or index.

    Uses the posterior means of all images (eval mode), so the direction does not depend on sampling noise;
    :func:`attribute_means` gives every attribute's in the same single pass.
    """
    index = attribute_index(attribute) if isinstance(attribute, str) else attribute
    means = attribute_means(data_loader, device, model=model, max_images=None)
    return means.direction(index), means.with_attribute[index], means.without_attribute[index]


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


@dataclass(frozen=True)
class AttributeMeans:
    """Mean embedding (image or latent mean) of the examples with and without each of the 40 attributes."""

    with_attribute: torch.Tensor
    without_attribute: torch.Tensor
    count_with: torch.Tensor
    count_without: torch.Tensor

    def direction(self, attribute: str | int) -> torch.Tensor:
        """``mean_with - mean_without`` of one attribute, given by name or index."""
        index = attribute_index(attribute) if isinstance(attribute, str) else attribute
        if self.count_with[index] == 0 or self.count_without[index] == 0:
            raise ValueError(f"attribute {CELEBA_ATTRIBUTE_NAMES[index]} is "
                             f"{'never' if self.count_with[index] == 0 else 'always'} present in these images; "
                             "a direction needs examples with and without it")
        return self.with_attribute[index] - self.without_attribute[index]

    def aligned_attributes(self, attribute: str | int, k: int = 4) -> list[tuple[str, float]]:
        """The ``k`` other attributes whose directions are most aligned with this one's (largest ``|cosine|``),
        as ``(name, cosine)``: a direction that also moves them changes more than its own attribute."""
        index = attribute_index(attribute) if isinstance(attribute, str) else attribute
        target = self.direction(index).flatten()
        cosines = []
        for other, name in enumerate(CELEBA_ATTRIBUTE_NAMES):
            if other == index or self.count_with[other] == 0 or self.count_without[other] == 0:
                continue
            cosine = torch.nn.functional.cosine_similarity(target, self.direction(other).flatten(), dim=0)
            cosines.append((name, float(cosine)))
        return sorted(cosines, key=lambda item: -abs(item[1]))[:k]


@torch.no_grad()
def attribute_means(
    data_loader: Iterable,
    device: str | torch.device,
    model: torch.nn.Module | None = None,
    max_images: int | None = 20_000,
) -> AttributeMeans:
    """Means with and without every attribute in one pass over up to ``max_images`` images, summed on the device.

    With ``model`` the embedding is the posterior mean (eval mode); without, the image itself (average faces).
    """
    totals = with_sums = None
    count_with = torch.zeros(len(CELEBA_ATTRIBUTE_NAMES), device=device)
    seen = 0
    with eval_mode(model) if model is not None else contextlib.nullcontext():
        for images, labels in first_images(data_loader, max_images):
            if labels.ndim != 2 or labels.shape[1] != len(CELEBA_ATTRIBUTE_NAMES):
                raise ValueError(f"labels of shape {tuple(labels.shape)} hold no CelebA attributes; a bare image "
                                 "folder has no annotations: add list_attr_celeba.txt and list_eval_partition.txt")
            images, labels = images.to(device), labels.to(device, torch.float32)
            embedded = (model.encode(images)[0] if model is not None else images).flatten(1).float()
            batch_with = labels.T @ embedded
            with_sums = batch_with if with_sums is None else with_sums + batch_with
            totals = embedded.sum(0) if totals is None else totals + embedded.sum(0)
            count_with += labels.sum(0)
            seen += len(images)
    if totals is None:
        raise ValueError("attribute_means got an empty data loader")
    shape = (len(CELEBA_ATTRIBUTE_NAMES), *(images.shape[1:] if model is None else (model.latent_dim,)))
    count_without = seen - count_with
    mean_with = with_sums / count_with.clamp(min=1)[:, None]
    mean_without = (totals - with_sums) / count_without.clamp(min=1)[:, None]
    return AttributeMeans(mean_with.reshape(shape).cpu(), mean_without.reshape(shape).cpu(),
                          count_with.cpu(), count_without.cpu())


def aligned_attributes_table(means: AttributeMeans, attributes: Iterable[str], k: int = 4) -> Markdown:
    """For each of ``attributes``, the ``k`` other attributes whose directions point most the same way
    (:meth:`AttributeMeans.aligned_attributes`), as a table Jupyter renders."""
    rows = [[name, ", ".join(f"{other} ({cosine:+.2f})" for other, cosine in means.aligned_attributes(name, k))]
            for name in attributes]
    return markdown_table(["direction", "most aligned other directions (cosine)"], rows, numbers_from=2)
