"""A self-check of every training path the device supports: ``python run_lecture.py --self-check``.

The runner passes the lecture's training step (``helper_train.train_vae_v1``) in: this package sits below it.

Synthetic faces are written once to a temporary folder and decoded. Each path (precision, ``torch.compile``, data
on the GPU or streamed from host memory) trains a fresh VAE for the same steps from the same seed on the same
batches, and passes when its mean training loss over the last quarter of the steps is within 1% of the fp32
reference's. The resume check trains k epochs with a checkpoint, resumes to 2k and must equal an uninterrupted
2k-epoch run exactly (log and weights), with deterministic algorithms on. One table is printed; any FAIL makes
:func:`main` return 1.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from celeba_vae.celeba_files import find_celeba, read_index
from celeba_vae.decoded_cache import CachedLoader, DecodedSplit, build_decoded_cache
from celeba_vae.precision import choose_precision, compile_unavailable, native_bf16
from celeba_vae.synthetic import write_synthetic_celeba
from model import VAE

TOLERANCE = 0.01
SEED = 123
PATH_ERRORS = (RuntimeError, ValueError, ArithmeticError, ImportError, OSError)
TrainStep = Callable[..., dict[str, list[float]]]


@dataclass(frozen=True)
class TrainPath:
    """One way of training: a ``precision``, with or without ``compile``, data on the GPU or streamed from host."""

    name: str
    precision: str
    compile: bool = False
    data_on_gpu: bool = False


@dataclass
class PathResult:
    """What one path measured: images/s after the warm-up steps, peak memory in MiB and the per-step losses."""

    images_per_s: float
    peak_mib: float
    losses: list[float]


def supported_paths(device: torch.device) -> tuple[list[TrainPath], list[str]]:
    """The paths ``device`` supports, the fp32 reference first, and notes on those skipped and why."""
    if device.type == "cuda":
        has_bf16 = native_bf16(device)
        fast = "bf16" if has_bf16 else "fp16"
        paths = [TrainPath("fp32", "fp32", data_on_gpu=True)]
        paths += [TrainPath("bf16", "bf16", data_on_gpu=True)] if has_bf16 else []
        paths += [TrainPath("fp16", "fp16", data_on_gpu=True), TrainPath(f"{fast} streamed from host", fast)]
        notes = [] if has_bf16 else ["bf16: skipped, this card has no native bf16"]
        if (why_not := compile_unavailable(device)) is not None:
            return paths, [*notes, f"torch.compile: SKIPPED, {why_not}"]
        return [*paths, TrainPath(f"{fast} + torch.compile", fast, compile=True, data_on_gpu=True)], notes
    if device.type == "mps":
        paths = [TrainPath("fp32", "fp32"), TrainPath("fp16", "fp16")]
        try:
            torch.ones(1, device=device, dtype=torch.bfloat16)
            paths.append(TrainPath("bf16", "bf16"))
        except (RuntimeError, TypeError):
            pass
        return paths, ["torch.compile: skipped on MPS", "data: MPS has no separate GPU copy of the split"]
    return [TrainPath("fp32", "fp32"), TrainPath("bf16", "bf16")], [
        "no CUDA or MPS device found: checking the CPU paths only",
        "torch.compile: skipped on CPU (compiling its C++ kernels takes minutes)"]


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class TimedBatches:
    """The first ``count`` batches of ``loader`` (cycling through it), timing all but the first ``warmup``."""

    def __init__(self, loader: Iterable, count: int, warmup: int, device: torch.device) -> None:
        self.loader, self.count, self.warmup, self.device = loader, count, warmup, device
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
                yield batch
                served += 1
                if served == self.count:
                    synchronize(self.device)
                    self.end = time.perf_counter()
                    return

    def images_per_s(self) -> float:
        """Images per second over the timed batches."""
        return (self.count - self.warmup) * self.loader.batch_size / (self.end - self.start)


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


def train_path(train_step: TrainStep, path: TrainPath, split: DecodedSplit, device: torch.device, steps: int,
               batch_size: int) -> PathResult:
    """Train a fresh VAE (seed ``SEED``) with ``train_step`` for ``steps`` steps along ``path`` on the split's first
    batches, in order."""
    torch.manual_seed(SEED)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    with contextlib.redirect_stdout(io.StringIO()):
        loader = CachedLoader(split, batch_size, device=device, drop_last=True, data_on_gpu=path.data_on_gpu,
                              precision=path.precision)
        batches = TimedBatches(loader, steps, max(1, steps // 4), device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        log = train_step(1, model, optimizer, device, batches, logging_interval=steps, skip_epoch_stats=True,
                         precision=path.precision, compile=path.compile, progress=False)
    return PathResult(batches.images_per_s(), peak_memory_mib(device), log["train_combined_loss_per_batch"])


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic algorithms inside the block (as ``helper_utils.set_deterministic`` asks), restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, as set_deterministic asks
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        if saved[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def resume_mismatch(train_step: TrainStep, split: DecodedSplit, device: torch.device, batch_size: int, epochs: int,
                    batches: int, folder: Path) -> str | None:
    """Run ``2 * epochs`` epochs of ``batches`` shuffled batches straight through, and ``epochs`` then resumed from
    the checkpoint to ``2 * epochs``; the first difference in log or weights, or ``None`` when bit-identical."""
    with contextlib.redirect_stdout(io.StringIO()):
        loader = CachedLoader(split, batch_size, shuffle=True, device=device, drop_last=True)

    def train(num_epochs: int, checkpoint: Path | None, resume: bool) -> tuple[dict[str, list[float]], VAE]:
        torch.manual_seed(SEED)
        model = VAE()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
        first_batches = TimedBatches(loader, batches, 0, device)
        with contextlib.redirect_stdout(io.StringIO()):
            log = train_step(num_epochs, model, optimizer, device, first_batches, skip_epoch_stats=True,
                             checkpoint_path=checkpoint, resume=resume, progress=False)
        return log, model

    with deterministic():
        straight_log, straight = train(2 * epochs, None, False)
        train(epochs, folder / "resume.pt", False)
        resumed_log, resumed = train(2 * epochs, folder / "resume.pt", True)
    for key, values in straight_log.items():
        if resumed_log.get(key) != values:
            return f"log {key!r} differs"
    resumed_state = resumed.state_dict()
    for key, tensor in straight.state_dict().items():
        if not torch.equal(tensor, resumed_state[key]):
            return f"weights {key!r} differ by up to {(tensor.double() - resumed_state[key].double()).abs().max():.3g}"
    return None


Row = tuple[str, str, str, str, str, bool]


def _check_rows(train_step: TrainStep, folder: Path, device: torch.device, paths: list[TrainPath], steps: int,
                batch_size: int, num_images: int, resume_epochs: int, resume_batches: int) -> list[Row]:
    """The table's rows: the resume check, then every path, trained on synthetic faces written under ``folder``.

    The decoded split's memory map lives only inside this call, so the folder can be removed afterwards on Windows.
    """
    rows: list[Row] = []
    write_synthetic_celeba(folder / "data", num_images=num_images, seed=SEED)
    index = read_index(find_celeba(folder / "data"))
    train_size = len(index.split("train")[0])
    if train_size < batch_size:
        raise ValueError(f"{num_images} synthetic faces give {train_size} training images, fewer than one batch "
                         f"of {batch_size}: raise num_images or lower batch_size")
    split = build_decoded_cache(folder / "data", "train", cache_dir=folder / "cache", num_workers=1,
                                index=index, progress=False)
    resume_precision = choose_precision("auto", device).name
    try:
        mismatch = resume_mismatch(train_step, split, device, batch_size, resume_epochs, resume_batches, folder)
    except PATH_ERRORS as err:
        mismatch = f"{type(err).__name__}: {err}"
    rows.append((f"resume {resume_epochs}+{resume_epochs} vs {2 * resume_epochs} epochs ({resume_precision})",
                 "-", "-", "-", mismatch or "identical", mismatch is None))
    reference: float | None = None
    for path in paths:
        try:
            result = train_path(train_step, path, split, device, steps, batch_size)
        except PATH_ERRORS as err:
            rows.append((path.name, "-", "-", "-", f"{type(err).__name__}: {err}", False))
            continue
        window = result.losses[-max(1, steps // 4):]
        loss = sum(window) / len(window)
        reference = loss if reference is None and path.precision == "fp32" else reference
        deviation = abs(loss - reference) / reference if reference is not None else float("inf")
        rows.append((path.name, f"{result.images_per_s:,.1f}", f"{result.peak_mib:,.0f} MiB", f"{loss:,.3f}",
                     "reference" if path is paths[0] else f"{deviation:.3%}", deviation <= TOLERANCE))
    return rows


def remove_scratch_folder(folder: Path) -> None:
    """Remove ``folder`` after the memory maps into it are released (Windows keeps mapped files); say what is left."""
    gc.collect()
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        print(f"  note: could not remove every file of {folder} (still in use); delete it by hand")


def run_self_check(train_step: TrainStep, device: torch.device, steps: int | None = None,
                   batch_size: int | None = None, num_images: int | None = None, resume_epochs: int = 1,
                   resume_batches: int = 3) -> bool:
    """Check with ``train_step`` (``helper_train.train_vae_v1``) every path ``device`` supports and the resume;
    print one table.

    Defaults: 200 steps of 256 images from 1,024 synthetic faces on a GPU; 40 steps of 32 from 256 on the CPU.
    Returns ``True`` when every row is OK.
    """
    gpu = device.type in ("cuda", "mps")
    steps = steps or (200 if gpu else 40)
    batch_size = batch_size or (256 if gpu else 32)
    num_images = num_images or (1024 if gpu else 256)
    paths, notes = supported_paths(device)
    memory = {"cuda": "peak GPU memory allocated", "mps": "MPS memory allocated after the path"}.get(
        device.type, "peak host RSS of the process")
    print(f"Self-check on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type}): "
          f"{steps} steps of {batch_size} synthetic faces per path; loss = mean over the last {max(1, steps // 4)} "
          f"steps, within {TOLERANCE:.0%} of fp32; memory = {memory}")
    for note in notes:
        print(f"  note: {note}")
    folder = Path(tempfile.mkdtemp(prefix="celeba-selfcheck-"))
    try:
        rows = _check_rows(train_step, folder, device, paths, steps, batch_size, num_images, resume_epochs,
                           resume_batches)
    finally:
        remove_scratch_folder(folder)
    print(f"{'path':<34}{'images/s':>12}{'memory':>14}{'loss':>14}  {'vs fp32':<18}result")
    for name, speed, peak, loss, deviation, ok in rows:
        print(f"{name:<34}{speed:>12}{peak:>14}{loss:>14}  {deviation:<18}{'OK' if ok else 'FAIL'}")
    passed = all(row[-1] for row in rows)
    print(f"Self-check {'passed' if passed else 'FAILED'}: {sum(row[-1] for row in rows)} of {len(rows)} OK")
    return passed
