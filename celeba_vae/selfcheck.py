"""A self-check of every training path the device supports: ``python run_lecture.py --self-check``.

The runner passes the lecture's training step (``helper_train.train_vae_v1``) and the notebooks' optimizer
(``helper_train.adam``) in: this package sits below them. Synthetic faces are written once to a temporary folder and
decoded; every check starts from the same initial weights. Four kinds of rows:

- **resume**: k epochs with a checkpoint, resumed to 2k, must equal an uninterrupted 2k-epoch run bit for bit (log
  and weights), with deterministic algorithms on.
- **one step** (per path; dropout off, fixed noise, so nothing random is left): the loss of the step and the gradient
  of every parameter the optimizer receives (unscaled, however the scaler hands it over) against fp32's, within
  :data:`STEP_LIMITS` for the path's precision; and the update of every parameter against Adam's first step computed
  from that gradient (:data:`UPDATE_LIMIT`). fp16 repeats the batch while the gradient scaler skips steps, so its
  first update is compared with fp32's first update.
- **training** (per path; production random stream: dropout and fresh noise): the mean loss over the last quarter of
  the optimizer updates (fp16: skipped steps do not count) against fp32's, within a tolerance calibrated from the
  spread of fp32 runs on other random streams (:data:`STREAM_SEEDS`). ``torch.compile`` runs with Inductor's
  ``fallback_random`` so that it draws eager's random stream. Images/s are the steps' own (the batches are gathered
  before the clock starts; a path streamed from host memory includes its copies).
- **fast path**: the step replayed as a CUDA graph (``cuda_graph=True``) against the same steps run eagerly, with
  dropout off and fixed noise: losses and weights must agree (:data:`FAST_PATH_LIMITS`); a fallback is reported as one.
  And a capture made to fail (the loss reads a value back to the host, which a capture forbids) must leave training
  eager on the production random stream: the losses of an eager run from the same seed.

One table is printed; any FAIL makes :func:`run_self_check` return ``False``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from celeba_vae.celeba_files import find_celeba, read_index
from celeba_vae.decoded_cache import CachedLoader, DecodedSplit, build_decoded_cache
from celeba_vae.determinism import deterministic
from celeba_vae.precision import choose_precision, compile_unavailable, native_bf16
from celeba_vae.synthetic import write_synthetic_celeba
from celeba_vae.timing import DeviceBatches, TimedBatches, peak_memory_mib
from model import VAE

SEED = 123
LEARNING_RATE = 5e-4
# One step, no randomness: the largest relative deviation from fp32 of the step's loss and of any parameter's gradient
# (L2 norm of the difference over the norm of fp32's), per precision; a row takes the worst of its batches. Measured
# on the project's 2-core CPU, one step per initial weights x batch: bf16 autocast (batch 16, 3 x 3): loss <= 0.017%,
# gradients <= 25.4% (the first BatchNorm's, at the end of the backward pass), while a loss summed in bf16 is
# 0.19-0.51% off; fp16 autocast (batch 8, 2 x 3, the first update after the scaler's skipped steps): loss <= 0.0017%,
# gradients <= 8.7%, while a loss summed in fp16 is 0.002-0.037% off (the worst of 3 batches >= 0.017%) and a
# gradient left scaled is off by the scale (2^k). The limits leave 2.3-3.5x room; CUDA adds TF32 only for the float32
# operations of these paths, below their rounding.
STEP_LIMITS = {"fp32": (1e-6, 1e-5), "bf16": (6e-4, 0.6), "fp16": (5e-5, 0.2)}
UPDATE_LIMIT = 1e-3  # the update against Adam's first step from the same gradient: rounding only
MAX_SKIPPED = 20  # fp16: steps the gradient scaler may skip (its scale starts at 2^16 and halves per skip)
STREAM_SEEDS = (1, 2)  # extra fp32 random streams whose spread calibrates the training rows' tolerance
STREAM_FACTOR, STREAM_FLOOR = 3.0, 0.002  # tolerance = max(floor, factor x the largest fp32 spread)
FAST_PATH_STEPS = 8  # the fast path's warm-up (3 steps), its capture checked against eager, then replays
FAST_PATH_LIMITS = (1e-3, 1e-2)  # CUDA graph vs eager, same steps: losses, weights (relative)
PATH_ERRORS = (RuntimeError, ValueError, ArithmeticError, ImportError, OSError, AssertionError)
TrainStep = Callable[..., dict[str, list[float]]]
MakeOptimizer = Callable[[nn.Module, float], torch.optim.Optimizer]


def plain_adam(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` at ``lr``: the optimizer checked when the caller names none."""
    return torch.optim.Adam(model.parameters(), lr=lr)


@dataclass(frozen=True)
class TrainPath:
    """One way of training: a ``precision``, with or without ``compile``, data on the GPU or streamed from host,
    replayed as a CUDA graph (``cuda_graph=True``) or run eagerly."""

    name: str
    precision: str
    compile: bool = False
    data_on_gpu: bool = False
    cuda_graph: bool = False


@dataclass
class PathResult:
    """What one training path measured: images/s after the warm-up steps, peak memory in MiB, the per-step losses and
    the number of optimizer updates done before each step (and after the last)."""

    images_per_s: float
    peak_mib: float
    losses: list[float]
    updates: list[int] = field(default_factory=list)

    def window_loss(self, steps: int) -> float:
        """Mean loss of the steps that made updates ``steps - steps // 4`` to ``steps`` (skipped steps left out)."""
        first = steps - max(1, steps // 4)
        made = [i for i in range(len(self.losses)) if self.updates[i + 1] > self.updates[i]]
        if len(made) < steps:
            raise ArithmeticError(f"only {len(made)} of {len(self.losses)} steps updated the model, {steps} needed "
                                  "(the gradient scaler skipped the rest)")
        window = [self.losses[i] for i in made[first:steps]]
        return sum(window) / len(window)


@dataclass
class StepResult:
    """One step without randomness: its loss, the gradient each parameter gave the optimizer and its update."""

    loss: float
    grads: dict[str, torch.Tensor]
    updates: dict[str, torch.Tensor]


Row = tuple[str, str, str, str, str, str]  # check, images/s, memory, measured, limit, result (OK/FAIL/FALLBACK)


def supported_paths(device: torch.device) -> tuple[list[TrainPath], list[str]]:
    """The paths ``device`` supports, the fp32 reference first, and notes on those skipped and why."""
    if device.type == "cuda":
        has_bf16 = native_bf16(device)
        fast = "bf16" if has_bf16 else "fp16"
        paths = [TrainPath("fp32", "fp32", data_on_gpu=True)]
        paths += [TrainPath("bf16", "bf16", data_on_gpu=True)] if has_bf16 else []
        paths += [TrainPath("fp16", "fp16", data_on_gpu=True), TrainPath(f"{fast} streamed from host", fast)]
        paths += [TrainPath(f"{fast} fast path", fast, data_on_gpu=True, cuda_graph=True)]
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
        return paths, ["torch.compile: skipped on MPS", "data: MPS has no separate GPU copy of the split",
                       "fast path (CUDA graph): skipped, CUDA only"]
    return [TrainPath("fp32", "fp32"), TrainPath("bf16", "bf16")], [
        "no CUDA or MPS device found: checking the CPU paths only",
        "torch.compile: skipped on CPU (compiling its C++ kernels takes minutes)",
        "fast path (CUDA graph): skipped, CUDA only"]


def step_options(train_step: TrainStep, path: TrainPath) -> dict[str, Any]:
    """The keyword arguments that run ``path``: its precision, compile, and the CUDA graph only where asked."""
    return {"precision": path.precision, "compile": path.compile, "cuda_graph": path.cuda_graph, "progress": False,
            "skip_epoch_stats": True}


@contextlib.contextmanager
def eager_random_stream(compile: bool) -> Iterator[None]:
    """For ``torch.compile``: Inductor draws dropout masks and noise with eager's random operators
    (``fallback_random``), so a compiled run sees the same random stream as an eager one."""
    if not compile:
        yield
        return
    from torch._inductor import config

    with config.patch(fallback_random=True):
        yield


def update_count(optimizer: torch.optim.Optimizer) -> torch.Tensor | int:
    """The optimizer's update counter (Adam's ``step`` of its first parameter, copied where it lives: no wait for the
    GPU), 0 before the first update."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if step is not None:
                return step.detach().clone() if torch.is_tensor(step) else int(step)
    return 0


def device_batches(split: DecodedSplit, batch_size: int, count: int, device: torch.device) -> DeviceBatches:
    """The split's first ``count`` batches (cycling) as float32 in [0, 1] on ``device``, as the loaders make them."""
    per_epoch = len(split) // batch_size
    batches = []
    for b in range(min(count, per_epoch)):
        rows = torch.from_numpy(np.array(split.images[b * batch_size:(b + 1) * batch_size]))
        batches.append((rows.to(device).float().div_(255), torch.zeros(batch_size, dtype=torch.long, device=device)))
    return DeviceBatches([batches[b % len(batches)] for b in range(count)], batch_size)


def train_path(train_step: TrainStep, make_optimizer: MakeOptimizer, path: TrainPath, split: DecodedSplit,
               device: torch.device, steps: int, batch_size: int, initial: dict[str, torch.Tensor],
               stream_seed: int = SEED) -> PathResult:
    """Train the initial weights with ``train_step`` for ``steps`` optimizer updates (fp16: up to :data:`MAX_SKIPPED`
    more steps) along ``path`` on the split's first batches, in order, on the random stream of ``stream_seed``."""
    count = steps + (MAX_SKIPPED if path.precision == "fp16" else 0)
    model = VAE()
    model.load_state_dict(initial)
    optimizer = make_optimizer(model.to(device), LEARNING_RATE)
    counts: list[torch.Tensor | int] = []
    with contextlib.redirect_stdout(io.StringIO()):
        if path.data_on_gpu or device.type == "cpu":
            loader: Iterable = device_batches(split, batch_size, count, device)
        else:
            loader = CachedLoader(split, batch_size, device=device, drop_last=True, data_on_gpu=False,
                                  precision=path.precision)
        batches = TimedBatches(loader, count, max(1, count // 4), device,
                               on_batch=lambda: counts.append(update_count(optimizer)))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(stream_seed)
        with eager_random_stream(path.compile):
            log = train_step(1, model, optimizer, device, batches, logging_interval=count,
                             **step_options(train_step, path))
    updates = [int(c) for c in counts]
    return PathResult(batches.images_per_s(), peak_memory_mib(device), log["train_combined_loss_per_batch"], updates)


def without_randomness(initial: dict[str, torch.Tensor], noise: torch.Tensor) -> VAE:
    """A VAE with the initial weights whose dropout is off and whose reparameterisation uses ``noise``."""
    model = VAE()
    model.load_state_dict(initial)
    for module in model.modules():
        if isinstance(module, nn.Dropout2d):
            module.p = 0.0
    model.reparameterize = lambda z_mean, z_log_var: z_mean + noise.to(z_mean.dtype) * torch.exp(z_log_var / 2.0)
    return model


class RepeatUntilUpdate:
    """``batch`` handed out again while the model's parameters stay as they were (an fp16 step the gradient scaler
    skipped), at most ``1 + MAX_SKIPPED`` times."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], model: nn.Module) -> None:
        self.batch, self.model = batch, model
        self.before = [p.detach().clone() for p in model.parameters()]

    def __len__(self) -> int:
        return 1 + MAX_SKIPPED

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(len(self)):
            yield self.batch
            if any(not torch.equal(p, b) for p, b in zip(self.model.parameters(), self.before, strict=True)):
                return


def one_step(train_step: TrainStep, make_optimizer: MakeOptimizer, path: TrainPath, batch: tuple[torch.Tensor, ...],
             device: torch.device, initial: dict[str, torch.Tensor], noise: torch.Tensor) -> StepResult:
    """One optimizer update of the initial weights on ``batch`` along ``path``, without randomness: the loss of the
    step, the (unscaled) gradients the optimizer received and every parameter's change."""
    model = without_randomness(initial, noise).to(device)
    optimizer = make_optimizer(model, LEARNING_RATE)
    names = {param: name for name, param in model.named_parameters()}
    grads: dict[str, torch.Tensor] = {}

    def record_gradients(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        scale, found_inf = getattr(opt, "grad_scale", None), getattr(opt, "found_inf", None)
        if found_inf is not None and bool(found_inf.sum() > 0):  # a fused optimizer's skipped step
            return
        for param, name in names.items():
            grad = (param.grad if param.grad is not None else torch.zeros_like(param)).detach().float()
            grads[name] = (grad / scale.float() if scale is not None else grad).cpu().clone()  # fused: unscaled inside

    hook = optimizer.register_step_pre_hook(record_gradients)
    loader = RepeatUntilUpdate(batch, model)
    before = {name: param.detach().float().cpu().clone() for name, param in model.named_parameters()}
    try:
        with contextlib.redirect_stdout(io.StringIO()), eager_random_stream(path.compile):
            log = train_step(1, model, optimizer, device, loader, logging_interval=1, **step_options(train_step, path))
    finally:
        hook.remove()
    updates = {name: param.detach().float().cpu() - before[name] for name, param in model.named_parameters()}
    if not grads:
        raise ArithmeticError(f"no optimizer update in {len(loader)} steps")
    return StepResult(log["train_combined_loss_per_batch"][-1], grads, updates)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` (L2 norms), 0 when both are zero."""
    scale = float(b.double().norm())
    difference = float((a.double() - b.double()).norm())
    return difference / scale if scale > 0 else difference


def zero_gradient_biases(model: nn.Module) -> set[str]:
    """The biases a BatchNorm follows: in training mode their exact gradient is zero, so only rounding noise is left
    to compare (their update is still checked)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            for (name, layer), (_, after) in itertools.pairwise(module.named_children()):
                if isinstance(after, nn.BatchNorm2d) and getattr(layer, "bias", None) is not None:
                    names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


def gradient_deviations(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each parameter's gradient deviation from ``reference``'s (relative, L2), but for :func:`zero_gradient_biases`."""
    skipped = zero_gradient_biases(VAE())
    return {name: relative(grads[name], ref) for name, ref in reference.items() if name not in skipped}


def adam_first_update(grad: torch.Tensor, lr: float = LEARNING_RATE, eps: float = 1e-8) -> torch.Tensor:
    """Adam's first update from ``grad`` (bias-corrected moments ``grad`` and ``grad**2``): ``-lr g / (|g| + eps)``."""
    grad = grad.double()
    return -lr * grad / (grad.abs() + eps)


def worst(deviations: dict[str, float]) -> tuple[str, float]:
    """The parameter with the largest deviation, and that deviation."""
    name = max(deviations, key=deviations.__getitem__)
    return name, deviations[name]


def step_row(path: TrainPath, results: list[StepResult], references: list[StepResult]) -> Row:
    """The one-step row of ``path``: its worst loss, gradient and update deviations over the batches."""
    loss_limit, grad_limit = STEP_LIMITS[path.precision]
    loss_dev = max(abs(r.loss - ref.loss) / abs(ref.loss) for r, ref in zip(results, references, strict=True))
    per_batch = [gradient_deviations(r.grads, ref.grads) for r, ref in zip(results, references, strict=True)]
    grad_name, grad_dev = worst({name: max(d[name] for d in per_batch) for name in per_batch[0]})
    update_name, update_dev = worst({name: max(relative(r.updates[name], adam_first_update(r.grads[name]))
                                               for r in results) for name in references[0].grads})
    measured = f"loss {loss_dev:.4%}, grad {grad_dev:.3%} ({grad_name}), update {update_dev:.2%} ({update_name})"
    limit = f"{loss_limit * 100:.2g}%, {grad_limit * 100:.2g}%, {UPDATE_LIMIT * 100:.2g}%"
    ok = loss_dev <= loss_limit and grad_dev <= grad_limit and update_dev <= UPDATE_LIMIT
    return (f"one step: {path.name}", "-", "-", measured, limit, "OK" if ok else "FAIL")


def graph_and_eager_runs(train_step: TrainStep, make_optimizer: MakeOptimizer, path: TrainPath,
                         batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                         make_model: Callable[[], nn.Module], **options: Any
                         ) -> list[tuple[list[float], dict[str, torch.Tensor], tuple[str, str] | None]]:
    """Train ``make_model()`` on ``batches`` from the same seed twice, with ``cuda_graph=True`` and then eagerly:
    each run's per-batch losses, final weights and the step's ``(mode, reason)``."""
    runs = []
    for cuda_graph in (True, False):
        model = make_model().to(device)
        optimizer = make_optimizer(model, LEARNING_RATE)
        torch.manual_seed(SEED)
        with contextlib.redirect_stdout(io.StringIO()):
            log = train_step(1, model, optimizer, device, DeviceBatches(batches, len(batches[0][0])),
                             logging_interval=len(batches), **options,
                             **step_options(train_step, TrainPath(path.name, path.precision, cuda_graph=cuda_graph)))
        runs.append((log["train_combined_loss_per_batch"], model.state_dict(), fast_step_used()))
    return runs


def loss_deviation(losses: list[float], reference: list[float]) -> float:
    """The largest relative difference of two runs' per-batch losses."""
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True))


def fast_path_row(train_step: TrainStep, make_optimizer: MakeOptimizer, path: TrainPath,
                  batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                  initial: dict[str, torch.Tensor], noise: torch.Tensor) -> Row:
    """The fast path's row: the same steps without randomness replayed (``cuda_graph=True``) and run eagerly; a
    fallback to eager is reported as such, a disagreement FAILS."""
    (replayed, weights, used), (eager, eager_weights, _) = graph_and_eager_runs(
        train_step, make_optimizer, path, batches, device, lambda: without_randomness(initial, noise))
    loss_dev = loss_deviation(replayed, eager)
    weight_name, weight_dev = worst({name: relative(weights[name].float(), eager_weights[name].float())
                                     for name in eager_weights if eager_weights[name].is_floating_point()})
    measured = f"{len(batches)} steps: losses {loss_dev:.4%}, weights {weight_dev:.3%} ({weight_name})"
    agree = loss_dev <= FAST_PATH_LIMITS[0] and weight_dev <= FAST_PATH_LIMITS[1]
    limit = f"{FAST_PATH_LIMITS[0]:.1%}, {FAST_PATH_LIMITS[1]:.0%}"
    if not agree:
        return (f"fast path vs eager ({path.precision})", "-", "-", measured, limit, "FAIL")
    if used is not None and used[0] != "cuda graph":
        return (f"fast path vs eager ({path.precision})", "-", "-", f"fell back to eager: {used[1]}", "-", "FALLBACK")
    return (f"fast path vs eager ({path.precision})", "-", "-", measured, limit, "OK")


def mse_read_by_the_host(input: torch.Tensor, target: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """``F.mse_loss`` that also reads one value back to the host: harmless in an eager step, fatal to a capture."""
    loss = nn.functional.mse_loss(input, target, reduction=reduction)
    loss.flatten()[0].item()
    return loss


def failed_capture_row(train_step: TrainStep, make_optimizer: MakeOptimizer, path: TrainPath,
                       batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                       initial: dict[str, torch.Tensor]) -> Row:
    """A capture that fails must leave training eager, dropout and noise drawn as before: the losses of an eager run
    from the same seed, not a crash (a failed capture can leave the random generator in capture mode)."""
    def initial_model() -> VAE:
        model = VAE()
        model.load_state_dict(initial)
        return model

    (fell_back, _, used), (eager, _, _) = graph_and_eager_runs(
        train_step, make_optimizer, path, batches, device, initial_model, loss_fn=mse_read_by_the_host)
    mode, reason = used or ("not reported", "")
    loss_dev = loss_deviation(fell_back, eager)
    ok = mode == "eager" and reason.startswith("capturing it failed") and loss_dev <= FAST_PATH_LIMITS[0]
    measured = (f"{len(batches)} steps, {mode}: losses vs eager {loss_dev:.4%}"
                + ("" if ok else f"; {reason or 'the capture did not fail'}"))
    return (f"fast path, failed capture ({path.precision})", "-", "-", measured,
            f"eager, {FAST_PATH_LIMITS[0]:.1%}", "OK" if ok else "FAIL")


def fast_step_used() -> tuple[str, str] | None:
    """``(mode, reason)`` of the last training call's step (``celeba_vae.fast_step.last_step``), if it reports one."""
    module = sys.modules.get("celeba_vae.fast_step")
    step = getattr(module, "last_step", None)
    return (step.mode, step.reason) if step is not None else None


def resume_mismatch(train_step: TrainStep, make_optimizer: MakeOptimizer, split: DecodedSplit, device: torch.device,
                    batch_size: int, epochs: int, batches: int, folder: Path) -> str | None:
    """Run ``2 * epochs`` epochs of ``batches`` shuffled batches straight through, and ``epochs`` then resumed from
    the checkpoint to ``2 * epochs``; the first difference in log or weights, or ``None`` when bit-identical."""
    with contextlib.redirect_stdout(io.StringIO()):
        loader = CachedLoader(split, batch_size, shuffle=True, device=device, drop_last=True)

    def train(num_epochs: int, checkpoint: Path | None, resume: bool) -> tuple[dict[str, list[float]], VAE]:
        torch.manual_seed(SEED)
        model = VAE().to(device)
        optimizer = make_optimizer(model, LEARNING_RATE)
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


@dataclass
class CheckInputs:
    """What every check shares: the decoded synthetic split, the initial weights, the fixed noise and the sizes."""

    split: DecodedSplit
    initial: dict[str, torch.Tensor]
    noise: torch.Tensor
    steps: int
    batch_size: int
    step_batches: int


def _failed(name: str, err: BaseException) -> Row:
    return (name, "-", "-", f"{type(err).__name__}: {err}", "-", "FAIL")


def step_rows(train_step: TrainStep, make_optimizer: MakeOptimizer, setup: CheckInputs, device: torch.device,
               paths: list[TrainPath]) -> list[Row]:
    """The one-step rows (eager paths and compile; the fast path has its own row) and the fast path's row."""
    batches = device_batches(setup.split, setup.batch_size, setup.step_batches, device)
    rows: list[Row] = []
    references: list[StepResult] | None = None
    for path in paths:
        if path.cuda_graph or not path.data_on_gpu and any(p.precision == path.precision and p.data_on_gpu
                                                           for p in paths):
            continue  # the streamed path's step is the on-GPU one; the fast path is checked against eager below
        try:
            results = [one_step(train_step, make_optimizer, path, batch, device, setup.initial, setup.noise)
                       for batch in batches]
        except PATH_ERRORS as err:
            rows.append(_failed(f"one step: {path.name}", err))
            continue
        references = references or results
        rows.append(step_row(path, results, references))
    for path in paths:
        if path.cuda_graph:
            fast_batches = device_batches(setup.split, setup.batch_size, FAST_PATH_STEPS, device)
            try:
                rows.append(fast_path_row(train_step, make_optimizer, path, fast_batches, device, setup.initial,
                                          setup.noise))
            except PATH_ERRORS as err:
                rows.append(_failed(f"fast path vs eager ({path.precision})", err))
            try:
                rows.append(failed_capture_row(train_step, make_optimizer, path, fast_batches, device,
                                               setup.initial))
            except PATH_ERRORS as err:
                rows.append(_failed(f"fast path, failed capture ({path.precision})", err))
    return rows


def training_rows(train_step: TrainStep, make_optimizer: MakeOptimizer, setup: CheckInputs, device: torch.device,
                   paths: list[TrainPath]) -> list[Row]:
    """The training rows: every path on the production random stream against fp32 (compile against its eager
    precision, same stream), within the tolerance calibrated from fp32 on :data:`STREAM_SEEDS`."""
    args = (setup.split, device, setup.steps, setup.batch_size, setup.initial)
    reference = train_path(train_step, make_optimizer, paths[0], *args)
    reference_loss = reference.window_loss(setup.steps)
    spread = max(abs(train_path(train_step, make_optimizer, paths[0], *args, stream_seed=seed)
                     .window_loss(setup.steps) - reference_loss) / reference_loss for seed in STREAM_SEEDS)
    tolerance = max(STREAM_FLOOR, STREAM_FACTOR * spread)
    losses = {paths[0].name: reference_loss}
    rows: list[Row] = [(f"training: {paths[0].name}", f"{reference.images_per_s:,.1f}",
                        f"{reference.peak_mib:,.0f} MiB", f"{reference_loss:,.3f} (seeds spread {spread:.3%})",
                        "reference", "OK")]
    for path in paths[1:]:
        try:
            result = train_path(train_step, make_optimizer, path, *args)
            loss = result.window_loss(setup.steps)
        except PATH_ERRORS as err:
            rows.append(_failed(f"training: {path.name}", err))
            continue
        against = next((p.name for p in paths if path.compile and p.precision == path.precision
                        and not p.compile and not p.cuda_graph and p.name in losses), paths[0].name)
        deviation = abs(loss - losses[against]) / losses[against]
        losses[path.name] = loss
        rows.append((f"training: {path.name}", f"{result.images_per_s:,.1f}", f"{result.peak_mib:,.0f} MiB",
                     f"{loss:,.3f} ({deviation:.3%} from {against})", f"{tolerance:.2%}",
                     "OK" if deviation <= tolerance else "FAIL"))
    return rows


def prepare_check(folder: Path, device: torch.device, steps: int, batch_size: int, num_images: int,
                  step_batches: int) -> CheckInputs:
    """Write and decode ``num_images`` synthetic faces under ``folder``; draw the initial weights and the fixed noise.

    The decoded split's memory map lives as long as the setup, so drop it before removing ``folder`` on Windows.
    """
    write_synthetic_celeba(folder / "data", num_images=num_images, seed=SEED)
    index = read_index(find_celeba(folder / "data"))
    train_size = len(index.split("train")[0])
    if train_size < batch_size:
        raise ValueError(f"{num_images} synthetic faces give {train_size} training images, fewer than one batch "
                         f"of {batch_size}: raise num_images or lower batch_size")
    split = build_decoded_cache(folder / "data", "train", cache_dir=folder / "cache", num_workers=1,
                                index=index, progress=False)
    torch.manual_seed(SEED)
    initial = VAE().state_dict()
    noise = torch.randn(batch_size, initial["z_mean.bias"].numel(), generator=torch.Generator().manual_seed(SEED))
    return CheckInputs(split, initial, noise.to(device), steps, batch_size, step_batches)


def resume_row(train_step: TrainStep, make_optimizer: MakeOptimizer, setup: CheckInputs, device: torch.device,
               epochs: int, batches: int, folder: Path) -> Row:
    """The resume row: bit-identical to an uninterrupted run, or the first difference."""
    try:
        mismatch = resume_mismatch(train_step, make_optimizer, setup.split, device, setup.batch_size, epochs, batches,
                                   folder)
    except PATH_ERRORS as err:
        mismatch = f"{type(err).__name__}: {err}"
    return (f"resume {epochs}+{epochs} vs {2 * epochs} epochs ({choose_precision('auto', device).name})",
            "-", "-", mismatch or "identical", "bit-identical", "OK" if mismatch is None else "FAIL")


def all_rows(train_step: TrainStep, make_optimizer: MakeOptimizer, setup: CheckInputs, device: torch.device,
             paths: list[TrainPath], resume_epochs: int, resume_batches: int, folder: Path) -> list[Row]:
    """Every row of the table: resume, one step per path, the fast path, training per path."""
    return [resume_row(train_step, make_optimizer, setup, device, resume_epochs, resume_batches, folder),
            *step_rows(train_step, make_optimizer, setup, device, paths),
            *training_rows(train_step, make_optimizer, setup, device, paths)]


def remove_scratch_folder(folder: Path) -> None:
    """Remove ``folder`` after the memory maps into it are released (Windows keeps mapped files); say what is left."""
    gc.collect()
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        print(f"  note: could not remove every file of {folder} (still in use); delete it by hand")


def run_self_check(train_step: TrainStep, device: torch.device, make_optimizer: MakeOptimizer | None = None,
                   steps: int | None = None, batch_size: int | None = None, num_images: int | None = None,
                   resume_epochs: int = 1, resume_batches: int = 3, step_batches: int = 3) -> bool:
    """Check with ``train_step`` (``helper_train.train_vae_v1``) and ``make_optimizer`` (``helper_train.adam``;
    default plain Adam) every path ``device`` supports, the fast path and the resume; print one table.

    Defaults: 200 steps of 256 images from 1,024 synthetic faces on a GPU; 24 steps of 16 from 160 on the CPU;
    the one-step rows use ``step_batches`` batches. Returns ``True`` when no row FAILS.
    """
    make_optimizer = make_optimizer or plain_adam
    gpu = device.type in ("cuda", "mps")
    steps = steps or (200 if gpu else 24)
    batch_size = batch_size or (256 if gpu else 16)
    num_images = num_images or (1024 if gpu else 160)
    paths, notes = supported_paths(device)
    memory = {"cuda": "peak GPU memory allocated", "mps": "MPS memory allocated after the path"}.get(
        device.type, "peak host RSS of the process")
    print(f"Self-check on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type}) "
          f"with {getattr(make_optimizer, '__module__', '')}.{getattr(make_optimizer, '__name__', make_optimizer)}: "
          f"one step without randomness on {step_batches} batches of {batch_size} (loss, gradients, update vs fp32); "
          f"{steps} training steps per path (mean loss of the last {max(1, steps // 4)} updates vs fp32, tolerance "
          f"from {len(STREAM_SEEDS)} more fp32 random streams); memory = {memory}")
    for note in notes:
        print(f"  note: {note}")
    folder = Path(tempfile.mkdtemp(prefix="celeba-selfcheck-"))
    try:
        rows = all_rows(train_step, make_optimizer, prepare_check(folder, device, steps, batch_size, num_images,
                                                                  step_batches), device, paths, resume_epochs,
                        resume_batches, folder)
    finally:
        remove_scratch_folder(folder)
    print(f"{'check':<34}{'images/s':>11}{'memory':>12}  {'result':<9}{'limit':<22}measured")
    for name, speed, peak, measured, limit, result in rows:
        print(f"{name:<34}{speed:>11}{peak:>12}  {result:<9}{limit:<22}{measured}")
    failed = [row for row in rows if row[-1] == "FAIL"]
    fallbacks = [row for row in rows if row[-1] == "FALLBACK"]
    print(f"Self-check {'FAILED' if failed else 'passed'}: {len(rows) - len(failed)} of {len(rows)} OK"
          + (f" ({len(fallbacks)} fell back to eager, said above)" if fallbacks else ""))
    return not failed
