"""Every plotting helper returns its figure and writes a PNG a person can open."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
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
