"""Figures of the lecture (loss curves, reconstructions, samples, latent histograms) and of latent arithmetic.

Every function returns its matplotlib Figure and, given ``save_path``, also writes it as a PNG atomically. In
Jupyter (and with any other non-GUI backend) the figure is returned closed, so pyplot no longer holds it: a cell
that ends with the call shows it once, as its value (``display(fig)`` shows it anywhere else), and a loop drawing
many figures keeps no memory. With a GUI backend (a plain script on a desktop) it stays open, so ``plt.show()``
shows it as the lecture's scripts expect.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends import BackendFilter, backend_registry
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid

from celeba_vae.atomic_files import atomic_write
from celeba_vae.celeba_files import attribute_index
from celeba_vae.precision import full_fp32
from helper_utils import eval_mode

Unnormalizer = Callable[[torch.Tensor], torch.Tensor] | None


@dataclass
class _FigureFolder:
    """Where :func:`save_figure` writes a titled figure that has no ``save_path`` (set by :func:`save_figures_to`)."""

    folder: Path | None = None
    prefix: str = ""
    title_note: str = ""


_figures = _FigureFolder()


def save_figures_to(folder: str | Path | None, prefix: str = "", title_note: str = "") -> None:
    """From now on every titled figure is also written to ``folder / (prefix + slug(title) + ".png")`` and its title
    gets ``title_note`` appended (``helper_setup.start_notebook`` calls this once per notebook); ``None`` stops
    writing. An explicit ``save_path`` always wins."""
    _figures.folder = Path(folder) if folder is not None else None
    _figures.prefix, _figures.title_note = prefix, title_note


def figure_file(name: str) -> Path | None:
    """``name`` (e.g. ``"epochs.gif"``) with this notebook's prefix in the figures folder, or ``None`` when unset."""
    return _figures.folder / f"{_figures.prefix}{name}" if _figures.folder is not None else None


def slug(title: str) -> str:
    """A file name stem from a title: lower case, each run of characters other than letters and digits one "_"."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def save_figure(fig: Figure, save_path: str | Path | None = None, title: str | None = None) -> Figure:
    """Give ``fig`` its title (with the note of :func:`save_figures_to`, e.g. that the faces are synthetic), write
    it to ``save_path``, or, when that is ``None`` and a title is given, to the folder of :func:`save_figures_to` (if
    set), and close it in pyplot unless a GUI backend will show it at ``plt.show()``; return it."""
    if save_path is None and title:
        save_path = figure_file(f"{slug(title)}.png")
    if title:
        fig.suptitle(title + _figures.title_note)
        fig.tight_layout()
    if save_path is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        atomic_write(save_path, lambda f: f.write(buffer.getvalue()))
    if plt.get_backend().lower() not in backend_registry.list_builtin(BackendFilter.INTERACTIVE):
        plt.close(fig)
    return fig


def show_image(ax: plt.Axes, image: torch.Tensor, unnormalizer: Unnormalizer = None) -> None:
    """Draw one (3, H, W) image in [0, 1] on ``ax`` (after ``unnormalizer``), without axes."""
    image = image.detach().cpu().float()
    if unnormalizer is not None:
        image = unnormalizer(image)
    ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy())
    ax.axis("off")


def plot_training_loss(
    minibatch_losses: Sequence[float],
    num_epochs: int,
    averaging_iterations: int | None = None,
    custom_label: str = "",
    title: str | None = None,
    save_path: str | Path | None = None,
    unit: str = "per image",
) -> Figure:
    """Minibatch loss and its running average over iterations, with an epoch axis (the lecture's plot).

    The loss axis is logarithmic (when every loss is positive), so the first epoch's steep fall and the last
    epochs' slow one both show; ``unit`` names what one value of the loss is. The running average spans
    ``averaging_iterations`` minibatches, by default :func:`averaging_window` of the run.
    """
    losses = np.asarray(minibatch_losses, dtype=float)
    averaging_iterations = averaging_iterations or averaging_window(len(losses), num_epochs)
    fig, ax1 = plt.subplots(figsize=(8, 4))
    ax1.plot(range(len(losses)), losses, label=f"Minibatch Loss{custom_label}")
    ax1.set_xlabel("Iterations")
    positive = bool(len(losses)) and bool((losses > 0).all())
    if positive:
        ax1.set_yscale("log")
    ax1.set_ylabel(f"Loss ({unit}{', log scale' if positive else ''})")
    window = max(1, min(averaging_iterations, len(losses)))
    running = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax1.plot(np.arange(window - 1, len(losses)), running, label=f"Running Average{custom_label}")
    ax1.legend()
    ax2 = ax1.twiny()
    iter_per_epoch = max(1, len(losses) // max(1, num_epochs))
    epochs = list(range(num_epochs + 1))
    step = max(1, num_epochs // 10)
    ax2.set_xticks([e * iter_per_epoch for e in epochs][::step])
    ax2.set_xticklabels(epochs[::step])
    ax2.xaxis.set_ticks_position("bottom")
    ax2.xaxis.set_label_position("bottom")
    ax2.spines["bottom"].set_position(("outward", 45))
    ax2.set_xlabel("Epochs")
    ax2.set_xlim(ax1.get_xlim())
    fig.tight_layout()
    return save_figure(fig, save_path, title)


def averaging_window(num_losses: int, num_epochs: int, longest: int = 100) -> int:
    """The running average's window sized to the run: half an epoch's minibatches, at most ``longest`` (the
    lecture's 100 of its 636 per epoch), so that the average starts within the first epoch."""
    per_epoch = num_losses // max(1, num_epochs)
    return max(1, min(longest, per_epoch // 2))


def plot_faces_with_attributes(
    data_loader: Iterable,
    attributes: Sequence[str] = ("Smiling", "Eyeglasses", "Male"),
    n_images: int = 8,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """The first ``n_images`` faces of ``data_loader``, each with the named attributes it has (+) or lacks (-)."""
    images, labels = next(iter(data_loader))
    images, labels = images[:n_images], labels[:n_images].cpu()
    columns = [attribute_index(name) for name in attributes]
    fig, axes = plt.subplots(1, len(images), figsize=(1.5 * len(images), 2.6), squeeze=False)
    for ax, image, label in zip(axes[0], images, labels, strict=True):
        show_image(ax, image)
        if label.numel():
            text = "\n".join(f"{'+' if label[c] else '-'} {name}" for name, c in zip(attributes, columns, strict=True))
            ax.text(0.5, -0.04, text, transform=ax.transAxes, ha="center", va="top", fontsize=8)
    return save_figure(fig, save_path, title)


@torch.no_grad()
def plot_generated_images(
    data_loader: Iterable,
    model: torch.nn.Module,
    device: str | torch.device,
    unnormalizer: Unnormalizer = None,
    figsize: tuple[float, float] | None = None,
    n_images: int = 8,
    modeltype: str = "autoencoder",
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Originals (top row) and their reconstructions (bottom row) from the first batch of ``data_loader``.

    Eight faces by default, 1.4 inches each (140 pixels in the PNG, over 100 at notebook width), rows labelled,
    so blur and checkerboards can be judged.
    """
    if modeltype not in ("autoencoder", "VAE"):
        raise ValueError(f"modeltype={modeltype!r} is not supported; use 'autoencoder' or 'VAE'")
    features, _ = next(iter(data_loader))
    features = features[:n_images].to(device)
    with eval_mode(model):
        decoded = model(features)[3] if modeltype == "VAE" else model(features)
    figsize = figsize or (1.4 * len(features) + 0.6, 3.2)
    fig, axes = plt.subplots(nrows=2, ncols=len(features), sharex=True, sharey=True, figsize=figsize, squeeze=False)
    for i in range(len(features)):
        show_image(axes[0][i], features[i], unnormalizer)
        show_image(axes[1][i], decoded[i], unnormalizer)
    _label_rows(axes, ["original", "reconstruction"])
    return save_figure(fig, save_path, title)


def _label_rows(axes: np.ndarray, labels: Sequence[str]) -> None:
    """Write each row's label left of its first image (the axes are off, so a ylabel would not show)."""
    for row, label in zip(axes, labels, strict=True):
        row[0].text(-0.06, 0.5, label, transform=row[0].transAxes, ha="right", va="center", rotation=90)


@torch.no_grad()
def plot_images_sampled_from_vae(
    model: torch.nn.Module,
    device: str | torch.device,
    latent_size: int,
    unnormalizer: Unnormalizer = None,
    num_images: int = 8,
    title: str | None = None,
    save_path: str | Path | None = None,
    generator: torch.Generator | None = None,
    per_row: int = 8,
) -> Figure:
    """Decode ``num_images`` codes drawn from N(0, I): new faces, ``per_row`` to a row (1.4 inches each)."""
    z = torch.randn(num_images, latent_size, generator=generator)
    with eval_mode(model):
        images = model.decode(z.to(device)).cpu()
    ncols = min(per_row, num_images)
    nrows = -(-num_images // ncols)
    fig, axes = plt.subplots(nrows=nrows, ncols=ncols, figsize=(1.4 * ncols, 1.45 * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < num_images:
            show_image(ax, images[i], unnormalizer)
        else:
            ax.remove()
    return save_figure(fig, save_path, title)


def plot_zoomed_crops(
    images: Mapping[str, torch.Tensor],
    box: tuple[int, int, int] = (40, 40, 32),
    zoom: int = 4,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Each (3, H, W) image of ``images`` (label -> image) whole, with the crop ``box`` = (top, left, size) marked,
    and that crop enlarged ``zoom`` times by repeating pixels, so a 2-pixel checkerboard becomes visible."""
    top, left, size = box
    fig, axes = plt.subplots(2, len(images), figsize=(3.2 * len(images), 6.6), squeeze=False)
    for col, (label, image) in enumerate(images.items()):
        if top + size > image.shape[-2] or left + size > image.shape[-1]:
            raise ValueError(f"the crop box {box} does not fit the {label} image of shape {tuple(image.shape)}")
        show_image(axes[0][col], image)
        axes[0][col].add_patch(plt.Rectangle((left - 0.5, top - 0.5), size, size, fill=False, color="red", lw=1.5))
        axes[0][col].set_title(label)
        crop = image[:, top:top + size, left:left + size]
        show_image(axes[1][col], crop.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1))
        axes[1][col].set_title(f"red box, {zoom}x", fontsize=9)
    return save_figure(fig, save_path, title)


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi)


def plot_latent_histograms(
    z: torch.Tensor | np.ndarray,
    num_dims: int = 25,
    bins: int = 50,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Histograms (densities) of the first ``num_dims`` latent dimensions, with the N(0, 1) density over each."""
    z = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z)
    num_dims = min(num_dims, z.shape[1])
    ncols = int(np.ceil(np.sqrt(num_dims)))
    nrows = int(np.ceil(num_dims / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2 * nrows), squeeze=False)
    grid = np.linspace(-4, 4, 200)
    for j, ax in enumerate(axes.flat):
        if j >= num_dims:
            ax.remove()
            continue
        ax.hist(z[:, j], bins=bins, density=True, color="tab:blue", alpha=0.7)
        ax.plot(grid, _normal_pdf(grid), color="tab:red", lw=1.2)
        ax.set_title(f"z[{j}]", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, save_path, title)


def plot_latent_summary(
    z: torch.Tensor | np.ndarray,
    title: str | None = None,
    save_path: str | Path | None = None,
    z_mean: torch.Tensor | np.ndarray | None = None,
) -> Figure:
    """All dimensions at once: per-dimension mean and std against N(0, 1), and the pooled histogram.

    With ``z_mean`` (the posterior means) each dimension also gets the standard deviation of its means across
    faces: how much it tells faces apart (an inactive unit's is near 0 although its sampled codes' std is 1).
    """
    z = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.5), gridspec_kw={"width_ratios": [2, 1]})
    dims = np.arange(z.shape[1])
    ax1.bar(dims, z.std(axis=0), color="tab:blue", alpha=0.6, label="std of z")
    if z_mean is not None:
        means = np.asarray(z_mean.detach().cpu() if isinstance(z_mean, torch.Tensor) else z_mean)
        ax1.plot(dims, means.std(axis=0), "_", color="black", ms=6, label="std of the means mu")
    ax1.plot(dims, z.mean(axis=0), ".", color="tab:orange", label="mean of z")
    ax1.axhline(1, color="tab:red", lw=1, label="N(0, 1): std 1")
    ax1.axhline(0, color="black", lw=0.8)
    ax1.set_xlabel("latent dimension")
    ax1.legend(fontsize=8)
    grid = np.linspace(-4, 4, 200)
    ax2.hist(z.ravel(), bins=100, density=True, color="tab:blue", alpha=0.7, label="all codes")
    ax2.plot(grid, _normal_pdf(grid), color="tab:red", label="N(0, 1)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, save_path, title)


def plot_image_grid(
    images: torch.Tensor | Sequence[torch.Tensor],
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Rows of images: a (N, 3, H, W) tensor is one row, a list of such tensors is one row each."""
    rows = [images] if isinstance(images, torch.Tensor) else list(images)
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.6 * ncols, 1.7 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                show_image(ax, row[c])
            if r == 0 and titles is not None and c < len(titles):
                ax.set_title(titles[c], fontsize=9)
        if row_labels is not None:
            axes[r][0].text(-0.1, 0.5, row_labels[r], transform=axes[r][0].transAxes, ha="right", va="center")
    fig.tight_layout()
    return save_figure(fig, save_path, title)


@torch.no_grad()
def plot_modified_faces(
    original: torch.Tensor,
    diff: torch.Tensor,
    diff_coefficients: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
    decoding_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """``original + alpha * diff`` (top) and ``original - alpha * diff`` (bottom) for each alpha.

    With ``decoding_fn`` the two are latent vectors, decoded for display; otherwise they are images. ``figsize``
    ``None`` draws every face at least at its own 128 pixels.
    """
    figsize = figsize or (FACE_INCHES * len(diff_coefficients), 2 * FACE_INCHES + 0.6)
    fig, axes = plt.subplots(nrows=2, ncols=len(diff_coefficients), sharex=True, sharey=True, figsize=figsize,
                             squeeze=False)
    for i, alpha in enumerate(diff_coefficients):
        more, less = original + alpha * diff, original - alpha * diff
        if decoding_fn is not None:
            more, less = (decoding_fn(v.to(device).unsqueeze(0)).cpu().squeeze(0) for v in (more, less))
        label = "original" if not alpha else f"$\\alpha=${alpha}"
        for row, image in enumerate((more, less)):
            show_image(axes[row][i], image)
            axes[row][i].set_title(label if row == 0 else f"$\\alpha=${-alpha}" if alpha else label, fontsize=8)
    return save_figure(fig, save_path, title)


@dataclass
class EpochImages:
    """What :func:`train_vae_v1` draws after every epoch: ``images`` (N, 3, H, W; uint8 or floats in [0, 1], CPU),
    their reconstructions, and the decoded fixed ``noise`` (M, latent_dim), saved as ``folder/epoch_001.png``..."""

    images: torch.Tensor
    noise: torch.Tensor
    folder: str | Path

    @classmethod
    def from_loader(
        cls, data_loader: Iterable, folder: str | Path, num_images: int = 8, seed: int = 123, latent_dim: int = 200
    ) -> EpochImages:
        """The first ``num_images`` faces of ``data_loader`` (fewer if its first batch is smaller) and as many noise
        vectors, drawn from ``seed``."""
        images = next(iter(data_loader))[0][:num_images].cpu()
        noise = torch.randn(len(images), latent_dim, generator=torch.Generator().manual_seed(seed))
        return cls(images, noise, folder)

    def save(self, model: torch.nn.Module, device: torch.device, epoch: int) -> Path:
        """Write ``epoch_{epoch:03d}.png``: originals, reconstructions (decoded posterior means), decoded noise."""
        images = self.images.float() / 255 if self.images.dtype == torch.uint8 else self.images.float()
        with eval_mode(model), torch.no_grad(), full_fp32(device):
            reconstructions = model.reconstruct(images.to(device)).float().cpu()
            samples = model.decode(self.noise.to(device, torch.float32)).float().cpu()
        grid = make_grid(torch.cat([images, reconstructions, samples]).clamp(0, 1), nrow=len(images), pad_value=1.0)
        picture = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
        return atomic_write(Path(self.folder) / f"epoch_{epoch:03d}.png", lambda f: picture.save(f, format="PNG"))

    @staticmethod
    def saved(folder: str | Path, num_epochs: int | None = None) -> list[tuple[int, Path]]:
        """``(epoch, path)`` of the pictures :meth:`save` wrote to ``folder``, in epoch order (the first
        ``num_epochs``, so pictures of an earlier, longer run are left out)."""
        files = sorted(Path(folder).glob("epoch_*.png"))[:num_epochs]
        if not files:
            raise FileNotFoundError(f"no epoch_*.png in {folder}; train with epoch_images=EpochImages(...) first")
        return [(int(file.stem.split("_")[1]), file) for file in files]

    @staticmethod
    def read(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The originals, reconstructions and decoded noise of one picture :meth:`save` wrote (three rows of square
        faces, 2 pixels of padding), each (N, 3, H, W) in [0, 1]."""
        with Image.open(path) as picture:
            grid = pil_to_tensor(picture.convert("RGB")).float() / 255
        size, count = EpochImages._layout(path, grid.shape[1], grid.shape[2])
        starts = range(2, count * (size + 2), size + 2)
        rows = [torch.stack([grid[:, top:top + size, left:left + size] for left in starts])
                for top in range(2, 3 * (size + 2), size + 2)]
        return rows[0], rows[1], rows[2]

    @staticmethod
    def first_columns(path: str | Path, count: int) -> Image.Image:
        """The first ``count`` columns of faces of one picture :meth:`save` wrote, with their padding, as an RGB
        image (cut without decoding the faces into tensors)."""
        with Image.open(path) as picture:
            size, _ = EpochImages._layout(path, picture.height, picture.width)
            return picture.convert("RGB").crop((0, 0, min(picture.width, 2 + count * (size + 2)), picture.height))

    @staticmethod
    def _layout(path: str | Path, height: int, width: int) -> tuple[int, int]:
        """``(face size, faces per row)`` of a picture of ``height`` x ``width`` pixels that :meth:`save` wrote."""
        size = (height - 2) // 3 - 2
        count = (width - 2) // (size + 2)
        if size < 4 or 3 * (size + 2) + 2 != height or count * (size + 2) + 2 != width:
            raise ValueError(f"{path} is not a grid of three rows of square faces written by EpochImages.save")
        return size, count


def save_gif(frames: torch.Tensor, path: str | Path, duration_ms: int = 100) -> Path:
    """Write (N, 3, H, W) frames in [0, 1] as a looping animated GIF."""
    pictures = [Image.fromarray((f.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
                for f in frames.detach().cpu().float()]

    def write(f: io.BufferedWriter) -> None:
        pictures[0].save(f, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)

    return atomic_write(path, write)


def save_epoch_gif(
    folder: str | Path,
    path: str | Path | None = None,
    num_epochs: int | None = None,
    faces: int = 4,
    max_bytes: int = 700_000,
    duration_ms: int = 600,
) -> Path:
    """An animated GIF of the ``epoch_*.png`` that :class:`EpochImages` wrote to ``folder`` (the first
    ``num_epochs``), each frame stamped "epoch k of n".

    Each frame keeps the first ``faces`` columns at full resolution (a 2-pixel checkerboard survives no
    shrinking); with many epochs, evenly spaced ones (always the first and the last) are kept so that the file
    stays under ``max_bytes`` and an executed notebook that shows it stays small. Without ``path`` it goes to the
    figures folder of :func:`save_figures_to`, as ``epochs.gif`` after the notebook's prefix.
    """
    path = path or figure_file("epochs.gif")
    if path is None:
        raise ValueError("save_epoch_gif needs a path: none given, and no figures folder set by save_figures_to")
    saved = EpochImages.saved(folder, num_epochs)
    frames = [_stamped_frame(file, epoch, len(saved), faces) for epoch, file in saved]
    frames = _indexed_frames(frames)  # one palette, each frame mapped once: the size search only re-encodes them
    keep = len(frames)
    while True:
        chosen = [frames[round(i * (len(frames) - 1) / max(keep - 1, 1))] for i in range(keep)]
        buffer = io.BytesIO()
        chosen[0].save(buffer, format="GIF", save_all=True, append_images=chosen[1:], duration=duration_ms, loop=0)
        if buffer.tell() <= max_bytes or keep <= 2:
            break
        keep = max(2, min(keep - 1, int(keep * 0.95 * max_bytes / buffer.tell())))
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _indexed_frames(frames: Sequence[Image.Image], every: int = 3) -> list[Image.Image]:
    """``frames`` as palette images sharing one 256-colour palette, each mapped once: their own colours when the
    first, middle and last frame have at most 256 (flat early epochs, drawn patterns), each kept exactly; else a
    median cut of every ``every``-th pixel of those frames, as Pillow gives each GIF frame of its own."""
    samples = (frames[0], frames[len(frames) // 2], frames[-1])
    strip = Image.new("RGB", (samples[0].width, sum(sample.height for sample in samples)))
    for i, sample in enumerate(samples):
        strip.paste(sample, (0, i * samples[0].height))
    sparse = strip.resize((max(1, strip.width // every), max(1, strip.height // every)), Image.Resampling.NEAREST)
    palette = sparse.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    exact = strip.getcolors(256)
    if not exact:
        return [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    # Pillow maps to a given palette through a coarse colour cache (255 can become 252), so exact colours are
    # looked up here; a frame with a colour outside them falls back to Pillow's mapping.
    colours = np.array([colour for _, colour in exact], dtype=np.int64)
    keys = colours @ np.array([1 << 16, 1 << 8, 1])
    order = np.argsort(keys)
    indexed = []
    for frame in frames:
        pixels = np.asarray(frame, dtype=np.int64) @ np.array([1 << 16, 1 << 8, 1])
        position = np.searchsorted(keys[order], pixels).clip(max=len(keys) - 1)
        if not (keys[order][position] == pixels).all():
            indexed.append(frame.quantize(palette=palette, dither=Image.Dither.NONE))
            continue
        picture = Image.frombytes("P", frame.size, order[position].astype(np.uint8).tobytes())
        picture.putpalette(colours.astype(np.uint8).ravel().tolist())
        indexed.append(picture)
    return indexed


@functools.cache
def _stamp_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The epoch counter's font, loaded once."""
    return ImageFont.load_default(size=14)


def _stamped_frame(file: Path, epoch: int, num_epochs: int, faces: int) -> Image.Image:
    """One epoch's picture cut to its first ``faces`` columns, with a strip on top that says which epoch it shows."""
    picture = EpochImages.first_columns(file, faces)
    frame = Image.new("RGB", (picture.width, picture.height + 22), "white")
    frame.paste(picture, (0, 22))
    ImageDraw.Draw(frame).text((4, 4), f"epoch {epoch} of {num_epochs}", fill="black", font=_stamp_font())
    return frame


FACE_INCHES = 1.8  # one face's cell in the edit figures: 128 pixels and its title fit at 72 or 100 dpi


@torch.no_grad()
def plot_pixel_and_latent_edit(
    face: torch.Tensor,
    pixel_direction: torch.Tensor,
    z_face: torch.Tensor,
    latent_direction: torch.Tensor,
    decoding_fn: Callable[[torch.Tensor], torch.Tensor],
    device: str | torch.device | None = None,
    diff_coefficients: Sequence[float] = (0.0, 1.0, 2.0, 3.0),
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """One face edited two ways, as the lecture shows them side by side: the top row adds ``alpha`` times the
    pixel-average difference to the image itself, the bottom row adds ``alpha`` times the latent direction to the
    face's code ``z_face`` and decodes it (the bottom-left face is the reconstruction)."""
    fig, axes = plt.subplots(2, len(diff_coefficients), squeeze=False,
                             figsize=(FACE_INCHES * len(diff_coefficients), 2 * FACE_INCHES + 0.6))
    for i, alpha in enumerate(diff_coefficients):
        pixels = face.cpu().float() + alpha * pixel_direction.cpu().float()
        code = (z_face + alpha * latent_direction).to(device).unsqueeze(0)
        decoded = decoding_fn(code).float().cpu().squeeze(0)
        for row, image in enumerate((pixels, decoded)):
            show_image(axes[row][i], image)
            axes[row][i].set_title(f"$\\alpha=${alpha:g}", fontsize=9)
    _label_rows(axes, ["pixel space:\nface + alpha * d_pixels", "latent space:\ndecode(z + alpha * d)"])
    fig.tight_layout()
    return save_figure(fig, save_path, title)
