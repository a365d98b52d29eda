"""The VAE loss, the lecture's training loop (its machinery in ``celeba_vae.training``) and evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid

from celeba_vae.atomic_files import atomic_write
from celeba_vae.checkpoint import save_weights
from celeba_vae.decoded_cache import CachedLoader
from celeba_vae.fast_step import FastStep
from celeba_vae.precision import full_fp32
from celeba_vae.training import LOSS_KEYS, EpochLog, TrainingRun, choose_step_settings
from helper_utils import eval_mode

LossFn = Callable[..., torch.Tensor]


def vae_loss(
    features: torch.Tensor,
    decoded: torch.Tensor,
    z_mean: torch.Tensor,
    z_log_var: torch.Tensor,
    reconstruction_term_weight: float = 1.0,
    loss_fn: LossFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(combined, reconstruction, kl)``: per-image summed squared error and KL (summed over latent dims),
    each averaged over the batch; ``combined = weight * reconstruction + kl``. Computed in float32.

    The KL term is the closed form for a diagonal Gaussian against N(0, I): Kingma & Welling (2014),
    "Auto-Encoding Variational Bayes", Appendix B: ``-0.5 * sum(1 + log var - mean^2 - var)``.
    """
    loss_fn = loss_fn or F.mse_loss
    batch_size = features.shape[0]
    z_mean, z_log_var = z_mean.float(), z_log_var.float()
    kl = (-0.5 * torch.sum(1 + z_log_var - z_mean**2 - torch.exp(z_log_var), dim=1)).mean()
    pixelwise = loss_fn(decoded.float(), features.float(), reduction="none")
    reconstruction = pixelwise.reshape(batch_size, -1).sum(dim=1).mean()
    return reconstruction_term_weight * reconstruction + kl, reconstruction, kl


def to_device(
    tensor: torch.Tensor, device: torch.device, memory_format: torch.memory_format = torch.preserve_format
) -> torch.Tensor:
    """``tensor`` on ``device`` (in ``memory_format``), copied without blocking only where that is safe: from pinned
    host memory to CUDA.

    A non-blocking copy from ordinary memory can hand MPS a corrupted batch (pytorch#139550) and on CUDA it blocks
    anyway, so a user's own DataLoader (or ``loader="lecture"``) gets a plain copy.
    """
    non_blocking = device.type == "cuda" and tensor.device.type == "cpu" and tensor.is_pinned()
    return tensor.to(device, non_blocking=non_blocking, memory_format=memory_format)


def adam(model: torch.nn.Module, lr: float = 5e-4) -> torch.optim.Optimizer:
    """``torch.optim.Adam(model.parameters(), lr=lr)``, fused and capturable where the model is on CUDA.

    Fused Adam takes the fp16 gradient scaler's inf check on the GPU, so a training step on a T4 or V100 does not
    wait for it; capturable, it keeps its step count on the GPU, so the whole training step can be replayed as a
    CUDA graph (:mod:`celeba_vae.fast_step`). The update is Adam's either way (equal up to rounding). Build it after
    ``model.to(device)``: a model still on the CPU gets the plain Adam.
    """
    on_cuda = all(p.device.type == "cuda" for p in model.parameters())
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True if on_cuda else None, capturable=on_cuda)


@torch.no_grad()
def evaluate_vae(
    model: torch.nn.Module,
    data_loader: Iterable,
    device: str | torch.device,
    loss_fn: LossFn | None = None,
    reconstruction_term_weight: float = 1.0,
) -> dict[str, float]:
    """Per-image ``combined``/``reconstruction``/``kl`` loss over all of ``data_loader``, in eval mode and full fp32
    (no autocast, no TF32), so validation and test losses are comparable whatever precision training used.

    Batch totals are float32 on the device (MPS has no float64) and are summed in float64 on the CPU. A split the
    fast loader holds on the GPU is evaluated in larger batches (see ``CachedLoader.for_evaluation``).
    """
    device = torch.device(device)
    if isinstance(data_loader, CachedLoader):
        data_loader = data_loader.for_evaluation()
    batch_totals: list[torch.Tensor] = []
    count = 0
    with eval_mode(model), full_fp32(device):
        for features, _ in data_loader:
            features = to_device(features, device)
            _, z_mean, z_log_var, decoded = model(features)
            losses = vae_loss(features, decoded, z_mean, z_log_var, reconstruction_term_weight, loss_fn)
            batch_totals.append(torch.stack(losses) * features.shape[0])
            count += features.shape[0]
    if count == 0:
        raise ValueError("evaluate_vae got an empty data loader")
    totals = torch.stack(batch_totals).cpu().double().sum(dim=0)
    return dict(zip(LOSS_KEYS, (totals / count).tolist(), strict=True))


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
        size = (grid.shape[1] - 2) // 3 - 2
        count = (grid.shape[2] - 2) // (size + 2)
        if size < 4 or 3 * (size + 2) + 2 != grid.shape[1] or count * (size + 2) + 2 != grid.shape[2]:
            raise ValueError(f"{path} is not a grid of three rows of square faces written by EpochImages.save")
        starts = range(2, count * (size + 2), size + 2)
        rows = [torch.stack([grid[:, top:top + size, left:left + size] for left in starts])
                for top in range(2, 3 * (size + 2), size + 2)]
        return rows[0], rows[1], rows[2]


def train_vae_v1(num_epochs: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: str | torch.device, train_loader: Iterable, loss_fn: LossFn | None = None,
                 logging_interval: int = 100, skip_epoch_stats: bool = False,
                 reconstruction_term_weight: float = 1, save_model: str | Path | None = None, *,
                 valid_loader: Iterable | None = None, checkpoint_path: str | Path | None = None,
                 resume: bool = False, settings: dict[str, Any] | None = None, precision: str = "auto",
                 channels_last: bool | None = None, compile: bool = False, progress: bool = True,
                 epoch_images: EpochImages | None = None, cuda_graph: bool | None = None) -> dict[str, list[float]]:
    """The lecture's training loop: train for ``num_epochs`` and return the log dict (the lecture's call works).

    The keyword-only extras are served by :mod:`celeba_vae.training`: ``precision`` (``"auto"``, ``"bf16"``,
    ``"fp16"``, ``"tf32"``, ``"fp32"``), ``channels_last``, ``compile`` (where it can run); ``checkpoint_path``
    (after every epoch, written while the next epoch trains) and ``resume`` (refusing other data than
    ``settings["data"]``; a new run keeps the files it replaces as backups); ``valid_loader`` (validated in full fp32
    unless ``skip_epoch_stats``); ``epoch_images``; ``progress`` (a bar, else the lecture's batch lines);
    ``cuda_graph`` (None: on CUDA the step is replayed as one CUDA graph where that works and agrees with an eager
    step, see :mod:`celeba_vae.fast_step`; False: eager; True: asked for, one line where it cannot be). A NaN loss
    stops training, keeping the last checkpoint.
    """
    device = torch.device(device)
    step_settings = choose_step_settings(model, optimizer, device, precision, channels_last, compile)
    scaler = step_settings.scaler
    run = TrainingRun.start(model, optimizer, scaler, device, num_epochs, checkpoint_path=checkpoint_path,
                            resume=resume, settings=settings, weights=save_model,
                            epoch_images=epoch_images.folder if epoch_images is not None else None)
    epochs = EpochLog(run, num_epochs, len(train_loader), logging_interval, progress)

    def training_step(features: torch.Tensor) -> torch.Tensor:
        """One step on a batch; its ``(combined, reconstruction, kl)`` losses, left on the device."""
        # FORWARD AND BACK PROP
        with step_settings.precision.autocast():
            _, z_mean, z_log_var, decoded = step_settings.model(features)

        # total loss = reconstruction loss + KL divergence
        loss, pixelwise, kl_div = vae_loss(features, decoded, z_mean, z_log_var,
                                           reconstruction_term_weight, loss_fn)
        optimizer.zero_grad(set_to_none=True)

        scaler.scale(loss).backward()  # the scaler multiplies the loss only for fp16

        # UPDATE MODEL PARAMETERS
        scaler.step(optimizer)
        scaler.update()
        return torch.stack((loss, pixelwise, kl_div)).detach()

    step = FastStep(training_step, model, optimizer, scaler, device, cuda_graph, step_settings.model)

    with run.checkpoints_written(), step_settings.precision.training_flags(), contextlib.closing(step):
        for epoch in range(run.start_epoch, num_epochs):

            model.train()
            for batch_idx, (features, _) in enumerate(train_loader):

                features = to_device(features, device, step_settings.memory_format)
                losses = step(features)  # replayed as a CUDA graph, or run eagerly: the same training_step

                # LOGGING
                epochs.log_batch(epoch, batch_idx, losses)

            valid_losses = None
            if not skip_epoch_stats and valid_loader is not None:
                valid_losses = evaluate_vae(model, valid_loader, device, loss_fn, reconstruction_term_weight)
            epochs.end_epoch(epoch, valid_losses)
            if epoch_images is not None:
                epoch_images.save(model, device, epoch + 1)
            run.save_checkpoint(model, optimizer, scaler, epoch + 1)

    epochs.finish()
    if save_model is not None:
        save_weights(save_model, model)
    return epochs.log


@torch.no_grad()
def mean_image_baseline(train_loader: Iterable, test_loader: Iterable) -> float:
    """Per-image summed squared error on the test set of always predicting the mean training image.

    A model's test reconstruction error should be well below this.
    Each batch is reduced in float32 where it lives (MPS has no float64); the batch results add up in float64
    on the CPU.
    """
    total, count = None, 0
    for features, _ in train_loader:
        batch_sum = features.float().sum(dim=0).cpu().double()
        total = batch_sum if total is None else total + batch_sum
        count += len(features)
    if total is None:
        raise ValueError("mean_image_baseline got an empty training loader")
    mean_image = (total / count).float()
    error, images = 0.0, 0
    for features, _ in test_loader:
        error += float((features.float() - mean_image.to(features.device)).pow(2).sum())
        images += len(features)
    return error / images
