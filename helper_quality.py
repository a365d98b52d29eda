"""How good are the reconstructions and samples: measured.

* :func:`reconstruction_metrics`: MSE, summed squared error per image, PSNR and SSIM of the reconstructions.
* :func:`run_record` and :func:`run_summary`: a training run's final losses and quality, stored and shown.
* :func:`decoder_comparison_table`: the decoders side by side.
* :class:`FrechetScore`, :func:`inception_fid`, :class:`PosteriorMeans`: Fréchet distances of samples to real faces
  (FID, whose Inception-v3 weights are downloaded on first use, or in a trained encoder's space, which is not FID).

Power spectra and the checkerboard score live in :mod:`helper_spectra`, the linear probe of the latent space in
:mod:`helper_probe`, the latent explorer in :mod:`helper_explorer`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from IPython.display import Markdown
from torch import nn

from celeba_vae.training import LOSS_KEYS
from helper_data import first_images
from helper_utils import eval_mode, format_number, markdown_table


@torch.no_grad()
def reconstruction_metrics(
    model: torch.nn.Module, data_loader: Iterable, device: str | torch.device, max_images: int | None = None
) -> dict[str, float]:
    """Quality of the reconstructions (decoded posterior means) of up to ``max_images`` images, in eval mode.

    Returns ``num_images``, ``mse`` (mean over pixels and channels), ``sse_per_image`` (mean over images of the
    summed squared error, the lecture's reconstruction loss), ``psnr`` (dB, mean over images of each image's PSNR,
    data range 1.0; ``inf`` for a perfect reconstruction) and ``ssim`` (mean over images of plain SSIM, Gaussian
    window 11, sigma 1.5, data range 1.0). Each batch is reduced in float32 on ``device``, totals are Python floats.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    totals = {"sse": 0.0, "psnr": 0.0, "ssim": 0.0}
    seen = pixels = 0
    with eval_mode(model):
        for images, _ in first_images(data_loader, max_images):
            images = images.to(device, torch.float32)
            decoded = model.reconstruct(images).float()
            totals["sse"] += ((decoded - images) ** 2).sum().item()
            totals["psnr"] += peak_signal_noise_ratio(
                decoded, images, data_range=1.0, reduction="none", dim=(1, 2, 3)
            ).sum().item()
            totals["ssim"] += structural_similarity_index_measure(
                decoded, images, gaussian_kernel=True, sigma=1.5, kernel_size=11, reduction="sum", data_range=1.0
            ).item()
            seen += len(images)
            pixels += images.numel()
    if seen == 0:
        raise ValueError("the data loader yielded no images to reconstruct")
    return {
        "num_images": seen,
        "mse": totals["sse"] / pixels,
        "sse_per_image": totals["sse"] / seen,
        "psnr": totals["psnr"] / seen,
        "ssim": totals["ssim"] / seen,
    }


def run_record(
    log_dict: Mapping[str, list[float]],
    test_losses: Mapping[str, float],
    test_quality: Mapping[str, float],
    mean_image_loss: float,
    **details: Any,
) -> dict[str, Any]:
    """What ``metrics.json`` keeps of a run: the last epoch's train and validation losses, the test losses, the
    test reconstruction error of predicting the mean training image, the quality metrics and ``details``."""
    last = {split: {k: log_dict[f"{split}_{k}_loss_per_epoch"][-1] for k in LOSS_KEYS
                    if log_dict.get(f"{split}_{k}_loss_per_epoch")} for split in ("train", "valid")}
    return {**last, "test": dict(test_losses), "epochs": len(log_dict["epoch"]),
            "test_reconstruction_of_mean_image": mean_image_loss, "test_quality": dict(test_quality), **details}


def run_summary(run: Mapping[str, Any]) -> Markdown:
    """A :func:`run_record` as Jupyter shows it: a small loss table and one line of test quality."""
    table = markdown_table(["", *(key.replace("kl", "KL") for key in LOSS_KEYS)],
                           [[split, *(f"{run[split][k]:.1f}" for k in LOSS_KEYS)]
                            for split in ("train", "valid", "test") if run.get(split)])
    quality = run["test_quality"]
    return Markdown(f"{table.data}\n\nAfter {run['epochs']} epoch(s). Predicting the mean training image for every "
                    f"test face: reconstruction {run['test_reconstruction_of_mean_image']:.1f}. Test "
                    f"reconstructions: MSE {quality['mse']:.4f}, PSNR {quality['psnr']:.1f} dB, SSIM "
                    f"{quality['ssim']:.3f}.")


def decoder_comparison_table(metrics: Mapping[str, Any]) -> Markdown:
    """The decoders side by side, as a table Jupyter renders: test losses, MSE/PSNR/SSIM of the reconstructions
    (``runs.<decoder>.test_quality``), outer-band power relative to real faces and checkerboard scores
    (``spectra.<decoder>``), where measured; a last row gives the real test faces' checkerboard score."""
    header = ["decoder", "epochs", "test reconstruction", "test KL", "test total", "MSE", "PSNR (dB)", "SSIM",
              "outer-band power / real: reconstructions", "samples", "checkerboard: reconstructions", "samples"]
    columns = [("test", "reconstruction", 2), ("test", "kl", 2), ("test", "combined", 2), ("test_quality", "mse", 5),
               ("test_quality", "psnr", 2), ("test_quality", "ssim", 3), ("spectra", "reconstruction_nyquist_ratio", 3),
               ("spectra", "sample_nyquist_ratio", 3), ("spectra", "reconstruction_checkerboard_score", 2),
               ("spectra", "sample_checkerboard_score", 2)]
    spectra = metrics.get("spectra", {})
    rows = []
    for decoder, run in sorted(metrics.get("runs", {}).items()):
        sections = {**run, "spectra": spectra.get(decoder, {})}
        rows.append([decoder, run.get("epochs", "?"),
                     *(format_number(sections.get(part, {}).get(key), digits) for part, key, digits in columns)])
    real = [m["real_checkerboard_score"] for m in spectra.values() if "real_checkerboard_score" in m]
    if real:
        rows.append(["real test faces", *[""] * 9, f"{real[0]:.2f}", ""])
    return markdown_table(header, rows, numbers_from=2)


class PosteriorMeans(nn.Module):
    """Feature extractor: the posterior means ``z_mean`` of a VAE (images in [0, 1]), in eval mode, no gradients.
    A Fréchet distance in this space is **not FID**: it compares only runs scored by the same encoder."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.num_features = vae.latent_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.vae):
            device = next(self.vae.parameters()).device
            return self.vae.encode(images.to(device, torch.float32))[0].float()


class _FeaturesOnHost(nn.Module):
    """Runs ``extractor`` on ``device`` and hands its features to the CPU, where the metric keeps its float64 sums
    (Apple's MPS has no float64). ``as_uint8``: the extractor wants bytes, as FID's Inception-v3 does."""

    def __init__(self, extractor: nn.Module, num_features: int, device: torch.device, as_uint8: bool) -> None:
        super().__init__()
        self.extractor = extractor.to(device)
        self.num_features = num_features
        self.device = device
        self.as_uint8 = as_uint8

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, torch.float32).clamp(0, 1)
        if self.as_uint8:
            images = images.mul(255).to(torch.uint8)
        return self.extractor(images).float().cpu()


class FrechetScore:
    """The Fréchet distance of sets of generated images to one fixed set of real images (features computed once).

    ``feature``: 2048 for FID's Inception-v3 pool features (the weights are downloaded on first use) or any
    ``nn.Module`` with ``num_features`` mapping (B, 3, H, W) floats in [0, 1] to (B, D) features. The features are
    computed on ``device`` in batches of ``batch_size``; their sums stay on the CPU in float64.
    """

    def __init__(self, real_images: torch.Tensor, feature: int | nn.Module = 2048, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> None:
        if len(real_images) < 2:
            raise ValueError(f"a Fréchet distance needs at least 2 real images, got {len(real_images)}")
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3  # torch-fidelity: only here

        self.batch_size = batch_size
        if isinstance(feature, int):
            extractor = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)])
            features = _FeaturesOnHost(extractor, feature, torch.device(device), as_uint8=True)
        elif isinstance(getattr(feature, "num_features", None), int):
            features = _FeaturesOnHost(feature, feature.num_features, torch.device(device), as_uint8=False)
        else:
            raise TypeError(f"the feature extractor {type(feature).__name__} needs an int num_features (its output "
                            "width), as PosteriorMeans has")
        self.metric = FrechetInceptionDistance(feature=features, reset_real_features=False)
        self._update(real_images, real=True)
        self.num_real = len(real_images)

    def _update(self, images: torch.Tensor, real: bool) -> None:
        for batch in images.split(self.batch_size):
            self.metric.update(batch, real=real)

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
    What the download prints is kept back: the message says in one line what happened.
    """
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            score = FrechetScore(real_images, 2048, device=device)
    except (OSError, ModuleNotFoundError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, (f"FID skipped: its Inception-v3 weights could not be loaded ({reason}); "
                      "the other measures are reported without it.")
    return score, (f"FID: Inception-v3 pool features (2048-d, images resized to 299x299), "
                   f"{len(real_images):,} real test faces.")
