"""The decoded cache: each split decoded once into a uint8 ``.npy`` memory map, and batches drawn from it.

:func:`build_decoded_cache` decodes a split's images (through :class:`celeba_files.CelebASource`) into
``{split}_{crop}.npy``, in parallel and atomically; :class:`CachedLoader` batches it with no per-image Python work.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from celeba_files import CROP_SIZE, CelebAIndex, CelebASource, center_crop, find_celeba, read_index

CACHE_VERSION = 1


@dataclass
class DecodedSplit:
    """A split decoded once: ``images`` is a uint8 (N, 3, crop, crop) memory map."""

    images: np.ndarray
    attributes: np.ndarray | None
    filenames: list[str]
    path: Path

    def __len__(self) -> int:
        return len(self.filenames)


def _fingerprint(index: CelebAIndex, split: str, filenames: list[str], crop_size: int) -> str:
    digest = hashlib.sha256(f"{CACHE_VERSION}|{index.source.layout}|{split}|{crop_size}".encode())
    for stamp in index.source.stamps(filenames):
        digest.update(f"|{stamp}".encode())
    return digest.hexdigest()


def _sample_checksum(images: np.ndarray) -> str:
    picks = np.unique(np.linspace(0, len(images) - 1, num=min(len(images), 32)).astype(int))
    return hashlib.sha256(np.ascontiguousarray(images[picks]).tobytes()).hexdigest()


def _open_valid_cache(data_path: Path, meta_path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or tuple(meta.get("shape", ())) != shape:
            return None
        images = np.load(data_path, mmap_mode="r")
        if images.shape != shape or images.dtype != np.uint8 or meta.get("checksum") != _sample_checksum(images):
            return None
        return images
    except (OSError, ValueError, json.JSONDecodeError):
        return None


def _decode_chunk(job: tuple[str, CelebASource, list[str], int, int]) -> int:
    tmp_path, source, names, start, crop_size = job
    out = np.load(tmp_path, mmap_mode="r+")
    for offset, img in enumerate(source.iter_images(names, crop_size)):
        out[start + offset] = center_crop(img, crop_size)
    out.flush()
    return len(names)


def build_decoded_cache(
    root: str | Path = "data",
    split: str = "train",
    crop_size: int = CROP_SIZE,
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
    index: CelebAIndex | None = None,
    progress: bool = True,
) -> DecodedSplit:
    """Decode ``split`` once into ``cache_dir/{split}_{crop}.npy`` (reused while source and crop are unchanged).

    The cache is built in parallel, written to a temporary file and renamed into place; a stale, truncated
    or corrupted cache is detected (fingerprint of names, sizes and mtimes; shape; sampled checksum) and rebuilt.
    """
    index = index if index is not None else read_index(find_celeba(root))
    filenames, attributes = index.split(split)
    if not filenames:
        raise ValueError(f"split {split!r} of {index.source.image_dir} holds no images")
    cache_dir = Path(cache_dir) if cache_dir is not None else index.source.image_dir.parent / "decoded_cache"
    data_path, meta_path = cache_dir / f"{split}_{crop_size}.npy", cache_dir / f"{split}_{crop_size}.json"
    shape = (len(filenames), 3, crop_size, crop_size)
    key = _fingerprint(index, split, filenames, crop_size)
    images = _open_valid_cache(data_path, meta_path, key, shape)
    if images is None:
        images = _write_cache(index, filenames, crop_size, data_path, meta_path, key, shape, num_workers, progress)
    return DecodedSplit(images, attributes, filenames, data_path)


def _write_cache(
    index: CelebAIndex, filenames: list[str], crop_size: int, data_path: Path, meta_path: Path, key: str,
    shape: tuple[int, ...], num_workers: int | None, progress: bool,
) -> np.ndarray:
    try:
        data_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{data_path.name}.", suffix=".tmp", dir=data_path.parent)
        os.close(fd)
    except OSError as err:
        raise OSError(f"cannot write the decoded cache in {data_path.parent} ({err.strerror or err}); "
                      "pass a writable cache_dir") from err
    try:
        np.lib.format.open_memmap(tmp_name, mode="w+", dtype=np.uint8, shape=shape).flush()
        workers = num_workers if num_workers is not None else min(os.cpu_count() or 1, 16)
        chunk = 256
        jobs = [(tmp_name, index.source, filenames[s:s + chunk], s, crop_size)
                for s in range(0, len(filenames), chunk)]
        bar = tqdm(total=len(filenames), desc=f"decoding {data_path.stem}", unit="img", disable=not progress)
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                bar.update(_decode_chunk(job))
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for done in pool.imap_unordered(_decode_chunk, jobs):
                    bar.update(done)
        bar.close()
        with open(tmp_name, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_name, data_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    images = np.load(data_path, mmap_mode="r")
    meta = {"key": key, "shape": list(shape), "checksum": _sample_checksum(images),
            "source": str(index.source.image_dir)}
    tmp_meta = meta_path.with_suffix(".json.tmp")
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)
    return images


@functools.cache
def _reuse_freed_batch_memory() -> None:
    """Let glibc keep freed batch-sized blocks for reuse instead of handing them back to the kernel.

    A float batch of 256 images is 48 MiB, above glibc's mmap threshold, so each new batch would otherwise be
    fresh pages the kernel must zero: that zeroing was most of the CPU data path's time (14k vs 31k images/s).
    """
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 30)


class CachedLoader:
    """Batches ``(images, attributes)`` from a :class:`DecodedSplit` with no per-image Python work.

    On CUDA the whole split is copied to GPU memory once; batches are then shuffled, gathered and converted
    to float on the GPU. Elsewhere each batch is one fancy-indexed slice of the memory map. Images come out
    as float32 in [0, 1], exactly as ``ToTensor()`` would make them.
    """

    def __init__(
        self,
        split: DecodedSplit,
        batch_size: int,
        shuffle: bool = False,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.on_device = self.device.type == "cuda"
        attrs = split.attributes if split.attributes is not None else np.zeros((len(split.filenames), 0), np.uint8)
        self.attributes = torch.from_numpy(attrs.astype(np.int64))
        self.images: torch.Tensor | np.ndarray = split.images
        if self.on_device:
            self.images = torch.empty(split.images.shape, dtype=torch.uint8, device=self.device)
            for start in range(0, len(split), 8192):
                chunk = np.ascontiguousarray(split.images[start:start + 8192])
                self.images[start:start + len(chunk)] = torch.from_numpy(chunk).to(self.device)
            self.attributes = self.attributes.to(self.device)
        else:
            _reuse_freed_batch_memory()

    @property
    def dataset(self) -> DecodedSplit:
        return self.split

    def __len__(self) -> int:
        n = len(self.split.filenames)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split.filenames)
        order_device = self.device if self.on_device else torch.device("cpu")
        order = torch.randperm(n, device=order_device) if self.shuffle else torch.arange(n, device=order_device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.on_device:
                batch = self.images[idx]
            else:
                idx = idx.sort().values
                batch = torch.from_numpy(self.images[idx.numpy()]).to(self.device)
            yield batch.float().div_(255), self.attributes[idx.to(self.attributes.device)]
