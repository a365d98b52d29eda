"""How fast the decoded cache is built: images/s of a cold ``build_decoded_cache`` per number of decode workers.

    python ../shared/real_faces/make_celeba_folder.py /tmp/realceleba
    python benchmarks/benchmark_decode.py /tmp/realceleba --workers 1 2 --repeats 5

Each run decodes the split into a fresh temporary folder (so every build is cold; the folder's own
``decoded_cache/`` is never touched). The worker counts are run in turn, ``--repeats`` rounds, so that a slow
spell of a shared machine hits all of them; the median images/s of each is printed, with the CPU seconds per 1,000
images (this process and its finished worker processes, if any), which a busy machine changes less.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from celeba_vae.celeba_files import find_celeba, read_index
from celeba_vae.decoded_cache import build_decoded_cache


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
    args = parser.parse_args(argv)
    runs: dict[int, list[tuple[float, float]]] = {w: [] for w in args.workers}
    for _ in range(args.repeats):
        for workers in args.workers:
            runs[workers].append(build_rate(args.root, args.split, workers))
    for workers, values in runs.items():
        rates = [rate for rate, _ in values]
        print(f"{workers} worker(s): median {statistics.median(rates):,.0f} images/s, "
              f"{statistics.median(cpu for _, cpu in values):.2f} CPU s per 1,000 images "
              f"(runs: {', '.join(f'{rate:,.0f}' for rate in rates)} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
