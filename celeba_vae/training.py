"""The machinery around the lecture's training loop (``helper_train.train_vae_v1``), one concern each:
how the steps run (:func:`choose_step_settings`: precision, scaler, memory format, compile), starting, resuming and
backing up a run and writing its checkpoints off the training thread (:class:`TrainingRun`), and the epoch
bookkeeping: log dict, averages, printed lines, NaN check (:class:`EpochLog`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from celeba_vae.atomic_files import BackgroundWriter
from celeba_vae.checkpoint import check_settings, checkpoint_contents, load_checkpoint, restore_rng_states
from celeba_vae.precision import Precision, choose_precision, compile_unavailable

LOSS_KEYS = ("combined", "reconstruction", "kl")
OPTIMIZER_FLAGS = ("fused", "foreach", "capturable")


@dataclass(frozen=True)
class StepSettings:
    """How the training steps run: the ``precision`` (autocast, TF32 flags), its gradient ``scaler`` (enabled only
    for fp16), the batches' ``memory_format`` and the ``model`` the steps call (compiled or the model itself)."""

    precision: Precision
    scaler: torch.amp.GradScaler
    memory_format: torch.memory_format
    model: torch.nn.Module


def choose_step_settings(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool = False,
) -> StepSettings:
    """Choose the precision (one printed line says which and why, see
    :func:`celeba_vae.precision.choose_precision`), move ``model`` to ``device`` in channels-last memory format
    (default on CUDA and CPU) and compile it where ``torch.compile`` can run (elsewhere one line says why not)."""
    chosen = choose_precision(precision, device)
    print(chosen.describe())
    scaler = chosen.grad_scaler()
    if scaler.is_enabled() and not optimizer.defaults.get("fused"):
        print("fp16: the gradient scaler waits for the GPU once per step with this optimizer; "
              "optimizer = helper_train.adam(model, lr) (fused Adam) avoids the wait")
    channels_last = device.type in ("cuda", "cpu") if channels_last is None else channels_last
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)
    step_model = model
    if compile:
        reason = compile_unavailable(device)
        if reason is None:
            step_model = torch.compile(model)
        else:
            print(f"torch.compile: not used, {reason}; training runs without it")
    return StepSettings(chosen, scaler, memory_format, step_model)


def new_log() -> dict[str, list[float]]:
    """The log dict of a run: per-batch and per-epoch training losses, per-epoch validation losses, epochs done."""
    log: dict[str, list[float]] = {f"train_{k}_loss_per_batch": [] for k in LOSS_KEYS}
    log.update({f"train_{k}_loss_per_epoch": [] for k in LOSS_KEYS})
    log.update({f"valid_{k}_loss_per_epoch": [] for k in LOSS_KEYS})
    log["epoch"] = []
    return log


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` keeping this optimizer's ``fused``/``foreach``/``capturable`` settings.

    torch restores the saved groups' flags: plain Adam's state loaded into fused Adam would run unfused and the fp16
    gradient scaler's step would fail (``Expected grad_scale and found_inf to be None``).
    """
    groups = [{**saved, **{k: group[k] for k in OPTIMIZER_FLAGS if k in group}}
              for saved, group in zip(state["param_groups"], optimizer.param_groups, strict=False)]
    optimizer.load_state_dict({**state, "param_groups": groups})


def _keep_previous_run(checkpoint: Path | None, weights: Path | None, epoch_images: Path | None) -> list[Path]:
    """Before a new run: copy the checkpoint to ``.bak``, move the weights file to ``.bak`` and the epoch images into
    ``<folder>.bak/`` (each replacing an older backup); the backups made."""
    kept = []
    if checkpoint is not None and checkpoint.is_file():
        kept.append(Path(shutil.copy2(checkpoint, checkpoint.with_name(checkpoint.name + ".bak"))))
    if weights is not None and weights.is_file():
        kept.append(weights.with_name(weights.name + ".bak"))
        os.replace(weights, kept[-1])
    frames = sorted(epoch_images.glob("epoch_*.png")) if epoch_images is not None else []
    if frames:
        kept.append(epoch_images.with_name(epoch_images.name + ".bak"))
        shutil.rmtree(kept[-1], ignore_errors=True)
        kept[-1].mkdir(exist_ok=True)
        for frame in frames:
            os.replace(frame, kept[-1] / frame.name)
    return kept


@dataclass
class TrainingRun:
    """One training run: where its checkpoint goes, its settings and ``run_id``, the epoch it starts at and its log
    (fresh, or the resumed checkpoint's)."""

    checkpoint_path: Path | None
    settings: dict[str, Any] | None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    start_epoch: int = 0
    log: dict[str, list[float]] = field(default_factory=new_log)
    writer: BackgroundWriter = field(default_factory=lambda: BackgroundWriter("checkpoint writer"))

    @classmethod
    def start(
        cls,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        device: torch.device,
        num_epochs: int,
        *,
        checkpoint_path: str | Path | None = None,
        resume: bool = False,
        settings: dict[str, Any] | None = None,
        weights: str | Path | None = None,
        epoch_images: str | Path | None = None,
    ) -> TrainingRun:
        """Resume from ``checkpoint_path`` (``resume=True`` and the file exists; refused when it was trained on other
        data than ``settings["data"]``), or start a new run that keeps what it replaces: the previous checkpoint,
        ``weights`` file and per-epoch images as backups (see :func:`_keep_previous_run`); one line says which."""
        path = Path(checkpoint_path) if checkpoint_path is not None else None
        if resume and path is not None and path.exists():
            return cls._resume(path, model, optimizer, scaler, device, num_epochs, settings)
        if resume:
            where = f"there is no checkpoint at {path}" if path is not None else "no checkpoint_path was given"
            print(f"resume=True, but {where}: a new run starts")
        kept = _keep_previous_run(path, Path(weights) if weights is not None else None,
                                  Path(epoch_images) if epoch_images is not None else None)
        if kept:
            continued = " (resume=True continues the previous checkpoint)" if path is not None and path.exists() else ""
            print(f"Starting a new run; the previous run is kept as {', '.join(map(str, kept))}{continued}")
        return cls(path, settings)

    @classmethod
    def _resume(
        cls,
        path: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        device: torch.device,
        num_epochs: int,
        settings: dict[str, Any] | None,
    ) -> TrainingRun:
        checkpoint = load_checkpoint(path, map_location="cpu")
        check_settings(checkpoint, model, path, (settings or {}).get("data"))
        model.load_state_dict(checkpoint["model"])
        if checkpoint.get("optimizer") is not None:
            load_optimizer_state(optimizer, checkpoint["optimizer"])
        if checkpoint.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_states(checkpoint["rng"], device)
        run = cls(path, settings, start_epoch=checkpoint["epoch"] or 0, log=checkpoint["log"] or new_log())
        run.run_id = checkpoint.get("run_id") or run.run_id
        print(f"Resuming from {path}: {run.start_epoch} of {num_epochs} epochs already done")
        return run

    def save_checkpoint(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, epoch: int
    ) -> None:
        """Copy the state after ``epoch`` epochs to the CPU now and write it as the checkpoint (atomically) on a
        background thread while training goes on; nothing without a ``checkpoint_path``. The previous write is
        waited for first, and its error, if any, raised here (see :meth:`checkpoints_written`)."""
        if self.checkpoint_path is not None:
            contents = checkpoint_contents(model, optimizer, epoch=epoch, log_dict=self.log, settings=self.settings,
                                           scaler=scaler, run_id=self.run_id)
            self.writer.submit(self.checkpoint_path, lambda f: torch.save(contents, f))

    @contextlib.contextmanager
    def checkpoints_written(self) -> Iterator[None]:
        """The block of training: when it ends, also by an error or an interrupt, the last checkpoint is wholly
        written (or its write error raised) before anything else happens."""
        try:
            yield
        finally:
            self.writer.wait()


class EpochLog:
    """The epoch bookkeeping of a run: per-batch losses kept on the device and read back (and checked for NaN) once
    every ``logging_interval`` steps, per-epoch averages, one progress bar for the whole run and one printed line per
    epoch (about 20 of them in long runs; the log dict holds every epoch). Without ``progress`` the lecture's batch
    lines are printed instead of the bar."""

    def __init__(self, run: TrainingRun, num_epochs: int, num_batches: int, logging_interval: int,
                 progress: bool) -> None:
        self.run, self.log = run, run.log
        self.num_epochs, self.num_batches, self.logging_interval = num_epochs, num_batches, logging_interval
        self.pending: list[torch.Tensor] = []
        self.host: torch.Tensor | None = None  # pinned on CUDA: the losses of an interval come back in one copy
        self.epoch_start = len(self.log["train_combined_loss_per_batch"])
        self.print_every = -(-num_epochs // 20)
        self.bar = tqdm(total=max(0, num_epochs - run.start_epoch) * num_batches, disable=not progress, leave=False)
        self.start_time = time.time()

    def log_batch(self, epoch: int, batch_idx: int, losses: torch.Tensor) -> None:
        """Keep a step's ``(combined, reconstruction, kl)`` losses, a (3,) tensor left on its device; read them back
        every ``logging_interval`` steps."""
        self.pending.append(losses)
        if len(self.pending) == self.logging_interval or batch_idx == self.num_batches - 1:
            values = self._read_back(epoch, batch_idx)
            self.bar.set_description(f"epoch {epoch + 1}/{self.num_epochs}", refresh=False)
            self.bar.set_postfix(loss=f"{values[-1, 0]:.2f}", rec=f"{values[-1, 1]:.2f}", kl=f"{values[-1, 2]:.2f}",
                                 refresh=False)
            self.bar.update(len(values))
            if self.bar.disable:
                print(f"Epoch: {epoch + 1:03d}/{self.num_epochs:03d} | Batch {batch_idx:04d}/{self.num_batches:04d} "
                      f"| Loss: {values[-1, 0]:.4f}")

    def _read_back(self, epoch: int, batch_idx: int) -> torch.Tensor:
        """Copy the pending losses to the host (the interval's one wait for the device), check them and append them
        to the log."""
        values = self.to_host(torch.stack(self.pending))
        self.pending.clear()
        if not torch.isfinite(values).all():
            self.bar.close()
            path = self.run.checkpoint_path
            where = f"{path} (epoch {epoch})" if path else "none (no checkpoint_path was given)"
            raise FloatingPointError(
                f"loss became {values[~torch.isfinite(values)][0].item()} at epoch {epoch + 1}, batch {batch_idx}; "
                f"training stopped. Last good checkpoint: {where}. Lower the learning rate or check the data, then "
                "resume."
            )
        for key, column in zip(LOSS_KEYS, values.T.tolist(), strict=True):
            self.log[f"train_{key}_loss_per_batch"].extend(column)
        return values

    def to_host(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` on the CPU: from CUDA through a pinned buffer (grown as needed), waiting for the device once;
        elsewhere as they are (MPS has no pinned memory)."""
        if values.device.type != "cuda":
            return values.cpu()
        if self.host is None or len(self.host) < len(values):
            self.host = torch.empty((max(len(values), self.logging_interval), *values.shape[1:]), dtype=values.dtype,
                                    pin_memory=True)
        host = self.host[:len(values)]
        host.copy_(values, non_blocking=True)
        torch.cuda.current_stream(values.device).synchronize()
        return host.clone()

    def end_epoch(self, epoch: int, valid: dict[str, float] | None = None) -> None:
        """Record the epoch's average training losses and ``valid`` losses; print its line when it is due."""
        if self.pending:  # a loader that yielded fewer batches than its len()
            self.bar.update(len(self._read_back(epoch, -1)))
        for key in LOSS_KEYS:
            values = self.log[f"train_{key}_loss_per_batch"][self.epoch_start:]
            self.log[f"train_{key}_loss_per_epoch"].append(sum(values) / max(len(values), 1))
        self.epoch_start = len(self.log["train_combined_loss_per_batch"])
        train_loss = self.log["train_combined_loss_per_epoch"][-1]
        line = f"***Epoch: {epoch + 1:03d}/{self.num_epochs:03d} | Train loss: {train_loss:.3f}"
        if valid is not None:
            for key in LOSS_KEYS:
                self.log[f"valid_{key}_loss_per_epoch"].append(valid[key])
            line += f" | Valid loss: {valid['combined']:.3f}"
        self.log["epoch"].append(epoch + 1)
        if (epoch + 1) % self.print_every == 0 or epoch + 1 in (self.run.start_epoch + 1, self.num_epochs):
            self.bar.write(f"{line} | Time elapsed: {self.minutes():.2f} min")

    def minutes(self) -> float:
        """Minutes since the run (or its resumption) started."""
        return (time.time() - self.start_time) / 60

    def finish(self) -> None:
        """Close the progress bar and print the total training time."""
        self.bar.close()
        print(f"Total Training Time: {self.minutes():.2f} min")
