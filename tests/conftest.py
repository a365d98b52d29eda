"""Shared fixtures: small CelebA-shaped folders written by the tests themselves, and the stand-in for Windows'
locked memory-mapped files."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from celeba_vae.synthetic import write_synthetic_celeba

torch.set_num_threads(2)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def no_figure_folder() -> None:
    """Each test starts and ends without the figures folder a notebook's ``start_notebook`` sets."""
    yield
    if "helper_plotting" in sys.modules:
        sys.modules["helper_plotting"].save_figures_to(None)


@pytest.fixture(scope="session")
def celeba_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention synthetic CelebA (torchvision layout) of 60 images: copy before changing it."""
    return write_synthetic_celeba(tmp_path_factory.mktemp("celeba") / "data", num_images=60, seed=7)


@pytest.fixture
def celeba_copy(celeba_root: Path, tmp_path: Path) -> Path:
    """A private copy of ``celeba_root`` that a test may damage."""
    return Path(shutil.copytree(celeba_root, tmp_path / "data"))


def _mapped_files() -> set[str]:
    """The files this process has memory-mapped, from ``/proc/self/maps``."""
    with open("/proc/self/maps") as maps:
        return {fields[5].strip() for fields in (line.split(maxsplit=5) for line in maps) if len(fields) == 6}


@pytest.fixture
def windows_file_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows' rule on Linux: a file that is memory-mapped cannot be removed, renamed or replaced."""
    if not Path("/proc/self/maps").is_file():
        pytest.skip("the stand-in reads /proc/self/maps (Linux)")
    lock_mapped_files(monkeypatch)


def lock_mapped_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``os.unlink``/``remove``/``replace``/``rename`` refuse a memory-mapped file, as Windows does."""
    real_unlink, real_replace, real_rename = os.unlink, os.replace, os.rename

    def refuse_if_mapped(path: str | os.PathLike, dir_fd: int | None) -> None:
        folder = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.getcwd()
        if os.path.realpath(os.path.join(folder, path)) in _mapped_files():
            raise PermissionError(13, "The process cannot access the file because it is being used by another "
                                      "process", str(path))

    def unlink(path: str | os.PathLike, *, dir_fd: int | None = None) -> None:
        refuse_if_mapped(path, dir_fd)
        real_unlink(path, dir_fd=dir_fd)

    def replace_with(real: Callable[..., None]) -> Callable[..., None]:
        def moved(src: str | os.PathLike, dst: str | os.PathLike, *, src_dir_fd: int | None = None,
                  dst_dir_fd: int | None = None) -> None:
            refuse_if_mapped(src, src_dir_fd)
            refuse_if_mapped(dst, dst_dir_fd)
            real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return moved

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "remove", unlink)
    monkeypatch.setattr(os, "replace", replace_with(real_replace))
    monkeypatch.setattr(os, "rename", replace_with(real_rename))
