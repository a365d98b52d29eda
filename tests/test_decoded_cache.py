"""The decoded cache and its loader: equal to the lecture pipeline, reused, rebuilt, never half-written."""

from __future__ import annotations

import gc
import multiprocessing
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import helper_data
from celeba_vae import celeba_files, decoded_cache, synthetic
from celeba_vae.celeba_files import CelebASource, find_celeba, read_index
from celeba_vae.decoded_cache import CachedLoader, build_decoded_cache
from helper_data import CelebAFaces, get_cached_dataloaders_celeba


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
    assert np.array_equal(rebuilt.images[0], celeba_files.decode_cropped(victim))

    expected = np.stack([celeba_files.decode_cropped(victim.parent / n) for n in rebuilt.filenames])
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


@pytest.fixture
def no_new_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to start a process: a spawned worker re-runs a learner's unguarded script."""

    def refuse(self: multiprocessing.process.BaseProcess) -> None:
        raise AssertionError(f"a process was started ({self.name}); decoding must work without the caller's guard")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


def test_parallel_cache_build_uses_threads_and_equals_the_serial_one(
    celeba_copy: Path, no_new_processes: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decoded_cache, "CHUNK", 8)
    threads: set[str] = set()
    real = decoded_cache.center_crop

    def recording(img: Image.Image, crop_size: int = 128) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return real(img, crop_size)

    monkeypatch.setattr(decoded_cache, "center_crop", recording)
    parallel = build_decoded_cache(celeba_copy, "train", cache_dir=tmp_path / "a", num_workers=2, progress=False)
    assert threads and all(name.startswith("decode") for name in threads)
    threads.clear()
    serial = build_decoded_cache(celeba_copy, "train", cache_dir=tmp_path / "b", num_workers=1, progress=False)
    assert threads == {threading.main_thread().name}
    assert parallel.path.read_bytes() == serial.path.read_bytes()


def test_a_failing_image_stops_the_parallel_build(celeba_copy: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoded_cache, "CHUNK", 4)
    victim = celeba_copy / "celeba" / "img_align_celeba" / read_index(find_celeba(celeba_copy)).split("train")[0][9]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=f"image .*{victim.name} is unreadable"):
        build_decoded_cache(celeba_copy, "train", cache_dir=tmp_path / "cache", num_workers=2, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_parallel_synthetic_faces_use_threads(no_new_processes: None, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "CHUNK", 8)
    monkeypatch.setattr(synthetic, "_pool_size", lambda jobs: 2)
    parallel = synthetic.write_synthetic_celeba(tmp_path / "parallel", num_images=20, seed=3)
    monkeypatch.setattr(synthetic, "_pool_size", lambda jobs: 1)
    serial = synthetic.write_synthetic_celeba(tmp_path / "serial", num_images=20, seed=3)
    files = sorted(p.relative_to(parallel) for p in parallel.rglob("*") if p.is_file())
    assert len(files) == 20 + 5
    assert files == sorted(p.relative_to(serial) for p in serial.rglob("*") if p.is_file())
    for name in files:
        assert (parallel / name).read_bytes() == (serial / name).read_bytes(), name


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
def test_cache_files_get_normal_permissions(celeba_copy: Path) -> None:
    old = os.umask(0o022)
    try:
        decoded = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(decoded.path.stat().st_mode) == 0o644


def _count_decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    decoded: list[str] = []
    real = CelebASource.iter_images

    def counting(self: CelebASource, names: Iterable[str], crop_size: int = 128) -> Iterator[Image.Image]:
        for name in names:
            decoded.append(name)
            yield from real(self, [name], crop_size)

    monkeypatch.setattr(CelebASource, "iter_images", counting)
    return decoded


def test_a_training_subset_decodes_only_its_images(
    celeba_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    index = read_index(find_celeba(celeba_copy))
    names, attributes = index.split("train")
    decoded = _count_decoded(monkeypatch)
    subset = build_decoded_cache(celeba_copy, "train", num_workers=1, progress=False, index=index, max_images=10,
                                 seed=1)
    assert len(decoded) == 10 and sorted(decoded) == subset.filenames
    assert subset.path.name == "train_128_n10_seed1.npy"
    rows = np.sort(np.random.default_rng(1).choice(len(names), size=10, replace=False))
    assert subset.filenames == [names[i] for i in rows]
    assert attributes is not None and np.array_equal(subset.attributes, attributes[rows])
    folder = celeba_copy / "celeba" / "img_align_celeba"
    assert np.array_equal(subset.images, np.stack([celeba_files.decode_cropped(folder / n) for n in subset.filenames]))

    again = build_decoded_cache(celeba_copy, "train", num_workers=1, progress=False, index=index, max_images=10,
                                seed=1)
    assert len(decoded) == 10 and again.filenames == subset.filenames
    other = build_decoded_cache(celeba_copy, "train", num_workers=1, progress=False, index=index, max_images=10,
                                seed=2)
    assert len(decoded) == 20 and other.filenames != subset.filenames
    whole = build_decoded_cache(celeba_copy, "train", num_workers=1, progress=False, index=index,
                                max_images=len(names) + 1)
    assert whole.filenames == names and whole.path.name == "train_128.npy"
    assert f"holds {len(names)} images, fewer than the {len(names) + 1} asked for" in capsys.readouterr().out
    with pytest.raises(ValueError, match="0 images were asked of the train split"):
        build_decoded_cache(celeba_copy, "train", progress=False, index=index, max_images=0)


def test_cached_loaders_take_subsets_of_the_splits(celeba_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = _count_decoded(monkeypatch)
    train, valid, test = get_cached_dataloaders_celeba(4, "cpu", root=celeba_copy, num_workers=1, progress=False,
                                                       train_images=10, eval_images=3, seed=5)
    assert (len(train.dataset), len(valid.dataset), len(test.dataset)) == (10, 3, 3)
    assert len(decoded) == 16 and len(train) == 3
    alone = helper_data.get_cached_dataloader("valid", 4, root=celeba_copy, max_images=3, seed=5, progress=False)
    assert alone.dataset.filenames == valid.dataset.filenames and not alone.shuffle and len(decoded) == 16


@pytest.mark.parametrize(("shuffle", "drop_last"), [(False, False), (True, False), (True, True)])
def test_host_batches_are_the_memory_map_rows(celeba_copy: Path, shuffle: bool, drop_last: bool,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    decoded = build_decoded_cache(celeba_copy, "train", num_workers=1, progress=False)
    loader = CachedLoader(decoded, batch_size=7, shuffle=shuffle, drop_last=drop_last)
    assert capsys.readouterr().out.count("\n") == 1 and not loader.on_gpu
    torch.manual_seed(0)
    batches = list(loader)
    torch.manual_seed(0)
    order = torch.randperm(len(decoded)) if shuffle else torch.arange(len(decoded))
    assert len(batches) == len(loader) == (len(decoded) // 7 if drop_last else -(-len(decoded) // 7))
    for b, (images, labels) in enumerate(batches):
        rows = np.sort(order[b * 7:(b + 1) * 7].numpy())
        assert torch.equal(images, torch.from_numpy(decoded.images[rows]).float() / 255)
        assert labels.dtype == torch.int64 and torch.equal(labels, torch.from_numpy(decoded.attributes[rows]).long())


def test_data_on_gpu_true_without_cuda_is_an_error(celeba_copy: Path) -> None:
    decoded = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    with pytest.raises(ValueError, match="data_on_gpu=True needs a CUDA device, but the device is 'cpu'"):
        CachedLoader(decoded, batch_size=4, data_on_gpu=True)


def test_a_split_is_uploaded_once_while_a_loader_holds_it(celeba_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    uploads: list[int] = []
    real = decoded_cache._upload

    def counting(images: np.ndarray, device: torch.device) -> torch.Tensor:
        uploads.append(len(images))
        return real(images, device)

    monkeypatch.setattr(decoded_cache, "_upload", counting)
    monkeypatch.setattr(decoded_cache, "UPLOAD_CHUNK_BYTES", 2 * decoded.images[0].nbytes)
    first = decoded_cache.device_copy(decoded, "cpu")
    assert torch.equal(first, torch.from_numpy(np.array(decoded.images)))
    assert decoded_cache.device_copy(decoded, "cpu") is first and uploads == [len(decoded)]
    changed = decoded_cache.DecodedSplit(decoded.images, decoded.attributes, decoded.filenames, decoded.path, "new")
    assert decoded_cache.device_copy(changed, "cpu") is not first and len(uploads) == 2
    del first
    gc.collect()
    decoded_cache.device_copy(decoded, "cpu")
    assert len(uploads) == 3


def test_a_split_on_the_gpu_is_evaluated_in_larger_batches_to_the_same_losses(
    celeba_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celeba_vae import gpu_budget
    from helper_train import evaluate_vae
    from model import VAE

    decoded = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    monkeypatch.setattr(gpu_budget, "plan_placement", lambda *args, **kwargs: gpu_budget.Placement(True, "stand-in"))
    loader = CachedLoader(decoded, batch_size=2)  # the GPU-resident path, with the split "uploaded" to the CPU
    assert loader.on_gpu and len(decoded) > 2
    model = VAE(latent_dim=8)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    larger = evaluate_vae(model, loader, "cpu")
    assert sizes == [len(decoded)]
    in_twos = evaluate_vae(model, list(loader), "cpu")
    assert sizes[1:] == [len(images) for images, _ in loader]
    assert larger == pytest.approx(in_twos, rel=1e-3)  # float32 sums in other groupings
    assert loader.batch_size == 2 and len(loader) == -(-len(decoded) // 2)
