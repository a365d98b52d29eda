"""Every notebook's code, end to end, on each platform learners use, modelled on this CPU-only machine.

``PLATFORMS`` is the one table of the platforms' real constraints, each with where it comes from. For each platform
one Python process installs that platform's stand-in first (the CUDA, MPS and Windows stand-ins of
``test_devices`` and ``conftest``), then runs the code cells of every notebook in ``notebooks/`` as they are
now, in order, through IPython's shell (a fresh namespace per notebook, as a fresh kernel), with tiny settings
injected after each ``parameters`` cell: 80 synthetic faces, 1 epoch, batch 8; two platforms run at a time. A new
code path therefore runs on every platform, and a notebook added to ``notebooks/`` runs with the others.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
GIB = 1 << 30
CUDA_13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
POSIX_ONLY = ("resource", "fcntl", "termios", "pwd", "grp")


@dataclass(frozen=True)
class Platform:
    """A platform: its ``constraints`` and their ``source``; what the stand-in installs (CUDA ``cards`` as
    (name, compute capability, GiB), ``mps``, ``windows``, the ``runtime`` and ``cpus``); what a notebook must
    then print (``device`` in every notebook, and ``says`` somewhere)."""

    constraints: str
    source: str
    device: str
    cards: tuple[tuple[str, tuple[int, int], float], ...] = ()
    mps: bool = False
    windows: bool = False
    runtime: str = "local"
    cpus: int | None = None
    says: str = ""


T4 = ("Tesla T4", (7, 5), 14.7)
PLATFORMS = {
    "colab-t4": Platform(
        "one T4: compute capability 7.5 (sm_75), fp16 with a gradient scaler, no native bf16; 2 vCPUs; 12.7 GB RAM "
        "(not read by the code: the decoded cache is memory-mapped)",
        "NVIDIA's compute capability table (developer.nvidia.com/cuda-gpus); a Colab runtime's nproc and free -h",
        "cuda", cards=(T4,), runtime="colab", cpus=2, says="Precision: fp16 autocast + gradient scaling"),
    "kaggle-t4x2": Platform(
        "two T4s (training uses cuda:0); CelebA read-only under /kaggle/input; 20 GB in /kaggle/working; 4 vCPUs",
        "Kaggle's notebook documentation (kaggle.com/docs/notebooks): accelerators and disk",
        "cuda", cards=(T4, T4), runtime="kaggle", cpus=4, says="2 GPUs: training uses one, cuda:0"),
    "kaggle-p100": Platform(
        "one P100: compute capability 6.0; sm_60 absent from the installed torch's get_arch_list(), and cuDNN 9.11+ "
        "(CUDA 13 builds) refuses cards below 7.5: no CUDA work may run, the notebooks use the CPU",
        "Kaggle/kaggle-cli#1151; torch/backends/cudnn/__init__.py (SM < 7.5 check)",
        "cpu", cards=(("Tesla P100-PCIE-16GB", (6, 0), 15.9),), runtime="kaggle", cpus=4,
        says="cannot be used by torch"),
    "8gb-card": Platform(
        "an 8 GB card (RTX 3070, compute capability 8.6, native bf16): the lecture's training split (7.45 GiB) does "
        "not fit beside the training step and streams from the host",
        "NVIDIA's RTX 3070 specifications; celeba_vae.gpu_budget.plan_placement()",
        "cuda", cards=(("NVIDIA GeForce RTX 3070", (8, 6), 7.8),), says="does not fit"),
    "h100": Platform(
        "an H100: compute capability 9.0, native bf16, Triton so torch.compile can run",
        "NVIDIA's compute capability table; torch.compile's Triton requirement (compute capability >= 7.0)",
        "cuda", cards=(("NVIDIA H100 80GB HBM3", (9, 0), 79.1),), says="Precision: bf16 autocast"),
    "apple-mps": Platform(
        "an Apple GPU: no float64 tensors, no pinned memory (CUDA only)",
        "PyTorch's MPS notes (pytorch.org/docs/stable/notes/mps.html); torch.Tensor.pin_memory",
        "mps", mps=True, says="Device: mps"),
    "windows": Platform(
        "Windows: multiprocessing starts by spawn, no Triton wheels, a memory-mapped file cannot be removed or "
        "replaced, no POSIX-only modules (resource, fcntl, termios, pwd, grp, os.getloadavg)",
        "Python's multiprocessing and module availability docs; triton-lang/triton (Linux wheels only); "
        "Win32 DeleteFile/MoveFileEx on a mapped file (ERROR_USER_MAPPED_FILE)",
        "cpu", windows=True, says="Device: cpu"),
    "cpu-only": Platform("no GPU at all", "-", "cpu", says="No GPU: training runs on the CPU"),
}

TINY = {"dataset": "synthetic", "num_synthetic": 80, "num_epochs": 1, "batch_size": 8, "random_seed": 123,
        "device": "auto", "num_images": 40, "direction_images": 64, "knobs": ["decoder"], "measure_fid": False,
        "num_samples": 16, "probe_images": 64, "interactive": False}
SETUP_DONE = "--- the setup cell ends here"


def _add_cards(cards: tuple[tuple[str, tuple[int, int], float], ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """``test_devices``' CUDA machine with ``cards``, plus the device properties, memory figures, streams and the
    installed torch's CUDA 13 architecture list that the setup cell and the loaders read."""
    import torch

    from test_devices import CARDS, FakeCudaMachine, _FakeEvent, _FakeStream

    CARDS.update({name: capability for name, capability, _ in cards})
    machine = FakeCudaMachine(monkeypatch, tuple(name for name, _, _ in cards))
    properties = [types.SimpleNamespace(name=name, major=capability[0], minor=capability[1],
                                        total_memory=int(gib * GIB)) for name, capability, gib in cards]
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "get_device_properties", lambda device=None: properties[machine.index(device)])
    monkeypatch.setattr(cuda, "get_arch_list", lambda: CUDA_13_ARCHS)
    monkeypatch.setattr(cuda, "mem_get_info", lambda device=None: (int(cards[0][2] * GIB) - GIB // 2,
                                                                   int(cards[0][2] * GIB)))
    for name in ("memory_reserved", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(cuda, name, lambda device=None: 0)
    for name in ("reset_peak_memory_stats", "empty_cache", "synchronize"):
        monkeypatch.setattr(cuda, name, lambda device=None: None)
    monkeypatch.setattr(cuda, "Stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(cuda, "current_stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: None)


def _add_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    """An Apple GPU's API over a CPU-only torch (its tensors come from ``test_devices.FakeAccelerator``)."""
    import torch

    generator = torch.Generator().manual_seed(11)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": generator.get_state())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state, device="mps": generator.set_state(state))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: generator.manual_seed(seed))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: None)
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 0)


def _add_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawn, no Triton, locked memory-mapped files, no POSIX-only modules."""
    from conftest import lock_mapped_files

    multiprocessing.set_start_method("spawn", force=True)
    for name in ("triton", *POSIX_ONLY):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError, as on Windows
    monkeypatch.delattr(os, "getloadavg")
    lock_mapped_files(monkeypatch)


def install(name: str, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Install platform ``name``'s stand-in in this process (before any notebook code runs)."""
    import matplotlib
    import torch

    from test_devices import FakeAccelerator

    platform = PLATFORMS[name]
    monkeypatch.setenv("CELEBA_VAE_CACHE", str(work / "cache"))
    if platform.cpus:
        monkeypatch.setattr(os, "cpu_count", lambda: platform.cpus)
    if platform.runtime == "kaggle":
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    if platform.runtime == "colab":
        package = work / "stand-in" / "google" / "colab"
        package.mkdir(parents=True)
        (package.parent / "__init__.py").write_text("")
        (package / "__init__.py").write_text("")
        monkeypatch.syspath_prepend(str(work / "stand-in"))
    if platform.cards:
        _add_cards(platform.cards, monkeypatch)
    if platform.mps:
        _add_mps(monkeypatch)
    if platform.windows:
        _add_windows(monkeypatch)
    if platform.device in ("cuda", "mps"):
        FakeAccelerator(platform.device).__enter__()  # for the whole process
    torch.set_num_threads(1)  # two platforms run at once, one per core
    matplotlib.rcParams["savefig.dpi"] = 40  # the figures are checked elsewhere: here only that they are made


def run_notebooks(name: str, work: Path) -> dict[str, str]:
    """Run every notebook's code cells under platform ``name``'s stand-in; the error of each notebook that failed.

    Each notebook gets a fresh IPython namespace and a fresh setup (as in a new kernel), starts in ``notebooks/``
    as Jupyter does, has the setup cell :mod:`celeba_vae.notebook_cells` writes, and its ``parameters`` cell is
    followed by ``TINY`` plus this run's folders.
    """
    import nbformat
    from IPython.core.interactiveshell import InteractiveShell

    import celeba_vae.runtime
    from celeba_vae.notebook_cells import SETUP_ID, with_setup_cells

    install(name, work, pytest.MonkeyPatch())
    tiny = {**TINY, "data_root": str(work / "data"), "output_dir": str(work / "outputs")}
    shell = InteractiveShell.instance()
    os.chdir(REPO_ROOT / "notebooks")
    failures = {}
    for notebook in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        print(f"=== {notebook.name}", flush=True)  # the test splits the output here
        shell.reset(new_session=False)
        celeba_vae.runtime._prepared.clear()  # what a new kernel has not yet set up or said
        celeba_vae.runtime._said.clear()
        book = with_setup_cells(nbformat.read(notebook, as_version=4), notebook.name)
        for cell in [c for c in book.cells if c.cell_type == "code"]:
            sources = [cell.source]
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                sources.append("\n".join(f"{key} = {value!r}" for key, value in tiny.items()))
            results = [shell.run_cell(source, store_history=False) for source in sources]
            if cell.get("id") == SETUP_ID:
                print(SETUP_DONE, flush=True)
            error = next((r.error_in_exec or r.error_before_exec for r in results if not r.success), None)
            if error is not None:
                failures[notebook.name] = f"cell {cell.get('id')}: {type(error).__name__}: {error}"
                break
    return failures


def _run_platform(name: str, folder: Path) -> tuple[str, dict[str, str]]:
    """Platform ``name``'s process: its output and the error of each notebook that failed."""
    script = (f"import json, sys\nsys.path[:0] = [{str(TESTS)!r}, {str(REPO_ROOT)!r}]\n"
              "from pathlib import Path\nfrom test_platform_notebooks import run_notebooks\n"
              f"failures = run_notebooks({name!r}, Path({str(folder)!r}))\n"
              "print('FAILURES ' + json.dumps(failures))\n")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, env=env,
                          timeout=900, check=False)
    last = [line for line in done.stdout.splitlines() if line.startswith("FAILURES ")]
    assert done.returncode == 0 and last, f"the {name} process failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout, json.loads(last[-1].removeprefix("FAILURES "))


@pytest.fixture(scope="module")
def platform_runs(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """The selected platforms' processes, two at a time (one per core of a 2-core machine)."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_every_notebook_runs_on"]
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {name: pool.submit(_run_platform, name, tmp_path_factory.mktemp(name)) for name in selected}
    yield runs
    pool.shutdown(cancel_futures=True)


def test_the_table_names_every_platform_in_the_brief() -> None:
    assert set(PLATFORMS) == {"colab-t4", "kaggle-t4x2", "kaggle-p100", "8gb-card", "h100", "apple-mps", "windows",
                              "cpu-only"}
    assert all(p.constraints and p.source and p.says for p in PLATFORMS.values())


@pytest.mark.parametrize("name", list(PLATFORMS))
def test_every_notebook_runs_on(name: str, platform_runs: dict[str, Future]) -> None:
    platform = PLATFORMS[name]
    printed, failures = platform_runs[name].result()
    notebooks = sorted(p.name for p in (REPO_ROOT / "notebooks").glob("*.ipynb"))
    sections = dict(zip(notebooks, printed.split("=== ")[1:], strict=True))
    assert not failures, f"on {name}: {failures}\n{printed[-3000:]}"
    for notebook, output in sections.items():
        assert f"Device: {platform.device}" in output, f"{notebook} on {name}:\n{output[-2000:]}"
        assert "Traceback" not in output, f"{notebook} on {name}:\n{output[-2000:]}"
        setup_lines = output.split(SETUP_DONE)[0].splitlines()[1:]  # after the notebook's name
        assert len(setup_lines) <= 5, f"{notebook} on {name}: {setup_lines}"  # runtime, torch, GPU, others, fit
    assert platform.says in printed, f"nothing on {name} says {platform.says!r}:\n{printed[-3000:]}"
