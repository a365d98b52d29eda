"""A newcomer's first run, through the real command line on a tiny synthetic set: a terminal they can read, and
one model's results in the output folder even after notebook 1 is run again by hand."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from celeba_vae.checkpoint import checkpoint_run_id
from celeba_vae.paths import run_files

REPO = Path(__file__).resolve().parent.parent
TRAINED_SECTIONS = ("runs", "spectra", "latent", "probe")  # what notebooks 1-3 measure on the weights


@dataclass(frozen=True)
class FirstRun:
    returncode: int
    terminal: str
    temp_dir: Path
    data_dir: Path
    output_dir: Path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """``python run_lecture.py`` once, without CelebA, 1 epoch, with a private temporary folder, from an environment
    that says ``MPLBACKEND=Agg`` (as headless servers and containers often do)."""
    root = tmp_path_factory.mktemp("first-run")
    temp_dir, data_dir, output_dir = root / "tmp", root / "data", root / "outputs"
    temp_dir.mkdir()
    done = subprocess.run(
        [sys.executable, str(REPO / "run_lecture.py"), "--epochs", "1", "--num-synthetic", "100", "--device", "cpu",
         "--num-latent-images", "40", "--output-dir", str(output_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(temp_dir), "CELEBA_VAE_DATA": str(data_dir),
             "MPLBACKEND": "Agg"},
    )
    return FirstRun(done.returncode, done.stdout + done.stderr, temp_dir, data_dir, output_dir)


def test_the_run_succeeds(first_run: FirstRun) -> None:
    assert first_run.returncode == 0, first_run.terminal


def test_the_banner_is_printed_once_before_the_first_notebook(first_run: FirstRun) -> None:
    terminal = first_run.terminal
    assert terminal.count("CelebA was NOT found") == 1, terminal
    assert terminal.index("CelebA was NOT found") < terminal.index("[1/4] 1_train_vae.ipynb"), terminal


def test_one_line_per_notebook_and_per_epoch_and_no_notebook_source(first_run: FirstRun) -> None:
    lines = first_run.terminal.splitlines()
    banner = [i for i, line in enumerate(lines) if set(line) == {"="}]
    after_banner = lines[banner[-1] + 1:]
    assert [line.split()[0] for line in after_banner if line.startswith("[")] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert sum("Epoch: 001/001" in line for line in after_banner) == 1, first_run.terminal
    # recipe, decoder, where outputs are, done; a line per notebook and one with its times; the epoch
    assert len(after_banner) <= 4 + 2 * 4 + 1, first_run.terminal
    assert not any(line.lstrip().startswith(("def ", '"""', "return ")) for line in lines), first_run.terminal


def test_each_notebook_says_how_long_it_spent_starting_training_and_in_the_rest(first_run: FirstRun) -> None:
    """The line after a notebook's epoch lines: its seconds, split three ways, as the executed notebook's own
    times (papermill's) have them; only notebook 1 trains."""
    times = re.compile(r"    (\d+\.\d) s: starting (\d+\.\d) s \(kernel, setup and imports\), training (\d+\.\d) s, "
                       r"the rest (\d+\.\d) s$")
    lines = first_run.terminal.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\[\d/4\] ", line)]
    assert len(starts) == 4, first_run.terminal
    for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        notebook = lines[start].split()[1]
        found = [times.match(line) for line in lines[start + 1:end] if times.match(line)]
        assert len(found) == 1, lines[start:end]
        total, starting, training, rest = map(float, found[0].groups())
        assert abs(starting + training + rest - total) <= 0.15, found[0].string
        executed = nbformat.read(first_run.output_dir / "notebooks" / notebook.replace(".ipynb", "_transpose.ipynb"),
                                 as_version=4)
        assert abs(executed.metadata.papermill.duration - total) <= 0.05
        code = [cell.metadata.papermill.duration for cell in executed.cells if cell.cell_type == "code"]
        assert starting >= code[0] + code[1] - 0.1 and rest > 0
        assert (training > 0) == (notebook == "1_train_vae.ipynb"), found[0].string


def test_the_time_line_splits_a_notebooks_seconds_as_papermill_timed_its_cells(tmp_path: Path) -> None:
    """Starting runs from the notebook's start (the kernel's launch) to the end of the import cell; training is the
    cells after it that call train_vae_v1 or a sweep's run (not the setup cell's subprocess.run); the rest is the
    remainder, shutting the kernel down included."""
    import run_lecture

    start = datetime.datetime(2026, 12, 4, 21, 0)

    def timed(node: nbformat.NotebookNode, begin: float, seconds: float) -> nbformat.NotebookNode:
        node.metadata.papermill = {"start_time": (start + datetime.timedelta(seconds=begin)).isoformat(),
                                   "end_time": (start + datetime.timedelta(seconds=begin + seconds)).isoformat(),
                                   "duration": seconds}
        return node

    cells = [("done = subprocess.run(['git', 'clone'])", 2.0, 3.0), ("import torch", 5.0, 1.5), ("x = 1", 6.5, 0.5),
             ("log = train_vae_v1(num_epochs=1)", 7.0, 10.0), ("results = run_sweep(runs, run, plan)", 17.0, 4.0),
             ("plot_training_loss(log)", 21.0, 2.0)]
    book = timed(nbformat.v4.new_notebook(cells=[timed(nbformat.v4.new_code_cell(source), begin, seconds)
                                                 for source, begin, seconds in cells]), 0.0, 24.0)
    nbformat.write(book, tmp_path / "executed.ipynb")
    assert run_lecture.time_line(tmp_path / "executed.ipynb") == (
        "    24.0 s: starting 6.5 s (kernel, setup and imports), training 14.0 s, the rest 3.5 s")


def test_the_cells_timed_as_training_are_notebook_1s_training_call_and_notebook_5s_sweep() -> None:
    import run_lecture

    notebooks = Path(run_lecture.__file__).parent / "notebooks"
    training = {}
    for path in sorted(notebooks.glob("[1-5]_*.ipynb")):
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        training[path.name[0]] = [source for source in code[2:] if run_lecture.TRAINING_CELL.search(source)]
    assert [len(training[n]) for n in "12345"] == [1, 0, 0, 0, 1]
    assert "log_dict = train_vae_v1(" in training["1"][0] and "= run_sweep(" in training["5"][0]


def test_figures_are_in_the_executed_notebooks_though_mplbackend_says_agg(first_run: FirstRun) -> None:
    """The kernels draw inline whatever the caller's MPLBACKEND says: with Agg every figure was the text
    ``<Figure size ... with N Axes>``."""
    for notebook in sorted((first_run.output_dir / "notebooks").glob("[1-4]_*.ipynb")):
        outputs = [o for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        as_text = [o for o in outputs if "image/png" not in o.get("data", {})
                   and o.get("data", {}).get("text/plain", "").startswith("<Figure size")]
        assert images and not as_text, f"{notebook.name}: {len(images)} images, {len(as_text)} figures as text"


def test_what_is_announced_is_what_runs(first_run: FirstRun) -> None:
    terminal = first_run.terminal
    assert "1 epoch," in terminal and not re.search(r"\b\d+ epochs\b", terminal), terminal
    assert "laptop" not in terminal and "Recipe: demo" in terminal, terminal


def test_no_error_from_a_kernel_the_runner_shut_down(first_run: FirstRun) -> None:
    assert "ERROR" not in first_run.terminal and "KeyboardInterrupt" not in first_run.terminal, first_run.terminal


def test_nothing_is_left_in_the_temporary_folder(first_run: FirstRun) -> None:
    assert not list(first_run.temp_dir.glob("celeba-vae-kernel-*"))


def test_notebook_1_again_replaces_the_model_and_keeps_what_it_replaces(first_run: FirstRun, tmp_path: Path) -> None:
    assert first_run.returncode == 0, first_run.terminal
    output_dir = Path(shutil.copytree(first_run.output_dir, tmp_path / "outputs"))  # the other tests keep theirs
    files = run_files(output_dir, "transpose")
    old_run = checkpoint_run_id(files.checkpoint)
    before = json.loads(files.metrics.read_text())
    assert old_run is not None and all("transpose" in before[section] for section in TRAINED_SECTIONS)
    pm.execute_notebook(
        REPO / "notebooks" / "1_train_vae.ipynb", output_dir / "again.ipynb", cwd=str(REPO / "notebooks"),
        kernel_name="python3", progress_bar=False,
        parameters={"data_root": str(first_run.data_dir), "output_dir": str(output_dir), "num_epochs": 1,
                    "num_synthetic": 100, "device": "cpu"},
    )
    new_run = checkpoint_run_id(files.checkpoint)
    after = json.loads(files.metrics.read_text())
    assert new_run not in (None, old_run)
    assert after["run_ids"]["runs"]["transpose"] == new_run
    for section in TRAINED_SECTIONS[1:]:
        assert "transpose" not in after.get(section, {}) or after["run_ids"][section]["transpose"] == new_run
    assert json.loads(files.metrics.with_name("metrics.json.bak").read_text()) == before
    assert checkpoint_run_id(files.checkpoint.with_name("checkpoint.pt.bak")) == old_run
    assert files.weights.with_name("vae_celeba_02.pt.bak").is_file()


def test_a_notebooks_output_reaches_the_terminal_as_epoch_and_run_lines_only() -> None:
    import io

    import run_lecture

    terminal = io.StringIO()
    stream = run_lecture.EpochLines(terminal)
    for chunk in ("Recipe: demo\n***Epo", "ch: 001/002 | Train loss: 1.0\nEpoch: 001/002 | Batch 0000/0004\n",
                  "def vae_loss(\n[2/9] latent_dim=16: training\n", "***Epoch: 002/002 | Train loss: 0.5\n"):
        stream.write(chunk)
    assert terminal.getvalue().splitlines() == ["    Epoch: 001/002 | Train loss: 1.0",
                                                "    [2/9] latent_dim=16: training",
                                                "    Epoch: 002/002 | Train loss: 0.5"]


def test_the_runner_does_not_interrupt_a_kernel_it_shuts_down(tmp_path: Path) -> None:
    """jupyter_client interrupts before shutting down; an idle kernel then logs a KeyboardInterrupt ERROR."""
    import asyncio
    import signal

    import run_lecture

    async def signals_sent() -> tuple[list[int], list[int]]:
        manager = run_lecture.kernel_manager(tmp_path)(kernel_name="python3")
        await manager.start_kernel()
        sent: list[int] = []
        send = manager._async_signal_kernel

        async def spy(signum: int) -> None:
            sent.append(signum)
            await send(signum)

        manager._async_signal_kernel = spy
        await manager.interrupt_kernel()  # the spy sees an interrupt that is asked for
        on_interrupt = list(sent)
        sent.clear()
        await manager.shutdown_kernel()
        return on_interrupt, sent

    on_interrupt, on_shutdown = asyncio.run(signals_sent())
    assert on_interrupt == [signal.SIGINT]
    assert signal.SIGINT not in on_shutdown
