"""The VAE loss, one training loop (lecture-compatible, fast on CUDA, resumable) and evaluation."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from celeba_vae.atomic_files import atomic_write
from celeba_vae.checkpoint import check_settings, load_checkpoint, restore_rng_states, save_checkpoint
from celeba_vae.precision import choose_precision, full_fp32
from helper_utils import eval_mode

LossFn = Callable[..., torch.Tensor]
LOSS_KEYS = ("combined", "reconstruction", "kl")


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


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, copied without blocking only where that is safe: from pinned host memory to CUDA.

    A non-blocking copy from ordinary memory can hand MPS a corrupted batch (pytorch#139550) and on CUDA it blocks
    anyway, so a user's own DataLoader (or ``loader="lecture"``) gets a plain copy.
    """
    return tensor.to(device, non_blocking=device.type == "cuda" and tensor.device.type == "cpu" and tensor.is_pinned())


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
        """The first ``num_images`` faces of ``data_loader`` and ``num_images`` noise vectors drawn from ``seed``."""
        images = next(iter(data_loader))[0][:num_images].cpu()
        noise = torch.randn(num_images, latent_dim, generator=torch.Generator().manual_seed(seed))
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


def epoch_images_gif(
    folder: str | Path, path: str | Path, num_epochs: int | None = None, duration_ms: int = 300
) -> Path:
    """Assemble the ``epoch_*.png`` of :class:`EpochImages` in ``folder`` (the first ``num_epochs``, so frames of
    an earlier, longer run are left out) into a looping animated GIF at ``path``."""
    files = sorted(Path(folder).glob("epoch_*.png"))[:num_epochs]
    if not files:
        raise FileNotFoundError(f"no epoch_*.png in {folder}; train with epoch_images=EpochImages(...) first")
    frames = [Image.open(file).convert("RGB") for file in files]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _new_log() -> dict[str, list[float]]:
    log: dict[str, list[float]] = {f"train_{k}_loss_per_batch": [] for k in LOSS_KEYS}
    log.update({f"train_{k}_loss_per_epoch": [] for k in LOSS_KEYS})
    log.update({f"valid_{k}_loss_per_epoch": [] for k in LOSS_KEYS})
    log["epoch"] = []
    return log


def _read_back(
    pending: list[torch.Tensor], log: dict[str, list[float]], epoch: int, batch_idx: int, checkpoint_path: Path | None
) -> torch.Tensor:
    """Copy the pending per-batch losses to the host in one sync, check them and append them to ``log``."""
    values = torch.stack(pending).cpu()
    pending.clear()
    if not torch.isfinite(values).all():
        where = f"{checkpoint_path} (epoch {epoch})" if checkpoint_path else "none (no checkpoint_path was given)"
        raise FloatingPointError(
            f"loss became {values[~torch.isfinite(values)][0].item()} at epoch {epoch + 1}, batch {batch_idx}; "
            f"training stopped. Last good checkpoint: {where}. Lower the learning rate or check the data, then resume."
        )
    for key, column in zip(LOSS_KEYS, values.T.tolist(), strict=True):
        log[f"train_{key}_loss_per_batch"].extend(column)
    return values


def train_vae_v1(
    num_epochs: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device,
    train_loader: Iterable,
    loss_fn: LossFn | None = None,
    logging_interval: int = 100,
    skip_epoch_stats: bool = False,
    reconstruction_term_weight: float = 1,
    save_model: str | Path | None = None,
    *,
    valid_loader: Iterable | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    settings: dict[str, Any] | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool = False,
    progress: bool = True,
    epoch_images: EpochImages | None = None,
) -> dict[str, list[float]]:
    """Train the VAE for ``num_epochs`` (the lecture's call keeps working) and return the log dict.

    Losses are accumulated on the device and read back every ``logging_interval`` steps (no per-step sync).
    With ``checkpoint_path`` a checkpoint is written atomically after every epoch and ``resume=True``
    continues from the last completed one (refusing one trained on other data than ``settings["data"]``).
    ``precision``: ``"auto"`` (see :func:`celeba_vae.precision.choose_precision`), ``"bf16"``, ``"fp16"``, ``"tf32"``
    or ``"fp32"``; one printed line says which and why. TF32 is on only during the training steps; validation
    runs in full fp32. ``channels_last`` defaults to on for CUDA and CPU; ``compile`` opts into ``torch.compile``.
    A NaN or infinite loss stops training with an error, keeping the last good checkpoint.
    ``skip_epoch_stats`` skips the per-epoch validation pass; ``epoch_images`` saves a PNG after every epoch.
    ``save_model`` receives the final state dict, as in the lecture. Nothing is kept between calls.
    One summary line is printed per epoch for up to 20 epochs; longer runs print about 20 of them (the log
    dict holds every epoch).
    """
    device = torch.device(device)
    chosen = choose_precision(precision, device)
    print(chosen.describe())
    scaler = chosen.grad_scaler()
    if scaler.is_enabled() and not optimizer.defaults.get("fused"):
        print("fp16: the gradient scaler waits for the GPU once per step with this optimizer; "
              "optimizer = helper_train.adam(model, lr) (fused Adam) avoids the wait")
    channels_last = device.type in ("cuda", "cpu") if channels_last is None else channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    log, start_epoch = _new_log(), 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if checkpoint_path is not None and checkpoint_path.exists():
        if resume:
            checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
            check_settings(checkpoint, model, checkpoint_path, (settings or {}).get("data"))
            model.load_state_dict(checkpoint["model"])
            if checkpoint.get("optimizer") is not None:
                optimizer.load_state_dict(checkpoint["optimizer"])
            if checkpoint.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(checkpoint["scaler"])
            log, start_epoch = checkpoint["log"] or log, checkpoint["epoch"] or 0
            restore_rng_states(checkpoint["rng"], device)
            print(f"Resuming from {checkpoint_path}: {start_epoch} of {num_epochs} epochs already done")
        else:
            backup = checkpoint_path.with_name(checkpoint_path.name + ".bak")
            shutil.copy2(checkpoint_path, backup)
            print(f"Starting a new run; the previous checkpoint was kept as {backup} (resume=True continues it)")
    step_model = torch.compile(model) if compile else model
    start_time = time.time()
    print_every = -(-num_epochs // 20)
    for epoch in range(start_epoch, num_epochs):
        model.train()
        pending: list[torch.Tensor] = []
        epoch_start = len(log["train_combined_loss_per_batch"])
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch + 1}/{num_epochs}", disable=not progress, leave=False)

        with chosen.training_flags():
            for batch_idx, (features, _) in enumerate(train_loader):
                features = to_device(features, device)
                if channels_last:
                    features = features.contiguous(memory_format=torch.channels_last)
                with chosen.autocast():
                    _, z_mean, z_log_var, decoded = step_model(features)
                losses = vae_loss(features, decoded, z_mean, z_log_var, reconstruction_term_weight, loss_fn)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses[0]).backward()
                scaler.step(optimizer)
                scaler.update()
                pending.append(torch.stack(losses).detach())
                if len(pending) == logging_interval or batch_idx == len(train_loader) - 1:
                    values = _read_back(pending, log, epoch, batch_idx, checkpoint_path)
                    bar.update(len(values))
                    bar.set_postfix(loss=f"{values[-1, 0]:.2f}", rec=f"{values[-1, 1]:.2f}", kl=f"{values[-1, 2]:.2f}")
                    if not progress:
                        print(f"Epoch: {epoch + 1:03d}/{num_epochs:03d} | Batch {batch_idx:04d}/"
                              f"{len(train_loader):04d} | Loss: {values[-1, 0]:.4f}")
        bar.close()
        for key in LOSS_KEYS:
            values = log[f"train_{key}_loss_per_batch"][epoch_start:]
            log[f"train_{key}_loss_per_epoch"].append(sum(values) / max(len(values), 1))
        train_loss = log["train_combined_loss_per_epoch"][-1]
        summary = f"***Epoch: {epoch + 1:03d}/{num_epochs:03d} | Train loss: {train_loss:.3f}"
        if valid_loader is not None and not skip_epoch_stats:
            valid = evaluate_vae(model, valid_loader, device, loss_fn, reconstruction_term_weight)
            for key in LOSS_KEYS:
                log[f"valid_{key}_loss_per_epoch"].append(valid[key])
            summary += f" | Valid loss: {valid['combined']:.3f}"
        log["epoch"].append(epoch + 1)
        if (epoch + 1) % print_every == 0 or epoch + 1 in (start_epoch + 1, num_epochs):
            print(f"{summary} | Time elapsed: {(time.time() - start_time) / 60:.2f} min")
        if epoch_images is not None:
            epoch_images.save(model, device, epoch + 1)
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, optimizer, epoch=epoch + 1, log_dict=log, settings=settings,
                            scaler=scaler)
    print(f"Total Training Time: {(time.time() - start_time) / 60:.2f} min")
    if save_model is not None:
        state = model.state_dict()
        atomic_write(save_model, lambda f: torch.save(state, f))
    return log


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
