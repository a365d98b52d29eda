"""Reconstruction metrics, the checkerboard spectrum, attribute probes and the latent explorer."""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
import weakref
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from matplotlib.figure import Figure
from sklearn.exceptions import ConvergenceWarning
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import helper_explorer
import helper_quality
from helper_explorer import explorer_image, latent_explorer, top_variance_dimensions
from helper_latent import decode, reconstruct
from helper_probe import attribute_probe, plot_probe
from helper_quality import FrechetScore, PosteriorMeans, inception_fid, reconstruction_metrics, run_record, run_summary
from helper_spectra import (
    checkerboard_box,
    checkerboard_score,
    mean_power_spectrum,
    nyquist_power_ratio,
    plot_checkerboard_over_training,
    plot_power_spectra,
    radial_power_spectrum,
    spectral_measures,
    spectral_report,
)
from model import VAE

HAS_WIDGETS = importlib.util.find_spec("ipywidgets") is not None


@pytest.fixture(autouse=True)
def close_figures() -> None:
    yield
    plt.close("all")


class AddConstant(nn.Module):
    def __init__(self, offset: float | torch.Tensor) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


class OffsetAutoencoder(nn.Module):
    """Encodes an image as itself (with a wide posterior); decodes the mean plus ``offset``: known errors.

    Its dropout and wide posterior make the metrics wrong unless they decode posterior means in eval mode.
    """

    def __init__(self, shape: tuple[int, int, int], offset: float | torch.Tensor = 0.0) -> None:
        super().__init__()
        self.latent_dim = math.prod(shape)
        self.decoder = nn.Sequential(nn.Unflatten(1, shape), AddConstant(offset), nn.Dropout(0.5))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1), torch.full_like(x.flatten(1), 5.0)

    decode = VAE.decode
    reconstruct = VAE.reconstruct


class LinearDecoderModel(nn.Module):
    """A model whose decoder is affine in the code: linearity of the explorer is visible in its images."""

    def __init__(self, latent_dim: int = 6, size: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 3 * size * size), nn.Unflatten(1, (3, size, size)))

    decode = VAE.decode


def batches(images: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(chunk, torch.zeros(len(chunk), 40, dtype=torch.int64)) for chunk in images.split(batch_size)]


def smooth_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Low-frequency images: random 8x8 images upsampled bicubically, in [0.2, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    return 0.2 + 0.6 * F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def checkerboard(size: int) -> torch.Tensor:
    ij = torch.arange(size)
    return ((ij[:, None] + ij[None, :]) % 2).float() * 2 - 1


# 1. Reconstruction metrics


def test_reconstruction_metrics_match_known_errors() -> None:
    images = smooth_images(10, size=32)
    offset = OffsetAutoencoder((3, 32, 32), offset=0.1).train()
    metrics = reconstruction_metrics(offset, batches(images, 4), "cpu")
    assert offset.training, "the model's training mode must be restored"
    assert metrics["num_images"] == 10
    assert metrics["mse"] == pytest.approx(0.01, rel=1e-4)
    assert metrics["sse_per_image"] == pytest.approx(0.01 * 3 * 32 * 32, rel=1e-4)
    assert metrics["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert 0.0 < metrics["ssim"] < 1.0
    perfect = reconstruction_metrics(OffsetAutoencoder((3, 32, 32)), batches(images, 4), "cpu")
    assert perfect["mse"] == 0.0 and perfect["psnr"] == math.inf
    assert perfect["ssim"] == pytest.approx(1.0, abs=1e-5)


def test_reconstruction_metrics_do_not_depend_on_batching_and_stop_at_max_images() -> None:
    noise = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    images = smooth_images(11, size=32)
    noisy_model = OffsetAutoencoder((3, 32, 32), offset=0.05 * noise)
    one_batch = reconstruction_metrics(noisy_model, batches(images, 11), "cpu")
    many = reconstruction_metrics(noisy_model, batches(images, 3), "cpu")
    for key in ("mse", "sse_per_image", "psnr", "ssim"):
        assert many[key] == pytest.approx(one_batch[key], rel=1e-5), key
    first_seven = reconstruction_metrics(noisy_model, batches(images, 3), "cpu", max_images=7)
    reference = reconstruction_metrics(noisy_model, batches(images[:7], 7), "cpu")
    assert first_seven["num_images"] == 7
    for key in ("mse", "psnr", "ssim"):
        assert first_seven[key] == pytest.approx(reference[key], rel=1e-5), key
    worse = reconstruction_metrics(OffsetAutoencoder((3, 32, 32), offset=0.2 * noise), batches(images, 11), "cpu")
    assert worse["ssim"] < one_batch["ssim"] < 1.0 and worse["psnr"] < one_batch["psnr"]


def test_reconstruction_metrics_use_posterior_means_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = VAE().train()
    images = torch.rand(6, 3, 128, 128)
    metrics = reconstruction_metrics(model, batches(images, 4), "cpu")
    assert model.training
    expected = ((reconstruct(model, images, "cpu") - images) ** 2).mean().item()
    assert metrics["mse"] == pytest.approx(expected, rel=1e-5)
    assert all(math.isfinite(v) for v in metrics.values())


# 2. The checkerboard, measured


def test_power_spectrum_is_centred_and_keeps_the_energy() -> None:
    images = smooth_images(4, size=32)
    spectrum = mean_power_spectrum(images)
    assert spectrum.shape == (32, 32) and spectrum.dtype == torch.float32
    assert spectrum[16, 16] == pytest.approx(0.0, abs=1e-8), "the DC term (centre after fftshift) must be removed"
    centred = images - images.mean(dim=(-2, -1), keepdim=True)
    assert spectrum.sum().item() == pytest.approx((centred**2).sum(dim=(-2, -1)).mean().item(), rel=1e-4)


def test_checkerboard_raises_the_nyquist_ratio_and_identical_sets_give_one() -> None:
    smooth = smooth_images(8)
    real = mean_power_spectrum(smooth)
    assert nyquist_power_ratio(real, real) == 1.0
    assert nyquist_power_ratio(mean_power_spectrum(smooth.clone()), real) == 1.0
    checkered = mean_power_spectrum(smooth + 0.05 * checkerboard(64))
    assert nyquist_power_ratio(checkered, real) > 10
    other_smooth = mean_power_spectrum(smooth_images(8, seed=1))
    assert 0.5 < nyquist_power_ratio(other_smooth, real) < 2
    with pytest.raises(ValueError):
        nyquist_power_ratio(checkered, mean_power_spectrum(smooth_images(2, size=32)))


def natural_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Images with a natural-image spectrum (power ~ 1/f^2, random phases) around grey, in [0, 1]."""
    noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    f = torch.fft.fftfreq(size)
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).clamp(min=1 / size)
    field = torch.fft.ifft2(torch.fft.fft2(noise) / radius).real
    return (0.5 + 0.1 * (field - field.mean()) / field.std()).clamp(0, 1)


def test_checkerboard_score_sees_a_faint_stride_2_pattern_and_not_blur() -> None:
    faces = natural_images(8)
    blurred = TF.gaussian_blur(faces, kernel_size=9, sigma=2.0)
    stripes = checkerboard(64)[:, :1].expand(64, 64)
    assert 0.7 < checkerboard_score(faces) < 1.3
    assert 0.7 < checkerboard_score(blurred) < 1.3, "blur lowers the Nyquist frequencies and their neighbours alike"
    for pattern in (checkerboard(64), stripes, stripes.T):
        assert checkerboard_score(faces + 0.01 * pattern) > 3
        assert checkerboard_score(blurred + 0.01 * pattern) > 3
    real = mean_power_spectrum(faces)
    blurry_checkerboard = mean_power_spectrum(blurred + 0.01 * checkerboard(64))
    assert nyquist_power_ratio(blurry_checkerboard, real) < 1, "the band ratio calls this blur and misses the pattern"
    with pytest.raises(ValueError, match="even height and width"):
        checkerboard_score(faces[..., :63])


def test_checkerboard_score_stays_near_one_on_flat_and_low_contrast_images_and_high_on_a_visible_pattern() -> None:
    torch.manual_seed(0)
    flat = torch.full((8, 3, 128, 128), 0.5)
    assert checkerboard_score(flat) == pytest.approx(1.0)
    # an untrained decoder's grey squares: a stride-2 ripple below one grey level, stored as 8-bit pictures
    grey = (0.5 + 0.001 * checkerboard(128) + 0.002 * torch.rand(8, 3, 128, 128)).mul(255).round() / 255
    assert checkerboard_score(grey) < 1.5, "an invisible pattern on a flat image must not read as a checkerboard"
    low_contrast = 0.5 + 0.003 * (natural_images(8, size=128) - 0.5)  # a uniform brown square, nearly
    assert checkerboard_score(low_contrast) < 1.5
    for background in (flat, low_contrast, natural_images(8, size=128)):
        assert checkerboard_score(background + 0.02 * checkerboard(128)) > 10, "5 grey levels are plainly visible"
    assert checkerboard_score(flat + 0.5 * checkerboard(128)) < 20_000, "the largest possible score is bounded"


def test_the_zoom_goes_where_the_pattern_is_strongest_not_where_the_texture_is() -> None:
    faces = natural_images(2, size=128)
    faces[:, :, :48, :48] = faces[:, :, :48, :48] + 0.3 * torch.rand(2, 3, 48, 48)  # hair: strong random texture
    faces[:, :, 80:112, 64:96] += 0.03 * checkerboard(32)
    assert checkerboard_box(faces, size=32) == (80, 64, 32)
    assert checkerboard_box([faces[0], faces[1]], size=32) == (80, 64, 32)
    with pytest.raises(ValueError, match="does not fit"):
        checkerboard_box(faces, size=256)


def test_the_score_over_training_is_plotted_per_epoch() -> None:
    over = [{"epoch": e, "reconstructions": r, "samples": s, "real": 1.1}
            for e, r, s in ((1, 1.0, 1.2), (2, 30.0, 80.0), (3, 5.0, 7.5))]
    fig = plot_checkerboard_over_training(over)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    assert list(lines["reconstructions"].get_ydata()) == [1.0, 30.0, 5.0]
    assert list(lines["samples"].get_xdata()) == [1, 2, 3] and fig.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="empty"):
        plot_checkerboard_over_training([])


def test_radial_spectrum_puts_a_sinusoid_at_its_frequency_and_reaches_the_corner() -> None:
    x = torch.arange(64).float()
    image = torch.sin(2 * math.pi * 8 / 64 * x).expand(3, 64, 64)
    frequencies, power = radial_power_spectrum(mean_power_spectrum(image))
    assert len(frequencies) == len(power) == round(64 * math.sqrt(0.5))
    assert frequencies[0] == pytest.approx(1 / 64) and frequencies[-1] == pytest.approx(math.sqrt(0.5), abs=1 / 64)
    assert frequencies[int(power.argmax())] == pytest.approx(8 / 64)
    corner_peak = radial_power_spectrum(mean_power_spectrum(checkerboard(64).expand(3, 64, 64)))
    assert corner_peak[0][int(corner_peak[1].argmax())] == pytest.approx(math.sqrt(0.5), abs=1 / 64)


@pytest.mark.parametrize("decoder", ["transpose"])
def test_spectral_report_and_plot(tmp_path: Path, decoder: str) -> None:
    torch.manual_seed(0)
    model = VAE(decoder=decoder).train()
    loader = batches(torch.rand(6, 3, 128, 128), 4)
    report = spectral_report(model, loader, "cpu", num_images=5, generator=torch.Generator().manual_seed(3))
    assert model.training
    assert report["num_images"] == 5
    measures = spectral_measures(report)
    assert set(measures) == {"reconstruction_nyquist_ratio", "sample_nyquist_ratio", "real_checkerboard_score",
                             "reconstruction_checkerboard_score", "sample_checkerboard_score", "num_images"}
    assert all(math.isfinite(value) and value > 0 for value in measures.values())
    for key in ("radial_real", "radial_reconstructions", "radial_samples"):
        assert report[key].shape == report["frequencies"].shape == (round(128 * math.sqrt(0.5)),)
    again = spectral_report(model, loader, "cpu", num_images=5, generator=torch.Generator().manual_seed(3))
    assert again["sample_nyquist_ratio"] == report["sample_nyquist_ratio"]
    fig = plot_power_spectra({"transpose": report, "other": again}, save_path=tmp_path / "spectra.png")
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].get_lines()) == 1 + 2 * 2 + 1, "real faces, 2 curves per decoder, the Nyquist line"
    assert fig.axes[0].get_xlim()[1] == pytest.approx(float(report["frequencies"][-1]))
    assert not plt.fignum_exists(fig.number), "a figure left open in pyplot shows twice in Jupyter"
    assert (tmp_path / "spectra.png").read_bytes()[:4] == b"\x89PNG"


# 3. What the latent space knows


def test_probe_reads_a_linear_attribute_and_not_noise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3000, 200)).astype(np.float32)
    labels = np.stack([
        (z[:, 3] + 0.5 * z[:, 17] > 0),
        rng.random(3000) < 0.5,
        np.r_[np.zeros(2000), np.ones(1000)],
    ], axis=1).astype(np.int64)
    names = ("linear", "noise", "constant_in_train")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        results = attribute_probe(torch.from_numpy(z[:2000]), torch.from_numpy(labels[:2000]),
                                  z[2000:], labels[2000:], names=names)
    by_name = {r["attribute"]: r for r in results}
    assert by_name["linear"]["balanced_accuracy"] > 0.9 and by_name["linear"]["accuracy"] > 0.9
    assert abs(by_name["noise"]["balanced_accuracy"] - 0.5) < 0.1
    assert 0.4 < by_name["noise"]["majority_accuracy"] < 0.6
    assert not by_name["constant_in_train"]["probeable"]
    assert math.isnan(by_name["constant_in_train"]["balanced_accuracy"])
    fig = plot_probe(results, save_path=tmp_path / "probe.png")
    assert len(fig.axes[0].patches) == len(names)
    assert any(list(line.get_xdata()) == [0.5, 0.5] for line in fig.axes[0].get_lines())
    assert (tmp_path / "probe.png").is_file()
    with pytest.raises(ValueError):
        attribute_probe(z[:10], labels[:10], z[10:20], labels[10:20])


# 4. A latent explorer


def test_explorer_image_decodes_the_shifted_code_linearly() -> None:
    model = LinearDecoderModel()
    z_base = torch.randn(6)
    original = z_base.clone()
    directions = {"a": torch.randn(6), "b": torch.randn(6)}
    zero = explorer_image(model, z_base, directions, {}, "cpu")
    assert torch.equal(zero, decode(model, z_base, "cpu")[0])
    assert torch.equal(explorer_image(model, z_base, directions, {"a": 0.0, "b": 0.0}, "cpu"), zero)
    both = explorer_image(model, z_base, directions, {"a": 1.5, "b": -2.0}, "cpu")
    expected = model.decoder((z_base + 1.5 * directions["a"] - 2.0 * directions["b"]).unsqueeze(0))[0]
    torch.testing.assert_close(both, expected)
    only_a = explorer_image(model, z_base, directions, {"a": 1.5}, "cpu")
    only_b = explorer_image(model, z_base, directions, {"b": -2.0}, "cpu")
    torch.testing.assert_close(both - zero, (only_a - zero) + (only_b - zero), atol=1e-5, rtol=1e-5)
    assert torch.equal(z_base, original)
    with pytest.raises(KeyError):
        explorer_image(model, z_base, directions, {"c": 1.0}, "cpu")


def test_explorer_image_on_the_vae_is_an_eval_mode_face() -> None:
    torch.manual_seed(0)
    model = VAE().train()
    z_base = torch.randn(200)
    image = explorer_image(model, z_base, {"z[0]": torch.eye(200)[0]}, {"z[0]": 0.0}, "cpu")
    assert model.training and image.shape == (3, 128, 128)
    assert torch.equal(image, decode(model, z_base, "cpu")[0])


def test_top_variance_dimensions_are_scaled_one_hots() -> None:
    z = torch.randn(500, 10) * torch.tensor([1.0, 5.0, 0.1, 3.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0])
    directions = top_variance_dimensions(z, 2)
    assert list(directions) == ["z[1]", "z[3]"]
    for name, j in (("z[1]", 1), ("z[3]", 3)):
        assert torch.count_nonzero(directions[name]) == 1
        assert directions[name][j] == pytest.approx(z[:, j].std().item())


def test_static_explorer_grid_shows_explorer_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(helper_explorer.STATIC_EXPLORER_ENV, "1")
    model = LinearDecoderModel()
    z_base = torch.randn(6)
    directions = {"a": torch.randn(6) * 0.1, "b": torch.randn(6) * 0.1}
    fig = latent_explorer(model, z_base, directions, "cpu", save_path=tmp_path / "explorer.png")
    assert isinstance(fig, Figure) and (tmp_path / "explorer.png").is_file()
    assert len(fig.axes) == 2 * 5
    for row, name in enumerate(directions):
        for col, strength in enumerate(helper_explorer.EXPLORER_STRENGTHS):
            shown = fig.axes[row * 5 + col].images[0].get_array()
            expected = explorer_image(model, z_base, directions, {name: strength}, "cpu")
            np.testing.assert_allclose(shown, expected.clamp(0, 1).permute(1, 2, 0).numpy(), atol=1e-5)
    assert [ax.get_title() for ax in fig.axes[:5]] == ["-3", "-1.5", "+0", "+1.5", "+3"]


def test_explorer_is_static_outside_a_live_kernel() -> None:
    model = LinearDecoderModel()
    assert isinstance(latent_explorer(model, torch.zeros(6), {"a": torch.ones(6)}, "cpu"), Figure)
    with pytest.raises(ValueError):
        latent_explorer(model, torch.zeros(6), {}, "cpu", interactive=False)


@pytest.mark.skipif(not HAS_WIDGETS, reason="ipywidgets is not installed")
def test_auto_mode_is_interactive_in_a_kernel_unless_forced_static(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython
    from ipykernel.zmqshell import ZMQInteractiveShell

    monkeypatch.delenv(helper_explorer.STATIC_EXPLORER_ENV, raising=False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: ZMQInteractiveShell.__new__(ZMQInteractiveShell))
    assert helper_explorer._live_frontend()
    monkeypatch.setenv(helper_explorer.STATIC_EXPLORER_ENV, "1")
    assert not helper_explorer._live_frontend()


@pytest.mark.skipif(not HAS_WIDGETS, reason="ipywidgets is not installed")
def test_widget_has_one_slider_per_direction_and_draws_explorer_images() -> None:
    import ipywidgets

    model = LinearDecoderModel()
    z_base = torch.randn(6)
    directions = {"z[1]": torch.randn(6), "z[4]": torch.randn(6)}
    widget = latent_explorer(model, z_base, directions, "cpu", interactive=True)
    assert isinstance(widget, ipywidgets.interactive)
    sliders = [w for w in widget.children if isinstance(w, ipywidgets.FloatSlider)]
    assert [s.description for s in sliders] == list(directions)
    assert all((s.min, s.max, s.value) == (-3.0, 3.0, 0.0) for s in sliders)
    assert torch.equal(widget.result, explorer_image(model, z_base, directions, {}, "cpu"))
    sliders[0].value, sliders[1].value = 1.5, -2.0
    expected = explorer_image(model, z_base, directions, {"z[1]": 1.5, "z[4]": -2.0}, "cpu")
    torch.testing.assert_close(widget.result, expected)
    torch.testing.assert_close(widget.f(**{"z[1]": 1.5, "z[4]": -2.0}), expected)


def test_decoder_comparison_table_has_losses_quality_and_spectra() -> None:
    runs = {d: {"epochs": 2, "test": {"reconstruction": r, "kl": 10.0, "combined": r + 10}}
            for d, r in (("transpose", 500.0), ("nearest", 480.0))}
    runs["nearest"]["test_quality"] = {"mse": 0.0123, "psnr": 19.1, "ssim": 0.512}
    metrics = {"runs": runs, "spectra": {"nearest": {
        "reconstruction_nyquist_ratio": 0.41, "sample_nyquist_ratio": 0.2, "real_checkerboard_score": 1.04,
        "reconstruction_checkerboard_score": 0.98, "sample_checkerboard_score": 1.5}}}
    table = helper_quality.decoder_comparison_table(metrics).data.splitlines()
    assert len(table) == 5 and all(row.count("|") == 13 for row in table)
    assert table[2] == ("| nearest | 2 | 480.00 | 10.00 | 490.00 | 0.01230 | 19.10 | 0.512 | 0.410 | 0.200 "
                        "| 0.98 | 1.50 |")
    assert table[3] == "| transpose | 2 | 500.00 | 10.00 | 510.00 | - | - | - | - | - | - | - |"
    assert table[4].startswith("| real test faces |") and table[4].split(" | ")[-2:] == ["1.04", " |"]


def test_run_summary_is_a_short_table_of_the_recorded_run() -> None:
    log = {f"{split}_{k}_loss_per_epoch": [v + 100, v] for split in ("train", "valid")
           for k, v in (("reconstruction", 500.0), ("kl", 30.0), ("combined", 530.0))}
    log["epoch"] = [1, 2]
    quality = {"mse": 0.01, "psnr": 20.0, "ssim": 0.6, "num_images": 10}
    run = run_record(log, {"reconstruction": 510.0, "kl": 31.0, "combined": 541.0}, quality, 2900.0,
                     dataset="celeba")
    assert run["train"] == run["valid"] == {"reconstruction": 500.0, "kl": 30.0, "combined": 530.0}
    assert run["epochs"] == 2 and run["dataset"] == "celeba" and run["test_reconstruction_of_mean_image"] == 2900
    text = run_summary(run).data
    assert "| test | 541.0 | 510.0 | 31.0 |" in text and "2900.0" in text and "PSNR 20.0 dB" in text
    assert len(text.splitlines()) <= 8


class MeanColours(nn.Module):
    """A stand-in for Inception-v3 (no download): the mean colour of each quarter of the image, zero-padded to
    ``num_features``. It notes whether each batch reached it on the stand-in MPS device ``mps`` and its dtype."""

    def __init__(self, num_features: int = 12, mps: MpsStandIn | None = None) -> None:
        super().__init__()
        self.num_features = num_features
        self.mps = mps
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.mps is not None and self.mps.holds(images), images.dtype))
        return F.pad(F.adaptive_avg_pool2d(images.float(), 2).flatten(1), (0, self.num_features - 12))


class MpsStandIn(TorchFunctionMode):
    """Apple's MPS on a CPU-only machine: tensors moved to or created on ``"mps"`` are CPU tensors that this mode
    tracks, and so is everything computed from them; as on a Mac, none of them can be float64."""

    def __init__(self) -> None:
        super().__init__()
        self._tracked: dict[int, weakref.ref] = {}

    def holds(self, tensor: torch.Tensor) -> bool:
        ref = self._tracked.get(id(tensor))
        return ref is not None and ref() is tensor

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs, target = dict(kwargs or {}), "cpu" if func is torch.Tensor.cpu else None
        if "device" in kwargs:
            target = torch.device(kwargs["device"]).type
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to:
            places = [torch.device(a).type for a in args[1:] if isinstance(a, (str, torch.device))]
            target = places[0] if places else target
            args = (args[0], *("cpu" if isinstance(a, (str, torch.device)) else a for a in args[1:]))
            kwargs["copy"] = True
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_mps = target == "mps" or (target is None and any(self.holds(t) for t in inputs))
        result = func(*args, **kwargs)
        if target == "cpu" and isinstance(result, torch.Tensor) and self.holds(result):
            result = result.clone()  # a copy to the host is a new tensor
        for out in tree_flatten(result)[0] if on_mps else []:
            if isinstance(out, torch.Tensor):
                if out.dtype == torch.float64:
                    raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't "
                                    "support float64. Please use float32 instead.")
                self._tracked[id(out)] = weakref.ref(out)
        return result


def test_the_mps_stand_in_refuses_float64_and_tracks_what_is_moved_there() -> None:
    with MpsStandIn() as mps:
        on_mps = torch.ones(3).to("mps")
        assert mps.holds(on_mps) and mps.holds(on_mps * 2) and not mps.holds(on_mps.cpu())
        with pytest.raises(TypeError, match="MPS Tensor to float64"):
            on_mps.double()


def test_frechet_score_is_zero_for_the_same_images_and_grows_with_a_shift() -> None:
    real = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    score = FrechetScore(real, MeanColours(), batch_size=16)
    assert score(real) == pytest.approx(0, abs=1e-6)
    assert 0 < score((real + 0.1).clamp(0, 1)) < score((real + 0.3).clamp(0, 1))
    encoder_space = FrechetScore(torch.rand(6, 3, 128, 128), PosteriorMeans(VAE(latent_dim=4)))
    assert encoder_space.metric.real_features_sum.shape == (4,)
    with pytest.raises(ValueError, match="at least 2 generated images"):
        score(real[:1])


@pytest.mark.parametrize("feature", ["module", "inception"])
def test_on_mps_the_features_are_computed_there_and_the_sums_stay_on_the_cpu(
    feature: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    fake = (real + 0.2).clamp(0, 1)

    def score_on(device: str, mps: MpsStandIn | None = None) -> tuple[FrechetScore, MeanColours]:
        if feature == "module":
            extractor = MeanColours(mps=mps)
            return FrechetScore(real, extractor, batch_size=8, device=device), extractor
        extractor = MeanColours(64, mps)  # FID's Inception-v3 (bytes in, 64 features out), without its download
        monkeypatch.setattr("torchmetrics.image.fid.NoTrainInceptionV3", lambda name, features_list: extractor)
        return FrechetScore(real, 64, batch_size=8, device=device), extractor

    expected = score_on("cpu")[0](fake)
    with MpsStandIn() as mps:
        score, extractor = score_on("mps", mps)
        assert score(fake) == pytest.approx(expected, rel=1e-6)
        states = [score.metric.real_features_sum, score.metric.fake_features_cov_sum]
        assert all(t.dtype == torch.float64 and not mps.holds(t) for t in states)
    assert extractor.seen and all(on_mps for on_mps, _ in extractor.seen)
    assert {dtype for _, dtype in extractor.seen} == {torch.uint8 if feature == "inception" else torch.float32}


def test_fid_without_its_weights_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import torchmetrics.image.fid

    def no_internet(*args: object, **kwargs: object) -> nn.Module:
        print("Downloading: https://github.com/toshas/torch-fidelity/...", file=sys.stderr)  # as the download does
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torchmetrics.image.fid, "NoTrainInceptionV3", no_internet)
    score, message = inception_fid(torch.rand(4, 3, 8, 8))
    assert score is None and "\n" not in message
    assert message.startswith("FID skipped") and "Name or service not known" in message
    assert capsys.readouterr() == ("", ""), "the download's own output is shown before the one line"
