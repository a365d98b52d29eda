"""The self-check: the CPU paths pass, and a wrong loss or a broken resume makes it fail."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

import helper_train
from celeba_vae import selfcheck, training

CPU = torch.device("cpu")
small_check = functools.partial(selfcheck.run_self_check, helper_train.train_vae_v1, CPU, steps=8, batch_size=8,
                                num_images=60)


def test_cpu_paths_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert small_check()
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("fp32 ", "bf16 ", "resume "))}
    assert rows.keys() == {"fp32", "bf16", "resume"}
    assert all(line.rstrip().endswith("OK") for line in rows.values())
    assert "FAIL" not in out
    assert "checking the CPU paths" in out


def test_a_loss_off_by_5_percent_fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = selfcheck.train_path

    def perturbed(train_step: selfcheck.TrainStep, path: selfcheck.TrainPath, *args: Any) -> selfcheck.PathResult:
        result = real(train_step, path, *args)
        if path.precision == "bf16":
            result.losses = [loss * 1.05 for loss in result.losses]
        return result

    monkeypatch.setattr(selfcheck, "train_path", perturbed)
    assert not small_check()
    bf16_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bf16 "))
    assert bf16_row.rstrip().endswith("FAIL")


def test_a_resume_that_loses_the_rng_state_fails(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(training, "restore_rng_states", lambda states, device=None: None)
    assert small_check() is False
    resume_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("resume "))
    assert resume_row.rstrip().endswith("FAIL")


def test_a_crashing_path_is_a_fail_row(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(selfcheck, "supported_paths", lambda device: (
        [selfcheck.TrainPath("fp32", "fp32"), selfcheck.TrainPath("fp99", "fp99")], []))
    assert small_check(steps=4) is False
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fp99 "))
    assert "ValueError" in row and row.rstrip().endswith("FAIL")


def test_a_batch_larger_than_the_data_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        small_check(steps=4, batch_size=512)


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


def test_the_package_runs_the_step_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    """The self-check sits below the lecture's files: the training step comes from its caller."""
    calls: list[int] = []

    def counting_step(*args: Any, **kwargs: Any) -> dict[str, list[float]]:
        calls.append(args[0])
        return helper_train.train_vae_v1(*args, **kwargs)

    assert selfcheck.run_self_check(counting_step, CPU, steps=4, batch_size=8, num_images=60, resume_batches=2)
    assert calls == [2, 1, 2, 1, 1]  # the resume check's three runs, then the fp32 and bf16 paths
