"""Deterministic algorithms, the one place that says what they take: cuDNN's autotuner off, cuBLAS's fixed
workspace (``CUBLAS_WORKSPACE_CONFIG``) and ``torch.use_deterministic_algorithms`` (warning, not failing, where an
operation has no deterministic version)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def use_deterministic_algorithms() -> None:
    """Ask PyTorch for deterministic algorithms from now on (``helper_utils.set_deterministic`` calls this)."""
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """:func:`use_deterministic_algorithms` inside the block only; the previous settings come back afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    use_deterministic_algorithms()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        if saved[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
