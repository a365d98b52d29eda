"""How fast the decoded cache is built: images/s of a cold ``build_decoded_cache`` per number of decode workers.

    python benchmarks/benchmark_decode.py CELEBA_DIR --workers 1 2 --repeats 5
    python benchmarks/benchmark_decode.py CELEBA_DIR --hub --workers 2 8 --repeats 5

``CELEBA_DIR`` is a CelebA folder, e.g. one built from real faces (or written by
``celeba_vae.synthetic.write_synthetic_celeba``).

Each run decodes the split into a fresh temporary folder (so every build is cold; the folder's own
``decoded_cache/`` is never touched). ``--hub`` first writes the folder's images as the Hugging Face Hub lays
them out (parquet shards of lossless PNGs, 100 rows per row group, as ``datasets`` writes image data) into a
temporary folder, and times the Hub layout's decoding instead. The worker counts are run in turn, ``--repeats``
rounds, so that a slow spell of a shared machine hits all of them; the median images/s of each is printed, with
the CPU seconds per 1,000 images (this process and its finished worker processes, if any), which a busy machine
changes less.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from celeba_vae.celeba_files import CELEBA_ATTRIBUTE_NAMES, SPLITS, find_celeba, read_index
from celeba_vae.decoded_cache import build_decoded_cache
from celeba_vae.hub import HUB_CONFIG, HUB_FOLDER

HUB_ROWS_PER_GROUP = 100
HUB_SHARD_ROWS = 1000


def write_as_hub(root: Path, target: Path) -> Path:
    """Write the CelebA at ``root`` into ``target`` as the Hub's parquet shards (PNG bytes, attributes as booleans)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = read_index(find_celeba(root))
    folder = target / HUB_FOLDER / HUB_CONFIG
    folder.mkdir(parents=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for s, split in enumerate(SPLITS):
        rows = np.flatnonzero(index.partition == s)
        parts = np.array_split(rows, max(1, -(-len(rows) // HUB_SHARD_ROWS)))
        for k, part in enumerate(parts):
            images = []
            for i in part:
                buffer = io.BytesIO()
                with Image.open(index.source.image_dir / index.filenames[i]) as image:
                    image.save(buffer, format="PNG")
                images.append({"bytes": buffer.getvalue(), "path": index.filenames[i]})
            columns = {"image": pa.array(images, type=image_type)}
            for a, name in enumerate(CELEBA_ATTRIBUTE_NAMES):
                columns[name] = pa.array(index.attributes[part, a].astype(bool))
            pq.write_table(pa.table(columns), folder / f"{split}-{k:05d}-of-{len(parts):05d}.parquet",
                           row_group_size=HUB_ROWS_PER_GROUP)
    return target


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (a process pool's workers), user and system."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def build_rate(root: Path, split: str, workers: int) -> tuple[float, float]:
    """Images/s of one cold build of ``split`` with ``workers`` decode workers, in a temporary cache folder, and
    the CPU seconds it took per 1,000 images (which a busy machine changes less than the wall time)."""
    index = read_index(find_celeba(root))
    cache_dir = Path(tempfile.mkdtemp(prefix="celeba-decode-bench-"))
    try:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        decoded = build_decoded_cache(root, split, cache_dir=cache_dir, num_workers=workers, index=index,
                                      progress=False)
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        count = len(decoded)
        del decoded
        return count / elapsed, 1000 * cpu / count
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Print the images/s and CPU s per 1,000 images of every run, and their medians per worker count."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a CelebA folder (any layout the project reads)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hub", action="store_true", help="time the Hub layout (parquet shards) of these images")
    args = parser.parse_args(argv)
    if args.hub:
        hub_dir = Path(tempfile.mkdtemp(prefix="celeba-hub-bench-"))
        try:
            print(f"writing {args.root} as Hub shards in {hub_dir} ...")
            return _report(write_as_hub(args.root, hub_dir), args)
        finally:
            shutil.rmtree(hub_dir, ignore_errors=True)
    return _report(args.root, args)


def _report(root: Path, args: argparse.Namespace) -> int:
    """Time ``args.repeats`` rounds of the worker counts on ``root`` and print each count's medians."""
    runs: dict[int, list[tuple[float, float]]] = {w: [] for w in args.workers}
    for _ in range(args.repeats):
        for workers in args.workers:
            runs[workers].append(build_rate(root, args.split, workers))
    for workers, values in runs.items():
        rates = [rate for rate, _ in values]
        print(f"{workers} worker(s): median {statistics.median(rates):,.0f} images/s, "
              f"{statistics.median(cpu for _, cpu in values):.2f} CPU s per 1,000 images "
              f"(runs: {', '.join(f'{rate:,.0f}' for rate in rates)} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
