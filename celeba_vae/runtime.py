"""Where a notebook runs (Colab, Kaggle or a local Jupyter) and what its first cell settles there.

The notebooks' setup cell (written by :mod:`celeba_vae.notebook_cells` from ``REPO_URL`` and ``REPO_REF``) finds
or fetches the project, puts it on ``sys.path`` and calls :func:`prepare`: only the missing dependencies are
installed (never torch or torchvision, so a CUDA build is never replaced). Then :func:`report_device` names the
torch in use and the GPU, nothing more: it starts in seconds (timing a training step is ``run_lecture.py
--self-check``'s job). A card the installed torch cannot drive (:func:`unsupported_gpu`) is named with what to do,
and training runs on the CPU. :func:`output_folder` decides where outputs go: Google Drive when asked (Colab),
``/kaggle/working`` on Kaggle.

Nothing here imports torch at module level: the setup cell imports this module before anything is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from celeba_vae.atomic_files import GIB
from celeba_vae.paths import OUTPUTS_ENV, project_path

PLACEHOLDER_URL = "https://github.com/YOUR-ACCOUNT/celeba-vae"
REPO_URL = "https://github.com/YOUR-ACCOUNT/celeba-vae"  # set by python -m celeba_vae.notebook_cells --url
REPO_REF = "main"
REPO_ENV, REF_ENV = "CELEBA_VAE_REPO", "CELEBA_VAE_REF"
CLONE_FOLDER = "celeba-vae"
RUNTIMES = ("colab", "kaggle", "local")
KAGGLE_WORKING = Path("/kaggle/working")
COLAB_DRIVE = Path("/content/drive")
DRIVE_FOLDER = "celeba-vae"
NEVER_INSTALLED = ("torch", "torchvision")
NOT_NEEDED_IN_A_KERNEL = ("jupyter", "ipykernel", "papermill", "nbformat")
PYTORCH_INSTALL = "https://pytorch.org/get-started/locally/"
KAGGLE_GPU = "On Kaggle choose Settings > Accelerator > GPU T4 x2, then run the notebook again"
CUDNN_SM_FLOOR, CUDNN_FLOOR_SINCE = (7, 5), 91100  # cuDNN 9.11+ (CUDA 13 builds) refuses cards below 7.5

_prepared: set[Path] = set()
_said: set[str] = set()


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def detect_runtime(
    environ: Mapping[str, str] | None = None,
    importable: Callable[[str], bool] = _importable,
    kaggle_working: Path = KAGGLE_WORKING,
) -> str:
    """``"colab"`` when ``google.colab`` can be imported, ``"kaggle"`` when ``KAGGLE_KERNEL_RUN_TYPE`` is set or
    ``/kaggle/working`` exists, else ``"local"``."""
    environ = os.environ if environ is None else environ
    if importable("google.colab"):
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in environ or kaggle_working.is_dir():
        return "kaggle"
    return "local"


def project_requirements(root: Path) -> list[str]:
    """The project's dependencies: ``[project.dependencies]`` of ``root/pyproject.toml``, or the installed
    ``celeba-vae``'s where that file is missing or Python (3.10) has no ``tomllib``."""
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and sys.version_info >= (3, 11):
        import tomllib

        with open(pyproject, "rb") as file:
            return tomllib.load(file)["project"]["dependencies"]
    try:
        return importlib.metadata.requires("celeba-vae") or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"cannot tell which packages the project needs: {pyproject} cannot be read here and "
                           "celeba-vae is not installed. Run `pip install -r requirements.txt` in "
                           f"{root}") from None


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_install(requirements: list[str]) -> None:
    """``python -m pip install`` the ``requirements`` into the running kernel's environment, with the installed
    torch and torchvision pinned as constraints: pip stops with an error rather than replace them."""
    pins = [f"{name}=={version}" for name in NEVER_INSTALLED if (version := installed_version(name))]
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--constraint", str(constraints),
                        *requirements], check=True)


def install_missing(
    requirements: Iterable[str],
    version_of: Callable[[str], str | None] = installed_version,
    install: Callable[[list[str]], None] = pip_install,
) -> list[str]:
    """Install the ``requirements`` that are not installed at all, and return them (the caller says which).

    torch and torchvision are never installed (a missing one is an error saying where to get it) and an installed
    package is never replaced: one that the project would like newer is named in one line and kept, since
    replacing a package the kernel may already have imported needs a restart. Jupyter's own packages
    (``NOT_NEEDED_IN_A_KERNEL``) are skipped: the kernel running this already has what it needs.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in NOT_NEEDED_IN_A_KERNEL or (requirement.marker and not requirement.marker.evaluate()):
            continue
        version = version_of(requirement.name)
        if version is None and name in NEVER_INSTALLED:
            raise RuntimeError(f"{requirement.name} is not installed in this kernel ({sys.executable}). Install "
                               f"PyTorch for your machine from {PYTORCH_INSTALL} (this setup never installs "
                               "torch or torchvision, so as not to replace a CUDA build), then run this cell again.")
        if version is None:
            missing.append(str(requirement))
        elif not requirement.specifier.contains(version, prereleases=True):
            print(f"Kept {requirement.name} {version} as installed (the project asks for {requirement.specifier}; "
                  "replacing it would need a kernel restart)")
    if missing:
        install(missing)
        importlib.invalidate_caches()
    return missing


def cudnn_version() -> int | None:
    """The cuDNN version torch was built with (``92400`` for 9.24), read from the library without initialising it:
    ``torch.backends.cudnn.version()`` raises on a machine with a card below cuDNN's floor."""
    import torch

    return torch._C._cudnn.getVersionInt() if torch.backends.cudnn.is_available() else None


def _has_kernels_for(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch built for ``arch_list`` runs on a card of ``capability``: ``sm_XY`` code runs on cards of
    major X and minor Y or later, ``compute_XY`` (PTX) is compiled for any card of XY or later."""
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        number = number.rstrip("af")  # sm_90a, sm_100f: variants of sm_90, sm_100
        built = (int(number[:-1]), int(number[-1]))
        if (kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]) or (
                kind == "compute" and built <= capability):
            return True
    return False


def unsupported_gpu() -> str | None:
    """Why the installed torch cannot drive this machine's CUDA cards, in two lines saying what to do, or ``None``.

    Read before any CUDA work (no cuDNN, no kernel): each card's compute capability against
    ``torch.cuda.get_arch_list()`` and against cuDNN's floor (9.11 and later, in CUDA 13 builds, refuse a machine
    with any card below compute capability 7.5).
    """
    import torch

    if not torch.cuda.is_available() or torch.version.hip:
        return None
    arch_list, cudnn = torch.cuda.get_arch_list(), cudnn_version()
    for index in range(torch.cuda.device_count()):
        with warnings.catch_warnings():  # torch's own multi-line warning about the card; said below in two lines
            warnings.simplefilter("ignore")
            capability = tuple(torch.cuda.get_device_capability(index))
            name = torch.cuda.get_device_name(index)
        sm = f"sm_{capability[0]}{capability[1]}"
        if arch_list and not _has_kernels_for(capability, arch_list):
            why = f"it has no {sm} kernels (built for {' '.join(arch_list)})"
        elif cudnn is not None and cudnn >= CUDNN_FLOOR_SINCE and capability < CUDNN_SM_FLOOR:
            why = f"its cuDNN {cudnn} needs compute capability {'.'.join(map(str, CUDNN_SM_FLOOR))} or newer"
        else:
            continue
        todo = (KAGGLE_GPU if detect_runtime() == "kaggle" else
                f"For this card install a torch build that supports {sm} ({PYTORCH_INSTALL}). {KAGGLE_GPU}")
        return (f"GPU {name} (cuda:{index}, compute capability {capability[0]}.{capability[1]}) cannot be used by "
                f"torch {torch.__version__}: {why}.\n{todo}.")
    return None


def cuda_usable() -> bool:
    """Whether CUDA is available and the installed torch can drive its cards; when it cannot, say why (two lines,
    once per process)."""
    import torch

    reason = unsupported_gpu()
    if reason is not None and reason not in _said:
        print(f"{reason[:-1]}; until then training runs on the CPU, where recipe='auto' picks the laptop recipe "
              "with CelebA, or the demo recipe on synthetic faces.")
        _said.add(reason)
    return torch.cuda.is_available() and reason is None


def versions_line() -> str:
    """One line: the torch and torchvision in use (never replaced here) and the CUDA/cuDNN they run on."""
    import torch
    import torchvision

    if torch.cuda.is_available():
        backend = f"CUDA {torch.version.cuda}, cuDNN {cudnn_version()}"
    elif torch.backends.mps.is_available():
        backend = "Apple MPS"
    else:
        backend = "no GPU visible" + (f" (a CUDA {torch.version.cuda} build)" if torch.version.cuda else "")
    return f"Using torch {torch.__version__} and torchvision {torchvision.__version__} as installed; {backend}"


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA card: its index, name, total memory in bytes and compute capability."""

    index: int
    name: str
    total_bytes: int
    capability: tuple[int, int]


def cuda_gpus() -> list[GpuInfo]:
    """The CUDA cards this kernel sees."""
    import torch

    gpus = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        gpus.append(GpuInfo(index, props.name, props.total_memory, (props.major, props.minor)))
    return gpus


def gpu_lines(gpus: list[GpuInfo], used: int, free_bytes: int, precision: str, batch_size: int) -> list[str]:
    """What the setup cell says about the cards: the one training uses (name, memory, compute capability), the
    others when there are several, and where the lecture's decoded training split goes at ``precision``."""
    from celeba_vae.celeba_files import OFFICIAL_SPLIT_SIZES
    from celeba_vae.gpu_budget import IMAGE_SHAPE, plan_placement

    card = gpus[used]
    memory = f"{card.total_bytes / GIB:.1f} GiB, {free_bytes / GIB:.1f} GiB free"
    capability = ".".join(map(str, card.capability))
    lines = [f"GPU: {card.name} (cuda:{card.index}), {memory}, compute capability {capability}"]
    if len(gpus) > 1:
        others = ", ".join(f"cuda:{g.index} {g.name}" for g in gpus if g.index != used)
        lines.append(f"{len(gpus)} GPUs: training uses one, cuda:{card.index} (not split across cards); the other: "
                     f"{others}; device='cuda:N' picks another")
    train_bytes = OFFICIAL_SPLIT_SIZES["train"] * IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    placement = plan_placement(train_bytes, free_bytes, batch_size, precision, split="lecture's train")
    lines.append(f"Fit: {placement.message}")
    return lines


def report_device() -> None:
    """Print the torch in use and the GPU training will use (the other cards when there are several, and whether
    the lecture's data fit on it), or how to get one. A card the installed torch cannot drive is named with what to
    do instead (:func:`unsupported_gpu`); training then runs on the CPU. Cheap: no training step, no model."""
    import torch

    from celeba_vae.precision import choose_precision
    from celeba_vae.recipes import RECIPES

    if torch.cuda.is_available() and not cuda_usable():
        return
    print(versions_line())
    gpus = cuda_gpus()
    if not gpus and torch.backends.mps.is_available():
        print("No CUDA GPU: training runs on the Apple GPU (MPS)")
        return
    if not gpus:
        print("No GPU: training runs on the CPU, where recipe='auto' picks the laptop recipe with CelebA, or the "
              "demo recipe on synthetic faces. For the lecture's settings use a GPU: in Colab Runtime > Change "
              "runtime type > T4 GPU, on Kaggle Settings > Accelerator > GPU T4 x2; then run the notebook from the top")
        return
    from celeba_vae.gpu_budget import free_gpu_bytes

    device = torch.device("cuda", torch.cuda.current_device())
    precision = choose_precision("auto", device).name
    print("\n".join(gpu_lines(gpus, device.index, free_gpu_bytes(device), precision, RECIPES["lecture"].batch_size)))


def prepare(root: str | Path) -> bool:
    """What the setup cell calls once the project is on ``sys.path``: install what is missing and say so in one
    line. Returns ``False`` (and only says it was done) when called again in the same kernel."""
    root = Path(root).resolve()
    if root in _prepared:
        print(f"Already set up: the project at {root}")
        return False
    runtime = detect_runtime()
    installed = install_missing(project_requirements(root))
    print(f"Runtime: {runtime} | project: {root} | dependencies: "
          + (f"installed {', '.join(installed)}" if installed else "all installed"))
    _prepared.add(root)
    return True


def mount_drive(mount_point: Path | None = None) -> Path:
    """Mount Google Drive at ``mount_point`` (default ``COLAB_DRIVE``; Colab asks for permission once) unless it is
    mounted already, and return its ``MyDrive``."""
    from google.colab import drive

    mount_point = COLAB_DRIVE if mount_point is None else mount_point
    if not (mount_point / "MyDrive").is_dir():
        drive.mount(str(mount_point))
    return mount_point / "MyDrive"


def output_folder(
    output_dir: str | Path | None,
    drive: bool = False,
    runtime: str | None = None,
) -> Path:
    """Where a notebook's outputs go, said in one line when it is not the repository's ``outputs/``.

    ``drive=True`` (Colab only) mounts Google Drive and puts a relative ``output_dir`` (default ``outputs``) under
    ``MyDrive/celeba-vae/``, so checkpoints survive a disconnect; an absolute one (on the mounted Drive, say) is used
    as it is. On Kaggle the default goes to ``/kaggle/working/outputs``. Otherwise
    :func:`celeba_vae.paths.project_path` decides.
    """
    runtime = detect_runtime() if runtime is None else runtime
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is not one of {', '.join(map(repr, RUNTIMES))}")
    default = output_dir is None or str(output_dir) == "outputs"
    if drive:
        if runtime != "colab":
            raise ValueError(f"drive=True mounts Google Drive, which only works in Colab (this runtime: {runtime}). "
                             "Set drive=False; on Kaggle outputs go to /kaggle/working/outputs, elsewhere to "
                             "output_dir.")
        my_drive, path = mount_drive(), Path(output_dir or "outputs").expanduser()
        folder = path if path.is_absolute() else my_drive / DRIVE_FOLDER / path
        print(f"Outputs on Google Drive: {folder} (kept when Colab disconnects; resume=True continues there)")
        return folder
    if runtime == "kaggle" and default and not os.environ.get(OUTPUTS_ENV):
        folder = KAGGLE_WORKING / "outputs"
        print(f"Outputs in {folder}, Kaggle's writable folder (kept with a saved version of the notebook)")
        return folder
    folder = project_path(output_dir, "outputs")
    if runtime == "colab":
        print(f"Outputs in {folder}, on this Colab runtime's disk: lost when it disconnects; drive=True keeps them "
              "on Google Drive")
    return folder
