"""How good are the reconstructions and samples: measured.

* :func:`reconstruction_metrics`: MSE, summed squared error per image, PSNR and SSIM of the reconstructions.
* :func:`spectral_report`: the checkerboard of transposed convolutions, as excess power near the Nyquist frequency.
* :func:`decoder_comparison_table`: the decoders side by side.

The linear probe of the latent space lives in :mod:`helper_probe`, the latent explorer in :mod:`helper_explorer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from helper_data import first_images
from helper_plotting import _save
from helper_utils import eval_mode

NYQUIST_BAND = 0.375


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


def _frequency_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fftshifted frequencies (cycles/pixel) of each entry of an (H, W) spectrum: ``(fy, fx)``, each (H, W)."""
    fy = torch.fft.fftshift(torch.fft.fftfreq(height))
    fx = torch.fft.fftshift(torch.fft.fftfreq(width))
    return torch.meshgrid(fy, fx, indexing="ij")


def mean_power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Mean over images and channels of ``|FFT2|^2`` (orthonormal) of each mean-subtracted channel: fftshifted (H, W).

    ``images`` is (N, C, H, W) or (C, H, W); the spectrum is computed on the CPU in float32.
    """
    images = images.detach().to("cpu", torch.float32)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    centred = images - images.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(centred, norm="ortho").abs() ** 2
    return torch.fft.fftshift(power.mean(dim=(0, 1)), dim=(-2, -1))


def nyquist_power_ratio(spectrum: torch.Tensor, reference: torch.Tensor, band: float = NYQUIST_BAND) -> float:
    """Power of ``spectrum`` in the outer band divided by that of ``reference`` (real faces): 1 means "as real".

    The band is the square ring ``max(|fx|, |fy|) >= band`` cycles/pixel of the fftshifted spectrum; it contains the
    exact Nyquist row and column (-0.5 cycles/pixel), where a stride-2 checkerboard puts its power.
    """
    if spectrum.shape != reference.shape:
        raise ValueError(f"spectra of shapes {tuple(spectrum.shape)} and {tuple(reference.shape)} cannot be compared")
    fy, fx = _frequency_grid(*spectrum.shape)
    outer = torch.maximum(fy.abs(), fx.abs()) >= band
    if not outer.any():
        raise ValueError(f"band={band} is above the Nyquist frequency 0.5 cycles/pixel")
    reference_power = float(reference[outer].sum())
    if reference_power <= 0:
        raise ValueError("the reference has no power in the band; use real images as the reference")
    return float(spectrum[outer].sum()) / reference_power


def radial_power_spectrum(spectrum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged (H, W) fftshifted spectrum: ``(frequencies, power)`` from 1/N up to Nyquist, N = min(H, W).

    Entries are binned by their radius rounded to a multiple of 1/N cycles/pixel; the DC bin is left out.
    """
    fy, fx = _frequency_grid(*spectrum.shape)
    n = min(spectrum.shape)
    bins = torch.round(torch.sqrt(fy**2 + fx**2) * n).long().flatten()
    keep = bins <= n // 2
    sums = torch.zeros(n // 2 + 1).index_add_(0, bins[keep], spectrum.flatten()[keep].float())
    counts = torch.bincount(bins[keep], minlength=n // 2 + 1).float()
    return torch.arange(1, n // 2 + 1) / n, (sums / counts)[1:]


@torch.no_grad()
def spectral_report(
    model: torch.nn.Module,
    data_loader: Iterable,
    device: str | torch.device,
    num_images: int = 512,
    generator: torch.Generator | None = None,
    band: float = NYQUIST_BAND,
) -> dict[str, Any]:
    """Checkerboard measured: Nyquist-band power of reconstructions and of N(0, I) samples relative to real faces.

    Uses the first ``num_images`` images of ``data_loader`` and as many samples (codes drawn on the CPU with
    ``generator``). Returns ``num_images``, ``band``, ``reconstruction_nyquist_ratio``, ``sample_nyquist_ratio`` and
    the radially averaged spectra ``frequencies``, ``radial_real``, ``radial_reconstructions``, ``radial_samples``.
    """
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be at least 1")
    sums: dict[str, torch.Tensor] = {}
    seen = 0

    def add(kind: str, images: torch.Tensor) -> None:
        sums[kind] = sums.get(kind, 0) + mean_power_spectrum(images) * len(images)

    with eval_mode(model):
        for images, _ in data_loader:
            images = images[: num_images - seen]
            add("real", images)
            add("reconstructions", model.reconstruct(images.to(device)))
            seen += len(images)
            if seen >= num_images:
                break
        if seen == 0:
            raise ValueError("the data loader yielded no images")
        z = torch.randn(seen, model.latent_dim, generator=generator)
        for chunk in z.split(64):
            add("samples", model.decode(chunk.to(device)))
    spectra = {kind: total / seen for kind, total in sums.items()}
    radial = {kind: radial_power_spectrum(spectrum) for kind, spectrum in spectra.items()}
    return {
        "num_images": seen,
        "band": band,
        "reconstruction_nyquist_ratio": nyquist_power_ratio(spectra["reconstructions"], spectra["real"], band),
        "sample_nyquist_ratio": nyquist_power_ratio(spectra["samples"], spectra["real"], band),
        "frequencies": radial["real"][0],
        **{f"radial_{kind}": power for kind, (_, power) in radial.items()},
    }


def plot_power_spectra(
    report_by_decoder: Mapping[str, Mapping[str, Any]],
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Radially averaged power (log scale) of real faces and of each decoder's reconstructions and samples.

    ``report_by_decoder`` maps a decoder name (e.g. ``"transpose"``) to its :func:`spectral_report`; the real-face
    curve is the first report's. The shaded region is the band that the Nyquist ratios (in the legend) measure.
    """
    if not report_by_decoder:
        raise ValueError("report_by_decoder is empty: pass {decoder_name: spectral_report(...)}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    first = next(iter(report_by_decoder.values()))
    ax.semilogy(first["frequencies"], first["radial_real"], color="black", lw=2, label="real faces")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, report) in enumerate(report_by_decoder.items()):
        color = colors[i % len(colors)]
        ax.semilogy(report["frequencies"], report["radial_reconstructions"], color=color,
                    label=f"{name}: reconstructions (Nyquist ratio {report['reconstruction_nyquist_ratio']:.2f})")
        ax.semilogy(report["frequencies"], report["radial_samples"], color=color, ls="--",
                    label=f"{name}: samples (Nyquist ratio {report['sample_nyquist_ratio']:.2f})")
    ax.axvspan(first["band"], 0.5, color="grey", alpha=0.15, lw=0)
    ax.set_xlim(0, 0.5)
    ax.set_xlabel("spatial frequency (cycles/pixel)")
    ax.set_ylabel("mean power")
    ax.set_title("Power spectra: a checkerboard shows up as excess power near 0.5")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, save_path, title)


def decoder_comparison_table(metrics: Mapping[str, Any]) -> str:
    """A Markdown table comparing the decoders in a metrics dict: test losses, MSE/PSNR/SSIM of the reconstructions
    (``runs.<decoder>.test_quality``) and the Nyquist power ratios (``spectra.<decoder>``), where measured."""
    def cell(section: Mapping[str, Any], key: str, digits: int) -> str:
        value = section.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    header = ("| decoder | epochs | test reconstruction | test KL | test total | MSE | PSNR (dB) | SSIM "
              "| Nyquist ratio, reconstructions | Nyquist ratio, samples |")
    rows = [header, "|---" * 10 + "|"]
    for decoder, run in sorted(metrics.get("runs", {}).items()):
        test, quality = run.get("test", {}), run.get("test_quality", {})
        spectra = metrics.get("spectra", {}).get(decoder, {})
        rows.append(" | ".join([
            f"| {decoder}", str(run.get("epochs", "?")), cell(test, "reconstruction", 2), cell(test, "kl", 2),
            cell(test, "combined", 2), cell(quality, "mse", 5), cell(quality, "psnr", 2), cell(quality, "ssim", 3),
            cell(spectra, "reconstruction_nyquist_ratio", 3), cell(spectra, "sample_nyquist_ratio", 3),
        ]) + " |")
    return "\n".join(rows)
