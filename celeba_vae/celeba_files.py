"""Where CelebA is and how its files read: layouts, annotations, the zip, the download, one image at a time.

:func:`find_celeba` detects the layout a folder holds and returns a :class:`CelebASource`; :func:`read_index`
reads (and checks) its annotations; :meth:`CelebASource.read_image` opens one image as RGB. Everything that
decodes CelebA, per image or into the decoded cache, goes through these. The Hub copy (parquet shards) is read
and downloaded by :mod:`celeba_vae.hub`, wrapped here as :class:`HubSource`. What is made from a data folder that
cannot be written (an extracted zip, the decoded cache) goes to a writable cache folder (:func:`derived_folder`).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

import numpy as np
from PIL import Image

from celeba_vae.hub import (
    HUB_CONFIG,
    HUB_FOLDER,
    HUB_REPO_ID,
    HubShard,
    HubUnreachable,
    download_hub,
    find_hub_shards,
    hub_row_groups,
    hub_stamps,
    iter_hub_bytes,
    read_hub_table,
)
from celeba_vae.paths import CACHE_ENV, writable_cache

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
ATTACHED_DATASETS: tuple[Path, ...] = (Path("/kaggle/input/celeba-dataset"),)
OFFICIAL_SPLIT_SIZES = {"train": 162_770, "valid": 19_867, "test": 19_962}
CROP_SIZE = 128

EXPECTED_LAYOUTS = """CelebA was not found under {root}. Expected one of:
  1. celeba/img_align_celeba/*.jpg + celeba/list_attr_celeba.txt + celeba/list_eval_partition.txt (torchvision)
  2. img_align_celeba/*.jpg + list_attr_celeba.txt + list_eval_partition.txt
  3. img_align_celeba/img_align_celeba/*.jpg + list_attr_celeba.csv + list_eval_partition.csv (Kaggle)
  4. celeba/img_align_celeba.zip or img_align_celeba.zip next to those text files (extracted once, automatically)
  5. celeba-hub/img_align+identity+attr/*.parquet (the Hugging Face Hub copy), or a Hub cache holding it
  6. a folder of CelebA-named JPEGs (000001.jpg ... 202599.jpg), without attributes"""
NOT_FOUND = EXPECTED_LAYOUTS + """
Get it with `python run_lecture.py --download` (or download_celeba("{root}")); see "Getting CelebA" in the README."""


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

P = ParamSpec("P")
R = TypeVar("R")


def _explain_permissions(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the OS's bare PermissionError (a folder or file we may not read) into one that says what to do."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except PermissionError as err:
            if err.filename is None:
                raise
            raise PermissionError(
                f"permission denied for {err.filename}: make it readable (e.g. chmod -R u+rX {err.filename}) "
                "or point root at a copy you can read"
            ) from err

    return wrapper


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

    def read_image(self, name: str, crop_size: int = CROP_SIZE) -> Image.Image:
        """Image ``name`` as RGB, checked to be at least ``crop_size`` on each side."""
        path = self.image_dir / name
        img = load_rgb(path)
        _check_size(img, path, crop_size)
        return img

    def iter_images(self, names: Iterable[str], crop_size: int = CROP_SIZE) -> Iterator[Image.Image]:
        """The images ``names``, in that order (see :meth:`read_image`)."""
        for name in names:
            yield self.read_image(name, crop_size)

    def row_groups(self, names: list[str]) -> np.ndarray | None:
        """The row group each image is read with (images of one group are read together), or ``None`` when each
        image is a file of its own."""
        return None

    def stamps(self, names: Iterable[str]) -> Iterator[str]:
        """One short string per image that changes when its file changes (name, size, mtime)."""
        for name in names:
            st = os.stat(self.image_dir / name)
            yield f"{name}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class HubSource(CelebASource):
    """The Hub copy: parquet shards in ``image_dir`` holding encoded images and attributes (see :mod:`celeba_vae.hub`).

    Holds only paths, so it pickles cheaply into decoding workers; the row index is read once per process.
    """

    shards: tuple[HubShard, ...] = ()

    @property
    def has_attributes(self) -> bool:
        return True

    def read_image(self, name: str, crop_size: int = CROP_SIZE) -> Image.Image:
        """Image ``name`` as RGB, checked to be at least ``crop_size`` on each side (reads its row group)."""
        return next(self.iter_images([name], crop_size))

    def iter_images(self, names: Iterable[str], crop_size: int = CROP_SIZE) -> Iterator[Image.Image]:
        """The images ``names``, in that order, read a row group at a time (file order reads each group once)."""
        table = read_hub_table(self.shards, CELEBA_ATTRIBUTE_NAMES)
        for data, label in iter_hub_bytes(self.shards, table, names):
            img = _open_rgb(io.BytesIO(data), label)
            _check_size(img, label, crop_size)
            yield img

    def row_groups(self, names: list[str]) -> np.ndarray:
        """The parquet row group each image is read with, numbered across the shards."""
        return hub_row_groups(self.shards, read_hub_table(self.shards, CELEBA_ATTRIBUTE_NAMES), names)

    def stamps(self, names: Iterable[str]) -> Iterator[str]:
        """One short string per image that changes when its shard changes (shard path, size, mtime, row)."""
        return hub_stamps(self.shards, read_hub_table(self.shards, CELEBA_ATTRIBUTE_NAMES), names)


def _has_jpegs(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(e.name.endswith(".jpg") for e in entries)


def _annotated(folder: Path, image_dir: Path, layout: str, ext: str) -> CelebASource | None:
    attr, part = folder / f"list_attr_celeba.{ext}", folder / f"list_eval_partition.{ext}"
    if not (image_dir.is_dir() and attr.is_file() and part.is_file()):
        return None
    return CelebASource(layout, image_dir, attr, part)


OTHER_ROUTES = (f"get CelebA another way: download_celeba(root) (the Hub, {HUB_REPO_ID}), Kaggle "
                "(jessicali9530/celeba-dataset) or the official site (see \"Getting CelebA\" in the README)")


def can_write(folder: Path) -> bool:
    """Whether files may be created in ``folder`` (``False`` on a read-only mount, even for root)."""
    return os.access(folder, os.W_OK)


@functools.cache
def _say_once(line: str) -> None:
    print(line)


def derived_folder(folder: Path) -> Path:
    """Where files made from the data folder ``folder`` go (an extracted zip, the decoded cache).

    ``folder`` itself when it can be written and ``$CELEBA_VAE_CACHE`` is not set (or ``folder`` is already in
    it), else :func:`paths.writable_cache` (said once, in one line): nothing is ever written into a read-only data
    folder, and setting the variable moves the cache off a full disk.
    """
    cache = writable_cache(folder)
    moved = bool(os.environ.get(CACHE_ENV)) and not folder.resolve().is_relative_to(cache.parent.resolve())
    if can_write(folder) and not moved:
        return folder
    if can_write(folder):
        _say_once(f"${CACHE_ENV} is set: what is made from {folder} (decoded cache, extracted zip) goes to {cache}.")
    else:
        _say_once(f"{folder} is read-only: what is made from it (decoded cache, extracted zip) goes to {cache} "
                  f"(${CACHE_ENV} moves it).")
    return cache


def _extract_zip(archive: Path, target: Path) -> None:
    """Extract ``archive`` into ``target/img_align_celeba``, atomically: a killed extraction leaves no half folder."""
    with open(archive, "rb") as f:
        head = f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise ValueError(
            f"{archive} is a web page (HTML), not a zip: probably a Google Drive quota or virus-scan warning page "
            f"saved under that name. Delete it and {OTHER_ROUTES}."
        )
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extracting-", dir=target))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except (zipfile.BadZipFile, EOFError, zlib.error) as err:
            raise ValueError(
                f"{archive} is not a valid zip file, or an incomplete one ({err}). Delete it and download "
                f"img_align_celeba.zip again, or {OTHER_ROUTES}."
            ) from err
        inner = tmp / "img_align_celeba"
        os.replace(inner if inner.is_dir() else tmp, target / "img_align_celeba")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _image_folder(folder: Path) -> Path:
    """``folder/img_align_celeba``; when only ``img_align_celeba.zip`` is there, the folder it is extracted to (once,
    beside it, or in the writable cache when ``folder`` is read-only)."""
    images = folder / "img_align_celeba"
    if images.exists() or not (folder / "img_align_celeba.zip").is_file():
        return images
    target = derived_folder(folder)
    if not (target / "img_align_celeba").exists():
        _extract_zip(folder / "img_align_celeba.zip", target)
    return target / "img_align_celeba"


@_explain_permissions
def find_celeba(root: str | Path = "data") -> CelebASource:
    """Detect which CelebA layout ``root`` holds (extracting ``img_align_celeba.zip`` once if needed).

    JPEG layouts with annotations come first, then the Hub copy (:class:`HubSource`), then a bare folder of JPEGs.
    Missing, empty, unreadable or half-downloaded folders raise an error that names the path and what to do.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data root {root} does not exist; create it and put CelebA there (see README)")
    if not root.is_dir():
        raise NotADirectoryError(f"data root {root} is a file, not a folder; point root at the folder holding CelebA")
    with os.scandir(root) as entries:
        empty = next(entries, None) is None
    if empty:
        raise FileNotFoundError(f"data root {root} is empty. " + NOT_FOUND.format(root=root))
    torchvision_images, flat_images = _image_folder(root / "celeba"), _image_folder(root)
    candidates = [
        _annotated(root / "celeba", torchvision_images, "torchvision", "txt"),
        _annotated(root, flat_images, "flat", "txt"),
        _annotated(root, root / "img_align_celeba" / "img_align_celeba", "kaggle", "csv"),
    ]
    annotated = [source for source in candidates if source is not None]
    for source in annotated:
        if _has_jpegs(source.image_dir):
            return source
    hub = find_hub_shards(root)
    if hub is not None:
        return HubSource("hub", hub[0], shards=hub[1])
    for folder in (torchvision_images, root / "img_align_celeba" / "img_align_celeba", flat_images, root):
        if _has_jpegs(folder):
            return CelebASource("bare", folder)
    for folder in [s.image_dir for s in annotated] + [torchvision_images, flat_images]:
        if folder.is_dir():
            raise FileNotFoundError(f"images folder {folder} is empty; extract img_align_celeba.zip there (see README)")
    raise FileNotFoundError(NOT_FOUND.format(root=root))



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

    def identity(self) -> dict[str, object]:
        """What these images are, wherever they sit: the size of each split and a fingerprint of the file names of
        each split (the same CelebA in another folder or layout gives the same answer)."""
        digest = hashlib.sha256()
        sizes: dict[str, int] = {}
        for split in SPLITS:
            names, _ = self.split(split)
            sizes[split] = len(names)
            digest.update(f"{split}:{len(names)}\n".encode())
            digest.update("\n".join(names).encode())
        return {"splits": sizes, "names": digest.hexdigest()[:16]}


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


@_explain_permissions
def read_index(source: CelebASource) -> CelebAIndex:
    """Read (and check) the annotations of ``source``: every listed image must exist.

    For the Hub copy, the shards' non-image columns: names, split of each shard, attributes (0/1, official order).
    """
    if isinstance(source, HubSource):
        table = read_hub_table(source.shards, CELEBA_ATTRIBUTE_NAMES)
        return CelebAIndex(source, table.names, table.partition, table.attributes)
    with os.scandir(source.image_dir) as entries:
        on_disk = {e.name for e in entries if e.name.endswith(".jpg")}
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
        archive = source.image_dir.parent / "img_align_celeba.zip"
        fix = (f"the folder looks half-extracted: delete {source.image_dir} and it is extracted again from {archive}"
               if archive.is_file() else "re-extract the images or fix the partition file")
        raise FileNotFoundError(
            f"{source.partition_file} names {len(missing)} image(s) missing from {source.image_dir}, "
            f"e.g. {missing[0]}; {fix}"
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



# --------------------------------------------------------------------------- decoding one image


def load_rgb(path: str | Path) -> Image.Image:
    """Open a JPEG as RGB (grayscale and CMYK are converted); unreadable or truncated files name themselves."""
    return _open_rgb(path, str(path))


def _open_rgb(fp: str | Path | BinaryIO, label: str) -> Image.Image:
    try:
        with Image.open(fp) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"image {label} is unreadable or truncated ({err}); re-extract or re-download it") from err


def _check_size(img: Image.Image, path: str | Path, crop_size: int) -> None:
    if img.width < crop_size or img.height < crop_size:
        raise ValueError(
            f"image {path} is {img.width}x{img.height}, smaller than the {crop_size}x{crop_size} crop; "
            "CelebA's aligned images are 178x218: replace the file or use a smaller crop_size"
        )


def center_crop(img: Image.Image, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Center-crop an RGB image as ``CenterCrop`` does: uint8 array (3, crop, crop)."""
    top = round((img.height - crop_size) / 2.0)
    left = round((img.width - crop_size) / 2.0)
    return np.asarray(img)[top:top + crop_size, left:left + crop_size].transpose(2, 0, 1)


# --------------------------------------------------------------------------- download


MANUAL_DOWNLOAD = """The Hugging Face Hub could not be reached, so CelebA was not downloaded ({reason}).
Get it by hand, any of these works (the layout is detected automatically):
  * the Hub by hand: `hf download {repo} --repo-type dataset --include "{config}/*" --local-dir {root}/{folder}`
    (`huggingface-cli download` with the same options on huggingface_hub before 1.0);
  * official: from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html ("Align&Cropped Images") put
    img_align_celeba.zip, list_attr_celeba.txt and list_eval_partition.txt in {root}/celeba/
    (the zip is extracted automatically on first use);
  * Kaggle: `kaggle datasets download -d jessicali9530/celeba-dataset`, unzipped into {root}/
    (giving {root}/img_align_celeba/img_align_celeba/ and the CSV files).
Or try the project without CelebA: dataset='synthetic'."""


def download_celeba(root: str | Path = "data") -> CelebASource:
    """CelebA under ``root``; when there is none, download the Hub copy into ``root/celeba-hub`` first.

    Fetches only the ``img_align+identity+attr`` parquet shards of ``flwrlabs/celeba`` (about 11.7 GB), printing
    the total size and the destination first; a rerun after an interruption fetches only the missing shards. When
    the Hub cannot be reached raises ``ConnectionError`` saying why, with the manual routes.
    """
    root = Path(root).expanduser()
    try:
        return find_celeba(root)
    except FileNotFoundError:
        pass
    try:
        download_hub(root / HUB_FOLDER)
    except HubUnreachable as err:
        raise ConnectionError(MANUAL_DOWNLOAD.format(reason=err, root=root, repo=HUB_REPO_ID, config=HUB_CONFIG,
                                                     folder=HUB_FOLDER)) from err
    return find_celeba(root)
