"""The decoded cache and its loader: equal to the lecture pipeline, reused, rebuilt, never half-written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import decoded_cache
import helper_data
from helper_data import (
    CachedLoader,
    CelebAFaces,
    build_decoded_cache,
    find_celeba,
    get_cached_dataloaders_celeba,
    read_index,
)


def _all_items(dataset: CelebAFaces) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


def test_decoded_cache_batches_equal_the_lecture_pipeline(celeba_copy: Path) -> None:
    dataset = CelebAFaces(celeba_copy, "train")
    decoded = build_decoded_cache(celeba_copy, "train", num_workers=2, progress=False)
    assert decoded.images.dtype == np.uint8 and decoded.images.shape == (len(dataset), 3, 128, 128)
    cached = torch.cat([x for x, _ in CachedLoader(decoded, batch_size=16)])
    assert torch.equal(cached, _all_items(dataset)[0])
    shuffled_images, shuffled_labels = next(iter(CachedLoader(decoded, batch_size=16, shuffle=True)))
    for image, label in zip(shuffled_images, shuffled_labels, strict=True):
        i = next(j for j in range(len(dataset)) if torch.equal(dataset[j][0], image))
        assert torch.equal(dataset[i][1], label)


def test_cached_loaders_serve_the_three_splits(celeba_copy: Path) -> None:
    loaders = get_cached_dataloaders_celeba(8, "cpu", root=celeba_copy, num_workers=1, progress=False)
    index = read_index(find_celeba(celeba_copy))
    for loader, split in zip(loaders, ("train", "valid", "test"), strict=True):
        assert loader.dataset.filenames == index.split(split)[0]


def test_cache_is_reused_then_rebuilt_when_stale_or_corrupted(celeba_copy: Path) -> None:
    first = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    stamp = first.path.stat().st_mtime_ns
    assert build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False).path.stat().st_mtime_ns == stamp

    victim = celeba_copy / "celeba" / "img_align_celeba" / first.filenames[0]
    Image.open(victim).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim, quality=95)
    rebuilt = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    assert not np.array_equal(rebuilt.images[0], first.images[0])
    assert np.array_equal(rebuilt.images[0], helper_data.decode_cropped(victim))

    expected = np.stack([helper_data.decode_cropped(victim.parent / n) for n in rebuilt.filenames])
    size = rebuilt.path.stat().st_size
    del first, rebuilt
    with open(celeba_copy / "celeba" / "decoded_cache" / "valid_128.npy", "r+b") as f:
        f.seek(size - expected[0].size * len(expected))
        f.write(bytes(expected[0].size))
    assert np.array_equal(build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False).images, expected)
    with open(celeba_copy / "celeba" / "decoded_cache" / "valid_128.npy", "r+b") as f:
        f.truncate(size - 100)
    assert np.array_equal(build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False).images, expected)

    (celeba_copy / "celeba" / "decoded_cache" / "valid_128.npy").write_bytes(b"garbage")
    assert np.array_equal(build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False).images, expected)


def test_killed_cache_build_leaves_no_valid_looking_cache(celeba_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = decoded_cache.center_crop

    def dies_midway(img: Image.Image, crop_size: int = 128) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(img, crop_size)

    monkeypatch.setattr(decoded_cache, "center_crop", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build_decoded_cache(celeba_copy, "train", num_workers=1, progress=False)
    cache_dir = celeba_copy / "celeba" / "decoded_cache"
    assert sorted(p.name for p in cache_dir.iterdir()) == []
    monkeypatch.setattr(decoded_cache, "center_crop", real)
    assert build_decoded_cache(celeba_copy, "train", num_workers=1, progress=False).images.any()


def test_cache_folder_not_writable(celeba_copy: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="cannot write the decoded cache in .*a-file.*writable cache_dir"):
        build_decoded_cache(celeba_copy, "valid", cache_dir=blocker / "cache", num_workers=1, progress=False)
    assert os.path.isfile(blocker)
