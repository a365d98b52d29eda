"""Shared fixtures: small CelebA-shaped folders written by the tests themselves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from celeba_vae.synthetic import write_synthetic_celeba

torch.set_num_threads(2)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def celeba_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention synthetic CelebA (torchvision layout) of 60 images: copy before changing it."""
    return write_synthetic_celeba(tmp_path_factory.mktemp("celeba") / "data", num_images=60, seed=7)


@pytest.fixture
def celeba_copy(celeba_root: Path, tmp_path: Path) -> Path:
    """A private copy of ``celeba_root`` that a test may damage."""
    return Path(shutil.copytree(celeba_root, tmp_path / "data"))
