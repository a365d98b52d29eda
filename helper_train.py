"""The VAE loss, the lecture's training loop (its machinery in ``celeba_vae.training``) and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from celeba_vae.checkpoint import save_weights
from celeba_vae.precision import full_fp32
from celeba_vae.training import LOSS_KEYS, EpochLog, TrainingRun, set_up_precision
from helper_plotting import EpochImages
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
    """``torch.optim.Adam(model.parameters(), lr=lr)``, fused where the model is on CUDA.

    Fused Adam takes the fp16 gradient scaler's inf check on the GPU, so a training step on a T4 or V100 does not
    wait for it and the next batch's copy keeps overlapping; the update is Adam's either way (equal up to
    rounding). Build it after ``model.to(device)``: a model still on the CPU gets the plain Adam.
    """
    on_cuda = all(p.device.type == "cuda" for p in model.parameters())
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True if on_cuda else None)


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

    Batch totals are float32 on the device (MPS has no float64) and are summed in float64 on the CPU.
    """
    device = torch.device(device)
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


def train_vae_v1(num_epochs: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: str | torch.device, train_loader: Iterable, loss_fn: LossFn | None = None,
                 logging_interval: int = 100, skip_epoch_stats: bool = False,
                 reconstruction_term_weight: float = 1, save_model: str | Path | None = None, *,
                 valid_loader: Iterable | None = None, checkpoint_path: str | Path | None = None,
                 resume: bool = False, settings: dict[str, Any] | None = None, precision: str = "auto",
                 channels_last: bool | None = None, compile: bool = False, progress: bool = True,
                 epoch_images: EpochImages | None = None) -> dict[str, list[float]]:
    """The lecture's training loop: train for ``num_epochs`` and return the log dict (the lecture's call works).

    The keyword-only extras are served by :mod:`celeba_vae.training`: ``precision`` (``"auto"``, ``"bf16"``,
    ``"fp16"``, ``"tf32"``, ``"fp32"``), ``channels_last``, ``compile`` (where it can run); ``checkpoint_path``
    (after every epoch) and ``resume`` (refusing other data than ``settings["data"]``; a new run keeps the files it
    replaces as backups); ``valid_loader`` (validated in full fp32 unless ``skip_epoch_stats``); ``epoch_images``;
    ``progress`` (a bar, else the lecture's batch lines). A NaN loss stops training, keeping the last checkpoint.
    """
    device = torch.device(device)
    setup = set_up_precision(model, optimizer, device, precision, channels_last, compile)
    run = TrainingRun.start(model, optimizer, setup.scaler, device, num_epochs, checkpoint_path=checkpoint_path,
                            resume=resume, settings=settings, weights=save_model,
                            epoch_images=epoch_images.folder if epoch_images is not None else None)
    epochs = EpochLog(run, num_epochs, len(train_loader), logging_interval, progress)

    for epoch in range(run.start_epoch, num_epochs):

        model.train()
        with setup.precision.training_flags():
            for batch_idx, (features, _) in enumerate(train_loader):

                features = to_device(features, device, setup.memory_format)

                # FORWARD AND BACK PROP
                with setup.precision.autocast():
                    _, z_mean, z_log_var, decoded = setup.model(features)

                # total loss = reconstruction loss + KL divergence
                loss, pixelwise, kl_div = vae_loss(features, decoded, z_mean, z_log_var,
                                                   reconstruction_term_weight, loss_fn)
                optimizer.zero_grad(set_to_none=True)

                setup.scaler.scale(loss).backward()  # the scaler multiplies the loss only for fp16

                # UPDATE MODEL PARAMETERS
                setup.scaler.step(optimizer)
                setup.scaler.update()

                # LOGGING
                epochs.log_batch(epoch, batch_idx, loss, pixelwise, kl_div)

        valid_losses = None
        if not skip_epoch_stats and valid_loader is not None:
            valid_losses = evaluate_vae(model, valid_loader, device, loss_fn, reconstruction_term_weight)
        epochs.end_epoch(epoch, valid_losses)
        if epoch_images is not None:
            epoch_images.save(model, device, epoch + 1)
        run.save_checkpoint(model, optimizer, setup.scaler, epoch + 1)

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
