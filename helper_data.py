"""CelebA data layer: find CelebA in any common layout, decode it, cache it, and batch it.

Decoding (JPEG -> cropped uint8) is kept apart from batching: :class:`CelebAFaces` decodes one image per
``__getitem__`` (the lecture's DataLoader path), while :func:`build_decoded_cache` decodes every image once
into a memory-mappable ``.npy`` file that :class:`CachedLoader` batches without any JPEG work.
"""

from __future__ import annotations

import ctypes
import difflib
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm.auto import tqdm

CELEBA_ATTRIBUTE_NAMES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
OFFICIAL_SPLIT_SIZES = {"train": 162_770, "valid": 19_867, "test": 19_962}
CROP_SIZE = 128
CACHE_VERSION = 1

EXPECTED_LAYOUTS = """CelebA was not found under {root}. Expected one of:
  1. {root}/celeba/img_align_celeba/*.jpg + {root}/celeba/list_attr_celeba.txt + list_eval_partition.txt
     (torchvision's layout)
  2. {root}/img_align_celeba/*.jpg + {root}/list_attr_celeba.txt + list_eval_partition.txt
  3. {root}/img_align_celeba/img_align_celeba/*.jpg + {root}/list_attr_celeba.csv + list_eval_partition.csv
     (the Kaggle copy)
  4. {root}/celeba/img_align_celeba.zip or {root}/img_align_celeba.zip (extracted once, automatically)
  5. a folder of CelebA-named JPEGs (000001.jpg ... 202599.jpg) with no annotations
Download CelebA from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html or Kaggle (jessicali9530/celeba-dataset)
and point `root` at it, or use the synthetic faces (dataset='synthetic')."""


def attribute_index(name: str) -> int:
    """Index of a CelebA attribute in the official order, e.g. ``attribute_index("Smiling") == 31``."""
    try:
        return CELEBA_ATTRIBUTE_NAMES.index(name)
    except ValueError:
        close = difflib.get_close_matches(name, CELEBA_ATTRIBUTE_NAMES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown CelebA attribute {name!r}.{hint} Valid names: helper_data.CELEBA_ATTRIBUTE_NAMES"
        ) from None


# --------------------------------------------------------------------------- finding CelebA


@dataclass(frozen=True)
class CelebASource:
    """Where one copy of CelebA lives: its images folder and (optional) annotation files."""

    layout: str
    image_dir: Path
    attr_file: Path | None = None
    partition_file: Path | None = None

    @property
    def has_attributes(self) -> bool:
        return self.attr_file is not None


def _has_jpegs(folder: Path) -> bool:
    return folder.is_dir() and any(e.name.endswith(".jpg") for e in os.scandir(folder))


def _annotated(folder: Path, image_dir: Path, layout: str, ext: str) -> CelebASource | None:
    attr, part = folder / f"list_attr_celeba.{ext}", folder / f"list_eval_partition.{ext}"
    if not (image_dir.is_dir() and attr.is_file() and part.is_file()):
        return None
    return CelebASource(layout, image_dir, attr, part)


def _extract_zip(archive: Path) -> None:
    """Extract ``archive`` beside itself, atomically: a killed extraction leaves no half folder behind."""
    target = archive.parent / "img_align_celeba"
    tmp = Path(tempfile.mkdtemp(prefix=".extracting-", dir=archive.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise ValueError(
                f"{archive} is not a valid zip file ({err}); it is often a Google Drive quota page saved under "
                "that name. Delete it and download img_align_celeba.zip again (see the README)."
            ) from err
        inner = tmp / "img_align_celeba"
        os.replace(inner if inner.is_dir() else tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_celeba(root: str | Path = "data") -> CelebASource:
    """Detect which CelebA layout ``root`` holds (extracting ``img_align_celeba.zip`` once if needed)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist; create it and put CelebA there (see README)")
    for folder in (root / "celeba", root):
        archive = folder / "img_align_celeba.zip"
        if archive.is_file() and not (folder / "img_align_celeba").exists():
            _extract_zip(archive)
    candidates = [
        _annotated(root / "celeba", root / "celeba" / "img_align_celeba", "torchvision", "txt"),
        _annotated(root, root / "img_align_celeba", "flat", "txt"),
        _annotated(root, root / "img_align_celeba" / "img_align_celeba", "kaggle", "csv"),
    ]
    for source in candidates:
        if source is not None:
            if not _has_jpegs(source.image_dir):
                raise FileNotFoundError(
                    f"images folder {source.image_dir} is empty; extract img_align_celeba.zip there (see README)"
                )
            return source
    for folder in (root / "celeba" / "img_align_celeba", root / "img_align_celeba" / "img_align_celeba",
                   root / "img_align_celeba", root):
        if _has_jpegs(folder):
            return CelebASource("bare", folder)
    for folder in (root / "celeba" / "img_align_celeba", root / "img_align_celeba"):
        if folder.is_dir():
            raise FileNotFoundError(f"images folder {folder} is empty; extract img_align_celeba.zip there (see README)")
    raise FileNotFoundError(EXPECTED_LAYOUTS.format(root=root))


# --------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class CelebAIndex:
    """The images of one CelebA copy: file names, split of each (0 train, 1 valid, 2 test), attributes."""

    source: CelebASource
    filenames: list[str]
    partition: np.ndarray
    attributes: np.ndarray | None

    def split(self, split: str) -> tuple[list[str], np.ndarray | None]:
        """File names and attributes (or ``None``) of ``split`` (train, valid, test or all)."""
        if split == "all":
            return self.filenames, self.attributes
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {SPLITS + ('all',)}")
        rows = np.flatnonzero(self.partition == SPLITS.index(split))
        return [self.filenames[i] for i in rows], None if self.attributes is None else self.attributes[rows]


def _rows(path: Path, csv: bool) -> Iterator[tuple[int, list[str]]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line.strip().split(",") if csv else line.split()


def _malformed(path: Path, number: int, what: str) -> ValueError:
    return ValueError(f"{path}, line {number}: {what}; fix or re-download this annotation file")


def _read_attributes(path: Path) -> dict[str, np.ndarray]:
    csv = path.suffix == ".csv"
    rows = _rows(path, csv)
    if not csv:
        number, first = next(rows, (1, []))
        if len(first) != 1 or not first[0].isdigit():
            raise _malformed(path, number, f"expected the image count, got {' '.join(first)!r}")
    number, header = next(rows, (1, []))
    names = header[1:] if csv else header
    if tuple(names) != CELEBA_ATTRIBUTE_NAMES:
        raise _malformed(path, number, "expected the 40 CelebA attribute names in the official order")
    table: dict[str, np.ndarray] = {}
    for number, fields in rows:
        if len(fields) != 41 or any(v not in ("1", "-1") for v in fields[1:]):
            raise _malformed(path, number, f"expected an image name and 40 values of 1 or -1, got {len(fields)} fields")
        table[fields[0]] = (np.array(fields[1:], dtype=np.int8) > 0).astype(np.uint8)
    return table


def _read_partition(path: Path) -> dict[str, int]:
    csv = path.suffix == ".csv"
    rows = _rows(path, csv)
    partition: dict[str, int] = {}
    for number, fields in rows:
        if csv and number == 1 and fields[:1] == ["image_id"]:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise _malformed(path, number, "expected an image name and a split number 0, 1 or 2")
        partition[fields[0]] = int(fields[1])
    return partition


def split_of_file_number(number: int) -> int:
    """Official split of CelebA image ``number``: 1-162770 train, 162771-182637 valid, 182638-202599 test."""
    if number <= OFFICIAL_SPLIT_SIZES["train"]:
        return 0
    return 1 if number <= OFFICIAL_SPLIT_SIZES["train"] + OFFICIAL_SPLIT_SIZES["valid"] else 2


def read_index(source: CelebASource) -> CelebAIndex:
    """Read (and check) the annotations of ``source``: every listed image must exist."""
    on_disk = {e.name for e in os.scandir(source.image_dir) if e.name.endswith(".jpg")}
    if not on_disk:
        raise FileNotFoundError(f"images folder {source.image_dir} is empty; extract img_align_celeba.zip there")
    if source.partition_file is None:
        names = sorted(n for n in on_disk if n[:-4].isdigit())
        if not names:
            raise FileNotFoundError(f"{source.image_dir} holds no CelebA-named JPEGs (000001.jpg ...)")
        partition = np.array([split_of_file_number(int(n[:-4])) for n in names], dtype=np.int8)
        return CelebAIndex(source, names, partition, None)
    split_of = _read_partition(source.partition_file)
    names = sorted(split_of)
    missing = [n for n in names if n not in on_disk]
    if missing:
        raise FileNotFoundError(
            f"{source.partition_file} names {len(missing)} image(s) missing from {source.image_dir}, "
            f"e.g. {missing[0]}; re-extract the images or fix the partition file"
        )
    assert source.attr_file is not None
    table = _read_attributes(source.attr_file)
    unlisted = [n for n in names if n not in table]
    if unlisted:
        raise ValueError(f"{source.attr_file} has no attributes for {unlisted[0]} ({len(unlisted)} images); "
                         "use the attribute file that belongs to these images")
    attributes = np.stack([table[n] for n in names])
    partition = np.array([split_of[n] for n in names], dtype=np.int8)
    return CelebAIndex(source, names, partition, attributes)


# --------------------------------------------------------------------------- decoding


def load_rgb(path: str | Path) -> Image.Image:
    """Open a JPEG as RGB (grayscale and CMYK are converted); unreadable or truncated files name themselves."""
    try:
        with Image.open(path) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"image {path} is unreadable or truncated ({err}); re-extract or re-download it") from err


def _check_size(img: Image.Image, path: Path, crop_size: int) -> None:
    if img.width < crop_size or img.height < crop_size:
        raise ValueError(
            f"image {path} is {img.width}x{img.height}, smaller than the {crop_size}x{crop_size} crop; "
            "CelebA's aligned images are 178x218: replace the file or use a smaller crop_size"
        )


def decode_cropped(path: str | Path, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Decode ``path`` and center-crop it as ``CenterCrop`` does: uint8 array (3, crop, crop)."""
    img = load_rgb(path)
    _check_size(img, Path(path), crop_size)
    top = round((img.height - crop_size) / 2.0)
    left = round((img.width - crop_size) / 2.0)
    return np.asarray(img)[top:top + crop_size, left:left + crop_size].transpose(2, 0, 1)


def default_transform(crop_size: int = CROP_SIZE) -> transforms.Compose:
    """The lecture's transform: ``CenterCrop((crop, crop))`` then ``ToTensor()`` (pixels in [0, 1])."""
    return transforms.Compose([transforms.CenterCrop((crop_size, crop_size)), transforms.ToTensor()])


class CelebAFaces(Dataset):
    """CelebA as ``(image, attributes)`` pairs, in whatever layout ``root`` holds it.

    ``image`` is the transformed RGB JPEG (by default a float32 3x128x128 tensor in [0, 1]); ``attributes``
    is an int64 tensor of the 40 attributes (0/1, official order), or an empty tensor when the copy has no
    annotations (``has_attributes`` is then ``False``).
    """

    def __init__(
        self,
        root: str | Path = "data",
        split: str = "train",
        transform: transforms.Compose | None = None,
        crop_size: int = CROP_SIZE,
        index: CelebAIndex | None = None,
    ) -> None:
        self.index = index if index is not None else read_index(find_celeba(root))
        self.split = split
        self.crop_size = crop_size
        self.transform = transform if transform is not None else default_transform(crop_size)
        self.filenames, attributes = self.index.split(split)
        self.attributes = None if attributes is None else torch.from_numpy(attributes.astype(np.int64))

    @property
    def has_attributes(self) -> bool:
        return self.attributes is not None

    def require_attributes(self) -> torch.Tensor:
        """The attributes, or a clear error when this copy of CelebA has none."""
        if self.attributes is None:
            raise ValueError(
                f"{self.index.source.image_dir} has no attribute annotations (a bare image folder); "
                "add list_attr_celeba.txt and list_eval_partition.txt to use attributes"
            )
        return self.attributes

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.index.source.image_dir / self.filenames[i]
        img = load_rgb(path)
        _check_size(img, path, self.crop_size)
        target = self.attributes[i] if self.attributes is not None else torch.empty(0, dtype=torch.int64)
        return self.transform(img), target


# --------------------------------------------------------------------------- decoded cache


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
    for name in filenames:
        st = os.stat(index.source.image_dir / name)
        digest.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
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


def _decode_chunk(job: tuple[str, Path, list[str], int, int]) -> int:
    tmp_path, image_dir, names, start, crop_size = job
    out = np.load(tmp_path, mmap_mode="r+")
    for offset, name in enumerate(names):
        out[start + offset] = decode_cropped(image_dir / name, crop_size)
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
        jobs = [(tmp_name, index.source.image_dir, filenames[s:s + chunk], s, crop_size)
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


# --------------------------------------------------------------------------- loaders and dataset choice


def get_dataloaders_celeba(
    batch_size: int,
    num_workers: int = 0,
    train_transforms: transforms.Compose | None = None,
    test_transforms: transforms.Compose | None = None,
    download: bool = False,
    root: str | Path = "data",
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """The lecture's loaders (JPEG decoding per image): ``(train, valid, test)``; valid serves the valid split."""
    if download:
        download_celeba(root)
    index = read_index(find_celeba(root))
    loaders = []
    for split in SPLITS:
        tfm = train_transforms if split == "train" else test_transforms
        dataset = CelebAFaces(root, split, transform=tfm, index=index)
        loaders.append(DataLoader(dataset, batch_size=batch_size, shuffle=split == "train",
                                  num_workers=num_workers, persistent_workers=num_workers > 0))
    return loaders[0], loaders[1], loaders[2]


def get_cached_dataloaders_celeba(
    batch_size: int,
    device: str | torch.device = "cpu",
    root: str | Path = "data",
    crop_size: int = CROP_SIZE,
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> tuple[CachedLoader, CachedLoader, CachedLoader]:
    """The fast loaders: ``(train, valid, test)`` from the decoded cache (built on first use)."""
    index = read_index(find_celeba(root))
    loaders = []
    for split in SPLITS:
        decoded = build_decoded_cache(root, split, crop_size, cache_dir, num_workers, index=index, progress=progress)
        loaders.append(CachedLoader(decoded, batch_size, shuffle=split == "train", device=device))
    return loaders[0], loaders[1], loaders[2]


MANUAL_DOWNLOAD = """Downloading CelebA failed ({error}); partial files were removed.
Google Drive often refuses it (quota). Get it by hand, either way works:
  * official: from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html ("Align&Cropped Images") put
    img_align_celeba.zip, list_attr_celeba.txt and list_eval_partition.txt in {root}/celeba/
    (the zip is extracted automatically on first use);
  * Kaggle: `kaggle datasets download -d jessicali9530/celeba-dataset`, unzip it into {root}/
    (giving {root}/img_align_celeba/img_align_celeba/ and the CSV files).
Or try the project without CelebA: dataset='synthetic'."""


def download_celeba(root: str | Path = "data") -> CelebASource:
    """Try torchvision's CelebA download into ``root``; on failure remove partial files and explain the manual steps."""
    from torchvision.datasets import CelebA

    root = Path(root)
    try:
        return find_celeba(root)
    except FileNotFoundError:
        pass
    folder = root / "celeba"
    before = set(folder.iterdir()) if folder.is_dir() else set()
    try:
        CelebA(str(root), split="all", download=True)
    except Exception as err:
        for path in set(folder.iterdir()) - before if folder.is_dir() else ():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise RuntimeError(MANUAL_DOWNLOAD.format(error=f"{type(err).__name__}: {err}", root=root)) from err
    return find_celeba(root)


@dataclass(frozen=True)
class DatasetChoice:
    """What ``prepare_dataset`` chose: the data root to read, ``"celeba"`` or ``"synthetic"``, and why."""

    root: Path
    kind: str
    message: str


def prepare_dataset(
    dataset: str = "auto", data_root: str | Path = "data", num_synthetic: int = 2000, seed: int = 123
) -> DatasetChoice:
    """Resolve ``dataset`` (auto, celeba or synthetic) to a data root, generating synthetic faces when asked.

    ``auto`` uses CelebA when found under ``data_root`` and otherwise the synthetic faces, and says so;
    ``celeba`` never falls back. Synthetic faces live in ``data_root/synthetic-celeba-{n}-seed{seed}``.
    """
    if dataset not in ("auto", "celeba", "synthetic"):
        raise ValueError(f"dataset={dataset!r} is not one of 'auto', 'celeba', 'synthetic'")
    if dataset in ("auto", "celeba"):
        try:
            source = find_celeba(data_root)
            return DatasetChoice(Path(data_root), "celeba", f"Using CelebA ({source.layout} layout) from {data_root}.")
        except FileNotFoundError as err:
            if dataset == "celeba":
                raise
            reason = str(err).splitlines()[0]
    from synthetic_celeba import write_synthetic_celeba

    root = Path(data_root) / f"synthetic-celeba-{num_synthetic}-seed{seed}"
    done = root / "COMPLETE"
    if not done.is_file():
        write_synthetic_celeba(root, num_images=num_synthetic, seed=seed)
        done.write_text("ok\n")
    message = f"Using {num_synthetic} SYNTHETIC faces in {root} (not CelebA)."
    if dataset == "auto":
        message = f"{reason}\nCelebA not found, so: {message}"
    return DatasetChoice(root, "synthetic", message)


def compute_average_faces(
    feature_idx: int,
    image_dim: int | tuple[int, ...],
    data_loader: Iterable,
    device: str | torch.device | None = None,
    encoding_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average image (or latent code, with ``encoding_fn``) of examples with and without attribute ``feature_idx``."""
    with_sum = torch.zeros(image_dim, dtype=torch.float64)
    without_sum = torch.zeros(image_dim, dtype=torch.float64)
    num_with = num_without = 0
    for images, labels in data_loader:
        if labels.ndim != 2 or labels.shape[1] <= feature_idx:
            raise ValueError(
                f"the data has no attribute {feature_idx} (labels of shape {tuple(labels.shape)}); a bare image "
                "folder has no annotations: add list_attr_celeba.txt and list_eval_partition.txt"
            )
        has_feature = labels[:, feature_idx].to("cpu", torch.bool)
        embeddings = images
        if encoding_fn is not None:
            with torch.no_grad():
                embeddings = encoding_fn(images.to(device) if device is not None else images)
        embeddings = embeddings.to("cpu", torch.float64)
        with_sum += embeddings[has_feature].sum(dim=0)
        without_sum += embeddings[~has_feature].sum(dim=0)
        num_with += int(has_feature.sum())
        num_without += int((~has_feature).sum())
    if num_with == 0 or num_without == 0:
        raise ValueError(f"attribute {CELEBA_ATTRIBUTE_NAMES[feature_idx]} is {'never' if num_with == 0 else 'always'} "
                         "present in this data; averages with and without it need both")
    return (with_sum / num_with).float(), (without_sum / num_without).float()
