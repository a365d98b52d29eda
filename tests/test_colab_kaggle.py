"""Colab and Kaggle, emulated offline: the runtime decision, the setup cell, Drive, Kaggle's outputs, the GPU lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import torch
import torchvision

import helper_setup
from celeba_vae import gpu_budget, notebook_cells, runtime
from celeba_vae.paths import OUTPUTS_ENV, REPO_ROOT
from celeba_vae.precision import choose_precision
from celeba_vae.synthetic import write_synthetic_celeba

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
GIB = 1 << 30
STAND_IN_DRIVE = '''\
from pathlib import Path

mounted = []


def mount(mount_point, force_remount=False):
    (Path(mount_point) / "MyDrive").mkdir(parents=True, exist_ok=True)
    mounted.append(str(mount_point))
'''


def _stand_in_colab(folder: Path) -> Path:
    """A ``google.colab`` package with a ``drive.mount`` stand-in, under ``folder`` (put it on the path)."""
    package = folder / "google" / "colab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "drive.py").write_text(STAND_IN_DRIVE)
    return folder


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A git repository whose first commit holds this working tree's project files (uncommitted changes included),
    followed by a later, empty commit: the setup cell must check out the commit it is pinned to, not the latest."""
    repo = tmp_path / "origin"
    repo.mkdir()
    for name in ("pyproject.toml", "requirements.txt", *(p.name for p in REPO_ROOT.glob("*.py"))):
        shutil.copy2(REPO_ROOT / name, repo / name)
    for folder in ("celeba_vae", "notebooks"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "--quiet"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "project"], check=True)
    subprocess.run([*git, "commit", "--quiet", "--allow-empty", "-m", "later"], check=True)
    return repo


def _without_project_env(origin: Path, stand_in: Path) -> dict[str, str]:
    """The environment of a Python that has torch and the project's dependencies but not the project: run it with
    ``-S`` (no ``site``, so the editable install's ``.pth`` finder never loads) and site-packages on PYTHONPATH.
    ``$CELEBA_VAE_REPO`` is ``origin``, pinned at its first commit."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", OUTPUTS_ENV)}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the same lines on a machine with a GPU: the tests expect the CPU's
    env["PYTHONPATH"] = os.pathsep.join([str(stand_in), sysconfig.get_paths()["purelib"]])
    env[runtime.REPO_ENV] = str(origin)
    env[runtime.REF_ENV] = _commit(origin, "HEAD~1")
    return env


def _commit(repo: Path, ref: str = "HEAD") -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_runtime_is_decided_by_colab_module_then_kaggle_signs(tmp_path: Path) -> None:
    def yes(_: str) -> bool:
        return True

    def no(_: str) -> bool:
        return False

    absent = tmp_path / "no-kaggle"
    assert runtime.detect_runtime({}, yes, absent) == "colab"
    assert runtime.detect_runtime({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, yes, absent) == "colab"
    assert runtime.detect_runtime({"KAGGLE_KERNEL_RUN_TYPE": "Batch"}, no, absent) == "kaggle"
    assert runtime.detect_runtime({}, no, tmp_path) == "kaggle"
    assert runtime.detect_runtime({}, no, absent) == "local"


def test_stand_in_colab_package_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
        monkeypatch.delitem(sys.modules, name)
    assert runtime.detect_runtime({}, kaggle_working=tmp_path / "none") == "local"
    monkeypatch.syspath_prepend(str(_stand_in_colab(tmp_path / "stand-in")))
    assert runtime.detect_runtime({}, kaggle_working=tmp_path / "none") == "colab"


def test_only_missing_packages_are_installed_never_torch(capsys: pytest.CaptureFixture[str]) -> None:
    installed = {"torch": "2.3.0+cu121", "torchvision": "0.18.0", "numpy": "2.0.1", "pillow": "9.0.0"}
    calls: list[list[str]] = []
    requirements = ["torch>=2.4,<3", "torchvision>=0.19", "numpy>=1.26", "pillow>=10", "torchinfo>=1.8",
                    "papermill>=2.6", "jupyter>=1.0", 'pytest>=8; extra == "dev"', "huggingface_hub>=0.23"]
    missing = runtime.install_missing(requirements, installed.get, calls.append)
    assert missing == ["torchinfo>=1.8", "huggingface_hub>=0.23"] and calls == [missing]
    printed = capsys.readouterr().out
    assert "Kept torch 2.3.0+cu121" in printed and "Kept pillow 9.0.0" in printed and "numpy" not in printed
    calls.clear()
    assert runtime.install_missing(["numpy>=1.26"], installed.get, calls.append) == [] and calls == []
    with pytest.raises(RuntimeError, match="pytorch.org"):
        runtime.install_missing(["torchvision>=0.19", "tqdm"], {}.get, calls.append)
    assert calls == []


def test_pip_may_not_replace_torch_or_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[tuple[list[str], str]] = []

    def run(command: list[str], check: bool) -> None:
        constraints = Path(command[command.index("--constraint") + 1]).read_text()
        commands.append((command, constraints))

    monkeypatch.setattr(runtime.subprocess, "run", run)
    runtime.pip_install(["torchinfo>=1.8"])
    (command, constraints), = commands
    assert command[:3] == [sys.executable, "-m", "pip"] and command[-1] == "torchinfo>=1.8"
    assert constraints.split() == [f"{name}=={runtime.installed_version(name)}" for name in ("torch", "torchvision")]


def test_project_requirements_are_pyproject_dependencies() -> None:
    requirements = runtime.project_requirements(REPO_ROOT)
    assert any(r.startswith("torch>=") for r in requirements) and not any("pytest" in r for r in requirements)


def test_setup_cell_clones_once_where_the_project_is_missing(origin: Path, tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    stand_in = _stand_in_colab(tmp_path / "stand-in")
    script = (f"import importlib.util, sys\nassert importlib.util.find_spec('helper_setup') is None\n"
              f"cell = {notebook_cells.setup_cell()!r}\nexec(cell)\nexec(cell)\n"
              "import helper_setup\nprint('paths', sys.path.count(str(project_root)), helper_setup.__file__)\n")
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=content, capture_output=True, text=True,
                            env=_without_project_env(origin, stand_in), timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    clone = content / runtime.CLONE_FOLDER
    assert f"paths 1 {clone / 'helper_setup.py'}" in result.stdout
    assert f"Runtime: colab | project: {clone} | dependencies: all installed" in result.stdout
    assert f"Already set up: the project at {clone}" in result.stdout
    assert result.stdout.count("Runtime: colab") == 1
    assert _commit(clone) == _commit(origin, "HEAD~1") != _commit(origin)


def test_setup_cell_finds_the_checkout_from_notebooks_folder(origin: Path, tmp_path: Path) -> None:
    """A Jupyter whose kernel was not installed from requirements.txt: the kernel starts in notebooks/ and cannot
    import the helpers one folder up until the setup cell puts the repository root on the path; nothing is cloned."""
    script = (f"import importlib.util\nassert importlib.util.find_spec('helper_setup') is None\n"
              f"exec({notebook_cells.setup_cell()!r})\nimport helper_setup\n"
              "print('helpers', helper_setup.__file__)\n")
    env = {**_without_project_env(origin, tmp_path / "no-colab"), runtime.REPO_ENV: str(tmp_path / "unreachable")}
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=origin / "notebooks", capture_output=True,
                            text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert f"helpers {origin / 'helper_setup.py'}" in result.stdout
    setup_lines = result.stdout.splitlines()[:-1]
    assert setup_lines[0] == f"Runtime: local | project: {origin} | dependencies: all installed"
    assert setup_lines[1].startswith("Using torch") and setup_lines[2].startswith("No GPU: training runs on the CPU")
    assert len(setup_lines) == 3, "without a GPU the setup cell prints 3 lines"
    assert not (origin / "notebooks" / runtime.CLONE_FOLDER).exists()


def test_notebook_alone_in_colab_runs_end_to_end(origin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebook 1 alone in an empty folder, a kernel without the project, a stand-in google.colab: it clones the
    project from $CELEBA_VAE_REPO and trains one epoch on a CelebA-shaped folder."""
    content = tmp_path / "content"
    content.mkdir()
    notebook = content / "1_train_vae.ipynb"
    book = nbformat.read(REPO_ROOT / "notebooks" / notebook.name, as_version=4)
    nbformat.write(notebook_cells.with_setup_cells(book, notebook.name), notebook)
    stand_in = _stand_in_colab(tmp_path / "stand-in")
    env = _without_project_env(origin, stand_in)
    kernel = tmp_path / "jupyter" / "kernels" / "colab-like"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-S", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "a Python with torch but not this project", "language": "python",
        "env": {key: env[key] for key in ("PYTHONPATH", runtime.REPO_ENV, runtime.REF_ENV)}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    data = write_synthetic_celeba(tmp_path / "celeba", num_images=120, seed=5, layout="kaggle")
    outputs = tmp_path / "outputs"
    pm.execute_notebook(notebook, tmp_path / "executed.ipynb", cwd=str(content), kernel_name="colab-like",
                        progress_bar=False, parameters={"dataset": "celeba", "data_root": str(data), "device": "cpu",
                                                        "output_dir": str(outputs), "num_epochs": 1, "batch_size": 32})
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    clone = content / runtime.CLONE_FOLDER
    assert f"Runtime: colab | project: {clone}" in printed and "No GPU: training runs on the CPU" in printed
    assert (outputs / "transpose" / "checkpoint.pt").is_file()
    assert {p.name for p in content.iterdir()} == {runtime.CLONE_FOLDER, notebook.name}


def test_drive_keeps_outputs_and_mounts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(_stand_in_colab(tmp_path / "stand-in")))
    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(runtime, "COLAB_DRIVE", tmp_path / "drive")
    first = helper_setup.start_notebook(dataset="synthetic", data_root=tmp_path / "data",
                                        output_dir=None, num_synthetic=40, device="cpu",
                                        drive=True, runtime="colab")
    again = helper_setup.start_notebook(dataset="synthetic", data_root=tmp_path / "data",
                                        output_dir="outputs", num_synthetic=40, device="cpu",
                                        drive=True, runtime="colab")
    from google.colab import drive

    assert drive.mounted == [str(tmp_path / "drive")]
    assert first.output_dir == again.output_dir == tmp_path / "drive" / "MyDrive" / "celeba-vae" / "outputs"
    assert f"outputs: {first.output_dir}" in capsys.readouterr().out
    relative = runtime.output_folder("runs/try1", drive=True, runtime="colab")
    assert relative == tmp_path / "drive" / "MyDrive" / "celeba-vae" / "runs" / "try1"
    assert runtime.output_folder(tmp_path / "mine", drive=True, runtime="colab") == tmp_path / "mine"


def test_outputs_on_kaggle_and_drive_refused_outside_colab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    assert runtime.output_folder(None, runtime="kaggle") == Path("/kaggle/working/outputs")
    assert runtime.output_folder("outputs", runtime="kaggle") == Path("/kaggle/working/outputs")
    assert runtime.output_folder("runs", runtime="kaggle") == REPO_ROOT / "runs"
    assert runtime.output_folder(None, runtime="local") == REPO_ROOT / "outputs"
    monkeypatch.setenv(OUTPUTS_ENV, "/elsewhere/out")
    assert runtime.output_folder(None, runtime="kaggle") == Path("/elsewhere/out")
    with pytest.raises(ValueError, match="only works in Colab"):
        runtime.output_folder(None, drive=True, runtime="kaggle")
    with pytest.raises(ValueError, match="runtime='jupyterhub'"):
        runtime.output_folder(None, runtime="jupyterhub")


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int], count: int = 1) -> None:
    """CUDA cards of ``name`` and ``capability``, as far as torch's device queries go (no GPU needed)."""
    properties = types.SimpleNamespace(name=name, major=capability[0], minor=capability[1],
                                       total_memory=int(14.7 * GIB))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: properties)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _: name)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize(("name", "capability", "expected"), [
    ("Tesla T4", (7, 5), "fp16"), ("Tesla P100-PCIE-16GB", (6, 0), "fp16"), ("NVIDIA A100-SXM4-40GB", (8, 0), "bf16")])
def test_precision_on_colab_and_kaggle_cards(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int],
                                             expected: str) -> None:
    """torch's own bf16 test decides, on injected device properties: no native bf16 before compute capability 8."""
    _fake_cuda(monkeypatch, name, capability)
    chosen = choose_precision("auto", torch.device("cuda", 0))
    assert chosen.name == expected and name in chosen.reason
    assert chosen.grad_scaler().is_enabled() == (expected == "fp16")


@pytest.mark.parametrize(("cards", "total_gib", "free_gib"), [
    (["Tesla T4"], 14.7, 14.4), (["Tesla T4", "Tesla T4"], 14.7, 14.4), (["Tesla P100-PCIE-16GB"], 15.9, 15.6)])
def test_lecture_fits_colab_and_kaggle_gpus(cards: list[str], total_gib: float, free_gib: float) -> None:
    """At batch 256 in fp16 the decoded training split (7.45 GiB) goes on a T4 or a P100; with two cards one is
    used and named."""
    gpus = [runtime.GpuInfo(i, name, int(total_gib * GIB), (7, 5)) for i, name in enumerate(cards)]
    lines = runtime.gpu_lines(gpus, 0, int(free_gib * GIB), "fp16", 256)
    assert lines[0].startswith(f"GPU: {cards[0]} (cuda:0), {total_gib:.1f} GiB, {free_gib:.1f} GiB free")
    assert lines[-1].startswith("Fit: lecture's train split (7.45 GiB)") and lines[-1].endswith("-> on the GPU")
    assert ("training uses one, cuda:0" in "\n".join(lines)) == (len(cards) > 1)
    small = runtime.gpu_lines(gpus[:1], 0, 8 * GIB, "fp16", 256)
    assert small[-1].endswith("does not fit)")


def test_setup_cell_names_kaggles_two_t4s_and_times_nothing(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The card training uses, the other one, where the lecture's data go; no training step is run (that is
    ``run_lecture.py --self-check``'s job), so the cell builds no model and starts no optimizer."""
    _fake_cuda(monkeypatch, "Tesla T4", (7, 5), count=2)
    monkeypatch.setattr(gpu_budget, "free_gpu_bytes", lambda _: int(14.4 * GIB))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90"])
    monkeypatch.setattr(torch.optim.Adam, "step", lambda *_: pytest.fail("the setup cell trained"))
    runtime.report_device()
    versions, *printed = capsys.readouterr().out.splitlines()
    assert versions.startswith("Using torch") and "CUDA" in versions
    assert f"torchvision {torchvision.__version__} " in versions
    assert printed[0] == "GPU: Tesla T4 (cuda:0), 14.7 GiB, 14.4 GiB free, compute capability 7.5"
    assert "2 GPUs: training uses one, cuda:0" in printed[1] and "cuda:1 Tesla T4" in printed[1]
    assert printed[2].startswith("Fit: ") and printed[2].endswith("-> on the GPU")
    assert len(printed) == 3, printed


def test_the_setup_cell_imports_no_model_and_no_training_code() -> None:
    """``report_device`` in a fresh Python loads neither the model nor the training step."""
    script = ("import sys\nfrom celeba_vae import runtime\nruntime.report_device()\n"
              "print(sorted(m for m in ('model', 'helper_train', 'celeba_vae.selfcheck', 'celeba_vae.training') "
              "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.stdout.splitlines()[-1] == "[]", done.stdout


CUDA_13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.9+ cu130 wheels
CUDA_12_6_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]  # torch 2.8 cu126 wheels


@pytest.fixture
def fresh_cudnn(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's version as a fresh kernel has it: not yet read, so its check of the cards runs on the next read."""
    monkeypatch.setattr(torch.backends.cudnn, "__cudnn_version", None)


@pytest.mark.parametrize(("capability", "arch_list", "cudnn", "drivable"), [
    ((6, 0), CUDA_13_ARCHS, 92400, False),  # Kaggle's P100 under a CUDA 13 torch
    ((6, 0), CUDA_12_6_ARCHS, 90501, True),  # the same card under a torch built for it
    ((7, 0), CUDA_12_6_ARCHS, 91100, False),  # a V100: its kernels exist, but cuDNN 9.11+ refuses SM < 7.5
    ((7, 5), CUDA_13_ARCHS, 92400, True), ((8, 9), CUDA_13_ARCHS, 92400, True),  # sm_86 code runs on 8.9
    ((12, 1), ["sm_90", "compute_90"], 92400, True), ((12, 1), ["sm_90"], 92400, False),  # PTX is compiled forward
    ((9, 0), ["sm_80", "sm_90a", "sm_100f"], 92400, True),
])
def test_a_card_is_drivable_when_torch_has_kernels_and_cudnn_accepts_it(
        monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], arch_list: list[str], cudnn: int,
        drivable: bool) -> None:
    _fake_cuda(monkeypatch, "a card", capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)
    monkeypatch.setattr(runtime, "cudnn_version", lambda: cudnn)
    assert (runtime.unsupported_gpu() is None) == drivable


def test_kaggles_p100_is_named_before_any_cuda_work_and_the_cpu_used(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fresh_cudnn: None) -> None:
    """A P100 (compute capability 6.0) under a CUDA 13 torch: no sm_60 kernels, and cuDNN refuses it
    (``torch.backends.cudnn.version()`` raises). The setup cell says so in two lines with what to do, then
    ``get_device("auto")`` is the CPU; asking for CUDA stops with the same reason."""
    from helper_utils import get_device

    _fake_cuda(monkeypatch, "Tesla P100-PCIE-16GB", (6, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: CUDA_13_ARCHS)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
        monkeypatch.delitem(sys.modules, name)  # a stand-in google.colab of an earlier test would say "colab"
    monkeypatch.setattr(runtime, "_said", set())
    runtime.versions_line()  # never reads cuDNN through torch's check (which raises on this card)
    runtime.report_device()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2, printed
    assert printed[0].startswith("GPU Tesla P100-PCIE-16GB (cuda:0, compute capability 6.0) cannot be used by torch")
    assert "no sm_60 kernels" in printed[0]
    assert "Settings > Accelerator > GPU T4 x2" in printed[1] and "training runs on the CPU" in printed[1]
    assert get_device("auto") == torch.device("cpu")
    assert capsys.readouterr().out == "", "said once per kernel"
    with pytest.raises(RuntimeError, match="(?s)device='cuda': GPU Tesla P100-PCIE-16GB .* Or use device='auto'"):
        get_device("cuda")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    elsewhere = runtime.unsupported_gpu()
    assert "install a torch build that supports sm_60" in elsewhere, elsewhere
    assert "Settings > Accelerator > GPU T4 x2" in elsewhere and "another GPU" not in elsewhere, elsewhere


def test_setup_cells_are_written_once_and_in_place(tmp_path: Path) -> None:
    url = "https://github.com/someone/celeba-vae"
    for source in NOTEBOOKS:
        path = Path(shutil.copy2(source, tmp_path / source.name))
        original = nbformat.read(path, as_version=4)
        notebook_cells.update_notebook(path, url=url)
        assert not notebook_cells.update_notebook(path, url=url), f"{path.name} changed on a second application"
        book = nbformat.read(path, as_version=4)
        assert book.cells[0].id == notebook_cells.BADGE_ID
        assert notebook_cells.notebook_links(source.name, url)[0] in book.cells[0].source
        code = [c for c in book.cells if c.cell_type == "code"]
        assert code[0].id == notebook_cells.SETUP_ID and code[0].source == notebook_cells.setup_cell(url)
        kept = [c for c in book.cells if c.id not in (notebook_cells.BADGE_ID, notebook_cells.SETUP_ID)]
        assert [c.source for c in kept] == [c.source for c in original.cells if c.get("id") not in
                                            (notebook_cells.BADGE_ID, notebook_cells.SETUP_ID)]
        notebook_cells.update_notebook(path, url=runtime.PLACEHOLDER_URL)
        unpublished = nbformat.read(path, as_version=4)
        assert notebook_cells.BADGE_ID not in [c.id for c in unpublished.cells]
        assert "YOUR-ACCOUNT" not in "".join(c.source for c in unpublished.cells if c.cell_type == "markdown")


@pytest.mark.parametrize("notebook", [p.name for p in NOTEBOOKS])
def test_the_setup_cell_is_hidden_in_jupyter_colab_and_kaggle(notebook: str) -> None:
    """Jupyter hides ``source_hidden`` cells, Colab shows a ``# @title`` cell as a form (``cellView``), Kaggle hides
    ``_kg_hide-input``; it is the same cell in every notebook and times no training step."""
    book = notebook_cells.with_setup_cells(nbformat.read(REPO_ROOT / "notebooks" / notebook, as_version=4), notebook)
    setup = next(c for c in book.cells if c.get("id") == notebook_cells.SETUP_ID)
    assert setup.metadata["jupyter"] == {"source_hidden": True}
    assert setup.metadata["cellView"] == "form" and setup.metadata["_kg_hide-input"] is True
    assert setup.source.startswith("# @title ")
    assert setup.source == notebook_cells.setup_cell() and "train_vae_v1" not in setup.source


def test_links_are_built_from_the_one_repository_url() -> None:
    colab, kaggle = notebook_cells.notebook_links("1_train_vae.ipynb", "https://github.com/someone/fork.git", "v2")
    assert colab == "https://colab.research.google.com/github/someone/fork/blob/v2/notebooks/1_train_vae.ipynb"
    assert kaggle == ("https://kaggle.com/kernels/welcome?src=https://github.com/someone/fork/blob/v2/notebooks/"
                      "1_train_vae.ipynb")
    with pytest.raises(ValueError, match="REPO_URL='https://gitlab.com/a/b'"):
        notebook_cells.notebook_links("1_train_vae.ipynb", "https://gitlab.com/a/b")
    assert runtime.REPO_URL in notebook_cells.setup_cell()
    assert "YOUR-ACCOUNT" not in notebook_cells.links_table(["1_train_vae.ipynb"], runtime.PLACEHOLDER_URL)


def _project_copy(folder: Path) -> Path:
    """What the generator reads and writes: the notebooks, the README and celeba_vae/runtime.py."""
    shutil.copytree(REPO_ROOT / "notebooks", folder / "notebooks")
    shutil.copy2(REPO_ROOT / "README.md", folder / "README.md")
    (folder / "celeba_vae").mkdir()
    shutil.copy2(REPO_ROOT / "celeba_vae" / "runtime.py", folder / "celeba_vae" / "runtime.py")
    return folder


def test_a_fork_publishes_with_one_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _project_copy(tmp_path)
    url = "https://github.com/someone/celeba-vae"
    assert notebook_cells.main(["--url", url, "--ref", "v1"], root=root) == 0
    assert f'REPO_URL = "{url}"' in (root / "celeba_vae" / "runtime.py").read_text()
    assert 'REPO_REF = "v1"' in (root / "celeba_vae" / "runtime.py").read_text()
    readme = (root / "README.md").read_text()
    assert notebook_cells.notebook_links("2_sample_and_reconstruct.ipynb", url, "v1")[1] in readme
    for path in NOTEBOOKS:
        book = nbformat.read(root / "notebooks" / path.name, as_version=4)
        assert book.cells[0].id == notebook_cells.BADGE_ID and "someone/celeba-vae/blob/v1" in book.cells[0].source
        assert f'url = url or "{url}"' in next(c.source for c in book.cells if c.get("id") == notebook_cells.SETUP_ID)
    assert "updated: README.md" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        notebook_cells.main(["--url", "https://gitlab.com/a/b"], root=root)
    assert "is not https://github.com/OWNER/NAME" in capsys.readouterr().err


def _run_setup_cell_in_ipython(cell: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``cell`` as Jupyter does (IPython's shell renders the error) in a Python without the project."""
    script = ("from IPython.core.interactiveshell import InteractiveShell\n"
              f"result = InteractiveShell.instance().run_cell({cell!r})\n"
              "print('cell succeeded:', result.success)\n")
    return subprocess.run([sys.executable, "-S", "-c", script], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300, check=False)


@pytest.mark.parametrize("where", ["placeholder", "unreachable"])
def test_a_clone_that_fails_says_why_and_what_to_do(origin: Path, tmp_path: Path, where: str) -> None:
    """The unpublished ``YOUR-ACCOUNT`` URL, or a repository that cannot be reached (the network off): two lines
    saying why and how to go on, no traceback, no half-made clone left behind."""
    content = tmp_path / "content"
    content.mkdir()
    env = _without_project_env(origin, tmp_path / "no-colab")
    del env[runtime.REF_ENV]
    if where == "placeholder":
        del env[runtime.REPO_ENV]
        cell = notebook_cells.setup_cell(runtime.PLACEHOLDER_URL)
    else:
        env[runtime.REPO_ENV] = str(tmp_path / "no-such-repository")
        cell = notebook_cells.setup_cell()
    result = _run_setup_cell_in_ipython(cell, content, env)
    printed = result.stdout + result.stderr
    assert "cell succeeded: False" in printed and "Traceback" not in printed, printed
    message = [line for line in printed.splitlines() if line and not line.startswith("cell succeeded")]
    assert len(message) == 2, printed
    assert message[0].startswith("Could not fetch the project from")
    assert ("placeholder" in message[0]) == (where == "placeholder")
    assert where == "placeholder" or "does not exist" in message[0]
    assert "os.environ['CELEBA_VAE_REPO']" in message[1] and "upload the repository" in message[1]
    assert list(content.iterdir()) == []


def test_committed_notebooks_and_readme_links_are_up_to_date() -> None:
    """``python -m celeba_vae.notebook_cells`` has been run: applying it again changes nothing."""
    assert notebook_cells.main(["--check"]) == 0, "run: python -m celeba_vae.notebook_cells"
