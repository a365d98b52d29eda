"""The self-check: the CPU paths pass, and a wrong loss or a broken resume makes it fail."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import helper_train
from celeba_vae import selfcheck

SMALL = ["--device", "cpu", "--steps", "8", "--batch-size", "8", "--num-images", "60"]


def test_cpu_paths_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert selfcheck.main(SMALL) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("fp32 ", "bf16 ", "resume "))}
    assert rows.keys() == {"fp32", "bf16", "resume"}
    assert all(line.rstrip().endswith("OK") for line in rows.values())
    assert "FAIL" not in out
    assert "checking the CPU paths" in out


def test_a_loss_off_by_5_percent_fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = selfcheck.train_path

    def perturbed(path: selfcheck.TrainPath, *args: object) -> selfcheck.PathResult:
        result = real(path, *args)
        if path.precision == "bf16":
            result.losses = [loss * 1.05 for loss in result.losses]
        return result

    monkeypatch.setattr(selfcheck, "train_path", perturbed)
    assert selfcheck.main(SMALL) == 1
    bf16_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bf16 "))
    assert bf16_row.rstrip().endswith("FAIL")


def test_a_resume_that_loses_the_rng_state_fails(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(helper_train, "restore_rng_states", lambda states, device=None: None)
    assert selfcheck.run_self_check("cpu", steps=8, batch_size=8, num_images=60) is False
    resume_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("resume "))
    assert resume_row.rstrip().endswith("FAIL")


def test_a_crashing_path_is_a_fail_row(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(selfcheck, "supported_paths", lambda device: (
        [selfcheck.TrainPath("fp32", "fp32"), selfcheck.TrainPath("fp99", "fp99")], []))
    assert selfcheck.run_self_check("cpu", steps=4, batch_size=8, num_images=60) is False
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fp99 "))
    assert "ValueError" in row and row.rstrip().endswith("FAIL")


def test_a_batch_larger_than_the_data_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        selfcheck.run_self_check("cpu", steps=4, batch_size=512, num_images=60)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cuda_paths(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0) if native_bf16 else (7, 5))
    paths, notes = selfcheck.supported_paths(torch.device("cuda"))
    fast = "bf16" if native_bf16 else "fp16"
    assert paths[0] == selfcheck.TrainPath("fp32", "fp32", data_on_gpu=True)
    assert {p.precision for p in paths} == ({"fp32", "bf16", "fp16"} if native_bf16 else {"fp32", "fp16"})
    assert selfcheck.TrainPath(f"{fast} streamed from host", fast, data_on_gpu=False) in paths
    has_triton = importlib.util.find_spec("triton") is not None
    assert any(p.compile for p in paths) == has_triton
    assert any("bf16" in note for note in notes) == (not native_bf16)
