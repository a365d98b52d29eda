"""How good are the reconstructions, samples and latent codes: measured.

* :func:`reconstruction_metrics`: MSE, summed squared error per image, PSNR and SSIM of the reconstructions.
* :func:`spectral_report`: the checkerboard of transposed convolutions, as excess power near the Nyquist frequency.
* :func:`attribute_probe`: which of the 40 CelebA attributes a linear classifier reads off the latent means.
* :func:`latent_explorer`: sliders (live Jupyter) or a static grid (papermill, static viewers) along latent directions.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from helper_data import CELEBA_ATTRIBUTE_NAMES
from helper_latent import decode
from helper_plotting import _save, _show
from helper_utils import eval_mode

if TYPE_CHECKING:
    import ipywidgets

NYQUIST_BAND = 0.375
EXPLORER_STRENGTHS = (-3.0, -1.5, 0.0, 1.5, 3.0)
STATIC_EXPLORER_ENV = "CELEBA_VAE_STATIC_WIDGETS"


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
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images={max_images} must be at least 1 (or None for all)")
    totals = {"sse": 0.0, "psnr": 0.0, "ssim": 0.0}
    seen = pixels = 0
    with eval_mode(model):
        for images, _ in data_loader:
            take = len(images) if max_images is None else min(len(images), max_images - seen)
            images = images[:take].to(device, torch.float32)
            decoded = model.decoder(model.encode(images)[0]).float()
            totals["sse"] += ((decoded - images) ** 2).sum().item()
            totals["psnr"] += peak_signal_noise_ratio(
                decoded, images, data_range=1.0, reduction="none", dim=(1, 2, 3)
            ).sum().item()
            totals["ssim"] += structural_similarity_index_measure(
                decoded, images, gaussian_kernel=True, sigma=1.5, kernel_size=11, reduction="sum", data_range=1.0
            ).item()
            seen += take
            pixels += images[0].numel() * take
            if max_images is not None and seen >= max_images:
                break
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
            add("reconstructions", model.decoder(model.encode(images.to(device))[0]))
            seen += len(images)
            if seen >= num_images:
                break
        if seen == 0:
            raise ValueError("the data loader yielded no images")
        z = torch.randn(seen, model.latent_dim, generator=generator)
        for chunk in z.split(64):
            add("samples", model.decoder(chunk.to(device)))
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


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def attribute_probe(
    z_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    z_test: torch.Tensor | np.ndarray,
    y_test: torch.Tensor | np.ndarray,
    names: Sequence[str] = CELEBA_ATTRIBUTE_NAMES,
    max_iter: int = 2000,
) -> list[dict[str, Any]]:
    """One standardized logistic regression per attribute, fitted on training codes and scored on held-out codes.

    Returns per attribute: ``attribute``, ``probeable`` (False when the training codes hold a single class; the
    scores are then NaN), ``accuracy``, ``balanced_accuracy`` (mean recall over the classes in the test labels;
    0.5 is chance), ``majority_accuracy`` (test accuracy of always predicting the training majority) and
    ``positive_rate`` (share of test labels that are 1).
    """
    z_train, y_train, z_test, y_test = (_numpy(v) for v in (z_train, y_train, z_test, y_test))
    if y_train.ndim != 2 or y_train.shape[1] != len(names) or y_test.shape[1:] != y_train.shape[1:]:
        raise ValueError(f"labels of shapes {y_train.shape} (train) and {y_test.shape} (test) do not match "
                         f"{len(names)} attribute names")
    results = []
    for j, name in enumerate(names):
        train_labels, test_labels = y_train[:, j], y_test[:, j]
        classes, counts = np.unique(train_labels, return_counts=True)
        result: dict[str, Any] = {"attribute": name, "probeable": len(classes) > 1,
                                  "positive_rate": float(np.mean(test_labels == 1))}
        if not result["probeable"]:
            results.append({**result, "accuracy": math.nan, "balanced_accuracy": math.nan,
                            "majority_accuracy": math.nan})
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
        predicted = probe.fit(z_train, train_labels).predict(z_test)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            balanced = balanced_accuracy_score(test_labels, predicted)
        results.append({**result, "accuracy": float(np.mean(predicted == test_labels)),
                        "balanced_accuracy": float(balanced),
                        "majority_accuracy": float(np.mean(test_labels == classes[np.argmax(counts)]))})
    return results


def probe_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The results of :func:`attribute_probe` as a Markdown table."""
    lines = ["| Attribute | Positive rate (test) | Accuracy | Majority-class accuracy | Balanced accuracy |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        if r["probeable"]:
            scores = f"{r['accuracy']:.3f} | {r['majority_accuracy']:.3f} | {r['balanced_accuracy']:.3f}"
        else:
            scores = "not probeable (one class in training codes) | | "
        lines.append(f"| {r['attribute']} | {r['positive_rate']:.3f} | {scores} |")
    return "\n".join(lines)


def plot_probe(
    results: Sequence[Mapping[str, Any]], title: str | None = None, save_path: str | Path | None = None
) -> Figure:
    """Horizontal bars of balanced accuracy per attribute, with the 0.5 chance line; unprobeable ones are labelled."""
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(results) + 1.2))
    positions = np.arange(len(results))[::-1]
    scores = [r["balanced_accuracy"] if r["probeable"] else 0.0 for r in results]
    ax.barh(positions, scores, color=["tab:blue" if r["probeable"] else "lightgrey" for r in results])
    for y, r in zip(positions, results, strict=True):
        if not r["probeable"]:
            ax.text(0.01, y, "not probeable", va="center", fontsize=7)
    ax.axvline(0.5, color="tab:red", ls="--", lw=1, label="chance (0.5)")
    ax.set_yticks(positions, [r["attribute"] for r in results], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("balanced accuracy of a linear probe on the latent means (held-out codes)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, save_path, title)


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
            _show(axes[row][col], images[row, col])
            if row == 0:
                axes[row][col].set_title(f"{strength:+g}", fontsize=9)
        axes[row][0].text(-0.1, 0.5, name, transform=axes[row][0].transAxes, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return _save(fig, save_path, title)


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
        _show(ax, image)
        display(fig)
        plt.close(fig)
        return image

    sliders = {name: ipywidgets.FloatSlider(value=0.0, min=-slider_range, max=slider_range, step=0.1,
                                            description=name, continuous_update=False)
               for name in directions}
    return ipywidgets.interactive(redraw, **sliders)


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
