"""The data layer: every supported layout, torchvision bit-identity, splits, the decoded cache, bad input."""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import helper_data
from celeba_vae import celeba_files, decoded_cache
from celeba_vae.celeba_files import CELEBA_ATTRIBUTE_NAMES, find_celeba, read_index, split_of_file_number
from celeba_vae.decoded_cache import build_decoded_cache
from celeba_vae.synthetic import write_synthetic_celeba
from helper_data import (
    CelebAFaces,
    attribute_index,
    compute_average_faces,
    get_cached_dataloaders_celeba,
    get_dataloaders_celeba,
    prepare_dataset,
)

REPO = Path(__file__).resolve().parent.parent


class UncheckedCelebA(torchvision.datasets.CelebA):
    """torchvision's CelebA without its md5 check (the fixture files are not the official ones)."""

    def _check_integrity(self) -> bool:
        return True


def _all_items(dataset: CelebAFaces) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


@pytest.mark.parametrize("layout", ["torchvision", "flat", "kaggle", "zip"])
def test_every_annotated_layout_gives_the_same_examples(layout: str, celeba_root: Path, tmp_path: Path) -> None:
    root = write_synthetic_celeba(tmp_path / layout, num_images=60, seed=7, layout=layout)
    source = find_celeba(root)
    assert source.layout == ("torchvision" if layout == "zip" else layout)
    reference = read_index(find_celeba(celeba_root))
    for split in ("train", "valid", "test"):
        ours = _all_items(CelebAFaces(root, split))
        expected = _all_items(CelebAFaces(split=split, index=reference))
        assert torch.equal(ours[0], expected[0]) and torch.equal(ours[1], expected[1])


def test_zip_is_extracted_once_and_atomically(tmp_path: Path) -> None:
    root = write_synthetic_celeba(tmp_path / "z", num_images=12, seed=1, layout="zip")
    find_celeba(root)
    images = root / "celeba" / "img_align_celeba"
    assert len(list(images.glob("*.jpg"))) == 12
    assert not list((root / "celeba").glob(".extracting-*"))
    mtime = images.stat().st_mtime_ns
    find_celeba(root)
    assert images.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("page", ["<!DOCTYPE html>\n<html lang=en>", "\n  <HTML><head>", "<html>"])
def test_a_zip_that_is_a_web_page_says_so(tmp_path: Path, page: str) -> None:
    root = write_synthetic_celeba(tmp_path / "z", num_images=6, seed=1, layout="zip")
    (root / "celeba" / "img_align_celeba.zip").write_text(f"{page}Google Drive - Quota exceeded</html>")
    with pytest.raises(ValueError, match=r"(?s)img_align_celeba\.zip is a web page \(HTML\), not a zip: probably a "
                                         r"Google Drive quota.*Delete it and get CelebA another way.*download_celeba"):
        find_celeba(root)
    assert not (root / "celeba" / "img_align_celeba").exists()
    assert not list((root / "celeba").glob(".extracting-*"))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_broken_zip_says_what_to_do(tmp_path: Path, damage: str) -> None:
    root = write_synthetic_celeba(tmp_path / "z", num_images=6, seed=1, layout="zip")
    archive = root / "celeba" / "img_align_celeba.zip"
    data = archive.read_bytes()
    archive.write_bytes(b"PK\x03\x04 not really" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"img_align_celeba\.zip is not a valid zip file, or an incomplete one.*"
                                         r"Delete it and download img_align_celeba\.zip again"):
        find_celeba(root)
    assert not (root / "celeba" / "img_align_celeba").exists()
    assert not list((root / "celeba").glob(".extracting-*"))


def test_a_half_extracted_zip_says_how_to_extract_it_again(tmp_path: Path) -> None:
    root = write_synthetic_celeba(tmp_path / "z", num_images=12, seed=1, layout="zip")
    images = find_celeba(root).image_dir
    for victim in sorted(images.iterdir())[6:]:
        victim.unlink()
    expected = f"names 6 image(s) missing from {images}, e.g. 000007.jpg; the folder looks half-extracted: delete "
    with pytest.raises(FileNotFoundError, match=re.escape(f"{expected}{images} and it is extracted again")):
        CelebAFaces(root)
    shutil.rmtree(images)
    assert len(CelebAFaces(root, "all")) == 12


def test_bare_folder_uses_file_numbers_for_the_official_partition(tmp_path: Path) -> None:
    numbers = [1, 2, 162770, 162771, 182637, 182638, 202599]
    root = write_synthetic_celeba(tmp_path / "bare", num_images=len(numbers), layout="bare", file_numbers=numbers)
    assert find_celeba(root).layout == "bare"
    sizes = {split: len(CelebAFaces(root, split)) for split in ("train", "valid", "test")}
    assert sizes == {"train": 3, "valid": 2, "test": 2}
    dataset = CelebAFaces(root, "train")
    assert not dataset.has_attributes
    image, attributes = dataset[0]
    assert image.shape == (3, 128, 128) and attributes.numel() == 0
    with pytest.raises(ValueError, match="no attribute annotations"):
        dataset.require_attributes()
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    with pytest.raises(ValueError, match="no annotations"):
        compute_average_faces(attribute_index("Smiling"), (3, 128, 128), loader)


def test_split_boundaries_and_sizes() -> None:
    assert [split_of_file_number(n) for n in (1, 162770, 162771, 182637, 182638, 202599)] == [0, 0, 1, 1, 2, 2]
    assert sum(celeba_files.OFFICIAL_SPLIT_SIZES.values()) == 202_599


def test_split_sizes_follow_the_partition_file(celeba_root: Path) -> None:
    lines = (celeba_root / "celeba" / "list_eval_partition.txt").read_text().split("\n")
    counts = np.bincount([int(line.split()[1]) for line in lines if line.strip()], minlength=3)
    assert [len(CelebAFaces(celeba_root, s)) for s in ("train", "valid", "test")] == counts.tolist()
    assert all(counts > 0)


def test_bit_identical_to_torchvision_celeba(celeba_root: Path) -> None:
    for split in ("train", "valid", "test"):
        ours = CelebAFaces(celeba_root, split)
        theirs = UncheckedCelebA(str(celeba_root), split=split, target_type="attr",
                                 transform=helper_data.default_transform())
        assert len(ours) == len(theirs)
        for i in range(len(ours)):
            (a, a_attr), (b, b_attr) = ours[i], theirs[i]
            assert a.dtype == b.dtype == torch.float32 and a.shape == (3, 128, 128)
            assert torch.equal(a, b), f"image {i} of {split} differs"
            assert a_attr.dtype == b_attr.dtype == torch.int64 and torch.equal(a_attr, b_attr)


def test_valid_loader_serves_the_valid_split(celeba_root: Path) -> None:
    train, valid, test = get_dataloaders_celeba(batch_size=8, root=celeba_root)
    index = read_index(find_celeba(celeba_root))
    assert valid.dataset.filenames == index.split("valid")[0]
    assert set(valid.dataset.filenames).isdisjoint(test.dataset.filenames)
    assert set(train.dataset.filenames).isdisjoint(valid.dataset.filenames)
    images, labels = next(iter(valid))
    assert images.shape[1:] == (3, 128, 128) and labels.shape[1] == 40


def test_attribute_names() -> None:
    assert len(CELEBA_ATTRIBUTE_NAMES) == 40
    assert attribute_index("Smiling") == 31 and attribute_index("Eyeglasses") == 15
    with pytest.raises(KeyError, match="'Smilng'.*Smiling"):
        attribute_index("Smilng")


def test_download_is_skipped_when_celeba_is_there(celeba_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("CelebA is already there: the Hub must not be asked")

    monkeypatch.setattr(celeba_files, "download_hub", no_network)
    train, _, _ = get_dataloaders_celeba(batch_size=4, download=True, root=celeba_root)
    assert train.dataset.index.source.layout == "torchvision"


def test_prepare_dataset_never_replaces_celeba_silently(tmp_path: Path, celeba_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_dataset("celeba", tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    choice = prepare_dataset("auto", tmp_path / "empty", num_synthetic=8, seed=3)
    assert choice.kind == "synthetic" and "SYNTHETIC" in choice.message and "not found" in choice.message
    assert len(CelebAFaces(choice.root, "all")) == 8
    assert prepare_dataset("auto", celeba_root).kind == "celeba"


# ----------------------------------------------------------------------------- bad input


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"data root {tmp_path / 'nope'} does not exist"):
        CelebAFaces(tmp_path / "nope")


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=f"data root {tmp_path / 'data'} is a file, not a folder"):
        find_celeba(tmp_path / "data")


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"(?s)data root {tmp_path} is empty\. CelebA was not found.*"
                                                r"celeba-hub.*download_celeba"):
        find_celeba(tmp_path)


def test_no_layout_lists_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match=r"(?s)not found under.*list_attr_celeba\.txt.*Kaggle.*\.zip.*"
                                                r"img_align\+identity\+attr/\*\.parquet"):
        find_celeba(tmp_path)


def _deny(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``os.scandir(folder)`` fail as it does on a folder without read permission."""
    real = os.scandir

    def scandir(path: str | Path = ".") -> Iterator[os.DirEntry[str]]:
        if Path(path) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("where", ["root", "images"])
def test_unreadable_folder_says_what_to_do(celeba_copy: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    folder = celeba_copy if where == "root" else celeba_copy / "celeba" / "img_align_celeba"
    _deny(monkeypatch, folder)
    expected = f"permission denied for {folder}: make it readable (e.g. chmod -R u+rX {folder}) or point root at a copy"
    with pytest.raises(PermissionError, match=re.escape(expected)):
        CelebAFaces(celeba_copy)
    if where == "images":
        source = celeba_files.CelebASource("torchvision", folder, folder.parent / "list_attr_celeba.txt",
                                           folder.parent / "list_eval_partition.txt")
        with pytest.raises(PermissionError, match=f"permission denied for {folder}"):
            read_index(source)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_for_real(celeba_copy: Path) -> None:
    images = celeba_copy / "celeba" / "img_align_celeba"
    images.chmod(0)
    try:
        with pytest.raises(PermissionError, match=f"permission denied for {images}"):
            find_celeba(celeba_copy)
    finally:
        images.chmod(0o755)


def test_empty_image_folder(celeba_copy: Path) -> None:
    images = celeba_copy / "celeba" / "img_align_celeba"
    shutil.rmtree(images)
    images.mkdir()
    with pytest.raises(FileNotFoundError, match=f"images folder {images} is empty"):
        find_celeba(celeba_copy)


def test_malformed_annotation_line_names_file_and_line(celeba_copy: Path) -> None:
    attr = celeba_copy / "celeba" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[4] = lines[4].replace("-1", "maybe", 1)
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{attr}, line 5: expected an image name and 40 values"):
        CelebAFaces(celeba_copy)
    partition = celeba_copy / "celeba" / "list_eval_partition.txt"
    partition.write_text(partition.read_text().replace(" 0\n", " 7\n", 1))
    with pytest.raises(ValueError, match=f"{partition}, line 1: expected an image name and a split"):
        CelebAFaces(celeba_copy)


def test_partition_naming_a_missing_image(celeba_copy: Path) -> None:
    (celeba_copy / "celeba" / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"names 1 image\(s\) missing.*000003\.jpg"):
        CelebAFaces(celeba_copy)


def test_truncated_jpeg_is_named(celeba_copy: Path) -> None:
    victim = celeba_copy / "celeba" / "img_align_celeba" / "000001.jpg"
    victim.write_bytes(victim.read_bytes()[:600])
    with pytest.raises(OSError, match="image .*000001.jpg is unreadable or truncated"):
        CelebAFaces(celeba_copy, "train")[0]
    with pytest.raises(OSError, match="000001.jpg is unreadable or truncated"):
        build_decoded_cache(celeba_copy, "train", num_workers=1, progress=False)
    assert not list((celeba_copy / "celeba" / "decoded_cache").glob("*.npy"))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_are_converted_to_rgb(celeba_copy: Path, mode: str) -> None:
    victim = celeba_copy / "celeba" / "img_align_celeba" / "000001.jpg"
    Image.open(victim).convert(mode).save(victim)
    image, _ = CelebAFaces(celeba_copy, "train")[0]
    assert image.shape == (3, 128, 128)
    expected = Image.open(victim).convert("RGB")
    assert torch.equal(image, helper_data.default_transform()(expected))
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_image_smaller_than_the_crop(celeba_copy: Path) -> None:
    victim = celeba_copy / "celeba" / "img_align_celeba" / "000002.jpg"
    Image.open(victim).resize((100, 90)).save(victim)
    with pytest.raises(ValueError, match=r"000002\.jpg is 100x90, smaller than the 128x128 crop"):
        CelebAFaces(celeba_copy, "train")[1]
    with pytest.raises(ValueError, match=r"000002\.jpg is 100x90"):
        build_decoded_cache(celeba_copy, "train", num_workers=1, progress=False)


def test_lecture_loaders_take_the_same_subsets_as_the_fast_ones(celeba_copy: Path) -> None:
    lecture = get_dataloaders_celeba(batch_size=4, root=celeba_copy, train_images=10, eval_images=3, seed=5)
    fast = get_cached_dataloaders_celeba(4, "cpu", root=celeba_copy, num_workers=1, progress=False,
                                         train_images=10, eval_images=3, seed=5)
    for lecture_loader, fast_loader in zip(lecture, fast, strict=True):
        chosen = [lecture_loader.dataset.dataset.filenames[i] for i in lecture_loader.dataset.indices]
        assert chosen == fast_loader.dataset.filenames
    assert [len(loader.dataset) for loader in lecture] == [10, 3, 3]


# ----------------------------------------------------------------------------- one decision per data root


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of ``name`` from the data helpers and the decoded cache (one list entry per call)."""
    calls: list[int] = []
    real = getattr(celeba_files, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    for module in (helper_data, decoded_cache):
        monkeypatch.setattr(module, name, counted, raising=False)
    return calls


def test_the_data_root_is_searched_and_its_index_read_once_for_every_split(
    celeba_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    searches, index_reads = _count_calls(monkeypatch, "find_celeba"), _count_calls(monkeypatch, "read_index")
    choice = prepare_dataset("celeba", celeba_copy)
    assert (len(searches), len(index_reads)) == (1, 1)
    loaders = get_cached_dataloaders_celeba(4, root=choice, cache_dir=tmp_path / "cache", num_workers=1,
                                            progress=False)
    helper_data.get_cached_dataloader("test", 4, root=choice, cache_dir=tmp_path / "cache", progress=False)
    get_dataloaders_celeba(4, root=choice)
    assert (len(searches), len(index_reads)) == (1, 1)
    assert [len(loader.split) for loader in loaders] == [48, 6, 6]
    get_cached_dataloaders_celeba(4, root=celeba_copy, cache_dir=tmp_path / "cache", progress=False)
    assert (len(searches), len(index_reads)) == (2, 2)


# ----------------------------------------------------------------------------- Kaggle, Colab, read-only data


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_read_only_data_folder_gets_its_zip_and_cache_in_the_writable_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_synthetic_celeba(tmp_path / "ro", num_images=12, seed=1, layout="zip")
    before = _snapshot(root)
    monkeypatch.setenv("CELEBA_VAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(celeba_files, "can_write", lambda folder: not Path(folder).is_relative_to(root))
    celeba_files._say_once.cache_clear()
    choice = prepare_dataset("celeba", root)
    train, _, _ = get_cached_dataloaders_celeba(4, root=choice, num_workers=1, progress=False)
    assert _snapshot(root) == before
    cache = next((tmp_path / "cache").iterdir())
    assert choice.source.image_dir == cache / "img_align_celeba" and len(list(cache.glob("*/*.jpg"))) == 12
    assert train.split.path.parent == cache / "decoded_cache"
    lines = [line for line in capsys.readouterr().out.splitlines() if "read-only" in line]
    expected = (f"{root / 'celeba'} is read-only: what is made from it (decoded cache, extracted zip) goes to "
                f"{cache} ($CELEBA_VAE_CACHE moves it).")
    assert lines == [expected]
    assert len(CelebAFaces(root, "all")) == 12


READ_ONLY_RUN = """
import sys
from pathlib import Path
from helper_data import get_cached_dataloaders_celeba, prepare_dataset
choice = prepare_dataset("celeba", sys.argv[1])
train, _, _ = get_cached_dataloaders_celeba(4, root=choice, num_workers=1, progress=False)
print("cache at", train.split.path.parent)
"""


def test_a_read_only_mount_is_never_written(tmp_path: Path) -> None:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only bind mount needs root and unshare (chmod does not stop root's writes)")
    root = write_synthetic_celeba(tmp_path / "mounted", num_images=12, seed=1, layout="zip")
    before = _snapshot(root)
    folder, python, code = shlex.quote(str(root)), shlex.quote(sys.executable), shlex.quote(READ_ONLY_RUN)
    mount = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder} && echo mounted read-only"
    run = f"{mount} && {python} -c {code} {folder}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", run], capture_output=True, text=True, timeout=300, check=False,
                          cwd=REPO, env={**os.environ, "CELEBA_VAE_CACHE": str(tmp_path / "cache"),
                                         "PYTHONPATH": str(REPO)})
    if "mounted read-only" not in done.stdout:
        pytest.skip(f"this machine cannot make a read-only bind mount: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _snapshot(root) == before
    cache = next((tmp_path / "cache").iterdir())
    assert f"cache at {cache / 'decoded_cache'}" in done.stdout and "is read-only" in done.stdout


def test_the_attached_kaggle_dataset_is_found_when_the_default_data_root_has_no_celeba(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attached = write_synthetic_celeba(tmp_path / "kaggle-input", num_images=12, seed=1, layout="kaggle")
    monkeypatch.setenv("CELEBA_VAE_DATA", str(tmp_path / "default"))
    monkeypatch.setattr(helper_data, "ATTACHED_DATASETS", (tmp_path / "absent", attached))
    choice = prepare_dataset()
    assert (choice.kind, choice.root, choice.layout) == ("celeba", attached, "kaggle")
    assert choice.message == (f"CelebA is not in {tmp_path / 'default'}; using the copy found at {attached} "
                              "(kaggle layout).")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert prepare_dataset("auto", elsewhere, num_synthetic=8).kind == "synthetic"
    assert prepare_dataset("auto", elsewhere, search=[attached]).root == attached
    with pytest.raises(FileNotFoundError, match=rf"(?s)not found under {elsewhere}.*Also searched: {tmp_path}"):
        prepare_dataset("celeba", elsewhere, search=[tmp_path / "absent"])


def test_without_celeba_the_banner_says_how_to_download_it_and_download_true_does(
    tmp_path: Path, celeba_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    banner = " ".join(prepare_dataset("auto", tmp_path / "data", num_synthetic=8).message.split())
    for text in ("download = True", "--download", "11.7 GB", "10 minutes", str(tmp_path / "data" / "celeba-hub"),
                 "not on Google Drive"):
        assert text in banner, text
    asked: list[Path] = []

    def fake_download(root: Path) -> celeba_files.CelebASource:
        asked.append(root)
        shutil.copytree(celeba_root / "celeba", root / "celeba")
        return find_celeba(root)

    monkeypatch.setattr(helper_data, "download_celeba", fake_download)
    choice = prepare_dataset("auto", tmp_path / "data", download=True)
    assert asked == [tmp_path / "data"] and choice.kind == "celeba"
    assert prepare_dataset("auto", tmp_path / "data", download=True).kind == "celeba" and len(asked) == 1


def test_a_damaged_celeba_is_reported_not_replaced_by_synthetic_faces(celeba_copy: Path) -> None:
    (celeba_copy / "celeba" / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="names 1 image.*missing from .*000003.jpg"):
        prepare_dataset("auto", celeba_copy)
