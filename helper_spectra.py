"""Power spectra of faces, reconstructions and samples, and the checkerboard of stride-2 decoders measured in them.

* :func:`checkerboard_score`: the checkerboard as a peak at the Nyquist frequencies, stable on flat images.
* :func:`checkerboard_box`: where in a face the pattern is strongest (for the zoom).
* :func:`spectral_report`: power spectra of real faces, reconstructions and samples, with both measures.
* :func:`plot_power_spectra` and :func:`plot_checkerboard_over_training`: the spectra, and the score per epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from helper_plotting import save_figure
from helper_utils import eval_mode

NYQUIST_BAND = 0.375
VISIBLE_POWER = (1 / 255) ** 2  # the mean square of a pattern one 8-bit grey level strong: fainter is invisible


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
    # Each bin's power as its share of the mean square per pixel (orthonormal FFT: the bins sum to the pixels').
    # After fftshift the Nyquist frequency -0.5 sits at index 0 and its neighbours at 1 and -1 (+0.5 - 1/N).
    power = spectrum.double() / (height * width)
    peaks_and_neighbours = (
        (power[0, 1:].sum(), power[[1, -1], 1:].sum() / 2),  # the Nyquist row, and one row next to it
        (power[1:, 0].sum(), power[1:, [1, -1]].sum() / 2),  # the Nyquist column, and one column next to it
        (power[0, 0], power[[1, 1, -1, -1], [1, -1, 1, -1]].mean()),  # the corner, and one diagonal neighbour
    )
    return float(max((peak + VISIBLE_POWER) / (next_to_it + VISIBLE_POWER)
                     for peak, next_to_it in peaks_and_neighbours))


def checkerboard_score(images: torch.Tensor) -> float:
    """How much a stride-2 pattern stands out: about 1 means none, larger means a visible checkerboard.

    A stride-2 layer writes its uneven overlap at the Nyquist frequencies: the row fy = 0.5, the column
    fx = 0.5 and the corner (0.5, 0.5) of the 2-D power spectrum of ``images`` (N, 3, H, W) or (3, H, W) in [0, 1],
    averaged over images and channels. The score is the largest of the three, each divided by the power right next
    to it in the same spectrum (the neighbouring row, column or diagonal entries); blur lowers both alike, so it
    hardly moves the score, unlike a power ratio against real faces.

    Stable on flat and low-contrast images: ``VISIBLE_POWER``, the mean square of a pattern one 8-bit grey level
    strong (1/255 per pixel), is added to both powers of each ratio. A pattern fainter than that can neither be
    seen nor stored in a PNG, so near-flat images (an untrained decoder's grey squares) score about 1 instead of
    dividing two tiny numbers, while a pattern of a few grey levels on a flat background still scores well above 1.
    """
    return _checkerboard_peak(mean_power_spectrum(images))


def checkerboard_box(images: torch.Tensor | Sequence[torch.Tensor], size: int = 32, step: int = 8
                     ) -> tuple[int, int, int]:
    """``(top, left, size)`` of the ``size`` x ``size`` square where the stride-2 pattern of ``images`` (each
    (3, H, W)) is strongest together: for the zoom of :func:`helper_plotting.plot_zoomed_crops`.

    Multiplying an image by (-1)^x, (-1)^y or (-1)^(x+y) turns its Nyquist row, column or corner pattern into a
    constant that the square's mean keeps, while textures such as hair, whose phases vary, average out; the score
    of a square is the sum of the three squared means over channels and images. Squares start every ``step``
    pixels (even, so every square sees the pattern in the same phase).
    """
    batch = torch.stack(list(images)) if not isinstance(images, torch.Tensor) else images
    batch = batch.detach().to("cpu", torch.float32)
    height, width = batch.shape[-2:]
    if size > min(height, width) or step % 2:
        raise ValueError(f"a {size}-pixel square every {step} pixels does not fit {height}x{width} images evenly")
    y = torch.arange(height).view(-1, 1) % 2 * 2 - 1
    x = torch.arange(width).view(1, -1) % 2 * 2 - 1
    energy = sum(F.avg_pool2d(batch * sign, size, stride=step).pow(2).sum(dim=(0, 1)) for sign in (y, x, x * y))
    row, col = divmod(int(energy.argmax()), energy.shape[-1])
    return row * step, col * step, size


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
    """The numbers of a :func:`spectral_report` without its spectra: the power ratios and checkerboard scores, and
    how many faces (and as many samples) they were measured on."""
    return {k: float(v) for k, v in report.items() if k.endswith(("_ratio", "_score")) or k == "num_images"}


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


def plot_checkerboard_over_training(
    over_training: Sequence[Mapping[str, float]],
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """The checkerboard score after each epoch (:func:`helper_findings.checkerboard_over_training`): of the fixed
    faces' reconstructions, of the decoded fixed noise and, as the line to compare with, of the faces themselves."""
    if not over_training:
        raise ValueError("over_training is empty: part 1 kept no epoch pictures")
    epochs = [entry["epoch"] for entry in over_training]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for key, style in (("reconstructions", "o-"), ("samples", "s--")):
        ax.plot(epochs, [entry[key] for entry in over_training], style, label=key)
    if "real" in over_training[0]:
        ax.axhline(over_training[0]["real"], color="black", lw=1, label="the faces themselves")
    ax.axhline(1, color="grey", ls=":", lw=1, label="1: no stride-2 pattern")
    values = [entry[key] for entry in over_training for key in ("reconstructions", "samples")]
    if max(values) > 10 * min(values):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("checkerboard score")
    ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: -(-len(epochs) // 20)])
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, save_path, title)
