"""Which floating-point precision training uses on a device, and why; TF32 switched on only where asked; whether
torch.compile can run there."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32", "tf32")
_DESCRIPTIONS = {
    "bf16": "bf16 autocast",
    "fp16": "fp16 autocast + gradient scaling",
    "tf32": "fp32 with TF32 matmuls and convolutions",
    "fp32": "fp32",
}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is ``"bf16"``, ``"fp16"``, ``"tf32"`` or ``"fp32"``; ``reason`` says why."""

    name: str
    reason: str
    device_type: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the training steps (``None``: no autocast)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def tf32(self) -> bool:
        """Whether the float32 matmuls and convolutions of the training steps may use TF32 (CUDA only)."""
        return self.device_type == "cuda" and self.name != "fp32"

    def describe(self) -> str:
        """One line for the training log, e.g. ``Precision: bf16 autocast (NVIDIA H100, ...)``."""
        return f"Precision: {_DESCRIPTIONS[self.name]} ({self.reason})"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the forward pass of a training step (a no-op for fp32 and tf32).

        Without autocast's weight cache: each weight is cast once per forward pass anyway (the cache dies when the
        block ends), and a step captured as a CUDA graph must not keep casts made during the capture."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype, cache_enabled=False)

    @contextlib.contextmanager
    def training_flags(self) -> Iterator[None]:
        """The global flags for training, restored afterwards (only CUDA has them): TF32 as the precision says, and
        cuDNN's autotuner (``cudnn.benchmark``: the fastest convolution algorithms for the step's fixed shapes),
        unless deterministic algorithms were asked for (``helper_utils.set_deterministic``)."""
        if self.device_type != "cuda":
            yield
            return
        saved = torch.backends.cudnn.benchmark
        deterministic = torch.backends.cudnn.deterministic or torch.are_deterministic_algorithms_enabled()
        torch.backends.cudnn.benchmark = saved or not deterministic
        try:
            with tf32_enabled(self.tf32):
                yield
        finally:
            torch.backends.cudnn.benchmark = saved

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def _cuda_card(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"


def native_bf16(device: str | torch.device) -> bool:
    """Whether the CUDA card ``device`` (not the current one: ``cuda:1`` on a mixed machine) has native bf16,
    i.e. compute capability 8.0 or newer; emulated bf16 on older cards is slow."""
    return tuple(torch.cuda.get_device_capability(torch.device(device))) >= (8, 0)


def choose_precision(precision: str, device: str | torch.device) -> Precision:
    """Resolve ``precision`` (``"auto"``, ``"bf16"``, ``"fp16"``, ``"fp32"`` or ``"tf32"``) for ``device``.

    ``"auto"`` is bf16 autocast on CUDA cards with native bf16 (compute capability 8.0 and newer), fp16 autocast
    with gradient scaling on older cards (T4, V100, RTX 20xx: their bf16 is emulated and slow), fp32 elsewhere.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(map(repr, PRECISIONS))}")
    if precision == "auto" and device.type == "cuda":
        card = _cuda_card(device)
        if native_bf16(device):
            return Precision("bf16", f"{card}, native bf16", "cuda")
        return Precision("fp16", f"{card}, has no native bf16", "cuda")
    if precision == "auto":
        return Precision("fp32", f"automatic mixed precision is only used on CUDA, not {device.type}", device.type)
    if precision == "tf32" and device.type != "cuda":
        return Precision("fp32", f"TF32 exists only on CUDA, not {device.type}", device.type)
    return Precision(precision, f"precision={precision!r} was requested", device.type)


def _cpp_compiler() -> str:
    """The C++ compiler torch.compile's CPU backend calls: ``$CXX``, else MSVC's ``cl`` on Windows, ``clang++`` on
    macOS and ``g++`` elsewhere (``torch._inductor.config.cpp.cxx``)."""
    default = {"win32": "cl", "darwin": "clang++"}.get(sys.platform, "g++")
    return os.environ.get("CXX", default)


def compile_unavailable(device: str | torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here (a phrase, e.g. for ``f"torch.compile: skipped, {reason}"``),
    or None where it can.

    Its default backend writes Triton kernels for CUDA, which need compute capability 7.0 or newer and the
    ``triton`` package (none is published for Windows); C++ for the CPU, built with the C++ compiler torch calls;
    Metal shaders for MPS, which torch builds itself.
    """
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 7:
            return (f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}, "
                    "Triton needs 7.0 or newer")
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed (none is published for Windows)"
    if device.type == "cpu" and shutil.which(_cpp_compiler()) is None:
        return f"the C++ compiler it needs on the CPU ({_cpp_compiler()}) is not on the PATH"
    return None


@contextlib.contextmanager
def tf32_enabled(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 in CUDA float32 matmuls and cuDNN convolutions inside the block only.

    The previous global settings come back afterwards, also when the block raises.
    """
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


@contextlib.contextmanager
def full_fp32(device: str | torch.device) -> Iterator[None]:
    """Evaluation precision: plain float32, with TF32 and any enclosing autocast on ``device`` switched off."""
    device_type = torch.device(device).type
    with contextlib.ExitStack() as stack:
        stack.enter_context(tf32_enabled(False))
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield
