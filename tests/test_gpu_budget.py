"""The GPU memory budget: which splits go to the GPU, decided from injected free-memory figures (no GPU needed)."""

from __future__ import annotations

import pytest

from celeba_vae import gpu_budget
from celeba_vae.atomic_files import GIB
from celeba_vae.celeba_files import OFFICIAL_SPLIT_SIZES
from celeba_vae.gpu_budget import plan_placement, training_step_bytes

IMAGE_BYTES = 3 * 128 * 128
SPLIT_BYTES = {name: n * IMAGE_BYTES for name, n in OFFICIAL_SPLIT_SIZES.items()}


@pytest.mark.parametrize("precision", ["bf16", "fp32", "auto"])
def test_full_train_split_stays_on_host_with_8_gib_and_goes_to_gpu_with_80(precision: str) -> None:
    assert SPLIT_BYTES["train"] == 162_770 * 3 * 128 * 128
    small = plan_placement(SPLIT_BYTES["train"], 8 * GIB, 256, precision, split="train")
    assert not small.on_gpu
    assert "train split (7.45 GiB)" in small.message and "8.00 GiB free" in small.message
    assert "host memory" in small.message and "\n" not in small.message
    big = plan_placement(SPLIT_BYTES["train"], 80 * GIB, 256, precision, split="train")
    assert big.on_gpu and "80.00 GiB free" in big.message and "on the GPU" in big.message


@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_valid_and_test_fit_next_to_training_on_8_gib(split: str, precision: str) -> None:
    room = training_step_bytes(256, precision)
    assert SPLIT_BYTES[split] <= 8 * GIB - room
    assert plan_placement(SPLIT_BYTES[split], 8 * GIB, 256, precision, split=split).on_gpu


def test_the_room_for_training_decides_at_the_margin() -> None:
    room = training_step_bytes(256, "bf16")
    assert plan_placement(GIB, GIB + room, 256, "bf16").on_gpu
    assert not plan_placement(GIB, GIB + room - 1, 256, "bf16").on_gpu
    assert training_step_bytes(512, "bf16") > room
    assert training_step_bytes(256, "fp32") > room


def test_insisting_on_the_gpu_when_the_split_does_not_fit_names_the_sizes() -> None:
    with pytest.raises(ValueError, match=r"train split \(7.45 GiB\).*8.00 GiB free.*'auto' or False.*smaller batch"):
        plan_placement(SPLIT_BYTES["train"], 8 * GIB, 256, "bf16", data_on_gpu=True, split="train")
    assert plan_placement(SPLIT_BYTES["train"], 80 * GIB, 256, "bf16", data_on_gpu=True).on_gpu


def test_data_on_gpu_false_keeps_the_split_on_the_host() -> None:
    placement = plan_placement(SPLIT_BYTES["valid"], 80 * GIB, 256, "bf16", data_on_gpu=False)
    assert not placement.on_gpu and "data_on_gpu=False" in placement.message


def test_without_cuda_auto_uses_host_memory_and_true_says_why_not() -> None:
    placement = plan_placement(SPLIT_BYTES["test"], None, 256, "fp32", split="test", device_type="cpu")
    assert not placement.on_gpu and "host memory" in placement.message and "cpu" in placement.message
    with pytest.raises(ValueError, match="data_on_gpu=True needs a CUDA device, but the device is 'mps'"):
        plan_placement(SPLIT_BYTES["test"], None, 256, "fp32", data_on_gpu=True, device_type="mps")


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_unknown_data_on_gpu_values_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="is not one of 'auto', True, False"):
        plan_placement(GIB, 80 * GIB, 256, "bf16", data_on_gpu=bad)  # type: ignore[arg-type]


def test_activation_estimate_counts_the_tensors_the_vae_layers_create() -> None:
    encoder = 3 * (32 * 64 * 64 + 64 * 32 * 32 + 64 * 16 * 16 + 64 * 8 * 8)
    linears = 200 + 200 + 4096
    decoder = 3 * (64 * 17 * 17 + 64 * 33 * 33 + 32 * 65 * 65) + 3 * 129 * 129 + 3 * 128 * 128
    total, largest, params = gpu_budget._layer_outputs()
    assert (total, largest) == (encoder + linears + decoder, 32 * 65 * 65)
    assert params == 2_649_075
    loss_and_gradients = 3 * IMAGE_BYTES * 4 + 2 * largest * 4
    assert gpu_budget.activation_bytes_per_image("bf16") == 2 * total + loss_and_gradients
    assert gpu_budget.activation_bytes_per_image("fp32") == 4 * total + loss_and_gradients
    with pytest.raises(ValueError, match="precision='fp8'"):
        gpu_budget.activation_bytes_per_image("fp8")



def test_evaluation_batches_grow_to_1024_where_half_the_free_memory_holds_them() -> None:
    per_image = (2 * 32 * 65 * 65 + 3 * IMAGE_BYTES) * 4  # two of the largest layer outputs, batch, output, error
    assert gpu_budget.evaluation_batch_size(80 * GIB, 256) == 1024
    assert gpu_budget.evaluation_batch_size(GIB, 256) == (GIB // 2) // per_image == 321
    assert gpu_budget.evaluation_batch_size(GIB // 4, 256) == 256
    assert gpu_budget.evaluation_batch_size(None, 16) == 1024
