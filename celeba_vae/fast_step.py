"""The training step replayed as one CUDA graph, checked against an eager step first, eager wherever it cannot be.

A step of the lecture's VAE at batch 256 launches ~300 small kernels; the GPU's own work is 2-3 ms, but launching
them one by one from Python takes ~12 ms. :class:`FastStep` runs the step's body (written once, in
``helper_train.train_vae_v1``) eagerly for a few warm-up batches on a side stream, then captures it once as a CUDA
graph (forward, loss, backward, fused capturable Adam, the gradient scaler's update: see PyTorch's "whole network
capture") and replays it for every full batch, after copying the batch into the graph's input buffer. The last
partial batch of an epoch has another shape and runs eagerly, through the same body.

Before the graph is trusted, its first replay must agree with an eager step of the same batch from the same model,
optimizer, scaler and random state (CUDA graphs draw from the same Philox stream in the same order as eager kernels,
PyTorch's "Note [CUDA Graph-safe RNG states]"). A capture that fails, or a first replay that disagrees, makes the
step eager for the rest of the run, with one printed line saying why: never a crash, never a wrong result.

The :class:`FastStep` made last (one per ``train_vae_v1`` call) is :data:`last_step`, so a self-check can read what
its training used (``last_step.mode``, ``last_step.reason``, ``last_step.difference``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch

WARMUP_STEPS = 3  # eager steps on a side stream before the capture, as in PyTorch's CUDA graph examples
LOSS_TOLERANCE = 0.01  # relative difference of the three losses, first replay vs eager
UPDATE_TOLERANCE = 0.05  # per tensor: |replay's change - eager's change| / |eager's change|
EAGER, GRAPH = "eager", "cuda graph"

Step = Callable[[torch.Tensor], torch.Tensor]

last_step: FastStep | None = None


def graph_unavailable(
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    model: torch.nn.Module | None = None,
) -> str | None:
    """Why the step cannot be replayed as a CUDA graph here (a phrase), or None where it can be tried."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, training runs on {device.type}"
    if not all(group.get("capturable") for group in optimizer.param_groups):
        return ("the optimizer is not capturable; helper_train.adam(model, lr) builds a fused, capturable Adam "
                "(the same update)")
    if scaler is not None and scaler.is_enabled() and not getattr(optimizer, "_step_supports_amp_scaling", False):
        return "the fp16 gradient scaler needs a fused optimizer to step without waiting for the GPU"
    if model is not None and hasattr(model, "_orig_mod"):
        return "the model is compiled (torch.compile), so it runs through its own kernels"
    return None


def capture_step(body: Step, static_input: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Capture ``body(static_input)`` as a CUDA graph; returns ``replay()``, which runs the graph on what
    ``static_input`` holds then and returns its (3,) loss buffer (overwritten by the next replay).

    Only this thread is held to the capture's rules ("thread_local"): the checkpoint writer, or the pin-memory
    thread of a user's DataLoader, may go on meanwhile."""
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.current_stream(static_input.device)
    try:
        with torch.cuda.device(static_input.device), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_losses = body(static_input)
    except Exception:
        end_failed_capture(stream)
        raise

    def replay() -> torch.Tensor:
        with torch.cuda.device(static_input.device):
            graph.replay()
        return static_losses

    return replay


def end_failed_capture(stream: torch.cuda.Stream) -> None:
    """Undo what a failed capture leaves behind, so that training can go on eagerly on ``stream``.

    When the end of a capture raises, ``torch.cuda.graph`` leaves its capture stream current; and in torch 2.4 to
    2.11 (not 2.14) the CUDA random generator stays in capture mode, so the next dropout mask raises "Offset
    increment outside graph capture encountered unexpectedly". A capture that ends normally, of one small kernel,
    takes the generator out of capture mode."""
    torch.cuda.set_stream(stream)
    with torch.cuda.device(stream.device), torch.cuda.graph(torch.cuda.CUDAGraph()):
        torch.zeros(1, device=stream.device)


class _TrainingState:
    """A copy of the model's parameters and buffers, the optimizer's state, the scaler's state and the device's
    random state, put back in place (the graph holds the addresses of those tensors)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                 device: torch.device) -> None:
        self.model, self.optimizer, self.scaler, self.device = model, optimizer, scaler, device
        self.tensors = [t.detach().clone() for t in self._live()]
        self.weights = self.tensors[:len(self._model_tensors())]
        self.scaler_state = scaler.state_dict() if scaler is not None and scaler.is_enabled() else None
        self.rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()

    def _model_tensors(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    def _live(self) -> list[torch.Tensor]:
        optimizer_tensors = [value for state in self.optimizer.state.values() for value in state.values()
                             if isinstance(value, torch.Tensor)]
        return [*self._model_tensors(), *optimizer_tensors]

    @torch.no_grad()
    def restore(self) -> None:
        for live, saved in zip(self._live(), self.tensors, strict=True):
            live.copy_(saved)
        if self.scaler_state is not None:
            self.scaler.load_state_dict(self.scaler_state)
        self.restore_rng()

    def restore_rng(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(self.rng, self.device)
        else:
            torch.set_rng_state(self.rng)

    def changes(self) -> list[torch.Tensor]:
        """How much each parameter and buffer moved since the copy, in float32."""
        return [live.detach().float() - saved.float()
                for live, saved in zip(self._model_tensors(), self.weights, strict=True)]


def _difference(eager_losses: torch.Tensor, eager_changes: list[torch.Tensor], graph_losses: torch.Tensor,
                graph_changes: list[torch.Tensor]) -> tuple[float, float]:
    """The largest relative difference of the losses and of the per-tensor changes, replay vs eager."""
    losses = ((graph_losses.float() - eager_losses.float()).abs() / eager_losses.float().abs().clamp_min(1e-12)).max()
    updates = [(g - e).norm() / e.norm().clamp_min(1e-12) for g, e in zip(graph_changes, eager_changes, strict=True)]
    return float(losses), float(torch.stack(updates).max()) if updates else 0.0


class FastStep:
    """``step(features)`` runs one training step of ``body`` (features -> its (3,) loss tensor on the device) and
    returns the losses: replayed as a CUDA graph once that works (``cuda_graph`` None: where possible; True: asked
    for, with a line where it cannot be; False: always eager), eagerly otherwise.

    ``mode`` is ``"cuda graph"`` once full batches are replayed, else ``"eager"``; ``reason`` says why eager
    (``""`` in graph mode); ``difference`` is the first replay's largest relative difference from an eager step (loss
    or a tensor's update), None before that check. ``model``, ``optimizer`` and ``scaler`` are what ``body`` updates;
    ``step_model`` is the model ``body`` calls, when that is another (compiled) module.
    """

    def __init__(self, body: Step, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler | None, device: torch.device, cuda_graph: bool | None = None,
                 step_model: torch.nn.Module | None = None) -> None:
        global last_step
        last_step = self
        self.body, self.model, self.optimizer, self.scaler, self.device = body, model, optimizer, scaler, device
        self.mode, self.difference = EAGER, None
        self.full_shape: torch.Size | None = None  # the first batch's; batches of another shape run eagerly
        self.full_steps = 0
        self.stream: torch.cuda.Stream | None = None
        self.static_input: torch.Tensor | None = None
        self.replay: Callable[[], torch.Tensor] | None = None
        unavailable = "cuda_graph=False was asked for" if cuda_graph is False else graph_unavailable(
            device, optimizer, scaler, step_model if step_model is not None else model)
        self.wanted = unavailable is None
        if unavailable is None:
            self.reason = f"not captured yet: the graph is captured after {WARMUP_STEPS} warm-up steps of full batches"
        else:
            self.reason = unavailable
            if cuda_graph or (cuda_graph is None and device.type == "cuda"):
                print(f"CUDA graph: not used, {unavailable}; the training step runs eagerly")

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        self.full_shape = self.full_shape or features.shape
        if not self.wanted or features.shape != self.full_shape:
            return self._eager(features)  # eager training, or the last, partial batch of an epoch
        if self.replay is not None:
            self.static_input.copy_(features)
            return self.replay().clone()
        self.full_steps += 1
        if self.full_steps <= WARMUP_STEPS:
            with self._side_stream():
                return self._eager(features)
        return self._capture_and_check(features)

    def close(self) -> None:
        """Free the graph and its memory at the end of training; ``mode``, ``reason`` and ``difference`` stay."""
        self.replay, self.static_input = None, None
        self.wanted = False

    def _eager(self, features: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            # helper_train.adam's fused Adam is capturable; uncaptured it updates exactly as before
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            return self.body(features)

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        """Warm-up steps run on a side stream (PyTorch's CUDA graph examples), ordered after and before the current
        stream's work; off CUDA nothing changes."""
        if self.device.type != "cuda":
            yield
            return
        self.stream = self.stream or torch.cuda.Stream(self.device)
        stream, current = self.stream, torch.cuda.current_stream(self.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            yield
        current.wait_stream(stream)

    def _capture_and_check(self, features: torch.Tensor) -> torch.Tensor:
        """Train on ``features`` with an eager step, go back, capture the step, replay it on ``features`` from the
        same state and keep the graph only if both agree; either way the batch is trained on once."""
        before = _TrainingState(self.model, self.optimizer, self.scaler, self.device)
        with self._side_stream():
            eager_losses = self._eager(features).clone()
        eager_changes = before.changes()
        before.restore()
        try:
            self.static_input = torch.zeros_like(features)  # a replay must read the batch copied in, not this
            self.optimizer.zero_grad(set_to_none=True)
            replay = capture_step(self.body, self.static_input)
            self.static_input.copy_(features)
            before.restore_rng()
            graph_losses = replay().clone()
            losses, updates = _difference(eager_losses, eager_changes, graph_losses, before.changes())
        except Exception as err:  # noqa: BLE001 - any failure of capture or replay means: train eagerly
            first_line = (str(err).strip().splitlines() or [""])[0]
            return self._fall_back(before, features, f"capturing it failed ({type(err).__name__}: {first_line})")
        self.difference = max(losses, updates)
        if not (losses <= LOSS_TOLERANCE and updates <= UPDATE_TOLERANCE):  # a NaN difference disagrees too
            return self._fall_back(before, features, (
                f"its first replay disagreed with an eager step (losses differ by {losses:.2g}, a tensor's update by "
                f"{updates:.2g}, relative; allowed {LOSS_TOLERANCE:g} and {UPDATE_TOLERANCE:g})"))
        self.mode, self.reason, self.replay = GRAPH, "", replay
        return graph_losses

    def _fall_back(self, before: _TrainingState, features: torch.Tensor, reason: str) -> torch.Tensor:
        """Eager for the rest of the run, after one line; this batch is trained on again from where it started."""
        print(f"CUDA graph: not used, {reason}; the training step runs eagerly")
        self.wanted, self.reason, self.replay = False, reason, None
        before.restore()
        self.optimizer.zero_grad(set_to_none=True)
        return self._eager(features)
