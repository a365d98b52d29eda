"""Fréchet distances between generated and real faces, through torchmetrics' ``FrechetInceptionDistance``.

* :func:`inception_fid`: the standard FID (Inception-v3 pool features, 2048-d, images resized to 299x299 by
  torch-fidelity's extractor); its weights are downloaded on first use, so it is ``None`` offline, said in one line.
* :class:`PosteriorMeans`: a trained VAE encoder as the feature extractor instead, for a Fréchet distance that needs
  no download. That is **not FID**: its numbers are comparable only between runs scored by the same encoder.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from helper_utils import eval_mode


class PosteriorMeans(nn.Module):
    """Feature extractor: the posterior means ``z_mean`` of a VAE (images in [0, 1]), in eval mode, no gradients."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.num_features = vae.latent_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.vae):
            device = next(self.vae.parameters()).device
            return self.vae.encode(images.to(device, torch.float32))[0].float()


class FrechetScore:
    """The Fréchet distance of sets of generated images to one fixed set of real images (features computed once).

    ``feature``: 2048 for FID's Inception-v3 features or any ``nn.Module`` mapping (B, 3, H, W) floats in [0, 1] to
    (B, D) features. Images go to ``device`` in batches of ``batch_size``; the statistics are accumulated in float64.
    """

    def __init__(self, real_images: torch.Tensor, feature: int | nn.Module = 2048, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> None:
        if len(real_images) < 2:
            raise ValueError(f"a Fréchet distance needs at least 2 real images, got {len(real_images)}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.metric = FrechetInceptionDistance(feature=feature, normalize=True, reset_real_features=False,
                                               input_img_size=tuple(real_images.shape[1:])).to(self.device)
        self._update(real_images, real=True)
        self.num_real = len(real_images)

    def _update(self, images: torch.Tensor, real: bool) -> None:
        for batch in images.split(self.batch_size):
            self.metric.update(batch.to(self.device, torch.float32).clamp(0, 1), real=real)

    def __call__(self, generated_images: torch.Tensor) -> float:
        """The distance of ``generated_images`` (N, 3, H, W) in [0, 1] to the real images given at construction."""
        if len(generated_images) < 2:
            raise ValueError(f"a Fréchet distance needs at least 2 generated images, got {len(generated_images)}")
        self.metric.reset()
        self._update(generated_images, real=False)
        return float(self.metric.compute())


def inception_fid(real_images: torch.Tensor, device: str | torch.device = "cpu") -> tuple[FrechetScore | None, str]:
    """``(score, message)``: FID at the standard settings against ``real_images``, or ``None`` with the reason when
    the Inception weights cannot be had (no internet and nothing in the torch hub cache, or torch-fidelity missing).
    """
    try:
        score = FrechetScore(real_images, 2048, device=device)
    except (OSError, ModuleNotFoundError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, (f"FID skipped: its Inception-v3 weights could not be loaded ({reason}); "
                      "the other measures are reported without it.")
    return score, (f"FID: Inception-v3 pool features (2048-d, images resized to 299x299), "
                   f"{len(real_images):,} real test faces.")
