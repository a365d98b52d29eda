"""The decoded cache: each split decoded once into a uint8 ``.npy`` memory map, and batches drawn from it.

:func:`build_decoded_cache` decodes a split's images (or a reproducible subset of them) through
:meth:`celeba_files.CelebASource.iter_images` into ``{split}_{crop}.npy``, on threads and atomically;
:class:`CachedLoader` batches it with no per-image Python work, from GPU memory when the split fits there
(see :mod:`gpu_budget`) and otherwise from pinned host memory, one batch ahead.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import errno
import functools
import hashlib
import json
import os
import platform
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from tqdm.auto import tqdm

from celeba_vae import gpu_budget
from celeba_vae.atomic_files import atomic_path, atomic_write, check_free_space, remove_stale_temporaries
from celeba_vae.celeba_files import (
    CROP_SIZE,
    CelebAIndex,
    CelebASource,
    center_crop,
    derived_folder,
    find_celeba,
    read_index,
)
from celeba_vae.paths import CACHE_ENV

CACHE_VERSION = 1
CHUNK = 256
UPLOAD_CHUNK_BYTES = 64 << 20
SPARE_BYTES = 256 << 20  # left free after a cache is built, for the run's checkpoints and figures
ELSEWHERE = (f"Free some space, or put the cache on a disk with room: set the environment variable {CACHE_ENV} to a "
             "folder there before the loaders are built (os.environ in a notebook), or move the data folder there.")


@dataclass
class DecodedSplit:
    """A split decoded once: ``images`` is a uint8 (N, 3, crop, crop) memory map; ``key`` its fingerprint."""

    images: np.ndarray
    attributes: np.ndarray | None
    filenames: list[str]
    path: Path
    key: str = ""

    def __len__(self) -> int:
        return len(self.filenames)


def subset_rows(split_size: int, max_images: int | None, seed: int, split: str = "split") -> np.ndarray | None:
    """Sorted rows of ``max_images`` images drawn from a split of ``split_size`` with ``default_rng(seed)``.

    ``None`` (use the whole split) when ``max_images`` is ``None`` or at least the split's size (said in one line).
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"{max_images} images were asked of the {split} split; ask for at least 1 (or None for all)")
    if max_images is None or max_images >= split_size:
        if max_images is not None and max_images > split_size:
            print(f"The {split} split holds {split_size:,} images, fewer than the {max_images:,} asked for: "
                  "using all of them.")
        return None
    return np.sort(np.random.default_rng(seed).choice(split_size, size=max_images, replace=False))


def _fingerprint(index: CelebAIndex, split: str, filenames: list[str], crop_size: int) -> str:
    digest = hashlib.sha256(f"{CACHE_VERSION}|{index.source.layout}|{split}|{crop_size}|{len(filenames)}".encode())
    for stamp in index.source.stamps(filenames):
        digest.update(f"|{stamp}".encode())
    return digest.hexdigest()


def _sample_checksum(images: np.ndarray) -> str:
    picks = np.unique(np.linspace(0, len(images) - 1, num=min(len(images), 32)).astype(int))
    return hashlib.sha256(np.ascontiguousarray(images[picks]).tobytes()).hexdigest()


def _open_valid_cache(data_path: Path, meta_path: Path, key: str, shape: tuple[int, ...]) -> DecodedSplit | None:
    """The cache ``meta_path`` describes (its images in ``data_path`` or the file its ``data_file`` names), if valid."""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or tuple(meta.get("shape", ())) != shape:
            return None
        data_path = data_path.with_name(meta.get("data_file", data_path.name))
        images = np.load(data_path, mmap_mode="r")
        if images.shape != shape or images.dtype != np.uint8 or meta.get("checksum") != _sample_checksum(images):
            return None
        return DecodedSplit(images, None, [], data_path, key)
    except (OSError, ValueError, json.JSONDecodeError):
        return None


def _free_data_path(data_path: Path, key: str) -> Path:
    """Where the new cache goes: ``data_path`` once the stale file there is removed or, when another loader or
    kernel still has that file memory-mapped (Windows refuses to remove or replace it), a name of its own."""
    try:
        data_path.unlink(missing_ok=True)
        return data_path
    except PermissionError:
        other = data_path.with_name(f"{data_path.stem}.{key[:12]}.npy")
    print(f"{data_path} is still in use (memory-mapped by another loader or notebook), so the rebuilt cache is "
          f"written to {other.name}; the old file is removed by a later build once nothing holds it.")
    try:
        other.unlink(missing_ok=True)
    except PermissionError as err:
        raise OSError(f"cannot rebuild the decoded cache: {data_path} and {other} are both in use by other loaders or "
                      "notebooks; close them (or restart their kernels) and run again") from err
    return other


def _check_room(data_path: Path, shape: tuple[int, ...]) -> None:
    """Remove what killed builds of ``data_path`` left, then stop (``OSError``) before anything is written when its
    disk has no room for the cache. An old cache there does not count as room: a loader may still map it, and then
    its blocks stay in use until that loader is gone."""
    remove_stale_temporaries(data_path)
    check_free_space(data_path.parent, int(np.prod(shape)) + SPARE_BYTES,
                     f"the decoded cache {data_path.name} (and {SPARE_BYTES >> 20} MiB to spare)", ELSEWHERE)


def _remove_leftovers(data_path: Path, stem: str) -> None:
    """Remove the earlier caches of ``stem`` (``{stem}.npy``, ``{stem}.*.npy``) other than ``data_path``, where
    nothing holds them any more."""
    for old in (data_path.with_name(f"{stem}.npy"), *data_path.parent.glob(f"{stem}.*.npy")):
        if old != data_path:
            with contextlib.suppress(OSError):
                old.unlink(missing_ok=True)


class _RowWriter:
    """Writes decoded rows into the open ``.npy`` file ``file`` (header already written) from any thread.

    Plain file writes, not a memory map: a full disk is then an ``OSError`` here rather than a SIGBUS that kills the
    kernel, and on an error nothing maps the temporary file, so Windows lets it be removed.
    """

    def __init__(self, file: IO[bytes], row_bytes: int) -> None:
        self.file, self.row_bytes, self.start = file, row_bytes, file.tell()
        self.lock = threading.Lock()

    def write(self, first_row: int, rows: np.ndarray) -> None:
        with self.lock:
            self.file.seek(self.start + first_row * self.row_bytes)
            self.file.write(memoryview(np.ascontiguousarray(rows)).cast("B"))


def _decode_chunk(writer: _RowWriter, source: CelebASource, names: list[str], start: int, crop_size: int) -> int:
    rows = np.empty((len(names), 3, crop_size, crop_size), dtype=np.uint8)
    for offset, img in enumerate(source.iter_images(names, crop_size)):
        rows[offset] = center_crop(img, crop_size)
    writer.write(start, rows)
    return len(names)


def _chunks(source: CelebASource, filenames: list[str], size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of ``filenames`` of about ``size`` images each.

    Where the source reads images by row groups (the Hub's parquet shards) a chunk holds whole row groups (a group
    longer than ``size`` is a chunk of its own), so each group is read by one thread, once.
    """
    n = len(filenames)
    groups = source.row_groups(filenames)
    if groups is None:
        return [(s, min(s + size, n)) for s in range(0, n, size)]
    chunks, begin, last = [], 0, 0
    for end in [*(np.flatnonzero(groups[1:] != groups[:-1]) + 1).tolist(), n]:
        if end - begin > size and last > begin:
            chunks.append((begin, last))
            begin = last
        last = end
    return [*chunks, (begin, n)]


def _decode_all(writer: _RowWriter, source: CelebASource, filenames: list[str], crop_size: int, workers: int,
                bar: tqdm) -> None:
    """Decode ``filenames`` through ``writer`` in chunks, on ``workers`` threads (Pillow decodes without the GIL).

    Threads start no process, so a learner's script needs no ``if __name__ == "__main__":`` guard; on an error
    or an interrupt the chunks not yet started are cancelled and the running ones finish before this returns.
    """
    chunks = _chunks(source, filenames, max(1, min(CHUNK, -(-len(filenames) // max(workers, 1)))))
    if workers <= 1 or len(chunks) == 1:
        for a, b in chunks:
            bar.update(_decode_chunk(writer, source, filenames[a:b], a, crop_size))
        return
    pool = ThreadPoolExecutor(min(workers, len(chunks)), thread_name_prefix="decode")
    try:
        jobs = [pool.submit(_decode_chunk, writer, source, filenames[a:b], a, crop_size) for a, b in chunks]
        for job in as_completed(jobs):
            bar.update(job.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def build_decoded_cache(
    root: str | Path = "data",
    split: str = "train",
    crop_size: int = CROP_SIZE,
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
    index: CelebAIndex | None = None,
    progress: bool = True,
    *,
    max_images: int | None = None,
    seed: int = 123,
) -> DecodedSplit:
    """Decode ``split`` once into ``cache_dir/{split}_{crop}.npy`` (reused while source and crop are unchanged).

    ``cache_dir=None`` means ``decoded_cache/`` beside the images, or in the writable cache when their folder is
    read-only (:func:`celeba_files.derived_folder`). ``max_images=N`` decodes only N images of the split, chosen
    by :func:`subset_rows` from ``seed``, into
    ``{split}_{crop}_n{N}_seed{seed}.npy``. The images are decoded on ``num_workers`` threads (default: one per
    CPU, at most 16; no process is started, so a script needs no ``if __name__ == "__main__":`` guard), written to
    a temporary file and renamed into place; a stale, truncated or corrupted cache is detected (fingerprint of
    names, sizes and mtimes; shape; sampled checksum) and rebuilt, beside the old file while another loader still
    has that one memory-mapped (Windows cannot replace it then). Before a build the temporary files of killed
    builds are removed and, when the disk lacks room for the cache, an ``OSError`` says so before anything is
    written; an error or interrupt during the build leaves no file behind.
    """
    index = index if index is not None else read_index(find_celeba(root))
    filenames, attributes = index.split(split)
    if not filenames:
        raise ValueError(f"split {split!r} of {index.source.image_dir} holds no images")
    rows = subset_rows(len(filenames), max_images, seed, split)
    name = f"{split}_{crop_size}"
    if rows is not None:
        filenames = [filenames[i] for i in rows]
        attributes = None if attributes is None else attributes[rows]
        name += f"_n{len(rows)}_seed{seed}"
    if cache_dir is None:
        cache_dir = derived_folder(index.source.image_dir.parent) / "decoded_cache"
    cache_dir = Path(cache_dir)
    data_path, meta_path = cache_dir / f"{name}.npy", cache_dir / f"{name}.json"
    shape = (len(filenames), 3, crop_size, crop_size)
    key = _fingerprint(index, split, filenames, crop_size)
    cached = _open_valid_cache(data_path, meta_path, key, shape)
    if cached is None:
        cached = _write_cache(index, filenames, crop_size, data_path, meta_path, key, shape, num_workers, progress)
    return DecodedSplit(cached.images, attributes, filenames, cached.path, key)


def _write_cache(
    index: CelebAIndex, filenames: list[str], crop_size: int, data_path: Path, meta_path: Path, key: str,
    shape: tuple[int, ...], num_workers: int | None, progress: bool,
) -> DecodedSplit:
    stem = data_path.stem
    remove_stale_temporaries(meta_path)
    _check_room(data_path, shape)
    try:
        data_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
    except OSError as err:
        raise OSError(f"cannot write the decoded cache in {data_path.parent} ({err.strerror or err}); "
                      "pass a writable cache_dir") from err
    data_path = _free_data_path(data_path, key)
    workers = num_workers if num_workers is not None else min(os.cpu_count() or 1, 16)
    try:
        with atomic_path(data_path) as tmp, open(tmp, "wb") as file:
            np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False, "shape": shape})
            with tqdm(total=len(filenames), desc=f"decoding {stem}", unit="img", disable=not progress) as bar:
                _decode_all(_RowWriter(file, int(np.prod(shape[1:]))), index.source, filenames, crop_size, workers,
                            bar)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise OSError(errno.ENOSPC, f"the disk holding {data_path.parent} filled up while the decoded cache was "
                                    f"written; nothing of it was kept. {ELSEWHERE}") from err
    images = np.load(data_path, mmap_mode="r")
    meta = {"key": key, "shape": list(shape), "checksum": _sample_checksum(images), "data_file": data_path.name,
            "source": str(index.source.image_dir)}
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))
    _remove_leftovers(data_path, stem)
    return DecodedSplit(images, None, [], data_path, key)


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


_DEVICE_COPIES: weakref.WeakValueDictionary[tuple[str, str, str], torch.Tensor] = weakref.WeakValueDictionary()


def _upload(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy ``images`` to ``device`` in chunks through one small reusable host buffer (pinned on CUDA)."""
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    rows = min(len(images), max(1, UPLOAD_CHUNK_BYTES // images[0].nbytes))
    staging = torch.empty((rows, *images.shape[1:]), dtype=torch.uint8, pin_memory=device.type == "cuda")
    for start in range(0, len(images), rows):
        n = min(rows, len(images) - start)
        np.copyto(staging.numpy()[:n], images[start:start + n])
        out[start:start + n].copy_(staging[:n])
    return out


def _copy_key(split: DecodedSplit, device: torch.device) -> tuple[str, str, str]:
    return str(split.path.resolve()), split.key, str(device)


def device_copy(split: DecodedSplit, device: str | torch.device) -> torch.Tensor:
    """``split``'s images on ``device``, uploaded once: while any loader still holds that copy it is shared.

    Re-running a notebook's loader cell therefore never holds a second copy of a split in GPU memory.
    """
    key = _copy_key(split, torch.device(device))
    images = _DEVICE_COPIES.get(key)
    if images is None:
        images = _upload(split.images, torch.device(device))
        _DEVICE_COPIES[key] = images
    return images


class CachedLoader:
    """Batches ``(images, attributes)`` from a :class:`DecodedSplit` with no per-image Python work.

    On CUDA the split goes to GPU memory once if it fits (:func:`gpu_budget.plan_placement`, printed in one
    line; ``data_on_gpu`` = "auto", True or False); batches are then gathered and converted there. Otherwise each
    batch and its labels are gathered from the memory map into (pinned, on CUDA) host buffers and copied one batch
    ahead on a side stream. Either way the order comes from :meth:`batch_rows`, so a seed gives the same images in
    the same places of the same batches wherever the split lives. Images come out as float32 in [0, 1], exactly as
    ``ToTensor()`` makes them; attributes as int64 on ``device``.
    """

    def __init__(
        self,
        split: DecodedSplit,
        batch_size: int,
        shuffle: bool = False,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        data_on_gpu: bool | str = "auto",
        precision: str = "auto",
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.placement = self._place(data_on_gpu, precision)
        print(self.placement.message)
        attrs = split.attributes if split.attributes is not None else np.zeros((len(split), 0), np.uint8)
        self.attributes = torch.from_numpy(np.ascontiguousarray(attrs, dtype=np.uint8))
        self.images: torch.Tensor | np.ndarray = split.images
        if self.on_gpu:
            self.images = device_copy(split, self.device)
            self.attributes = self.attributes.to(self.device)
        else:
            _reuse_freed_batch_memory()

    def _place(self, data_on_gpu: bool | str, precision: str) -> gpu_budget.Placement:
        name = self.split.path.stem
        wants_gpu = data_on_gpu is True or data_on_gpu == "auto"
        shared = _DEVICE_COPIES.get(_copy_key(self.split, self.device)) if self.device.type == "cuda" else None
        if wants_gpu and shared is not None:
            return gpu_budget.Placement(True, f"{name} split: on the GPU, sharing the copy already on {self.device} "
                                              "(no second upload)")
        free = gpu_budget.free_gpu_bytes(self.device) if self.device.type == "cuda" else None
        return gpu_budget.plan_placement(self.split.images.nbytes, free, self.batch_size, precision, data_on_gpu,
                                         split=name, device_type=self.device.type)

    @property
    def on_gpu(self) -> bool:
        return self.placement.on_gpu

    @property
    def dataset(self) -> DecodedSplit:
        return self.split

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def for_evaluation(self) -> CachedLoader:
        """This loader with larger batches where the split is on the GPU, as many images as
        :func:`gpu_budget.evaluation_batch_size` allows (at most 1024): evaluation keeps no activations for a
        backward pass, and in eval mode an image's losses do not depend on its batch. Nothing is copied."""
        if not self.on_gpu:
            return self
        free = gpu_budget.free_gpu_bytes(self.device) if self.device.type == "cuda" else None
        size = gpu_budget.evaluation_batch_size(free, self.batch_size)
        if size == self.batch_size:
            return self
        larger = copy.copy(self)
        larger.batch_size = size
        return larger

    def batch_rows(self) -> torch.Tensor:
        """The rows of one epoch, batch after batch: shuffled (when ``shuffle``) by PyTorch's CPU generator, each
        batch's rows in increasing order (the memory map is then read forward).

        Both placements take their batches from this one order, so one seed pairs the same image with the same
        noise and dropout wherever the split lives.
        """
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        return torch.cat([batch.sort().values for batch in torch.randperm(n).split(self.batch_size)])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.batch_rows()
        if self.on_gpu:
            if self.device.type == "cuda":  # the epoch's order in one copy that the host does not wait for
                order = order.pin_memory().to(self.device, non_blocking=True)
            for b in range(len(self)):
                idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield self.images[idx].float().div_(255), self.attributes[idx].long()
        else:
            yield from self._host_batches(order.numpy())

    def _host_batches(self, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches gathered into two alternating host buffers, each copied while the one before is in use."""
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        rows = min(self.batch_size, len(self.split))
        buffers = [torch.empty((rows, *self.split.images.shape[1:]), dtype=torch.uint8, pin_memory=cuda)
                   for _ in range(2)]
        label_buffers = [torch.empty((rows, self.attributes.shape[1]), dtype=torch.uint8, pin_memory=cuda)
                         for _ in range(2)]
        copied: list[torch.cuda.Event | None] = [None, None]

        def stage(b: int) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            slot = b % 2
            if copied[slot] is not None:
                copied[slot].synchronize()
            host = buffers[slot][:len(idx)]
            np.take(self.split.images, idx, axis=0, out=host.numpy(), mode="clip")
            labels = label_buffers[slot][:len(idx)]
            torch.index_select(self.attributes, 0, torch.from_numpy(idx), out=labels)
            if stream is None:
                return host.to(self.device), labels.to(self.device), None
            with torch.cuda.stream(stream):
                images, labels = host.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                copied[slot] = torch.cuda.Event()
                copied[slot].record(stream)
            return images, labels, copied[slot]

        pending = stage(0) if len(self) else None
        for b in range(len(self)):
            images, labels, event = pending
            if b + 1 < len(self):
                pending = stage(b + 1)
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                images.record_stream(current)
                labels.record_stream(current)
            yield images.float().div_(255), labels.long()
