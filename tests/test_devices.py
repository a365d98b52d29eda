"""CUDA and MPS behaviour, checked on a CPU-only machine through stand-ins for the accelerator."""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from celeba_vae import checkpoint as ckpt
from celeba_vae.checkpoint import restore_rng_states, rng_states
from celeba_vae.decoded_cache import CachedLoader, build_decoded_cache
from celeba_vae.precision import choose_precision, compile_unavailable
from helper_train import evaluate_vae, mean_image_baseline, train_vae_v1
from helper_utils import set_all_seeds
from model import VAE


class FakeAccelerator(TorchFunctionMode):
    """A ``kind`` ("cuda" or "mps") device on a CPU-only machine.

    Tensors moved or created there are CPU tensors that this mode tracks, and so is everything computed from them.
    As on the real devices, a tracked tensor cannot become a NumPy array, and on MPS none can be float64; random
    tensors created there come from the device's own generator, not the CPU's. Host memory asked for pinned
    (CUDA only) is tracked as pinned, and every non-blocking copy to the device from unpinned host memory, which
    can corrupt a batch on MPS and blocks on CUDA, is listed in ``unpinned_non_blocking``.
    """

    RANDOM = (torch.randperm, torch.rand, torch.randn, torch.randint)

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._tracked: dict[int, weakref.ref] = {}
        self._pinned: set[int] = set()
        self.generator = torch.Generator().manual_seed(987654321)
        self.unpinned_non_blocking: list[tuple[int, ...]] = []

    def _is_pinned(self, tensor: torch.Tensor) -> bool:
        return tensor.untyped_storage().data_ptr() in self._pinned

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` lives on the stand-in device."""
        ref = self._tracked.get(id(tensor))
        return ref is not None and ref() is tensor

    def _retarget(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, (str, torch.device)):
            target = torch.device(value).type
            return ("cpu" if target == self.kind else value), target
        return value, None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.is_pinned:
            return self._is_pinned(args[0])
        pin = bool(kwargs.pop("pin_memory", False)) or func is torch.Tensor.pin_memory
        if pin and self.kind != "cuda":
            raise RuntimeError(f"pinned memory is a CUDA stand-in only, not {self.kind}")
        target = "cpu" if func is torch.Tensor.cpu else None
        if "device" in kwargs:
            kwargs["device"], target = self._retarget(kwargs["device"])
        if func in self.RANDOM and target == self.kind and kwargs.get("generator") is None:
            kwargs["generator"] = self.generator
        if func is torch.Tensor.to:
            moved = [self._retarget(a) for a in args[1:]]
            args = (args[0], *(value for value, _ in moved))
            target = next((t for _, t in moved if t is not None), target)
            if target == self.kind:
                kwargs["copy"] = True
                source = args[0]
                if kwargs.get("non_blocking") and not self.holds(source) and not self._is_pinned(source):
                    self.unpinned_non_blocking.append(tuple(source.shape))
        if func is torch.Tensor.pin_memory:
            func, args = torch.Tensor.clone, args[:1]
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_device = target == self.kind or (target is None and any(self.holds(t) for t in inputs))
        if func is torch.Tensor.numpy and on_device:
            raise TypeError(f"can't convert {self.kind}:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first.")
        result = func(*args, **kwargs)
        if pin:
            self._pinned.add(result.untyped_storage().data_ptr())
        if target == "cpu" and isinstance(result, torch.Tensor) and self.holds(result):
            result = result.clone()  # a copy to the host is a new tensor
        if on_device:
            for out in tree_flatten(result)[0]:
                if not isinstance(out, torch.Tensor):
                    continue
                if self.kind == "mps" and out.dtype == torch.float64:
                    raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't "
                                    "support float64. Please use float32 instead.")
                self._tracked[id(out)] = weakref.ref(out)
        return result


CARDS = {
    "Tesla P100-PCIE-16GB": (6, 0),
    "Tesla T4": (7, 5),
    "Tesla V100-SXM2-16GB": (7, 0),
    "NVIDIA GeForce RTX 2080 Ti": (7, 5),
    "NVIDIA A100-SXM4-40GB": (8, 0),
    "NVIDIA H100 80GB HBM3": (9, 0),
}


class FakeCudaMachine:
    """The CUDA API of a machine with the ``cards`` named (see ``CARDS``), installed over a CPU-only torch.

    Card 0 is the current device; bf16 is emulated below compute capability 8.0; each card has a generator whose
    state is a byte tensor, and setting the states of more cards than exist raises IndexError, as torch does.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cards: tuple[str, ...]) -> None:
        self.cards = cards
        self.rng = [torch.full((16,), k, dtype=torch.uint8) for k in range(len(cards))]
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: len(cards))
        monkeypatch.setattr(cuda, "current_device", lambda: 0)
        monkeypatch.setattr(cuda, "get_device_name", lambda device=None: cards[self.index(device)])
        monkeypatch.setattr(cuda, "get_device_capability", lambda device=None: CARDS[cards[self.index(device)]])
        monkeypatch.setattr(cuda, "is_bf16_supported", lambda including_emulation=True: (
            including_emulation or CARDS[cards[0]] >= (8, 0)))
        monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": self.rng[self.index(device)].clone())
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [state.clone() for state in self.rng])
        monkeypatch.setattr(cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(cuda, "set_rng_state_all", lambda states: [
            self.set_rng_state(state, k) for k, state in enumerate(states)])
        # the optimizers' CUDA-graph check would ask the (absent) driver for its current stream, through
        # torch.cuda (torch 2.4, 2.11) or torch.accelerator (torch 2.14; torch 2.4 has no torch.accelerator)
        monkeypatch.setattr(cuda, "is_current_stream_capturing", lambda: False)
        if hasattr(torch, "accelerator"):
            monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)

    def index(self, device: int | str | torch.device | None) -> int:
        """The card ``device`` names (the current one, 0, when it names none); IndexError past the last card."""
        index = device if isinstance(device, int) else torch.device(device or "cuda").index or 0
        if index >= len(self.cards):
            raise IndexError(f"device index {index} out of range for {len(self.cards)} CUDA device(s)")
        return index

    def set_rng_state(self, state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.rng[self.index(device)] = state.clone()


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install the CUDA API of a machine with the cards named (by name, see ``CARDS``) over a CPU-only torch."""

    def install(*cards: str) -> FakeCudaMachine:
        return FakeCudaMachine(monkeypatch, cards)

    return install


@pytest.fixture
def tf32_flags() -> Any:
    """Set the global TF32 flags to values no code sets by itself; put the originals back afterwards."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = False
    yield "medium", False
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]


class RecordingVAE(VAE):
    """A small-latent VAE that records, at each forward, its mode, the CUDA autocast state and the TF32 flags."""

    def __init__(self, fail_at_call: int | None = None) -> None:
        super().__init__(latent_dim=8)
        self.calls: list[tuple[str, torch.dtype | None, str, bool]] = []
        self.fail_at_call = fail_at_call

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if len(self.calls) == self.fail_at_call:
            raise RuntimeError("simulated failure in a training step")
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        self.calls.append(("train" if self.training else "eval", autocast, torch.get_float32_matmul_precision(),
                           torch.backends.cudnn.allow_tf32))
        return super().forward(x)


def _batches(count: int = 2, size: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.rand(size, 3, 128, 128, generator=generator), torch.zeros(size)) for _ in range(count)]


@pytest.mark.parametrize(("card", "expected", "why"), [
    ("Tesla T4", "fp16", "Tesla T4, compute capability 7.5, has no native bf16"),
    ("Tesla V100-SXM2-16GB", "fp16", "Tesla V100-SXM2-16GB, compute capability 7.0, has no native bf16"),
    ("NVIDIA GeForce RTX 2080 Ti", "fp16", "NVIDIA GeForce RTX 2080 Ti, compute capability 7.5, has no native bf16"),
    ("NVIDIA A100-SXM4-40GB", "bf16", "NVIDIA A100-SXM4-40GB, compute capability 8.0, native bf16"),
    ("NVIDIA H100 80GB HBM3", "bf16", "NVIDIA H100 80GB HBM3, compute capability 9.0, native bf16"),
])
def test_auto_precision_uses_bf16_only_where_it_is_native(fake_cuda: Any, card: str, expected: str, why: str) -> None:
    fake_cuda(card)
    chosen = choose_precision("auto", "cuda")
    assert (chosen.name, chosen.reason) == (expected, why)
    assert chosen.autocast_dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[expected]
    assert chosen.grad_scaler().is_enabled() == (expected == "fp16")


@pytest.mark.parametrize(("precision", "device", "expected"), [
    ("auto", "cpu", "fp32"), ("auto", "mps", "fp32"), ("tf32", "cpu", "fp32"), ("tf32", "cuda", "tf32"),
    ("fp32", "cuda", "fp32"), ("fp16", "cuda", "fp16"), ("bf16", "cuda", "bf16"),
])
def test_explicit_precisions(fake_cuda: Any, precision: str, device: str, expected: str) -> None:
    fake_cuda("Tesla T4")
    chosen = choose_precision(precision, device)
    assert chosen.name == expected
    assert chosen.tf32 == (device == "cuda" and expected != "fp32")


def test_unknown_precision_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="precision='half' is not one of 'auto', 'bf16', 'fp16', 'fp32', 'tf32'"):
        choose_precision("half", "cpu")


def test_training_on_a_t4_uses_fp16_with_a_gradient_scaler_and_says_so(
    fake_cuda: Any, tf32_flags: tuple[str, bool], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    fake_cuda("Tesla T4")
    model = RecordingVAE()
    with FakeAccelerator("cuda"):
        train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cuda", _batches(), valid_loader=_batches(1),
                     checkpoint_path=tmp_path / "checkpoint.pt", progress=False)
    precision_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Precision:")]
    expected = "Precision: fp16 autocast + gradient scaling (Tesla T4, compute capability 7.5, has no native bf16)"
    assert precision_lines == [expected]
    assert model.calls[:2] == [("train", torch.float16, "high", True)] * 2
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["scaler"]["scale"] > 0


def test_the_gradient_scaler_state_survives_a_resume(fake_cuda: Any, tmp_path: Path) -> None:
    fake_cuda("Tesla T4")
    path = tmp_path / "checkpoint.pt"
    with FakeAccelerator("cuda"):
        model = RecordingVAE()
        train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cuda", _batches(), checkpoint_path=path,
                     progress=False)
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["scaler"].update(scale=1024.0, _growth_tracker=7)
        torch.save(checkpoint, path)
        model = RecordingVAE()
        train_vae_v1(2, model, torch.optim.Adam(model.parameters()), "cuda", _batches(1), checkpoint_path=path,
                     resume=True, progress=False)
    resumed = torch.load(path, weights_only=True)["scaler"]
    assert (resumed["scale"], resumed["_growth_tracker"]) == (1024.0, 8)


def test_tf32_is_on_only_during_the_training_steps(fake_cuda: Any, tf32_flags: tuple[str, bool]) -> None:
    fake_cuda("NVIDIA A100-SXM4-40GB")
    model = RecordingVAE()
    with FakeAccelerator("cuda"):
        train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cuda", _batches(), valid_loader=_batches(1),
                     precision="tf32", progress=False)
    assert model.calls == [("train", None, "high", True)] * 2 + [("eval", None, "highest", False)]
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == tf32_flags


def test_validation_runs_in_full_fp32_after_bf16_training(fake_cuda: Any, tf32_flags: tuple[str, bool]) -> None:
    fake_cuda("NVIDIA H100 80GB HBM3")
    model = RecordingVAE()
    with FakeAccelerator("cuda"):
        train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cuda", _batches(1), valid_loader=_batches(1),
                     progress=False)
        evaluate_vae(model, _batches(1), "cuda")
    assert model.calls == [("train", torch.bfloat16, "high", True)] + [("eval", None, "highest", False)] * 2
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == tf32_flags


def test_tf32_flags_are_restored_when_training_fails(fake_cuda: Any, tf32_flags: tuple[str, bool]) -> None:
    fake_cuda("NVIDIA A100-SXM4-40GB")
    model = RecordingVAE(fail_at_call=1)
    with FakeAccelerator("cuda"), pytest.raises(RuntimeError, match="simulated failure"):
        train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cuda", _batches(), progress=False)
    assert model.calls == [("train", torch.bfloat16, "high", True)]
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == tf32_flags


def test_evaluation_and_baseline_need_no_float64_on_mps() -> None:
    set_all_seeds(1)
    model = VAE(latent_dim=8)
    batches = _batches(3)
    expected = evaluate_vae(model, batches, "cpu")
    expected_baseline = mean_image_baseline(batches[:2], batches[2:])
    with FakeAccelerator("mps") as mps:
        on_mps = [(x.to("mps"), y) for x, y in batches]
        assert mps.holds(on_mps[0][0])
        model.to("mps")
        assert evaluate_vae(model, batches, "mps") == pytest.approx(expected, rel=1e-4)
        assert mean_image_baseline(on_mps[:2], on_mps[2:]) == pytest.approx(expected_baseline, rel=1e-4)


def test_the_stand_in_refuses_float64_on_mps() -> None:
    with FakeAccelerator("mps"), pytest.raises(TypeError, match="MPS framework doesn't support float64"):
        torch.zeros(3, device="mps", dtype=torch.float64)


def test_rng_states_restore_from_tensors_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    set_all_seeds(5)
    saved = rng_states()
    expected = torch.rand(3)
    given: list[torch.Tensor] = []
    real_set_rng_state = torch.set_rng_state

    def spy(state: torch.Tensor) -> None:
        given.append(state)
        real_set_rng_state(state)

    monkeypatch.setattr(torch, "set_rng_state", spy)
    with FakeAccelerator("mps") as mps:
        on_device = tree_map(lambda v: v.to("mps") if isinstance(v, torch.Tensor) else v, saved)
        assert mps.holds(on_device["torch"])
        restore_rng_states(on_device)
        assert not mps.holds(given[0])
    assert given[0].device.type == "cpu" and given[0].dtype == torch.uint8
    assert torch.equal(torch.rand(3), expected)


def test_resume_on_a_gpu_restores_the_rng_states(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """A checkpoint loaded with ``map_location=device`` has its RNG states on the GPU; resuming must not care."""
    path = tmp_path / "checkpoint.pt"
    real_load = torch.load
    with FakeAccelerator("mps"):

        def load_like_torch(f: Any, map_location: Any = None, **kwargs: Any) -> Any:
            loaded = real_load(f, map_location="cpu", **kwargs)
            if map_location is not None and torch.device(map_location).type == "mps":
                loaded = tree_map(lambda v: v.to("mps") if isinstance(v, torch.Tensor) else v, loaded)
            return loaded

        set_all_seeds(3)
        model = VAE(latent_dim=8)
        train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "mps", _batches(), checkpoint_path=path,
                     progress=False)
        monkeypatch.setattr(torch, "load", load_like_torch)
        model = VAE(latent_dim=8)
        log = train_vae_v1(2, model, torch.optim.Adam(model.parameters()), "mps", _batches(),
                           checkpoint_path=path, resume=True, progress=False)
    assert "1 of 2 epochs already done" in capsys.readouterr().out
    assert log["epoch"] == [1, 2]
    assert ckpt.load_checkpoint(path)["epoch"] == 2


def test_bf16_is_decided_for_the_training_card_not_the_current_one(fake_cuda: Any) -> None:
    fake_cuda("Tesla T4", "NVIDIA H100 80GB HBM3")
    on_h100 = choose_precision("auto", "cuda:1")
    assert (on_h100.name, on_h100.reason) == ("bf16", "NVIDIA H100 80GB HBM3, compute capability 9.0, native bf16")
    assert choose_precision("auto", "cuda:0").name == "fp16"
    from celeba_vae.selfcheck import supported_paths

    assert "bf16" in {path.precision for path in supported_paths(torch.device("cuda:1"))[0]}
    assert "bf16" not in {path.precision for path in supported_paths(torch.device("cuda:0"))[0]}


def test_a_checkpoint_from_two_gpus_resumes_on_one(fake_cuda: Any, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "checkpoint.pt"
    two_cards = fake_cuda("Tesla T4", "Tesla T4")
    with FakeAccelerator("cuda"):
        model = RecordingVAE()
        train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cuda", _batches(1), checkpoint_path=path,
                     progress=False)
    saved = two_cards.rng[0].clone()
    one_card = fake_cuda("Tesla T4")
    one_card.rng[0] = torch.full((16,), 99, dtype=torch.uint8)
    restored: list[torch.Tensor] = []
    real_set = one_card.set_rng_state

    def spy(state: torch.Tensor, device: Any = "cuda") -> None:
        restored.append(state.clone())
        real_set(state, device)

    one_card.set_rng_state = spy  # type: ignore[method-assign]
    torch.cuda.set_rng_state = spy  # restored by the fixture's monkeypatch
    with FakeAccelerator("cuda"):
        model = RecordingVAE()
        log = train_vae_v1(2, model, torch.optim.Adam(model.parameters()), "cuda", _batches(1), checkpoint_path=path,
                           resume=True, progress=False)
    assert log["epoch"] == [1, 2] and "1 of 2 epochs already done" in capsys.readouterr().out
    assert len(restored) == 1 and torch.equal(restored[0], saved)


def test_the_training_cards_generator_is_the_one_restored(fake_cuda: Any) -> None:
    two_cards = fake_cuda("Tesla T4", "NVIDIA H100 80GB HBM3")
    states = rng_states("cuda:1")
    assert torch.equal(states["cuda_training"], two_cards.rng[1])
    one_card = fake_cuda("NVIDIA H100 80GB HBM3")
    restore_rng_states(states, "cuda:0")
    assert torch.equal(one_card.rng[0], two_cards.rng[1])


def test_a_card_the_checkpoint_has_no_state_for_is_said(fake_cuda: Any, capsys: pytest.CaptureFixture) -> None:
    fake_cuda("Tesla T4")
    states = rng_states()
    second = fake_cuda("Tesla T4", "Tesla T4")
    before = second.rng[1].clone()
    restore_rng_states(states, "cuda:1")
    assert "no CUDA generator state for cuda:1" in capsys.readouterr().out
    assert torch.equal(second.rng[1], before)


@pytest.fixture
def fake_mps_generator(monkeypatch: pytest.MonkeyPatch) -> torch.Generator:
    """An MPS generator over a CPU-only torch: ``torch.mps.get_rng_state``/``set_rng_state`` read and set it."""
    generator = torch.Generator().manual_seed(11)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": generator.get_state())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state, device="mps": generator.set_state(state))
    return generator


def test_resume_on_mps_restores_the_mps_generator(fake_mps_generator: torch.Generator) -> None:
    states = rng_states()
    assert "mps" in states
    expected = torch.rand(4, generator=fake_mps_generator)
    restore_rng_states(states, "mps")
    assert torch.equal(torch.rand(4, generator=fake_mps_generator), expected)


def test_training_on_mps_never_copies_unpinned_memory_without_blocking() -> None:
    model = VAE(latent_dim=8)
    with FakeAccelerator("mps") as mps:
        train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "mps", _batches(), valid_loader=_batches(1),
                     progress=False)
        evaluate_vae(model, _batches(1), "mps")
    assert mps.unpinned_non_blocking == []


def test_pinned_batches_are_still_copied_without_blocking_on_cuda(fake_cuda: Any) -> None:
    fake_cuda("NVIDIA H100 80GB HBM3")
    with FakeAccelerator("cuda") as cuda:
        pinned = torch.empty(2, 3, dtype=torch.uint8, pin_memory=True)
        calls: list[bool] = []
        real_to = torch.Tensor.to

        class Spy(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
                if func is real_to:
                    calls.append(bool((kwargs or {}).get("non_blocking")))
                return func(*args, **(kwargs or {}))

        from helper_train import to_device

        with Spy():
            moved = to_device(pinned, torch.device("cuda"))
            to_device(torch.zeros(2), torch.device("cuda"))
        assert cuda.holds(moved) and calls == [True, False]


class _FakeStream:
    def wait_event(self, event: Any) -> None:
        pass


class _FakeEvent:
    def record(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.fixture
def cuda_loader_machine(fake_cuda: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA card of 80 GB with the streams and events the cached loader uses, and uploads as plain copies."""
    from celeba_vae import decoded_cache, gpu_budget

    fake_cuda("NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: None)
    monkeypatch.setattr(gpu_budget, "free_gpu_bytes", lambda device: 80 << 30)
    monkeypatch.setattr(decoded_cache, "_upload", lambda images, device: torch.from_numpy(np.array(images)).to(device))


def test_streamed_batches_copy_images_and_labels_from_pinned_memory(celeba_root: Path, cuda_loader_machine: None,
                                                                    tmp_path: Path) -> None:
    split = build_decoded_cache(celeba_root, "train", cache_dir=tmp_path, num_workers=1, progress=False)
    with FakeAccelerator("cuda") as cuda:
        loader = CachedLoader(split, batch_size=16, device="cuda", data_on_gpu=False)
        batches = list(loader)
        assert all(cuda.holds(images) and cuda.holds(labels) for images, labels in batches)
    assert cuda.unpinned_non_blocking == []
    labels = torch.cat([labels for _, labels in batches])
    assert torch.equal(labels, torch.from_numpy(split.attributes).long())


def test_one_seed_gives_one_order_wherever_the_split_lives(celeba_root: Path, cuda_loader_machine: None,
                                                          tmp_path: Path) -> None:
    """The same seed gives the same image and labels at each place of each batch, so noise and dropout drawn per
    place pair with the same images whether the split is on the GPU or streamed from host memory."""
    split = build_decoded_cache(celeba_root, "train", cache_dir=tmp_path, num_workers=1, progress=False)
    batches = {}
    with FakeAccelerator("cuda"):
        for data_on_gpu in (True, False):
            loader = CachedLoader(split, batch_size=16, shuffle=True, device="cuda", data_on_gpu=data_on_gpu)
            assert loader.on_gpu == data_on_gpu
            torch.manual_seed(5)
            batches[data_on_gpu] = [(images.cpu(), labels.cpu()) for images, labels in loader]
    assert len(batches[True]) == len(batches[False]) > 1
    for (gpu_images, gpu_labels), (host_images, host_labels) in zip(batches[True], batches[False], strict=True):
        assert torch.equal(gpu_images, host_images) and torch.equal(gpu_labels, host_labels)
    torch.manual_seed(5)
    first = torch.randperm(len(split))[:16]
    assert sorted(first.tolist()) != first.tolist()  # the seed's first batch is not already in row order


def test_adam_is_fused_only_on_cuda(fake_cuda: Any, capsys: pytest.CaptureFixture) -> None:
    from helper_train import adam

    model = VAE(latent_dim=8)
    optimizer = adam(model, lr=1e-3)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3
    assert not optimizer.defaults["fused"]
    fake_cuda("Tesla T4")
    with FakeAccelerator("cuda"):
        train_vae_v1(1, model, optimizer, "cuda", _batches(1), progress=False)
    assert "helper_train.adam(model, lr) (fused Adam)" in capsys.readouterr().out
    with ParametersOnCuda():
        on_cuda = adam(model, lr=1e-3)
    assert on_cuda.defaults["fused"] is True
    assert all(group["fused"] is True for group in on_cuda.param_groups)


class ParametersOnCuda(TorchFunctionMode):
    """Every tensor says it is on ``cuda:0`` (what an optimizer checks before it builds fused kernels)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func == torch.Tensor.device.__get__:
            return torch.device("cuda", 0)
        return func(*args, **(kwargs or {}))


def _triton(monkeypatch: pytest.MonkeyPatch, installed: bool) -> None:
    module = ModuleType("triton")
    module.__spec__ = importlib.machinery.ModuleSpec("triton", None)
    monkeypatch.setitem(sys.modules, "triton", module if installed else None)


@pytest.mark.parametrize(("card", "triton", "reason"), [
    ("Tesla P100-PCIE-16GB", True, "Tesla P100-PCIE-16GB has compute capability 6.0, Triton needs 7.0 or newer"),
    ("Tesla T4", False, "the triton package is not installed (none is published for Windows)"),
    ("Tesla V100-SXM2-16GB", True, None),
    ("NVIDIA H100 80GB HBM3", True, None),
])
def test_compile_needs_compute_capability_7_and_triton_on_cuda(fake_cuda: Any, monkeypatch: pytest.MonkeyPatch,
                                                              card: str, triton: bool, reason: str | None) -> None:
    fake_cuda(card)
    _triton(monkeypatch, installed=triton)
    assert compile_unavailable("cuda") == reason


def test_compile_on_the_cpu_needs_the_cpp_compiler_torch_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    expected = "the C++ compiler it needs on the CPU (no-such-c++-compiler) is not on the PATH"
    assert compile_unavailable("cpu") == expected
    monkeypatch.setenv("CXX", sys.executable)  # any program on the PATH stands in for one
    assert compile_unavailable("cpu") is None
    assert compile_unavailable("mps") is None  # torch compiles Metal shaders itself


@pytest.mark.parametrize(("card", "triton"), [("Tesla P100-PCIE-16GB", True), ("Tesla T4", False)])
def test_compile_where_it_cannot_run_trains_eagerly_after_one_line(
    fake_cuda: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, card: str, triton: bool
) -> None:
    fake_cuda(card)
    _triton(monkeypatch, installed=triton)
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: pytest.fail("torch.compile was called"))
    model = RecordingVAE()
    with FakeAccelerator("cuda"):
        log = train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cuda", _batches(), compile=True,
                           progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "compile" in line]
    assert lines == [f"torch.compile: not used, {compile_unavailable('cuda')}; training runs without it"]
    assert len(model.calls) == 2 and len(log["train_combined_loss_per_batch"]) == 2


def test_the_benchmark_reports_the_card_it_runs_on(fake_cuda: Any) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_pipeline.py"
    spec = importlib.util.spec_from_file_location("benchmark_pipeline", script)
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    fake_cuda("Tesla T4", "NVIDIA H100 80GB HBM3")
    assert benchmark.device_name(torch.device("cuda:1")) == "NVIDIA H100 80GB HBM3"
    assert benchmark.device_name(torch.device("cuda:0")) == "Tesla T4"
