"""The Hub copy of CelebA (flwrlabs/celeba parquet shards): detection, index, images equal to the JPEG layouts,
the decoded cache, broken shards, and the download (only the network calls are faked)."""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx2
import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from huggingface_hub.hf_api import RepoFile
from PIL import Image

from celeba_vae import celeba_files, decoded_cache, hub
from celeba_vae.celeba_files import (
    CELEBA_ATTRIBUTE_NAMES,
    HubSource,
    download_celeba,
    find_celeba,
    read_index,
)
from celeba_vae.checkpoint import check_data
from celeba_vae.decoded_cache import build_decoded_cache
from celeba_vae.hub import HUB_CACHE_FOLDER, HUB_CONFIG, HUB_FOLDER, HUB_REPO_ID
from helper_data import CelebAFaces, get_cached_dataloaders_celeba, get_dataloaders_celeba, prepare_dataset

SPLITS = ("train", "valid", "test")


def _png(jpeg: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_hub_shards(jpeg_root: Path, folder: Path, shards_per_split: int = 2, with_paths: bool = True,
                     encode: str = "jpeg", signed: bool = False) -> Path:
    """Write the JPEG-layout CelebA at ``jpeg_root`` as Hub shards in ``folder`` (as flwrlabs/celeba lays them out).

    Rows in file order, 4 rows per row group; ``image`` is the datasets Image struct (bytes, path); attributes are
    booleans (or 1/-1 with ``signed``); ``encode="png"`` stores lossless PNGs of the decoded JPEGs, as the Hub does.
    """
    index = read_index(find_celeba(jpeg_root))
    folder.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(SPLITS):
        rows = np.flatnonzero(index.partition == s)
        for k, part in enumerate(np.array_split(rows, shards_per_split)):
            data = [(index.source.image_dir / index.filenames[i]).read_bytes() for i in part]
            images = [{"bytes": _png(d) if encode == "png" else d,
                       "path": index.filenames[i] if with_paths else None} for i, d in zip(part, data, strict=True)]
            columns = {"image": pa.array(images, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                       "celeb_id": pa.array(part.astype(np.int64) % 7)}
            for a, name in enumerate(CELEBA_ATTRIBUTE_NAMES):
                values = index.attributes[part, a]
                columns[name] = pa.array(np.where(values > 0, 1, -1) if signed else values.astype(bool))
            pq.write_table(pa.table(columns), folder / f"{split}-{k:05d}-of-{shards_per_split:05d}.parquet",
                           row_group_size=4)
    return folder


def _all_items(dataset: CelebAFaces) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


@pytest.fixture(scope="module")
def hub_root(celeba_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the synthetic CelebA as a Hub download (root/celeba-hub/img_align+identity+attr)."""
    root = tmp_path_factory.mktemp("hub") / "data"
    write_hub_shards(celeba_root, root / HUB_FOLDER / HUB_CONFIG)
    return root


# ----------------------------------------------------------------------------- layout and index


@pytest.mark.parametrize("with_paths", [True, False])
@pytest.mark.parametrize("encode", ["jpeg", "png"])
def test_hub_layout_gives_the_same_examples_as_the_jpeg_layouts(
    celeba_root: Path, tmp_path: Path, with_paths: bool, encode: str
) -> None:
    write_hub_shards(celeba_root, tmp_path / HUB_FOLDER / HUB_CONFIG, with_paths=with_paths, encode=encode)
    source = find_celeba(tmp_path)
    assert isinstance(source, HubSource) and source.layout == "hub" and source.has_attributes
    assert source.image_dir == tmp_path / HUB_FOLDER / HUB_CONFIG and len(source.shards) == 6
    reference = read_index(find_celeba(celeba_root))
    for split in SPLITS:
        ours = CelebAFaces(tmp_path, split)
        expected = CelebAFaces(split=split, index=reference)
        if with_paths:
            assert ours.filenames == expected.filenames
        else:
            assert ours.filenames == [f"{split}-{i:06d}" for i in range(len(expected))]
        images, labels = _all_items(ours)
        expected_images, expected_labels = _all_items(expected)
        assert images.shape[1:] == (3, 128, 128) and labels.dtype == torch.int64
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_attributes_stored_as_one_and_minus_one(celeba_root: Path, tmp_path: Path) -> None:
    write_hub_shards(celeba_root, tmp_path / HUB_CONFIG, signed=True)
    ours, reference = read_index(find_celeba(tmp_path)), read_index(find_celeba(celeba_root))
    assert ours.attributes.dtype == np.uint8 and np.array_equal(ours.attributes, reference.attributes)


def test_the_decoded_cache_from_shards_equals_the_one_from_jpegs(hub_root: Path, celeba_copy: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoded_cache, "CHUNK", 8)
    for split in SPLITS:
        ours = build_decoded_cache(hub_root, split, cache_dir=tmp_path / "hub", num_workers=2, progress=False)
        theirs = build_decoded_cache(celeba_copy, split, num_workers=1, progress=False)
        assert np.array_equal(ours.images, theirs.images) and np.array_equal(ours.attributes, theirs.attributes)


def _many_rows_as_hub(celeba_root: Path, folder: Path, rows_per_split: int, rows_per_group: int) -> Path:
    """Hub shards (two per split) of ``rows_per_split`` rows each, the synthetic JPEGs repeated under new names."""
    index = read_index(find_celeba(celeba_root))
    jpegs = [(index.source.image_dir / name).read_bytes() for name in index.filenames]
    folder.mkdir(parents=True)
    number = 0
    for split in SPLITS:
        for k in range(2):
            rows = range(number, number + rows_per_split // 2)
            number += len(rows)
            images = [{"bytes": jpegs[i % len(jpegs)], "path": f"{i + 1:06d}.jpg"} for i in rows]
            columns = {"image": pa.array(images, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}
            columns.update({name: pa.array(np.arange(len(rows)) % 2 == 0) for name in CELEBA_ATTRIBUTE_NAMES})
            pq.write_table(pa.table(columns), folder / f"{split}-{k:05d}-of-00002.parquet",
                           row_group_size=rows_per_group)
    return folder


def test_eight_decode_threads_read_each_row_group_once(celeba_root: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """On a many-core machine each row group is read once, not once per thread that happens to need it."""
    _many_rows_as_hub(celeba_root, tmp_path / HUB_CONFIG, rows_per_split=480, rows_per_group=16)
    reads: dict[tuple[str, int], int] = {}
    real_open = hub._open

    def counting_open(path: Path) -> pq.ParquetFile:
        shard = real_open(path)
        real_read = shard.read_row_group

        def read_row_group(group: int, *args: object, **kwargs: object) -> pa.Table:
            reads[(path.name, group)] = reads.get((path.name, group), 0) + 1
            return real_read(group, *args, **kwargs)

        shard.read_row_group = read_row_group
        return shard

    monkeypatch.setattr(hub, "_open", counting_open)
    hub._row_group_bytes.cache_clear()
    decoded = build_decoded_cache(tmp_path, "train", cache_dir=tmp_path / "cache", num_workers=8, progress=False)
    assert len(decoded) == 480
    assert sorted(reads) == [(f"train-{k:05d}-of-00002.parquet", g) for k in range(2) for g in range(15)]
    assert set(reads.values()) == {1}, f"a row group was read {max(reads.values())} times"
    second = pq.read_table(tmp_path / HUB_CONFIG / "train-00001-of-00002.parquet").column("image")
    for row in (0, 100, 239):
        image = Image.open(io.BytesIO(second[row]["bytes"].as_py())).convert("RGB")
        assert np.array_equal(decoded.images[240 + row], celeba_files.center_crop(image))


def test_source_pickles_and_reads_in_any_order(hub_root: Path) -> None:
    source = find_celeba(hub_root)
    clone = pickle.loads(pickle.dumps(source))
    assert clone == source and len(pickle.dumps(source)) < 4096
    names = read_index(source).split("train")[0]
    in_order = [np.asarray(img) for img in clone.iter_images(names)]
    shuffled = np.random.default_rng(0).permutation(len(names))
    for i, img in zip(shuffled, clone.iter_images([names[i] for i in shuffled]), strict=True):
        assert np.array_equal(np.asarray(img), in_order[i])
    assert np.array_equal(np.asarray(source.read_image(names[5])), in_order[5])
    with pytest.raises(FileNotFoundError, match="image 999999.jpg is not in the Hub shards"):
        source.read_image("999999.jpg")


def test_stamps_follow_shard_path_size_mtime_and_row(hub_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(hub_root, tmp_path / "data"))
    source = find_celeba(root)
    names = read_index(source).filenames
    stamps = list(source.stamps(names))
    assert len(set(stamps)) == len(names) and stamps[0].startswith(f"{source.shards[0].path}:")
    assert stamps[0].endswith(":0") and stamps[1].endswith(":1")
    os.utime(source.shards[-1].path, ns=(1, 1))
    changed = [a != b for a, b in zip(stamps, source.stamps(names), strict=True)]
    assert any(changed) and not all(changed)


def _hub_cache(celeba_root: Path, home: Path) -> Path:
    """Lay the shards out as huggingface_hub's cache does: blobs, a snapshot of symlinks, refs/main."""
    repo = home / "hub" / HUB_CACHE_FOLDER
    shards = write_hub_shards(celeba_root, home.parent / "staging")
    revision = "2d738f56e0e7f925ea36ae7c808ea925264aacec"
    snapshot = repo / "snapshots" / revision / HUB_CONFIG
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for k, path in enumerate(sorted(shards.iterdir())):
        blob = repo / "blobs" / f"{k:064x}"
        shutil.move(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "snapshots" / ("0" * 40)).mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_hub_cache_and_snapshot_folders_are_found(celeba_root: Path, tmp_path: Path) -> None:
    snapshot = _hub_cache(celeba_root, tmp_path / "huggingface")
    expected = read_index(find_celeba(celeba_root)).filenames
    for root in (tmp_path / "huggingface", tmp_path / "huggingface" / "hub", snapshot.parent.parent.parent,
                 snapshot.parent, snapshot):
        source = find_celeba(root)
        assert source.layout == "hub" and source.image_dir == snapshot, root
        assert read_index(source).filenames == expected


def test_split_subfolders_as_the_parquet_conversion_writes_them(celeba_root: Path, tmp_path: Path) -> None:
    flat = write_hub_shards(celeba_root, tmp_path / "flat")
    for path in flat.iterdir():
        split, number = path.name.split("-")[:2]
        (tmp_path / HUB_CONFIG / split).mkdir(parents=True, exist_ok=True)
        path.rename(tmp_path / HUB_CONFIG / split / f"{int(number):04d}.parquet")
    index = read_index(find_celeba(tmp_path))
    assert index.filenames == read_index(find_celeba(celeba_root)).filenames


# ----------------------------------------------------------------------------- broken shards


def test_missing_shard_means_an_incomplete_download(hub_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(hub_root, tmp_path / "data"))
    shards = root / HUB_FOLDER / HUB_CONFIG
    (shards / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 2 train shards \(train-00001-of-00002.parquet is missing\)"
                                                r".*incomplete.*download_celeba again"):
        find_celeba(root)
    for path in shards.glob("test-*"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{shards} has no test shards: the download is incomplete")):
        find_celeba(root)


def test_missing_attribute_column_names_the_shard(celeba_root: Path, tmp_path: Path) -> None:
    shards = write_hub_shards(celeba_root, tmp_path / HUB_CONFIG, shards_per_split=1)
    victim = shards / "valid-00000-of-00001.parquet"
    pq.write_table(pq.read_table(victim).drop_columns(["Smiling", "Young"]), victim)
    expected = f"{victim} lacks 2 of the 40 CelebA attribute columns (Smiling, Young)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_index(find_celeba(tmp_path))


def test_null_attribute_and_missing_image_column(celeba_root: Path, tmp_path: Path) -> None:
    shards = write_hub_shards(celeba_root, tmp_path / HUB_CONFIG, shards_per_split=1)
    victim = shards / "test-00000-of-00001.parquet"
    table = pq.read_table(victim)
    nulls = pa.array([None] + table.column("Bald").to_pylist()[1:], type=pa.bool_())
    pq.write_table(table.set_column(table.schema.get_field_index("Bald"), "Bald", nulls), victim)
    with pytest.raises(ValueError, match=re.escape(f"{victim}: attribute Bald has 1 missing value")):
        read_index(find_celeba(tmp_path))
    pq.write_table(table.drop_columns(["image"]), victim)
    with pytest.raises(ValueError, match=re.escape(f"{victim} has no image column")):
        read_index(find_celeba(tmp_path))


@pytest.mark.parametrize("damage", ["html", "truncated"])
def test_damaged_shard_says_delete_and_download_again(hub_root: Path, tmp_path: Path, damage: str) -> None:
    root = Path(shutil.copytree(hub_root, tmp_path / "data"))
    victim = root / HUB_FOLDER / HUB_CONFIG / "valid-00000-of-00002.parquet"
    data = victim.read_bytes()
    victim.write_bytes(b"<!DOCTYPE html><html>quota</html>" if damage == "html" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{victim} is not a readable parquet shard") + ".*delete it"):
        read_index(find_celeba(root))


# ----------------------------------------------------------------------------- download (network calls faked)


def _fake_hub(monkeypatch: pytest.MonkeyPatch, celeba_root: Path, staging: Path, calls: list[dict]) -> None:
    """Fake the two network calls: the file listing (sizes) and snapshot_download (copies small shards)."""
    write_hub_shards(celeba_root, staging)

    def list_repo_tree(self: huggingface_hub.HfApi, repo_id: str, path_in_repo: str | None = None,
                       **kwargs: object) -> list[RepoFile]:
        calls.append({"call": "list", "repo_id": repo_id, "path_in_repo": path_in_repo, **kwargs})
        return [RepoFile(path=f"{HUB_CONFIG}/{p.name}", size=p.stat().st_size, oid="0")
                for p in sorted(staging.iterdir())]

    def snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append({"call": "download", "repo_id": repo_id, **kwargs})
        target = Path(str(kwargs["local_dir"])) / HUB_CONFIG
        target.mkdir(parents=True, exist_ok=True)
        for path in staging.iterdir():
            if not (target / path.name).exists():
                shutil.copy(path, target / path.name)
        return str(kwargs["local_dir"])

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def test_download_ends_in_a_usable_hub_layout(celeba_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[dict] = []
    _fake_hub(monkeypatch, celeba_root, tmp_path / "staging", calls)
    root = tmp_path / "data"
    train, valid, test = get_dataloaders_celeba(batch_size=8, download=True, root=root)
    assert [c["call"] for c in calls] == ["list", "download"]
    assert calls[0]["repo_id"] == calls[1]["repo_id"] == HUB_REPO_ID
    assert calls[0]["path_in_repo"] == HUB_CONFIG and calls[0]["repo_type"] == calls[1]["repo_type"] == "dataset"
    assert calls[1]["local_dir"] == root / HUB_FOLDER and calls[1]["allow_patterns"] == [f"{HUB_CONFIG}/*.parquet"]
    out = capsys.readouterr().out
    assert f"{HUB_REPO_ID}, {HUB_CONFIG}): 6 files, " in out and f"GB, into {root / HUB_FOLDER}" in out
    assert train.dataset.index.source.layout == "hub"
    images, labels = next(iter(valid))
    assert images.shape[1:] == (3, 128, 128) and labels.shape[1] == 40
    assert len(test.dataset) == len(CelebAFaces(celeba_root, "test"))
    download_celeba(root)
    assert len(calls) == 2, "CelebA is already there: no network call"


def test_an_interrupted_download_is_resumed(celeba_root: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    _fake_hub(monkeypatch, celeba_root, tmp_path / "staging", calls)
    root = tmp_path / "data"
    download_celeba(root)
    shards = root / HUB_FOLDER / HUB_CONFIG
    kept = shards / "train-00000-of-00002.parquet"
    mtime = kept.stat().st_mtime_ns
    (shards / "test-00001-of-00002.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        find_celeba(root)
    assert download_celeba(root).layout == "hub" and [c["call"] for c in calls][2:] == ["list", "download"]
    assert kept.stat().st_mtime_ns == mtime


def test_a_download_that_would_not_fit_stops_before_writing(celeba_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    _fake_hub(monkeypatch, celeba_root, tmp_path / "staging", calls)
    needed = sum(p.stat().st_size for p in (tmp_path / "staging").iterdir())
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=1 << 30, used=(1 << 30) - 1000,
                                                                           free=1000))
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(OSError, match=f"not enough disk space in {root / HUB_FOLDER} for the 6 shards of CelebA: "
                                      f"{needed / (1 << 30):.2f} GiB needed, 0.00 GiB free. .*data folder on a disk "
                                      "with room"):
        download_celeba(root)
    assert [c["call"] for c in calls] == ["list"] and list(root.iterdir()) == []


@pytest.mark.parametrize("failure", ["offline", "connect", "nothing-cached", "not-installed"])
def test_unreachable_hub_explains_the_manual_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    failure: str) -> None:
    def list_repo_tree(self: huggingface_hub.HfApi, *args: object, **kwargs: object) -> list[RepoFile]:
        if failure == "offline":
            raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")
        if failure == "connect":
            raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
        return [RepoFile(path=f"{HUB_CONFIG}/train-00000-of-00001.parquet", size=10, oid="0")]

    def snapshot_download(repo_id: str, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    if failure == "not-installed":
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    reason = {"offline": "OfflineModeIsEnabled: Cannot reach", "connect": "ConnectError: .Errno -3. Temporary",
              "nothing-cached": "LocalEntryNotFoundError: An error",
              "not-installed": "huggingface_hub is not installed"}
    root = tmp_path / "data"
    with pytest.raises(ConnectionError) as caught:
        download_celeba(root)
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[0].startswith("The Hugging Face Hub could not be reached") and len(lines) <= 12
    assert re.search(reason[failure], lines[0])
    assert f"hf download {HUB_REPO_ID} --repo-type dataset" in message and f"--local-dir {root}/{HUB_FOLDER}" in message
    assert f"{root}/celeba/" in message and "img_align_celeba.zip" in message and "list_eval_partition.txt" in message
    assert "jessicali9530/celeba-dataset" in message and "mmlab.ie.cuhk.edu.hk" in message
    assert not any(p.is_file() and p.suffix == ".parquet" for p in root.rglob("*"))


# ----------------------------------------------------------------------------- one decision per data root


def test_a_hub_root_is_searched_and_its_table_read_once_for_every_split(
    hub_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    searches: list[Path] = []
    real_search = celeba_files.find_hub_shards
    monkeypatch.setattr(celeba_files, "find_hub_shards", lambda root: searches.append(root) or real_search(root))
    hub._read_hub_table.cache_clear()
    choice = prepare_dataset("celeba", hub_root)
    loaders = get_cached_dataloaders_celeba(4, root=choice, cache_dir=tmp_path / "cache", num_workers=1,
                                            progress=False)
    assert searches == [hub_root] and hub._read_hub_table.cache_info().misses == 1
    assert [len(loader.split) for loader in loaders] == [48, 6, 6]


def test_weights_trained_on_the_jpegs_know_the_hub_copy_as_the_same_data(hub_root: Path, celeba_root: Path) -> None:
    hub_record = prepare_dataset("celeba", hub_root).record()
    jpeg_record = prepare_dataset("celeba", celeba_root).record()
    assert hub_record["layout"] == "hub" and jpeg_record["layout"] == "torchvision"
    check_data({"settings": {"data": jpeg_record}}, hub_record)
