"""How long a learner waits before a notebook's first cell of work: its setup cell and its import cell.

    python benchmarks/benchmark_startup.py               # every notebook, 3 fresh Pythons each
    python benchmarks/benchmark_startup.py --repeats 5 1_train_vae.ipynb

Each notebook's first two code cells (as committed) run in a fresh Python started in ``notebooks/``, as a kernel runs
them (IPython is imported first, untimed: a kernel has it loaded). Prints, per notebook, the median wall-clock
seconds and the process's CPU seconds (steadier on a busy machine) of each cell and of both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMER = """
import json, sys, time
import IPython  # a kernel has it loaded before its first cell
times, namespace = [], {"__name__": "__main__"}  # one namespace, as in a kernel
for cell in json.loads(open(sys.argv[1]).read()):
    wall, cpu = time.perf_counter(), time.process_time()
    exec(compile(cell, "<cell>", "exec"), namespace)
    times.append((time.perf_counter() - wall, time.process_time() - cpu))
print("TIMES " + json.dumps(times))
"""


def first_two_cells(notebook: Path) -> list[str]:
    """The setup cell and the import cell of ``notebook``."""
    return [cell.source for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code"][:2]


def time_cells(cells: list[str], folder: Path) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each cell, run in order in one fresh Python started in ``folder``."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "cells.json"
        source.write_text(json.dumps(cells))
        done = subprocess.run([sys.executable, "-c", TIMER, str(source)], cwd=folder, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=False)
    line = [text for text in done.stdout.splitlines() if text.startswith("TIMES ")]
    if done.returncode or not line:
        raise SystemExit(f"the cells failed:\n{done.stderr[-3000:]}")
    return [tuple(pair) for pair in json.loads(line[-1].removeprefix("TIMES "))]


def median(runs: list[list[tuple[float, float]]], pick: int, cells: slice) -> float:
    """The median over ``runs`` of the wall (``pick`` 0) or CPU (1) seconds of ``cells`` together."""
    return statistics.median(sum(cell[pick] for cell in run[cells]) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook file names (default: all in notebooks/)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh Pythons per notebook (the median is shown)")
    args = parser.parse_args()
    folder = REPO_ROOT / "notebooks"
    paths = [folder / name for name in args.notebooks] or sorted(folder.glob("*.ipynb"))
    print(f"median of {args.repeats} fresh Pythons; wall clock s (CPU s)")
    for path in paths:
        runs = [time_cells(first_two_cells(path), folder) for _ in range(args.repeats)]
        figures = [f"{name} {median(runs, 0, cells):.2f} ({median(runs, 1, cells):.2f})" for name, cells in
                   (("setup", slice(0, 1)), ("imports", slice(1, 2)), ("both", slice(0, 2)))]
        print(f"{path.name}: {', '.join(figures)}", flush=True)


if __name__ == "__main__":
    main()
