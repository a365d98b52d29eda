"""A notebook starts in seconds: its setup and import cells load no heavy library it does not use at once.

Each notebook's import cell (its second code cell) runs in a fresh Python, in ``notebooks/`` as a kernel does,
after what the setup cell imports (:func:`celeba_vae.runtime.report_device`); then none of ``HEAVY`` may be loaded
unless the import cell names it itself. A helper that needs one imports it in the function that uses it. Not a
timing test: ``benchmarks/README.md`` ("Notebook start-up") has the seconds.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
# Libraries a notebook uses in a few cells at most (or never): each costs from a tenth of a second to a second.
HEAVY = ("sklearn", "scipy", "pandas", "torchmetrics", "torch_fidelity", "ipywidgets", "torchinfo", "pyarrow",
         "huggingface_hub", "papermill", "psutil")


def import_cell(notebook: Path) -> str:
    """The notebook's import cell: its second code cell (the first is the setup cell)."""
    return [cell.source for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code"][1]


def named_libraries(source: str) -> set[str]:
    """The top-level packages the ``import`` statements of ``source`` name."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _start(notebook: Path) -> subprocess.Popen[str]:
    script = (f"from celeba_vae import runtime\nruntime.report_device()\nexec({import_cell(notebook)!r})\n"
              f"import json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT / "notebooks", text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="module")
def started() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """One fresh Python per notebook, all started at once (each mostly waits on importing torch)."""
    processes = {notebook.name: _start(notebook) for notebook in NOTEBOOKS}
    yield processes
    for process in processes.values():
        process.kill()
        process.communicate()


def test_the_import_list_is_read_from_the_cell() -> None:
    source = "import torch\nfrom IPython.display import display\nfrom torchinfo import summary\nfrom . import x\n"
    assert named_libraries(source) == {"torch", "IPython", "torchinfo"}


@pytest.mark.parametrize("notebook", [path.name for path in NOTEBOOKS])
def test_starting_a_notebook_loads_only_the_heavy_libraries_its_import_cell_names(
        notebook: str, started: dict[str, subprocess.Popen[str]]) -> None:
    out, err = started[notebook].communicate(timeout=300)
    assert started[notebook].returncode == 0, err[-3000:]
    loaded = set(json.loads(out.splitlines()[-1]))
    allowed = named_libraries(import_cell(REPO_ROOT / "notebooks" / notebook))
    assert loaded <= allowed, (f"{notebook}: its setup and import cells load {sorted(loaded - allowed)}; import them "
                               "in the functions that use them")
