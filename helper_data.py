"""The data helpers the notebooks import, with the lecture's names.

Where CelebA is and how its files read lives in :mod:`celeba_vae.celeba_files`; the decoded cache and its fast
loader in :mod:`celeba_vae.decoded_cache`. This module builds the lecture's loaders and the fast ones, chooses
between CelebA and the synthetic faces, and computes average faces (:func:`attribute_means`: all 40 attributes in
one pass; the lecture's :func:`compute_average_faces`: one of them). :func:`prepare_dataset` decides once what a data
root holds and reads its index; every loader given its answer (``root=choice``) uses that index instead of searching
again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from celeba_vae.celeba_files import (
    ATTACHED_DATASETS,
    CELEBA_ATTRIBUTE_NAMES,
    CROP_SIZE,
    EXPECTED_LAYOUTS,
    SPLITS,
    CelebAIndex,
    CelebASource,
    attribute_index,
    download_celeba,
    find_celeba,
    read_index,
)
from celeba_vae.decoded_cache import CachedLoader, build_decoded_cache, subset_rows
from celeba_vae.hub import HUB_FOLDER, HUB_SIZE_GB
from celeba_vae.paths import project_path
from celeba_vae.synthetic import write_synthetic_celeba

__all__ = [  # attribute_index stays importable from here, as the lecture's notebooks import it
    "AttributeMeans", "CelebAFaces", "DatasetChoice", "attribute_index", "attribute_means", "celeba_index",
    "compute_average_faces", "default_transform", "first_images", "get_cached_dataloader",
    "get_cached_dataloaders_celeba", "get_dataloaders_celeba", "prepare_dataset",
]


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
        root: str | Path | DatasetChoice = "data",
        split: str = "train",
        transform: transforms.Compose | None = None,
        crop_size: int = CROP_SIZE,
        index: CelebAIndex | None = None,
    ) -> None:
        self.index = index if index is not None else celeba_index(root)
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
        img = self.index.source.read_image(self.filenames[i], self.crop_size)
        target = self.attributes[i] if self.attributes is not None else torch.empty(0, dtype=torch.int64)
        return self.transform(img), target


def first_images(data_loader: Iterable, max_images: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(images, labels)`` batches of ``data_loader`` up to ``max_images`` images in all (``None``: every batch),
    the last batch cut to fit."""
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images={max_images} must be at least 1 (or None for all)")
    seen = 0
    for images, labels in data_loader:
        take = len(images) if max_images is None else min(len(images), max_images - seen)
        yield (images, labels) if take == len(images) else (images[:take], labels[:take])
        seen += take
        if max_images is not None and seen >= max_images:
            return


def get_dataloaders_celeba(
    batch_size: int,
    num_workers: int = 0,
    train_transforms: transforms.Compose | None = None,
    test_transforms: transforms.Compose | None = None,
    download: bool = False,
    root: str | Path | DatasetChoice = "data",
    *,
    train_images: int | None = None,
    eval_images: int | None = None,
    seed: int = 123,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """The lecture's loaders (JPEG decoding per image): ``(train, valid, test)``; valid serves the valid split.

    ``train_images``/``eval_images`` take the same seeded subsets as :func:`get_cached_dataloaders_celeba`;
    ``root`` may be :func:`prepare_dataset`'s answer, whose index is then used as it is.
    """
    if download and not isinstance(root, DatasetChoice):
        download_celeba(root)
    index = celeba_index(root)
    loaders = []
    for split in SPLITS:
        tfm = train_transforms if split == "train" else test_transforms
        dataset: Dataset = CelebAFaces(split=split, transform=tfm, index=index)
        rows = subset_rows(len(dataset), train_images if split == "train" else eval_images, seed, split)
        if rows is not None:
            dataset = Subset(dataset, rows.tolist())
        loaders.append(DataLoader(dataset, batch_size=batch_size, shuffle=split == "train",
                                  num_workers=num_workers, persistent_workers=num_workers > 0))
    return loaders[0], loaders[1], loaders[2]


def get_cached_dataloaders_celeba(
    batch_size: int,
    device: str | torch.device = "cpu",
    root: str | Path | DatasetChoice = "data",
    crop_size: int = CROP_SIZE,
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    *,
    data_on_gpu: bool | str = "auto",
    train_images: int | None = None,
    eval_images: int | None = None,
    seed: int = 123,
    precision: str = "auto",
) -> tuple[CachedLoader, CachedLoader, CachedLoader]:
    """The fast loaders: ``(train, valid, test)`` from the decoded cache, each built by :func:`get_cached_dataloader`.

    ``train_images=N`` trains on N images of the train split, ``eval_images=M`` caps valid and test at M
    (each drawn reproducibly from ``seed``; only those images are decoded). The data root is searched and its
    index read once for the three splits, not at all when ``root`` is :func:`prepare_dataset`'s answer.
    """
    index = celeba_index(root)
    loaders = [
        get_cached_dataloader(split, batch_size, device, root, data_on_gpu=data_on_gpu, precision=precision,
                              max_images=train_images if split == "train" else eval_images, seed=seed,
                              crop_size=crop_size, cache_dir=cache_dir, num_workers=num_workers, progress=progress,
                              index=index)
        for split in SPLITS
    ]
    return loaders[0], loaders[1], loaders[2]


def get_cached_dataloader(
    split: str,
    batch_size: int,
    device: str | torch.device = "cpu",
    root: str | Path | DatasetChoice = "data",
    *,
    shuffle: bool | None = None,
    data_on_gpu: bool | str = "auto",
    precision: str = "auto",
    max_images: int | None = None,
    seed: int = 123,
    crop_size: int = CROP_SIZE,
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    drop_last: bool = False,
    index: CelebAIndex | None = None,
) -> CachedLoader:
    """One fast loader for ``split`` alone (decoded once into the cache; only this split is decoded or moved).

    ``shuffle`` defaults to ``split == "train"``; ``max_images``/``seed`` select a reproducible subset
    (:func:`decoded_cache.subset_rows`); ``data_on_gpu`` ("auto", True, False) and ``precision`` (the training
    precision, for the memory budget) decide whether the split is copied to the GPU (see :mod:`gpu_budget`).
    ``root`` may be :func:`prepare_dataset`'s answer and ``index`` an index already read: neither is read again.
    """
    index = index if index is not None else celeba_index(root)
    decoded = build_decoded_cache(index.source.image_dir, split, crop_size, cache_dir, num_workers, index=index,
                                  progress=progress, max_images=max_images, seed=seed)
    return CachedLoader(decoded, batch_size, shuffle=split == "train" if shuffle is None else shuffle,
                        device=device, drop_last=drop_last, data_on_gpu=data_on_gpu, precision=precision)


@dataclass(frozen=True)
class DatasetChoice:
    """What ``prepare_dataset`` chose: the data root to read, ``"celeba"`` or ``"synthetic"``, its layout, why, and
    the index of its images (read once; pass the choice as ``root=`` to any loader to use it)."""

    root: Path
    kind: str
    layout: str
    message: str
    index: CelebAIndex

    @property
    def source(self) -> CelebASource:
        return self.index.source

    def record(self, images: int | None = None) -> dict[str, object]:
        """What a checkpoint stores about its training data (``images``: how many training images were used).

        The data are identified by what they are (kind, split sizes, a fingerprint of the file names, and for
        synthetic faces the set's name), so the same CelebA elsewhere matches; layout and root are kept to name
        them in messages.
        """
        record: dict[str, object] = {"kind": self.kind, "layout": self.layout, "root": str(self.root),
                                     **self.index.identity()}
        if self.kind == "synthetic":
            record["synthetic"] = self.root.name
        return record if images is None else {**record, "images": images}


def celeba_index(root: str | Path | DatasetChoice) -> CelebAIndex:
    """The index of the CelebA under ``root``: searched and read now, or the one ``prepare_dataset`` already read."""
    return root.index if isinstance(root, DatasetChoice) else read_index(find_celeba(root))


DOWNLOAD_MB_PER_S = 20  # the speed the banner's time estimate assumes
NOT_FOUND_BANNER = """{rule}
CelebA was NOT found, so this run uses {n:,} SYNTHETIC faces (drawn shapes), not CelebA.
{reason}
To get CelebA, set download = True (a notebook's settings; start_notebook and prepare_dataset take it too) or run
`python run_lecture.py --download`: it fetches the Hugging Face Hub copy, {gb} GB (about {minutes} minutes at
{speed} MB/s), into {hub}. Keep it on local disk, not on Google Drive (reading from Drive is slow).
Other routes: "Getting CelebA" in the README. Figures and metrics.json say "synthetic".
dataset="celeba" stops with an error instead of falling back.
{rule}"""


def _attached_places(data_root: Path, search: Sequence[str | Path] | None) -> list[Path]:
    """The other folders searched when ``data_root`` holds no CelebA: ``search``, or by default (only for the default
    data root) where Kaggle attaches its CelebA dataset, read-only."""
    if search is None:
        search = ATTACHED_DATASETS if data_root == project_path(None, "data") else ()
    return [Path(place) for place in search]


def _find_celeba_in(places: Sequence[Path]) -> tuple[Path, CelebASource] | None:
    """The first of ``places`` that holds CelebA, with its source; ``None`` when none does."""
    for place in places:
        if place.is_dir():
            try:
                return place, find_celeba(place)
            except FileNotFoundError:
                continue
    return None


def prepare_dataset(
    dataset: str = "auto",
    data_root: str | Path | None = None,
    num_synthetic: int = 2000,
    seed: int = 123,
    *,
    download: bool = False,
    search: Sequence[str | Path] | None = None,
) -> DatasetChoice:
    """Decide once what the data are (auto, celeba or synthetic), read their index, and say so in ``message``.

    CelebA is looked for in ``data_root`` (relative to the repository root; ``None``: the default ``data/``), then in
    ``search`` (default: where Kaggle attaches CelebA, for the default data root only); ``download=True`` fetches the
    Hub copy into ``data_root`` when none is found. ``auto`` then falls back to synthetic faces, with a banner naming
    the folders searched and how to get CelebA; ``celeba`` never falls back. Synthetic faces live in
    ``data_root/synthetic-celeba-{n}-seed{seed}``.
    """
    if dataset not in ("auto", "celeba", "synthetic"):
        raise ValueError(f"dataset={dataset!r} is not one of 'auto', 'celeba', 'synthetic'")
    data_root = project_path(data_root, "data")
    if dataset in ("auto", "celeba"):
        try:
            source = find_celeba(data_root)
        except FileNotFoundError as err:
            not_found = err
        else:
            return DatasetChoice(data_root, "celeba", source.layout,
                                 f"Using CelebA ({source.layout} layout) from {data_root}.", read_index(source))
        places = _attached_places(data_root, search)
        found = _find_celeba_in(places)
        if found is not None:
            place, source = found
            return DatasetChoice(place, "celeba", source.layout, f"CelebA is not in {data_root}; using the copy "
                                 f"found at {place} ({source.layout} layout).", read_index(source))
        if download:
            source = download_celeba(data_root)
            return DatasetChoice(data_root, "celeba", source.layout,
                                 f"Using CelebA ({source.layout} layout) from {data_root}.", read_index(source))
        also = f"\nAlso searched: {', '.join(map(str, places))}." if places else ""
        if dataset == "celeba":
            raise FileNotFoundError(f"{not_found}{also}") from not_found
        layouts = EXPECTED_LAYOUTS.format(root=data_root)
        reason = (layouts if layouts in str(not_found) or not data_root.is_dir() else str(not_found)) + also
    root = data_root / f"synthetic-celeba-{num_synthetic}-seed{seed}"
    done = root / "COMPLETE"
    if not done.is_file():
        write_synthetic_celeba(root, num_images=num_synthetic, seed=seed)
        done.write_text("ok\n")
    message = f"Using {num_synthetic:,} SYNTHETIC faces in {root} (not CelebA), as dataset='synthetic' asks."
    if dataset == "auto":
        message = NOT_FOUND_BANNER.format(rule="=" * 100, n=num_synthetic, reason=reason, gb=HUB_SIZE_GB,
                                          minutes=round(HUB_SIZE_GB * 1000 / DOWNLOAD_MB_PER_S / 60),
                                          speed=DOWNLOAD_MB_PER_S, hub=data_root / HUB_FOLDER)
    source = find_celeba(root)
    return DatasetChoice(root, "synthetic", source.layout, message, read_index(source))


@dataclass(frozen=True)
class AttributeMeans:
    """Mean embedding (image or latent mean) of the examples with and without each of the 40 attributes."""

    with_attribute: torch.Tensor
    without_attribute: torch.Tensor
    count_with: torch.Tensor
    count_without: torch.Tensor

    def direction(self, attribute: str | int) -> torch.Tensor:
        """``mean_with - mean_without`` of one attribute, given by name or index."""
        index = attribute_index(attribute) if isinstance(attribute, str) else attribute
        if self.count_with[index] == 0 or self.count_without[index] == 0:
            raise ValueError(f"attribute {CELEBA_ATTRIBUTE_NAMES[index]} is "
                             f"{'never' if self.count_with[index] == 0 else 'always'} present in these images; "
                             "a direction needs examples with and without it")
        return self.with_attribute[index] - self.without_attribute[index]

    def aligned_attributes(self, attribute: str | int, k: int = 4) -> list[tuple[str, float]]:
        """The ``k`` other attributes whose directions are most aligned with this one's (largest ``|cosine|``),
        as ``(name, cosine)``: a direction that also moves them changes more than its own attribute."""
        index = attribute_index(attribute) if isinstance(attribute, str) else attribute
        target = self.direction(index).flatten()
        cosines = []
        for other, name in enumerate(CELEBA_ATTRIBUTE_NAMES):
            if other == index or self.count_with[other] == 0 or self.count_without[other] == 0:
                continue
            cosine = torch.nn.functional.cosine_similarity(target, self.direction(other).flatten(), dim=0)
            cosines.append((name, float(cosine)))
        return sorted(cosines, key=lambda item: -abs(item[1]))[:k]


@torch.no_grad()
def attribute_means(
    data_loader: Iterable,
    device: str | torch.device,
    model: torch.nn.Module | None = None,
    max_images: int | None = 20_000,
    encoding_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> AttributeMeans:
    """Means with and without every attribute in one pass over up to ``max_images`` images, summed on the device.

    The embedding is the image itself (average faces), the posterior mean of ``model`` (in eval mode), or whatever
    ``encoding_fn`` returns (the lecture's ``compute_average_faces``).
    """
    if model is not None:
        was_training = model.training
        model.eval()

        def encoding_fn(images: torch.Tensor) -> torch.Tensor:
            return model.encode(images)[0]  # the posterior means
    totals = with_sums = shape = None
    count_with = torch.zeros(len(CELEBA_ATTRIBUTE_NAMES), device=device)
    seen = 0
    try:
        for images, labels in first_images(data_loader, max_images):
            if labels.ndim != 2 or labels.shape[1] != len(CELEBA_ATTRIBUTE_NAMES):
                raise ValueError(f"labels of shape {tuple(labels.shape)} hold no CelebA attributes; a bare image "
                                 "folder has no annotations: add list_attr_celeba.txt and list_eval_partition.txt")
            images, labels = images.to(device), labels.to(device, torch.float32)
            embedded = encoding_fn(images) if encoding_fn is not None else images
            shape = embedded.shape[1:]
            embedded = embedded.to(device).flatten(1).float()
            batch_with = labels.T @ embedded
            with_sums = batch_with if with_sums is None else with_sums + batch_with
            totals = embedded.sum(0) if totals is None else totals + embedded.sum(0)
            count_with += labels.sum(0)
            seen += len(images)
    finally:
        if model is not None:
            model.train(was_training)
    if totals is None:
        raise ValueError("attribute_means got an empty data loader")
    count_without = seen - count_with
    mean_with = with_sums / count_with.clamp(min=1)[:, None]
    mean_without = (totals - with_sums) / count_without.clamp(min=1)[:, None]
    shape = (len(CELEBA_ATTRIBUTE_NAMES), *shape)
    return AttributeMeans(mean_with.reshape(shape).cpu(), mean_without.reshape(shape).cpu(),
                          count_with.cpu(), count_without.cpu())


def compute_average_faces(
    feature_idx: int,
    image_dim: int | tuple[int, ...],
    data_loader: Iterable,
    device: str | torch.device | None = None,
    encoding_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average image (or latent code, with ``encoding_fn``) of examples with and without attribute ``feature_idx``:
    the lecture's call, one attribute of :func:`attribute_means` over every image of ``data_loader``."""
    means = attribute_means(data_loader, device or "cpu", max_images=None, encoding_fn=encoding_fn)
    if means.count_with[feature_idx] == 0 or means.count_without[feature_idx] == 0:
        raise ValueError(f"attribute {CELEBA_ATTRIBUTE_NAMES[feature_idx]} is "
                         f"{'never' if means.count_with[feature_idx] == 0 else 'always'} present in this data; "
                         "averages with and without it need both")
    return (means.with_attribute[feature_idx].reshape(image_dim),
            means.without_attribute[feature_idx].reshape(image_dim))
