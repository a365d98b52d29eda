"""Every plotting helper returns its figure and writes a PNG a person can open."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import helper_plotting as hp
from model import VAE


@pytest.fixture(autouse=True)
def close_figures() -> None:
    yield
    plt.close("all")


def _png(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture
def loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    return [(torch.rand(4, 3, 128, 128), torch.zeros(4, 40, dtype=torch.int64))]


def test_a_titled_figure_goes_to_the_configured_folder_named_after_its_title(tmp_path: Path) -> None:
    hp.save_figures_to(tmp_path / "figures", prefix="transpose_", title_note=" (SYNTHETIC faces, not CelebA)")
    fig = hp.plot_images_sampled_from_vae(VAE(), "cpu", 200, num_images=2, title="16 faces decoded from N(0, I)")
    assert fig._suptitle.get_text() == "16 faces decoded from N(0, I) (SYNTHETIC faces, not CelebA)"
    _png(tmp_path / "figures" / "transpose_16_faces_decoded_from_n_0_i.png")
    hp.plot_images_sampled_from_vae(VAE(), "cpu", 200, num_images=2, title="Samples", save_path=tmp_path / "mine.png")
    _png(tmp_path / "mine.png")
    assert not (tmp_path / "figures" / "transpose_samples.png").exists(), "an explicit save_path must win"
    hp.plot_images_sampled_from_vae(VAE(), "cpu", 200, num_images=2)
    assert len(list((tmp_path / "figures").iterdir())) == 1, "a figure without a title has no name to be saved under"
    assert hp.figure_file("epochs.gif") == tmp_path / "figures" / "transpose_epochs.gif"


def test_without_a_configured_folder_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fig = hp.plot_images_sampled_from_vae(VAE(), "cpu", 200, num_images=2, title="Samples")
    assert fig._suptitle.get_text() == "Samples" and not list(tmp_path.iterdir())
    assert hp.figure_file("epochs.gif") is None
    with pytest.raises(ValueError, match="needs a path"):
        hp.save_epoch_gif(tmp_path)


def test_the_running_average_is_sized_to_the_run() -> None:
    assert hp.averaging_window(100, num_epochs=10) == 5  # 10 minibatches per epoch: half an epoch
    assert hp.averaging_window(636 * 50, num_epochs=50) == 100  # the lecture's run keeps its 100
    assert hp.averaging_window(3, num_epochs=3) == 1
    fig = hp.plot_training_loss(list(np.linspace(5000, 600, 100)), num_epochs=10)
    average = next(line for line in fig.axes[0].lines if line.get_label() == "Running Average")
    assert average.get_xdata()[0] == 4, "the running average must start within the first epoch"
    fig = hp.plot_training_loss(list(np.linspace(5000, 600, 100)), num_epochs=10, averaging_iterations=20)
    assert next(line for line in fig.axes[0].lines if line.get_label() == "Running Average").get_xdata()[0] == 19


def test_training_loss(tmp_path: Path) -> None:
    losses = list(torch.linspace(3000, 600, 300) + torch.rand(300) * 50)
    fig = hp.plot_training_loss(losses, num_epochs=3, averaging_iterations=20, custom_label=" (KL)",
                                save_path=tmp_path / "sub" / "loss.png")
    assert len(fig.axes) == 2 and fig.axes[1].get_xlabel() == "Epochs"
    assert {line.get_label() for line in fig.axes[0].lines} == {"Minibatch Loss (KL)", "Running Average (KL)"}
    assert _png(tmp_path / "sub" / "loss.png")[0] > 300
    hp.plot_training_loss([5.0, 4.0], num_epochs=1)


def test_generated_images_vae_and_train_mode(tmp_path: Path, loader: list) -> None:
    model = VAE().train()
    fig = hp.plot_generated_images(loader, model, "cpu", modeltype="VAE", n_images=15, save_path=tmp_path / "r.png")
    assert len(fig.axes) == 2 * 4 and model.training
    assert _png(tmp_path / "r.png")[0] > 300
    with pytest.raises(ValueError, match="'GAN'"):
        hp.plot_generated_images(loader, model, "cpu", modeltype="GAN")


def test_samples_are_reproducible(tmp_path: Path) -> None:
    model = VAE()
    hp.plot_images_sampled_from_vae(model, "cpu", 200, num_images=4, save_path=tmp_path / "a.png",
                                    generator=torch.Generator().manual_seed(1))
    hp.plot_images_sampled_from_vae(model, "cpu", 200, num_images=4, save_path=tmp_path / "b.png",
                                    generator=torch.Generator().manual_seed(1))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    _png(tmp_path / "a.png")


def test_latent_histograms_and_summary(tmp_path: Path) -> None:
    z = torch.randn(500, 200)
    fig = hp.plot_latent_histograms(z, num_dims=25, save_path=tmp_path / "h.png")
    assert len(fig.axes) == 25 and fig.axes[7].get_title() == "z[7]"
    assert all(len(ax.lines) == 1 for ax in fig.axes)
    _png(tmp_path / "h.png")
    hp.plot_latent_summary(z, save_path=tmp_path / "s.png")
    _png(tmp_path / "s.png")


def test_modified_faces_grid_and_gif(tmp_path: Path) -> None:
    model = VAE().eval()
    fig = hp.plot_modified_faces(torch.zeros(200), torch.ones(200), decoding_fn=model.decoder, device="cpu",
                                 save_path=tmp_path / "m.png")
    assert len(fig.axes) == 14 and fig.axes[0].get_title() == "original"
    _png(tmp_path / "m.png")
    fig = hp.plot_image_grid([torch.rand(3, 3, 32, 32), torch.rand(2, 3, 32, 32)], row_labels=["a", "b"],
                             save_path=tmp_path / "g.png")
    assert len(fig.axes) == 6
    _png(tmp_path / "g.png")
    hp.save_gif(torch.rand(5, 3, 32, 32), tmp_path / "i.gif")
    with Image.open(tmp_path / "i.gif") as gif:
        assert gif.n_frames == 5


def test_faces_with_attributes_and_titles(tmp_path: Path, loader: list) -> None:
    images, labels = loader[0]
    labels[1, 31] = 1
    fig = hp.plot_faces_with_attributes([(images, labels)], ["Smiling", "Eyeglasses"], n_images=3,
                                        title="Training faces (SYNTHETIC faces, not CelebA)",
                                        save_path=tmp_path / "f.png")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["- Smiling\n- Eyeglasses", "+ Smiling\n- Eyeglasses", "- Smiling\n- Eyeglasses"]
    assert fig._suptitle.get_text() == "Training faces (SYNTHETIC faces, not CelebA)"
    _png(tmp_path / "f.png")
    with pytest.raises(KeyError, match="Smilling"):
        hp.plot_faces_with_attributes(loader, ["Smilling"])
    titled = hp.plot_latent_summary(torch.randn(50, 10), title="Codes (SYNTHETIC faces, not CelebA)")
    assert titled._suptitle.get_text() == "Codes (SYNTHETIC faces, not CelebA)"
    assert hp.plot_latent_summary(torch.randn(50, 10))._suptitle is None


def test_figures_are_closed_and_display_once_from_their_value(tmp_path: Path, loader: list) -> None:
    """A figure left open in pyplot is shown by Jupyter's inline backend and again as the cell's value."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.pylabtools import select_figure_formats

    model = VAE()
    figures = [
        hp.plot_training_loss([5.0, 4.0, 3.0], num_epochs=1),
        hp.plot_faces_with_attributes(loader, ["Smiling"], n_images=2),
        hp.plot_generated_images(loader, model, "cpu", modeltype="VAE", n_images=2),
        hp.plot_images_sampled_from_vae(model, "cpu", 200, num_images=2),
        hp.plot_latent_histograms(torch.randn(50, 4), num_dims=4),
        hp.plot_latent_summary(torch.randn(50, 4)),
        hp.plot_image_grid(torch.rand(2, 3, 16, 16), save_path=tmp_path / "g.png"),
        hp.plot_modified_faces(torch.zeros(200), torch.ones(200), (0.0, 1.0), model.decoder, "cpu"),
    ]
    assert plt.get_fignums() == []
    shell = InteractiveShell.instance()
    select_figure_formats(shell, {"png"})
    for fig in figures:
        shown, _ = shell.display_formatter.format(fig)
        assert shown["image/png"].startswith("iVBOR"), "the returned figure still renders as the cell's value"


def test_a_script_with_a_gui_backend_keeps_the_figure_for_plt_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain script on a desktop (TkAgg, QtAgg, macosx) calls ``plt.show()`` after the helper: the figure must
    still be open in pyplot then; under Agg or Jupyter's inline backend it is closed."""
    monkeypatch.setattr(plt, "get_backend", lambda: "TkAgg")
    fig = hp.plot_training_loss([5.0, 4.0, 3.0], num_epochs=1)
    try:
        assert plt.fignum_exists(fig.number)
    finally:
        plt.close(fig)
    monkeypatch.setattr(plt, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    fig = hp.plot_training_loss([5.0, 4.0, 3.0], num_epochs=1)
    assert not plt.fignum_exists(fig.number)


def test_loss_plot_shows_the_first_epoch_on_a_log_scale_with_its_unit() -> None:
    losses = [5556.7, 900.0] + [600.0] * 98
    fig = hp.plot_training_loss(losses, num_epochs=2, unit="nats per image")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "Loss (nats per image, log scale)"
    assert ax.get_ylim()[1] > 5556.7, "the first minibatch loss is cut off"
    linear = hp.plot_training_loss([3.0, -1.0, 0.5], num_epochs=1).axes[0]
    assert linear.get_yscale() == "linear" and linear.get_ylabel() == "Loss (per image)"


def test_reconstructions_are_labelled_and_large_enough_to_judge(tmp_path: Path, loader: list) -> None:
    fig = hp.plot_generated_images(loader * 2, VAE(), "cpu", modeltype="VAE", save_path=tmp_path / "r.png")
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert labels == ["original", "reconstruction"]
    width, _ = _png(tmp_path / "r.png")
    assert width / 4 >= 100, "fewer than 100 pixels per face"
    samples = hp.plot_images_sampled_from_vae(VAE(), "cpu", 200, num_images=12, per_row=8)
    assert len(samples.axes) == 12 and samples.get_size_inches()[0] / 8 >= 1.0


def test_zoomed_crops_enlarge_the_marked_box_pixel_for_pixel(tmp_path: Path) -> None:
    image = torch.rand(3, 64, 64)
    fig = hp.plot_zoomed_crops({"real": image, "other": image.flip(-1)}, box=(8, 16, 8), zoom=4,
                               save_path=tmp_path / "z.png")
    shown = fig.axes[2].images[0].get_array()
    assert shown.shape == (32, 32, 3)
    expected = image[:, 8:16, 16:24].repeat_interleave(4, -1).repeat_interleave(4, -2).permute(1, 2, 0).numpy()
    assert np.allclose(shown, expected)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["real", "other"]
    _png(tmp_path / "z.png")
    with pytest.raises(ValueError, match="does not fit the real image"):
        hp.plot_zoomed_crops({"real": image}, box=(40, 40, 32))


def _epoch_pngs(folder: Path, epochs: int, checkerboard: bool = False) -> None:
    """Pictures laid out as helper_train.EpochImages writes them: noise faces, or a one-pixel checkerboard."""
    from torchvision.utils import make_grid

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    faces = torch.rand(24, 3, 64, 64)
    if checkerboard:
        faces = torch.zeros(24, 3, 64, 64)
        faces[..., ::2, ::2] = faces[..., 1::2, 1::2] = 1.0
    for epoch in range(1, epochs + 1):
        if not checkerboard:
            faces = torch.rand(24, 3, 64, 64)  # a new picture every epoch, as training draws
        grid = make_grid(faces, nrow=8, pad_value=1.0)
        Image.fromarray(grid.mul(255).byte().permute(1, 2, 0).numpy()).save(folder / f"epoch_{epoch:03d}.png")


def test_epoch_gif_has_a_counter_and_stays_under_its_size(tmp_path: Path) -> None:
    _epoch_pngs(tmp_path / "epochs", 12)
    small = hp.save_epoch_gif(tmp_path / "epochs", tmp_path / "small.gif", max_bytes=200_000)
    assert small.stat().st_size <= 200_000
    with Image.open(small) as gif:
        assert 2 <= gif.n_frames < 12 and gif.width == 2 + 4 * 66
    _epoch_pngs(tmp_path / "pattern", 2, checkerboard=True)
    with Image.open(hp.save_epoch_gif(tmp_path / "pattern", tmp_path / "pattern.gif")) as gif:
        first = np.asarray(gif.convert("RGB"))
    unstamped = np.asarray(Image.open(tmp_path / "pattern" / "epoch_001.png").convert("RGB"))
    assert first.shape[0] == unstamped.shape[0] + 22 and (first[:22] < 128).any(), "no epoch counter"
    assert np.array_equal(first[22:], unstamped[:, :first.shape[1]]), "the one-pixel checkerboard did not survive"
    whole = hp.save_epoch_gif(tmp_path / "epochs", tmp_path / "all.gif", num_epochs=3, max_bytes=10_000_000)
    with Image.open(whole) as gif:
        assert gif.n_frames == 3
    with pytest.raises(FileNotFoundError, match="epoch_"):
        hp.save_epoch_gif(tmp_path / "none", tmp_path / "x.gif")


def test_latent_summary_marks_how_much_the_means_vary() -> None:
    z_mean = torch.zeros(300, 6)
    z_mean[:, 2] = torch.linspace(-2, 2, 300)
    fig = hp.plot_latent_summary(torch.randn(300, 6), z_mean=z_mean)
    ticks = next(line for line in fig.axes[0].lines if line.get_label() == "std of the means mu")
    assert np.allclose(ticks.get_ydata(), z_mean.numpy().std(axis=0), atol=1e-5)
