"""The self-check: a healthy CPU run passes, and each injected fault is caught by the row meant to catch it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import helper_train
import helper_utils
from celeba_vae import selfcheck, training

CPU = torch.device("cpu")
FP32, BF16, FP16 = (selfcheck.TrainPath(name, name) for name in ("fp32", "bf16", "fp16"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[selfcheck.CheckInputs]:
    """Synthetic faces decoded once for the module: batches of 4, 4 training steps, one-step rows on 2 batches."""
    yield selfcheck.prepare_check(tmp_path_factory.mktemp("selfcheck"), CPU, steps=4, batch_size=4, num_images=40,
                                  step_batches=2)


def result(rows: list[selfcheck.Row], name: str) -> tuple[str, str]:
    """``(measured, result)`` of the row called ``name``."""
    row = next(row for row in rows if row[0] == name)
    return row[3], row[5]


def test_a_healthy_cpu_run_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert selfcheck.run_self_check(helper_train.train_vae_v1, CPU, helper_train.adam, steps=4, batch_size=4,
                                    num_images=40, step_batches=1, resume_batches=2)
    out = capsys.readouterr().out
    results = {line[:34].strip(): line[59:68].strip() for line in out.splitlines()
               if line[59:68].strip() in ("OK", "FAIL", "FALLBACK")}
    assert results == {name: "OK" for name in ("resume 1+1 vs 2 epochs (fp32)", "one step: fp32", "one step: bf16",
                                               "training: fp32", "training: bf16")}
    assert "FAIL" not in out and "with helper_train.adam" in out and "checking the CPU paths" in out
    assert "Self-check passed: 5 of 5 OK" in out


def low_precision_loss(features: torch.Tensor, decoded: torch.Tensor, z_mean: torch.Tensor, z_log_var: torch.Tensor,
                       weight: float = 1.0, loss_fn: Any = None) -> tuple[torch.Tensor, ...]:
    """The VAE loss summed in the autocast dtype of ``decoded`` (the fault: no ``.float()``)."""
    kl = (-0.5 * torch.sum(1 + z_log_var - z_mean**2 - torch.exp(z_log_var), dim=1)).mean()
    pixelwise = (decoded - features.to(decoded.dtype)) ** 2  # not F.mse_loss: torch 2.4 has no bf16 mse on the CPU
    reconstruction = pixelwise.reshape(len(features), -1).sum(dim=1).mean()
    return weight * reconstruction + kl, reconstruction, kl


def test_a_loss_computed_in_low_precision_fails(setup: selfcheck.CheckInputs, monkeypatch: pytest.MonkeyPatch) -> None:
    healthy = selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU, [FP32, BF16])
    assert result(healthy, "one step: bf16")[1] == "OK"
    monkeypatch.setattr(helper_train, "vae_loss", low_precision_loss)
    rows = selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU, [FP32, BF16])
    measured, verdict = result(rows, "one step: bf16")
    assert verdict == "FAIL", measured
    loss_deviation = float(measured.split("loss ")[1].split("%")[0]) / 100
    assert loss_deviation > selfcheck.STEP_LIMITS["bf16"][0]
    assert result(rows, "one step: fp32")[1] == "OK"


def test_fp16_skipped_steps_are_not_a_disagreement_but_a_scaler_that_never_unscales_is(
        setup: selfcheck.CheckInputs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scaler starts at 2^16 and skips steps until the scaled gradients fit in fp16: the one-step row compares its
    first update, unscaled. A scaler that hands the optimizer the scaled gradients is caught on the gradients."""
    healthy = selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU, [FP32, FP16])
    assert result(healthy, "one step: fp16")[1] == "OK", result(healthy, "one step: fp16")[0]
    real_unscale = torch.amp.GradScaler.unscale_

    def never_unscales(self: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> None:
        scale, self._scale = self._scale, torch.ones_like(self._scale)  # checks for inf, divides by 1
        try:
            real_unscale(self, optimizer)
        finally:
            self._scale = scale

    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", never_unscales)
    measured, verdict = result(selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU,
                                                   [FP32, FP16]), "one step: fp16")
    assert verdict == "FAIL" and float(measured.split("grad ")[1].split("%")[0]) > 100, measured


def test_a_step_that_skips_a_parameters_update_fails(setup: selfcheck.CheckInputs) -> None:
    def adam_without_z_mean(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for name, p in model.named_parameters() if name != "z_mean.weight"], lr=lr)

    measured, verdict = result(selfcheck.step_rows(helper_train.train_vae_v1, adam_without_z_mean, setup, CPU,
                                                   [FP32]), "one step: fp32")
    assert verdict == "FAIL" and "update 100.00% (z_mean.weight)" in measured


def test_a_step_that_never_updates_fails(setup: selfcheck.CheckInputs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selfcheck, "MAX_SKIPPED", 1)
    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, optimizer, *args, **kwargs: None)
    measured, verdict = result(selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU,
                                                   [FP32]), "one step: fp32")
    assert verdict == "FAIL" and "no optimizer update in 2 steps" in measured


def test_a_replay_that_reuses_stale_inputs_fails_and_a_fallback_is_said(setup: selfcheck.CheckInputs,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path's capture is replaced by fakes that run its body on the CPU: an honest replay agrees with eager
    steps; one that keeps training on the batch of its first replay (which the fast path's own first check passes)
    FAILS; a step that cannot be captured is reported as a fallback, not as a pass of the fast path."""
    fast_step = pytest.importorskip("celeba_vae.fast_step")
    fast = [selfcheck.TrainPath("fp32 fast path", "fp32", cuda_graph=True)]
    name = "fast path vs eager (fp32)"
    monkeypatch.setattr(fast_step, "graph_unavailable", lambda *args, **kwargs: None)
    captured: list[torch.Tensor] = []

    def honest(body: Any, static_input: torch.Tensor) -> Any:
        captured.append(static_input)
        return lambda: body(static_input)

    monkeypatch.setattr(fast_step, "capture_step", honest)
    measured, verdict = result(selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU, fast),
                               name)
    # OK, not FALLBACK: the replays ran (one capture for this row, one for the failed-capture row's run)
    assert verdict == "OK" and len(captured) == 2, measured

    def stale_after_the_first_replay(body: Any, static_input: torch.Tensor) -> Any:
        kept: list[torch.Tensor] = []

        def replay() -> torch.Tensor:
            kept.append(kept[0] if kept else static_input.clone())
            return body(kept[0])

        return replay

    monkeypatch.setattr(fast_step, "capture_step", stale_after_the_first_replay)
    measured, verdict = result(selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU, fast),
                               name)
    assert verdict == "FAIL" and "losses" in measured, measured
    monkeypatch.setattr(fast_step, "graph_unavailable", lambda *args, **kwargs: "no CUDA graphs in this test")
    measured, verdict = result(selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU, fast),
                               name)
    assert verdict == "FALLBACK" and measured == "fell back to eager: no CUDA graphs in this test"


def test_a_failed_capture_must_leave_training_eager_on_the_same_random_stream(setup: selfcheck.CheckInputs,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in capture refuses host reads, as CUDA does while capturing: the fast path falls back and trains as an
    eager run does (OK). A fallback that loses its place in the random stream FAILS, and so does a capture that lets
    the host read through."""
    from celeba_vae import fast_step

    fast = [selfcheck.TrainPath("fp32 fast path", "fp32", cuda_graph=True)]
    name = "fast path, failed capture (fp32)"
    monkeypatch.setattr(fast_step, "graph_unavailable", lambda *args, **kwargs: None)

    def refuses_host_reads(body: Any, static_input: torch.Tensor) -> Any:
        def item(self: torch.Tensor) -> float:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "item", item)
            body(static_input)
        return lambda: body(static_input)

    def rows() -> tuple[str, str]:
        return result(selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU, fast), name)

    monkeypatch.setattr(fast_step, "capture_step", refuses_host_reads)
    measured, verdict = rows()
    assert verdict == "OK" and "eager: losses vs eager 0.0000%" in measured, measured
    with monkeypatch.context() as patch:
        patch.setattr(fast_step._TrainingState, "restore_rng", lambda self: None)
        measured, verdict = rows()
    assert verdict == "FAIL" and "capturing it failed (RuntimeError" in measured, measured
    monkeypatch.setattr(fast_step, "capture_step", lambda body, static_input: lambda: body(static_input))
    measured, verdict = rows()
    assert verdict == "FAIL" and "cuda graph" in measured and "the capture did not fail" in measured, measured


def test_a_training_loss_beyond_the_seeds_spread_fails(setup: selfcheck.CheckInputs,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """4 steps of 4 images leave fp32's random streams a few percent apart: a path 50% off is beyond that."""
    real = selfcheck.train_path

    def perturbed(train_step: selfcheck.TrainStep, make_optimizer: selfcheck.MakeOptimizer,
                  path: selfcheck.TrainPath, *args: Any, **kwargs: Any) -> selfcheck.PathResult:
        run = real(train_step, make_optimizer, path, *args, **kwargs)
        if path.precision == "bf16":
            run.losses = [loss * 1.5 for loss in run.losses]
        return run

    monkeypatch.setattr(selfcheck, "train_path", perturbed)
    rows = selfcheck.training_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU, [FP32, BF16])
    assert result(rows, "training: fp32")[1] == "OK"
    assert result(rows, "training: bf16")[1] == "FAIL"


def test_the_training_window_counts_updates_not_steps() -> None:
    """fp16's first steps may be skipped: the window is the last quarter of the updates, aligned with fp32's."""
    skipped_two = selfcheck.PathResult(1.0, 0.0, [9, 9, 1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    assert skipped_two.window_loss(8) == (7 + 8) / 2
    with pytest.raises(ArithmeticError, match="only 8 of 10 steps updated the model, 9 needed"):
        skipped_two.window_loss(9)


def test_a_resume_that_loses_the_rng_state_fails(setup: selfcheck.CheckInputs, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    assert selfcheck.resume_row(helper_train.train_vae_v1, helper_train.adam, setup, CPU, 1, 2, tmp_path)[5] == "OK"
    monkeypatch.setattr(training, "restore_rng_states", lambda states, device=None: None)
    row = selfcheck.resume_row(helper_train.train_vae_v1, helper_train.adam, setup, CPU, 1, 2, tmp_path / "again")
    assert row[5] == "FAIL" and "differ" in row[3]


def test_a_crashing_path_is_a_fail_row(setup: selfcheck.CheckInputs) -> None:
    fp99 = selfcheck.TrainPath("fp99", "fp99")
    measured, verdict = result(selfcheck.step_rows(helper_train.train_vae_v1, helper_train.adam, setup, CPU,
                                                   [FP32, fp99]), "one step: fp99")
    assert verdict == "FAIL" and "ValueError" in measured


def test_a_batch_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        selfcheck.prepare_check(tmp_path, CPU, steps=4, batch_size=512, num_images=60, step_batches=1)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cuda_paths(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0) if native_bf16 else (7, 5))
    monkeypatch.setattr(selfcheck, "compile_unavailable", lambda device: None)
    paths, notes = selfcheck.supported_paths(torch.device("cuda"))
    fast = "bf16" if native_bf16 else "fp16"
    assert paths[0] == selfcheck.TrainPath("fp32", "fp32", data_on_gpu=True)
    assert {p.precision for p in paths} == ({"fp32", "bf16", "fp16"} if native_bf16 else {"fp32", "fp16"})
    assert selfcheck.TrainPath(f"{fast} streamed from host", fast, data_on_gpu=False) in paths
    assert selfcheck.TrainPath(f"{fast} + torch.compile", fast, compile=True, data_on_gpu=True) in paths
    assert selfcheck.TrainPath(f"{fast} fast path", fast, data_on_gpu=True, cuda_graph=True) in paths
    assert any("bf16" in note for note in notes) == (not native_bf16)


def test_compile_where_it_cannot_run_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """A P100 (compute capability 6.0) has no Triton: its compile path is a note saying why, not a FAIL row."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100-PCIE-16GB")
    paths, notes = selfcheck.supported_paths(torch.device("cuda"))
    assert not any(p.compile for p in paths)
    compile_notes = [note for note in notes if note.startswith("torch.compile")]
    reason = "Tesla P100-PCIE-16GB has compute capability 6.0, Triton needs 7.0 or newer"
    assert compile_notes == [f"torch.compile: SKIPPED, {reason}"]


def test_compile_draws_eagers_random_stream() -> None:
    from torch._inductor import config

    with selfcheck.eager_random_stream(compile=True):
        assert config.fallback_random
    assert not config.fallback_random


def test_the_package_runs_the_step_and_optimizer_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    """The self-check sits below the lecture's files: the training step and the optimizer come from its caller."""
    calls: list[int] = []
    optimizers: list[torch.optim.Optimizer] = []

    def counting_step(*args: Any, **kwargs: Any) -> dict[str, list[float]]:
        calls.append(args[0])
        return helper_train.train_vae_v1(*args, **kwargs)

    def counting_adam(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        optimizers.append(helper_train.adam(model, lr))
        return optimizers[-1]

    assert selfcheck.run_self_check(counting_step, CPU, counting_adam, steps=2, batch_size=4, num_images=40,
                                    step_batches=1, resume_batches=2)
    # resume (3 runs), one step fp32 and bf16, training fp32 on 3 random streams and bf16
    assert calls == [2, 1, 2, 1, 1, 1, 1, 1, 1]
    assert len(optimizers) == len(calls) and all(o.defaults["lr"] == 5e-4 for o in optimizers)


def test_set_deterministic_is_the_packages_one_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with selfcheck.deterministic():
            inside = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                      os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == (saved[0], True)
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        helper_utils.set_deterministic()
        assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                os.environ.get("CUBLAS_WORKSPACE_CONFIG")) == inside == (True, False, ":4096:8")
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
