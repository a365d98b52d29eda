"""Measuring training steps: waiting for the device, timing batches, peak memory. Used by the self-check
(:mod:`celeba_vae.selfcheck`) and the benchmarks."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class TimedBatches:
    """The first ``count`` batches of ``loader`` (cycling through it), timing all but the first ``warmup``.

    The clock runs from the moment the ``warmup``-th batch is asked for (the queued steps finished) until the step of
    the last batch has finished, so a loader of batches gathered beforehand times the steps alone. ``on_batch`` is
    called before each batch is handed out (and once after the last step).
    """

    def __init__(self, loader: Iterable, count: int, warmup: int, device: torch.device,
                 on_batch: Callable[[], None] | None = None) -> None:
        self.loader, self.count, self.warmup, self.device, self.on_batch = loader, count, warmup, device, on_batch
        self.batch_size = getattr(loader, "batch_size", None)
        self.start = self.end = 0.0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        served = 0
        while True:
            for batch in self.loader:
                if served == self.warmup:
                    synchronize(self.device)
                    self.start = time.perf_counter()
                if self.on_batch is not None:
                    self.on_batch()
                yield batch
                served += 1
                if served == self.count:
                    if self.on_batch is not None:
                        self.on_batch()
                    synchronize(self.device)
                    self.end = time.perf_counter()
                    return

    def images_per_s(self) -> float:
        """Images per second over the timed batches."""
        return (self.count - self.warmup) * self.batch_size / (self.end - self.start)


class DeviceBatches(list):
    """Batches already on the device (a list with the ``batch_size`` a loader has)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> None:
        super().__init__(batches)
        self.batch_size = batch_size


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: peak allocated since the reset; MPS: allocated now; CPU: the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.current_allocated_memory() / 2**20
    return peak_host_mib()


def peak_host_mib() -> float:
    """This process's peak resident memory in MiB: ``resource`` on Linux and macOS, psutil on Windows (which has no
    ``resource`` module)."""
    try:
        import resource
    except ImportError:
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
