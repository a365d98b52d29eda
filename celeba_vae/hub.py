"""CelebA as the Hugging Face Hub holds it (``flwrlabs/celeba``): finding, reading and downloading its parquet shards.

The ``img_align+identity+attr`` config is one folder of shards, ``{split}-{i:05d}-of-{n:05d}.parquet`` for the splits
train (19 shards), valid and test (3 each), about 11.7 GB in all. Each row holds ``image`` (a struct of the encoded
``bytes`` and the original ``path``, as the ``datasets`` Image feature stores it), ``celeb_id`` and the 40 attributes
as booleans, named as in ``list_attr_celeba.txt``. This module knows nothing of the rest of the data layer:
:mod:`celeba_files` wraps it into a ``CelebASource`` like the JPEG layouts. pyarrow and huggingface_hub are imported
only when a Hub copy is read or downloaded.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from celeba_vae.atomic_files import check_free_space

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

HUB_REPO_ID = "flwrlabs/celeba"
HUB_CONFIG = "img_align+identity+attr"
HUB_FOLDER = "celeba-hub"
HUB_CACHE_FOLDER = "datasets--flwrlabs--celeba"
HUB_SIZE_GB = 11.7
SPLIT_NAMES = ("train", "valid", "test")
_SPLIT_OF_PREFIX = {"train": 0, "valid": 1, "validation": 1, "test": 2}
_SPLIT_PREFIX = re.compile(r"(train|validation|valid|test)(?:[-_.]|$)")
_NUMBERED_SHARD = re.compile(r"(?P<prefix>[a-z]+)-(?P<index>\d+)-of-(?P<count>\d+)")
_HUB_ROUTE = (f"run download_celeba again (it keeps the shards already there), or `hf download {HUB_REPO_ID} "
              f'--repo-type dataset --include "{HUB_CONFIG}/*" --local-dir <root>/{HUB_FOLDER}`')


@dataclass(frozen=True)
class HubShard:
    """One parquet shard and the split its rows belong to (0 train, 1 valid, 2 test)."""

    path: Path
    split: int


@dataclass(frozen=True)
class HubTable:
    """Everything but the images: one entry per row, in shard order (train, valid, test; files sorted by name)."""

    names: list[str]
    partition: np.ndarray
    attributes: np.ndarray
    shard_of: np.ndarray
    row_of: np.ndarray
    position: dict[str, int]
    group_starts: tuple[np.ndarray, ...]
    signature: tuple[tuple[int, int], ...]


# --------------------------------------------------------------------------- finding the shards


def _snapshot(repo: Path) -> Path | None:
    """The snapshot of a hub-cache repo folder that ``refs/main`` names, else the newest one."""
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    pinned = snapshots / ref.read_text().strip() if ref.is_file() else None
    if pinned is not None and pinned.is_dir():
        return pinned
    revisions = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(revisions, key=lambda p: p.stat().st_mtime_ns) if revisions else None


def shard_folders(root: Path) -> Iterator[Path]:
    """Where the config's shards may be under ``root``: the download folder, a snapshot, a hub cache, ``root``."""
    yield root / HUB_FOLDER / HUB_CONFIG
    yield root / HUB_CONFIG
    yield root
    for repo in (root / "hub" / HUB_CACHE_FOLDER, root / HUB_CACHE_FOLDER, root):
        snapshot = _snapshot(repo)
        if snapshot is not None:
            yield snapshot / HUB_CONFIG


def _shards_in(folder: Path) -> list[HubShard]:
    if not folder.is_dir():
        return []
    shards = []
    for path in folder.glob("*.parquet"):
        match = _SPLIT_PREFIX.match(path.stem)
        if match:
            shards.append(HubShard(path, _SPLIT_OF_PREFIX[match.group(1)]))
    for name, split in _SPLIT_OF_PREFIX.items():
        shards.extend(HubShard(path, split) for path in (folder / name).glob("*.parquet"))
    return sorted(shards, key=lambda s: (s.split, s.path.parent.name, s.path.name))


def _check_complete(folder: Path, shards: list[HubShard]) -> None:
    """Every split present and, where names say ``-of-N``, all N shards of it: else the download was cut short."""
    missing = [SPLIT_NAMES[i] for i in range(3) if all(s.split != i for s in shards)]
    if missing:
        raise FileNotFoundError(f"the Hub copy of CelebA in {folder} has no {' or '.join(missing)} shards: "
                                f"the download is incomplete; {_HUB_ROUTE}")
    numbered: dict[tuple[str, int], set[int]] = {}
    for shard in shards:
        match = _NUMBERED_SHARD.fullmatch(shard.path.stem)
        if match:
            numbered.setdefault((match["prefix"], int(match["count"])), set()).add(int(match["index"]))
    for (prefix, count), present in numbered.items():
        absent = sorted(set(range(count)) - present)
        if absent:
            raise FileNotFoundError(
                f"the Hub copy of CelebA in {folder} has {len(present)} of the {count} {prefix} shards "
                f"({prefix}-{absent[0]:05d}-of-{count:05d}.parquet is missing): the download is incomplete; "
                f"{_HUB_ROUTE}"
            )


def find_hub_shards(root: Path) -> tuple[Path, tuple[HubShard, ...]] | None:
    """The first folder under ``root`` holding the config's shards, and its shards; ``None`` when there are none.

    Raises ``FileNotFoundError`` when the shards found are an incomplete download.
    """
    for folder in shard_folders(root):
        shards = _shards_in(folder)
        if shards:
            _check_complete(folder, shards)
            return folder, tuple(shards)
    return None


# --------------------------------------------------------------------------- reading the shards


def _pyarrow() -> ModuleType:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise ImportError("reading the Hub copy of CelebA (parquet shards) needs pyarrow: pip install pyarrow") from err
    return pyarrow


def _open(path: Path) -> pq.ParquetFile:
    pa = _pyarrow()
    try:
        return pa.parquet.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{path} is not a readable parquet shard ({err}); delete it and {_HUB_ROUTE}") from err


def _image_field(path: Path, schema: pa.Schema) -> str:
    """The column holding the encoded images: ``image.bytes`` (the datasets Image struct) or a binary ``image``."""
    pa = _pyarrow()
    if "image" in schema.names:
        kind = schema.field("image").type
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return "image.bytes"
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return "image"
    raise ValueError(f"{path} has no image column of encoded bytes (columns: {', '.join(schema.names)}); "
                     f"it is not a shard of {HUB_REPO_ID}'s {HUB_CONFIG} config: delete it or move it elsewhere")


def _has_paths(schema: pa.Schema) -> bool:
    pa = _pyarrow()
    kind = schema.field("image").type
    return pa.types.is_struct(kind) and kind.get_field_index("path") >= 0


def _zero_one(path: Path, name: str, column: pa.Array) -> np.ndarray:
    """An attribute column (booleans, 0/1 or 1/-1) as uint8 0/1."""
    if column.null_count:
        raise ValueError(f"{path}: attribute {name} has {column.null_count} missing value(s); download the shard again")
    values = np.asarray(column.to_numpy(zero_copy_only=False))
    if values.dtype != bool and not np.isin(values, (-1, 0, 1)).all():
        raise ValueError(f"{path}: attribute {name} holds values other than true/false, 0/1 or 1/-1; "
                         "download the shard again")
    return (values > 0).astype(np.uint8)


def _signature(shards: tuple[HubShard, ...]) -> tuple[tuple[int, int], ...]:
    stats = [os.stat(shard.path) for shard in shards]
    return tuple((st.st_size, st.st_mtime_ns) for st in stats)


def read_hub_table(shards: tuple[HubShard, ...], attribute_names: tuple[str, ...]) -> HubTable:
    """Names, splits and 0/1 attributes (in the order of ``attribute_names``) of every row, reading no image bytes.

    Names are the images' original file names when the shards carry them (all present and distinct), otherwise
    ``{split}-{row:06d}`` by row within the split. The result is cached while the shards are unchanged.
    """
    return _read_hub_table(shards, attribute_names, _signature(shards))


@functools.lru_cache(maxsize=2)
def _read_hub_table(
    shards: tuple[HubShard, ...], attribute_names: tuple[str, ...], signature: tuple[tuple[int, int], ...]
) -> HubTable:
    paths: list[str | None] = []
    blocks, splits, shard_of, row_of, group_starts = [], [], [], [], []
    for k, shard in enumerate(shards):
        pf = _open(shard.path)
        schema = pf.schema_arrow
        _image_field(shard.path, schema)
        missing = [name for name in attribute_names if name not in schema.names]
        if missing:
            raise ValueError(f"{shard.path} lacks {len(missing)} of the {len(attribute_names)} CelebA attribute "
                             f"columns ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); it is not a "
                             f"shard of {HUB_REPO_ID}'s {HUB_CONFIG} config: delete it and {_HUB_ROUTE}")
        with_paths = _has_paths(schema)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        group_starts.append(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
        columns = list(attribute_names) + (["image.path"] if with_paths else [])
        try:
            for batch in pf.iter_batches(batch_size=65_536, columns=columns):
                blocks.append(np.column_stack([_zero_one(shard.path, n, batch.column(n)) for n in attribute_names]))
                if with_paths:
                    paths.extend(batch.column("image").field("path").to_pylist())
                else:
                    paths.extend([None] * batch.num_rows)
        except (OSError, _pyarrow().ArrowException) as err:
            raise ValueError(f"{shard.path} is damaged ({err}); delete it and {_HUB_ROUTE}") from err
        rows = sum(sizes)
        splits.append(np.full(rows, shard.split, dtype=np.int8))
        shard_of.append(np.full(rows, k, dtype=np.int32))
        row_of.append(np.arange(rows, dtype=np.int64))
    partition = np.concatenate(splits)
    names = [PurePosixPath(p).name if p else "" for p in paths]
    if not all(names) or len(set(names)) != len(names):
        counters = np.zeros(3, dtype=np.int64)
        names = []
        for split in partition:
            names.append(f"{SPLIT_NAMES[split]}-{counters[split]:06d}")
            counters[split] += 1
    return HubTable(names, partition, np.concatenate(blocks), np.concatenate(shard_of), np.concatenate(row_of),
                    {name: i for i, name in enumerate(names)}, tuple(group_starts), signature)


@functools.lru_cache(maxsize=2)
def _row_group_bytes(path: Path, group: int, stamp: tuple[int, int]) -> list[bytes]:
    """The encoded images of one row group (``stamp`` keys the cache to the file's size and mtime)."""
    pf = _open(path)
    field = _image_field(path, pf.schema_arrow)
    try:
        column = pf.read_row_group(group, columns=[field]).column("image").combine_chunks()
    except (OSError, _pyarrow().ArrowException) as err:
        raise ValueError(f"{path} is damaged ({err}); delete it and {_HUB_ROUTE}") from err
    return (column.field("bytes") if field == "image.bytes" else column).to_pylist()


def _position(shards: tuple[HubShard, ...], table: HubTable, name: str) -> int:
    i = table.position.get(name)
    if i is None:
        raise FileNotFoundError(f"image {name} is not in the Hub shards in {shards[0].path.parent}; "
                                "rebuild the index (read_index) after changing the shards")
    return i


def hub_row_groups(shards: tuple[HubShard, ...], table: HubTable, names: Iterable[str]) -> np.ndarray:
    """For each of ``names``, the number of the row group holding it (numbered across all shards)."""
    rows = np.array([_position(shards, table, name) for name in names], dtype=np.int64)
    shard, row = table.shard_of[rows], table.row_of[rows]
    groups = np.empty(len(rows), dtype=np.int64)
    first = 0
    for k, starts in enumerate(table.group_starts):
        here = shard == k
        groups[here] = first + np.searchsorted(starts, row[here], side="right") - 1
        first += len(starts)
    return groups


def iter_hub_bytes(shards: tuple[HubShard, ...], table: HubTable, names: Iterable[str]) -> Iterator[tuple[bytes, str]]:
    """The encoded images ``names``, in that order, each with a label (shard, row) for messages.

    Each call keeps the row group it read while the names after it are in that group, so a decode thread given
    names in file order reads each of its groups once, whatever other threads read meanwhile. The last two groups
    read are also cached for all calls, for images asked for one at a time (:meth:`HubSource.read_image`).
    """
    held, images = (-1, -1), []
    for name in names:
        i = _position(shards, table, name)
        k, row = int(table.shard_of[i]), int(table.row_of[i])
        group = int(np.searchsorted(table.group_starts[k], row, side="right")) - 1
        if (k, group) != held:
            held, images = (k, group), _row_group_bytes(shards[k].path, group, table.signature[k])
        data = images[row - int(table.group_starts[k][group])]
        if data is None:
            raise ValueError(f"{shards[k].path}, row {row} ({name}) holds no image bytes; download the shard again")
        yield data, f"{shards[k].path}, row {row} ({name})"


def hub_stamps(shards: tuple[HubShard, ...], table: HubTable, names: Iterable[str]) -> Iterator[str]:
    """One string per image that changes when its shard changes: shard path, size, mtime and row."""
    stats = [os.stat(shard.path) for shard in shards]
    for name in names:
        i = table.position[name]
        k = int(table.shard_of[i])
        yield f"{shards[k].path}:{stats[k].st_size}:{stats[k].st_mtime_ns}:{int(table.row_of[i])}"


# --------------------------------------------------------------------------- downloading


class HubUnreachable(ConnectionError):
    """The Hub could not be reached (or huggingface_hub is missing); the message is one line saying why."""


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError as err:
        raise HubUnreachable("huggingface_hub is not installed (pip install huggingface_hub)") from err
    return huggingface_hub


def _network_errors() -> tuple[type[BaseException], ...]:
    """The Hub's errors (HTTP, offline mode, nothing cached), connection errors and the HTTP client's own errors."""
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    clients = (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException"))
    client = [getattr(sys.modules[name], cls) for name, cls in clients if name in sys.modules]
    return (ConnectionError, TimeoutError, HfHubHTTPError, LocalEntryNotFoundError, *client)


def _why(err: BaseException) -> str:
    text = " ".join(str(err).split()).rstrip(".") or "no details"
    return f"{type(err).__name__}: {text[:300]}"


def hub_files() -> list[tuple[str, int]]:
    """Path and size of every shard of the config on the Hub (one metadata request, no download)."""
    hub = _hub()
    try:
        entries = hub.HfApi().list_repo_tree(HUB_REPO_ID, path_in_repo=HUB_CONFIG, recursive=True,
                                             repo_type="dataset")
        files = [(e.path, int(e.size)) for e in entries if e.path.endswith(".parquet")]
    except _network_errors() as err:
        raise HubUnreachable(_why(err)) from err
    if not files:
        raise HubUnreachable(f"{HUB_REPO_ID} lists no parquet files under {HUB_CONFIG}")
    return files


def download_hub(target: Path) -> Path:
    """Download the config's shards into ``target`` (``snapshot_download`` with ``local_dir``); return the folder.

    Prints the total size and where it goes first. Shards already complete in ``target`` are kept (huggingface_hub
    records them in ``target/.cache/huggingface``); each shard is written to a temporary ``.incomplete`` file and
    moved into place when whole, so an interrupted download leaves no partial shard and a rerun fetches only the
    missing ones. Raises :class:`HubUnreachable` when the Hub cannot be reached, and ``OSError`` before anything is
    written when the disk has no room for the shards still missing.
    """
    files = hub_files()
    total = sum(size for _, size in files)
    present = sum(size for path, size in files if (target / path).is_file() and (target / path).stat().st_size == size)
    print(f"Downloading CelebA from the Hugging Face Hub ({HUB_REPO_ID}, {HUB_CONFIG}): {len(files)} files, "
          f"{total / 1e9:.1f} GB{f' ({present / 1e9:.1f} GB already there)' if present else ''}, into {target}")
    check_free_space(target, total - present, f"the {len(files)} shards of CelebA",
                     "Free some space, or download into a data folder on a disk with room (data_root in a notebook, "
                     "download_celeba(root)).")
    target.mkdir(parents=True, exist_ok=True)
    hub = _hub()
    try:
        hub.snapshot_download(repo_id=HUB_REPO_ID, repo_type="dataset", local_dir=target,
                              allow_patterns=[f"{HUB_CONFIG}/*.parquet"])
    except _network_errors() as err:
        raise HubUnreachable(_why(err)) from err
    return target / HUB_CONFIG
