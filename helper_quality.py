"""How good are the reconstructions and samples: measured.

* :func:`reconstruction_metrics`: MSE, summed squared error per image, PSNR and SSIM of the reconstructions.
* :func:`checkerboard_score`: the checkerboard of stride-2 layers, as a peak at the Nyquist frequencies.
* :func:`spectral_report`: power spectra of real faces, reconstructions and samples, with both measures.
* :func:`run_record` and :func:`run_summary`: a training run's final losses and quality, stored and shown.
* :func:`decoder_comparison_table`: the decoders side by side.
* :class:`FrechetScore`, :func:`inception_fid`, :class:`PosteriorMeans`: Fréchet distances of samples to real faces
  (FID, whose Inception-v3 weights are downloaded on first use, or in a trained encoder's space, which is not FID).

The linear probe of the latent space lives in :mod:`helper_probe`, the latent explorer in :mod:`helper_explorer`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown
from matplotlib.figure import Figure
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from helper_data import first_images
from helper_plotting import save_figure
from helper_utils import eval_mode, format_number, markdown_table

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


LOSS_KEYS = ("reconstruction", "kl", "combined")


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
    table = markdown_table(["", "reconstruction", "KL", "combined"],
                           [[split, *(f"{run[split][k]:.1f}" for k in LOSS_KEYS)]
                            for split in ("train", "valid", "test") if run.get(split)])
    quality = run["test_quality"]
    return Markdown(f"{table.data}\n\nAfter {run['epochs']} epoch(s). Predicting the mean training image for every "
                    f"test face: reconstruction {run['test_reconstruction_of_mean_image']:.1f}. Test "
                    f"reconstructions: MSE {quality['mse']:.4f}, PSNR {quality['psnr']:.1f} dB, SSIM "
                    f"{quality['ssim']:.3f}.")


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


def _checkerboard_peak(spectrum: torch.Tensor) -> float:
    """:func:`checkerboard_score` of an fftshifted (H, W) power spectrum with H and W even."""
    height, width = spectrum.shape
    if height % 2 or width % 2 or min(height, width) < 4:
        raise ValueError(f"images of {height}x{width} pixels have no exact Nyquist row and column; "
                         "use an even height and width of at least 4")
    # After fftshift the Nyquist frequency -0.5 sits at index 0 and its neighbours at 1 and -1 (+0.5 - 1/N).
    power = spectrum.double()
    ratios = (
        power[0, 1:].mean() / power[[1, -1], 1:].mean(),
        power[1:, 0].mean() / power[1:, [1, -1]].mean(),
        power[0, 0] / power[[1, 1, -1, -1], [1, -1, 1, -1]].mean(),
    )
    if not all(torch.isfinite(r) for r in ratios):
        raise ValueError("the images have no power next to the Nyquist frequency (constant images?)")
    return float(max(ratios))


def checkerboard_score(images: torch.Tensor) -> float:
    """How much a stride-2 pattern stands out: 1 means none, larger means a visible checkerboard.

    A stride-2 layer writes its uneven overlap at the Nyquist frequencies: the row fy = 0.5, the column
    fx = 0.5 and the corner (0.5, 0.5) of the 2-D power spectrum. The score is the largest of the three powers
    divided by the power right next to it in the same spectrum (the neighbouring rows, columns or diagonal
    entries), averaged over ``images`` (N, 3, H, W) or (3, H, W) in [0, 1]. Blur lowers the Nyquist frequencies
    and their neighbours alike, so it hardly moves the score, unlike a power ratio against real faces.
    """
    return _checkerboard_peak(mean_power_spectrum(images))


def radial_power_spectrum(spectrum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged (H, W) fftshifted spectrum: ``(frequencies, power)`` from 1/N out to the corner.

    Entries are binned by their radius rounded to a multiple of 1/N cycles/pixel, N = min(H, W); the DC bin is
    left out. Radii above 0.5 (the Nyquist frequency along an axis) come only from the spectrum's corners, up to
    sqrt(0.5) ~ 0.71 at (0.5, 0.5), where a stride-2 checkerboard puts its peak.
    """
    fy, fx = _frequency_grid(*spectrum.shape)
    n = min(spectrum.shape)
    bins = torch.round(torch.sqrt(fy**2 + fx**2) * n).long().flatten()
    size = int(bins.max()) + 1
    sums = torch.zeros(size).index_add_(0, bins, spectrum.flatten().float())
    counts = torch.bincount(bins, minlength=size).float()
    return torch.arange(1, size) / n, (sums / counts)[1:]


@torch.no_grad()
def spectral_report(
    model: torch.nn.Module,
    data_loader: Iterable,
    device: str | torch.device,
    num_images: int = 512,
    generator: torch.Generator | None = None,
    band: float = NYQUIST_BAND,
) -> dict[str, Any]:
    """Spectra of real faces, their reconstructions and N(0, I) samples, with a blur and a checkerboard measure.

    Uses the first ``num_images`` images of ``data_loader`` and as many samples (codes drawn on the CPU with
    ``generator``). Returns ``num_images``, ``band``, ``reconstruction_nyquist_ratio`` and ``sample_nyquist_ratio``
    (outer-band power relative to real faces: below 1 mostly means blur), ``real_checkerboard_score``,
    ``reconstruction_checkerboard_score`` and ``sample_checkerboard_score`` (:func:`checkerboard_score`) and the
    radially averaged spectra ``frequencies``, ``radial_real``, ``radial_reconstructions``, ``radial_samples``.
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
        "real_checkerboard_score": _checkerboard_peak(spectra["real"]),
        "reconstruction_checkerboard_score": _checkerboard_peak(spectra["reconstructions"]),
        "sample_checkerboard_score": _checkerboard_peak(spectra["samples"]),
        "frequencies": radial["real"][0],
        **{f"radial_{kind}": power for kind, (_, power) in radial.items()},
    }


def spectral_measures(report: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a :func:`spectral_report` without its spectra: the power ratios and checkerboard scores."""
    return {k: float(v) for k, v in report.items() if k.endswith(("_ratio", "_score"))}


def plot_power_spectra(
    report_by_decoder: Mapping[str, Mapping[str, Any]],
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Radially averaged power (log scale) of real faces and of each decoder's reconstructions and samples.

    ``report_by_decoder`` maps a decoder name (e.g. ``"transpose"``) to its :func:`spectral_report`; the real-face
    curve is the first report's. The legend gives each curve's checkerboard score; the dotted line marks the
    Nyquist frequency along an axis (0.5), and the curves go on to the corner (0.5, 0.5) at radius 0.71.
    """
    if not report_by_decoder:
        raise ValueError("report_by_decoder is empty: pass {decoder_name: spectral_report(...)}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    first = next(iter(report_by_decoder.values()))
    ax.semilogy(first["frequencies"], first["radial_real"], color="black", lw=2,
                label=f"real faces (checkerboard {first['real_checkerboard_score']:.2f})")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, report) in enumerate(report_by_decoder.items()):
        color = colors[i % len(colors)]
        ax.semilogy(report["frequencies"], report["radial_reconstructions"], color=color,
                    label=f"{name}: reconstructions (checkerboard {report['reconstruction_checkerboard_score']:.2f})")
        ax.semilogy(report["frequencies"], report["radial_samples"], color=color, ls="--",
                    label=f"{name}: samples (checkerboard {report['sample_checkerboard_score']:.2f})")
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlim(0, float(first["frequencies"][-1]))
    ax.set_xlabel("spatial frequency (cycles/pixel); 0.5 = Nyquist along an axis, 0.71 = the corner")
    ax.set_ylabel("mean power")
    ax.set_title("Power spectra; a checkerboard is a peak at 0.5 or at 0.71")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, save_path, title)


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
