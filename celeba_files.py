"""Where CelebA is and how its files read: layouts, annotations, the zip, the download, one image at a time.

:func:`find_celeba` detects the layout a folder holds and returns a :class:`CelebASource`; :func:`read_index`
reads (and checks) its annotations; :meth:`CelebASource.read_image` opens one image as RGB. Everything that
decodes CelebA, per image or into the decoded cache, goes through these.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

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

    def stamps(self, names: Iterable[str]) -> Iterator[str]:
        """One short string per image that changes when its file changes (name, size, mtime)."""
        for name in names:
            st = os.stat(self.image_dir / name)
            yield f"{name}:{st.st_size}:{st.st_mtime_ns}"


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



# --------------------------------------------------------------------------- decoding one image


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
    return center_crop(img, crop_size)


def center_crop(img: Image.Image, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Center-crop an RGB image as ``CenterCrop`` does: uint8 array (3, crop, crop)."""
    top = round((img.height - crop_size) / 2.0)
    left = round((img.width - crop_size) / 2.0)
    return np.asarray(img)[top:top + crop_size, left:left + crop_size].transpose(2, 0, 1)


# --------------------------------------------------------------------------- download


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

