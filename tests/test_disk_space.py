"""A disk without room, a build that dies: the decoded cache stops before writing, and leaves nothing behind."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from celeba_vae import atomic_files, celeba_files, decoded_cache
from celeba_vae.atomic_files import atomic_path
from celeba_vae.celeba_files import find_celeba, read_index
from celeba_vae.decoded_cache import build_decoded_cache
from celeba_vae.paths import REPO_ROOT

GIB = 1 << 30


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def small_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """A disk (a small filesystem, a full laptop) with ``free`` bytes free, as ``shutil.disk_usage`` reports it."""

    def set_free(free: int) -> None:
        monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=2 * free, used=free, free=free))

    return set_free


def test_a_disk_without_room_stops_the_build_before_anything_is_written(
    celeba_copy: Path, tmp_path: Path, small_disk: Callable[[int], None]
) -> None:
    cache_dir = tmp_path / "cache"
    small_disk(int(0.1 * GIB))
    with pytest.raises(OSError) as caught:
        build_decoded_cache(celeba_copy, "train", cache_dir=cache_dir, num_workers=1, progress=False)
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC
    assert f"not enough disk space in {cache_dir} for the decoded cache train_128.npy" in message
    images = len(read_index(find_celeba(celeba_copy)).split("train")[0])
    needed = (images * 3 * 128 * 128 + decoded_cache.SPARE_BYTES) / GIB
    assert f"{needed:.2f} GiB needed, 0.10 GiB free" in message
    assert "CELEBA_VAE_CACHE" in message
    assert not cache_dir.exists()

    small_disk(GIB)
    assert build_decoded_cache(celeba_copy, "train", cache_dir=cache_dir, num_workers=1, progress=False).images.any()


def test_celeba_vae_cache_moves_the_cache_of_a_writable_data_folder(
    celeba_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The remedy the message names: the variable takes the cache off the data folder's (full) disk."""
    monkeypatch.setenv("CELEBA_VAE_CACHE", str(tmp_path / "elsewhere"))
    celeba_files._say_once.cache_clear()
    decoded = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    assert decoded.path.is_relative_to(tmp_path / "elsewhere")
    assert not (celeba_copy / "celeba" / "decoded_cache").exists()
    assert "$CELEBA_VAE_CACHE is set: what is made from" in capsys.readouterr().out


def test_a_disk_that_fills_up_during_the_build_leaves_no_file(
    celeba_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program fills the disk meanwhile: a plain write fails (no SIGBUS through a memory map)."""
    real = decoded_cache._RowWriter.write
    written: list[int] = []

    def disk_fills(self: decoded_cache._RowWriter, first_row: int, rows: np.ndarray) -> None:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(first_row)
        real(self, first_row, rows)

    monkeypatch.setattr(decoded_cache, "CHUNK", 8)
    monkeypatch.setattr(decoded_cache._RowWriter, "write", disk_fills)
    cache_dir = tmp_path / "cache"
    with pytest.raises(OSError, match=f"the disk holding {cache_dir} filled up .* nothing of it was kept"):
        build_decoded_cache(celeba_copy, "train", cache_dir=cache_dir, num_workers=2, progress=False)
    assert written and _files(cache_dir) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_mid_decode_leaves_no_temporary_file(celeba_copy: Path, tmp_path: Path, workers: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoded_cache, "CHUNK", 4)
    real, calls = decoded_cache.center_crop, []

    def fails_midway(img: Image.Image, crop_size: int = 128) -> np.ndarray:
        calls.append(1)
        if len(calls) == 12:
            raise RuntimeError("decoding failed midway")
        return real(img, crop_size)

    monkeypatch.setattr(decoded_cache, "center_crop", fails_midway)
    with pytest.raises(RuntimeError, match="decoding failed midway"):
        build_decoded_cache(celeba_copy, "train", cache_dir=tmp_path / "cache", num_workers=workers, progress=False)
    assert _files(tmp_path / "cache") == []


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unreadable_image_on_windows_raises_its_own_error(celeba_copy: Path, tmp_path: Path, workers: int,
                                                             windows_file_locks: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows removes no file that is memory-mapped: the error, not a PermissionError, reaches the learner."""
    monkeypatch.setattr(decoded_cache, "CHUNK", 4)
    victim = celeba_copy / "celeba" / "img_align_celeba" / read_index(find_celeba(celeba_copy)).split("train")[0][9]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=f"image .*{victim.name} is unreadable") as caught:
        build_decoded_cache(celeba_copy, "train", cache_dir=tmp_path / "cache", num_workers=workers, progress=False)
    assert not isinstance(caught.value, PermissionError)
    assert _files(tmp_path / "cache") == []


KILLED_BUILD = """
import os, signal, sys
from celeba_vae.atomic_files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(bytes(1 << 20))
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX; on Windows an open file cannot be removed anyway")
def test_the_next_build_removes_what_a_killed_build_left_but_not_a_live_ones(
    celeba_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(cache_dir / "valid_128.npy")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stale = Path(killed.stdout.strip())
    assert stale.parent == cache_dir and stale.name.startswith(".valid_128.npy.") and stale.is_file()

    with pytest.raises(KeyboardInterrupt), atomic_path(cache_dir / "valid_128.npy") as live:
        build_decoded_cache(celeba_copy, "valid", cache_dir=cache_dir, num_workers=1, progress=False)
        assert live.exists(), "a temporary file that a live build is writing was removed"
        raise KeyboardInterrupt
    assert not stale.exists()
    assert f"Removed 1 temporary file(s) of an interrupted write of {cache_dir / 'valid_128.npy'}" in (
        capsys.readouterr().out)
    assert _files(cache_dir) == ["valid_128.json", "valid_128.npy"]


def test_the_free_space_check_looks_where_the_folder_will_be(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: asked.append(str(path)) or real(path))
    atomic_files.check_free_space(tmp_path / "not" / "yet", 1, "a test", "")
    assert asked == [str(tmp_path)]
    with pytest.raises(OSError, match=r"not enough disk space in .*yet for a test: .* GiB needed, .* GiB free\. Go"):
        atomic_files.check_free_space(tmp_path / "not" / "yet", real(tmp_path).free + GIB, "a test", "Go elsewhere.")
    assert list(tmp_path.iterdir()) == []
