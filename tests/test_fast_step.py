"""The whole-step fast path (celeba_vae.fast_step) on the CPU: a capture stands in for the CUDA graph, so the warm-up,
the first-replay check, the partial last batch and every fallback run here; what CUDA alone does is in the GPU
check."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from celeba_vae import fast_step
from celeba_vae.fast_step import FastStep, graph_unavailable
from celeba_vae.precision import Precision
from celeba_vae.training import EpochLog
from helper_train import train_vae_v1
from helper_utils import set_all_seeds
from model import VAE

Replay = Callable[[], torch.Tensor]
FULL, TAIL = 2, 1


def _batches(full: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch of ``full`` batches of two faces and a last, partial batch of one."""
    generator = torch.Generator().manual_seed(0)
    sizes = [FULL] * full + [TAIL]
    return [(torch.rand(n, 3, 128, 128, generator=generator), torch.zeros(n)) for n in sizes]


@pytest.fixture(autouse=True)
def one_warm_up_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_step, "WARMUP_STEPS", 1)  # fewer CPU steps; the count does not change the logic


def _train(num_epochs: int = 2, batches: list | None = None, **kwargs: Any) -> tuple[dict[str, list[float]], VAE]:
    set_all_seeds(0)
    model = VAE(latent_dim=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    log = train_vae_v1(num_epochs, model, optimizer, "cpu", batches or _batches(), precision="fp32",
                       channels_last=False, progress=False, **kwargs)
    return log, model


@functools.cache
def _eager_run(num_epochs: int) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    log, model = _train(num_epochs, cuda_graph=False)
    return log, model.state_dict()


def _same_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), weights.values(), strict=True))


def _lectures_loop(num_epochs: int = 2) -> list[float]:
    """The lecture's training loop, as its notebook wrote it: the combined loss of every batch."""
    set_all_seeds(0)
    model = VAE(latent_dim=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    losses = []
    for _ in range(num_epochs):
        model.train()
        for features, _ in _batches():
            _, z_mean, z_log_var, decoded = model(features)
            kl_div = -0.5 * torch.sum(1 + z_log_var - z_mean**2 - torch.exp(z_log_var), axis=1)
            kl_div = kl_div.mean()
            pixelwise = F.mse_loss(decoded, features, reduction="none")
            pixelwise = pixelwise.view(features.shape[0], -1).sum(axis=1).mean()
            loss = pixelwise + kl_div
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable], list[str]]:
    """Install a stand-in for the CUDA graph capture (made from the body and the static input); returns the
    calls it sees, "capture" and "replay"."""

    def install(make_replay: Callable[[Callable, torch.Tensor], Replay]) -> list[str]:
        calls: list[str] = []

        def fake_capture(body: Callable, static_input: torch.Tensor) -> Replay:
            calls.append("capture")
            replay = make_replay(body, static_input)

            def counted() -> torch.Tensor:
                calls.append("replay")
                return replay()

            return counted

        monkeypatch.setattr(fast_step, "graph_unavailable", lambda *args, **kwargs: None)
        monkeypatch.setattr(fast_step, "capture_step", fake_capture)
        return calls

    return install


def test_eager_training_through_the_fast_step_is_the_lectures_loop() -> None:
    log, _ = _eager_run(2)
    assert log["train_combined_loss_per_batch"] == pytest.approx(_lectures_loop(), rel=1e-6, abs=0)


def test_a_working_graph_is_replayed_for_every_full_batch_after_the_check(
    capture: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    eager, eager_weights = _eager_run(2)
    calls = capture(lambda body, static_input: lambda: body(static_input))
    replayed, model = _train()
    step = fast_step.last_step
    assert step.mode == "cuda graph" and step.reason == "" and step.difference == 0
    # 6 full batches: 1 warm-up step, the checked one, then replays; the two partial batches run eagerly
    assert calls == ["capture"] + ["replay"] * (6 - 1)
    assert replayed == eager and _same_weights(model, eager_weights)
    assert "CUDA graph" not in capsys.readouterr().out


def _skips_an_update(model_holder: list[torch.nn.Module]) -> Callable[[Callable, torch.Tensor], Replay]:
    def make(body: Callable, static_input: torch.Tensor) -> Replay:
        def replay() -> torch.Tensor:
            weight = model_holder[0].z_mean.weight
            before = weight.detach().clone()
            losses = body(static_input)
            with torch.no_grad():
                weight.copy_(before)
            return losses
        return replay
    return make


def _reuses_the_captured_input(body: Callable, static_input: torch.Tensor) -> Replay:
    stale = static_input.clone()
    return lambda: body(stale)


def _raises(body: Callable, static_input: torch.Tensor) -> Replay:
    raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors might be reported later")


@pytest.mark.parametrize(("fault", "says"), [
    ("raises", "capturing it failed (RuntimeError: operation not permitted when stream is capturing)"),
    ("stale input", "its first replay disagreed with an eager step (losses differ by"),
    ("skipped update", "its first replay disagreed with an eager step (losses differ by 0,"),
])
def test_a_failing_or_wrong_graph_falls_back_to_eager_with_one_line_and_the_same_result(
    capture: Callable, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fault: str, says: str
) -> None:
    eager, eager_weights = _eager_run(1)
    capsys.readouterr()
    models: list[torch.nn.Module] = []
    real_init = FastStep.__init__

    def remember_model(self: FastStep, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        models.append(self.model)

    monkeypatch.setattr(FastStep, "__init__", remember_model)
    make = {"raises": _raises, "stale input": _reuses_the_captured_input,
            "skipped update": _skips_an_update(models)}[fault]
    calls = capture(make)
    log, model = _train(num_epochs=1)
    step = fast_step.last_step
    assert step.mode == "eager" and says in step.reason
    assert calls == (["capture"] if fault == "raises" else ["capture", "replay"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "CUDA graph" in line]
    assert lines == [f"CUDA graph: not used, {step.reason}; the training step runs eagerly"]
    if fault != "raises":
        assert step.difference > fast_step.UPDATE_TOLERANCE
    assert log == eager and _same_weights(model, eager_weights)


def test_a_run_too_short_for_the_warm_up_says_the_graph_was_not_captured(capture: Callable) -> None:
    calls = capture(lambda body, static_input: lambda: body(static_input))
    _train(num_epochs=1, batches=_batches(full=1))
    assert calls == [] and fast_step.last_step.mode == "eager"
    assert "not captured yet" in fast_step.last_step.reason


class FailingCaptureCuda:
    """The pieces of torch.cuda that ``capture_step`` uses, behaving as torch 2.11 does when a capture fails: ending the
    capture raises, the capture stream stays current, and the random generator stays in capture mode until a capture
    ends normally (its eager draws would then raise "Offset increment outside graph capture")."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.main, self.capture_stream = SimpleNamespace(device=torch.device("cpu")), object()
        self.stream, self.generator_capturing, self.captures = self.main, False, 0
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "CUDAGraph", object)
        monkeypatch.setattr(cuda, "device", lambda device: contextlib.nullcontext())
        monkeypatch.setattr(cuda, "current_stream", lambda device=None: self.stream)
        monkeypatch.setattr(cuda, "set_stream", lambda stream: setattr(self, "stream", stream))
        monkeypatch.setattr(cuda, "graph", self.graph)

    @contextlib.contextmanager
    def graph(self, graph: object, capture_error_mode: str = "global") -> Iterator[None]:
        before, self.stream, self.generator_capturing = self.stream, self.capture_stream, True
        self.captures += 1
        try:
            yield
        except Exception as err:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from err
        self.generator_capturing, self.stream = False, before


def test_a_failed_capture_leaves_the_stream_and_the_random_generator_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda = FailingCaptureCuda(monkeypatch)

    def reads_a_value(static_input: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    with pytest.raises(RuntimeError, match="previous error during capture"):
        fast_step.capture_step(reads_a_value, torch.zeros(2))
    assert cuda.stream is cuda.main and not cuda.generator_capturing
    assert cuda.captures == 2  # the failed one, and the small one that ends the generator's capture mode


def test_graph_unavailable_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    model = VAE(latent_dim=8)
    cuda = torch.device("cuda")
    plain = torch.optim.Adam(model.parameters())
    assert "CUDA device" in graph_unavailable(torch.device("cpu"), plain)
    assert "not capturable" in graph_unavailable(cuda, plain)
    capturable = torch.optim.Adam(model.parameters(), capturable=True)
    assert graph_unavailable(cuda, capturable) is None
    fp16 = torch.amp.GradScaler("cpu", enabled=True)
    assert "fused optimizer" in graph_unavailable(cuda, capturable, fp16)
    assert "compiled" in graph_unavailable(cuda, capturable, None, torch.compile(model))

    step = FastStep(lambda x: x, model, plain, None, torch.device("cpu"))
    assert step.mode == "eager" and capsys.readouterr().out == ""  # off CUDA nobody expects a graph
    FastStep(lambda x: x, model, plain, None, torch.device("cpu"), cuda_graph=True)
    assert capsys.readouterr().out == ("CUDA graph: not used, CUDA graphs need a CUDA device, training runs on cpu; "
                                       "the training step runs eagerly\n")
    assert FastStep(lambda x: x, model, plain, None, cuda, cuda_graph=False).reason == "cuda_graph=False was asked for"
    assert capsys.readouterr().out == ""


def test_losses_are_read_back_once_per_logging_interval_and_the_step_never_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    real_to_host = EpochLog.to_host

    def counting(self: EpochLog, values: torch.Tensor) -> torch.Tensor:
        reads.append(len(values))
        return real_to_host(self, values)

    host_reads: list[str] = []
    inside_step = [False]

    def spy(name: str) -> Callable:
        real = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if inside_step[0]:
                host_reads.append(name)
            return real(self, *args, **kwargs)
        return read

    for name in ("item", "tolist", "cpu", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    real_call = FastStep.__call__

    def step(self: FastStep, features: torch.Tensor) -> torch.Tensor:
        inside_step[0] = True
        try:
            return real_call(self, features)
        finally:
            inside_step[0] = False

    monkeypatch.setattr(FastStep, "__call__", step)
    monkeypatch.setattr(EpochLog, "to_host", counting)
    set_all_seeds(0)
    model = VAE(latent_dim=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)  # CPU Adam reads its step count; a fused one does not
    log = train_vae_v1(1, model, optimizer, "cpu", _batches(), logging_interval=3, progress=False,
                       precision="fp32", channels_last=False)
    assert reads == [3, 1]  # after 3 steps, then the last one
    assert host_reads == []
    assert len(log["train_combined_loss_per_batch"]) == 4 and log["epoch"] == [1]


@pytest.mark.parametrize("deterministic", [False, True])
def test_training_on_cuda_turns_cudnn_benchmark_on_and_restores_it(deterministic: bool) -> None:
    saved = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        with pytest.raises(RuntimeError, match="interrupted"), Precision("bf16", "", "cuda").training_flags():
            assert torch.backends.cudnn.benchmark is not deterministic  # off when reproducibility was asked for
            raise RuntimeError("interrupted")
        assert torch.backends.cudnn.benchmark is False
        with Precision("fp32", "", "cpu").training_flags():
            assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.use_deterministic_algorithms(saved[1])


def test_the_autocast_of_a_step_keeps_no_weight_cache() -> None:
    """A cast cached while a step is captured would be replayed stale: the step's autocast has no cache."""
    with Precision("bf16", "", "cpu").autocast():
        assert torch.is_autocast_enabled("cpu") and not torch.is_autocast_cache_enabled()
