"""One rule for paths wherever the code runs.

Jupyter with the kernel in ``notebooks/``, the repository root, papermill or ``run_lecture.py``: a relative path is
relative to the repository root, so the defaults ``data`` and ``outputs`` are the repository's ``data/`` and
``outputs/``. The environment variables ``CELEBA_VAE_DATA`` and ``CELEBA_VAE_OUTPUTS`` point the defaults elsewhere.
What is made from a read-only data folder (its decoded cache, an extracted zip) goes under ``CELEBA_VAE_CACHE``
(default ``~/.cache/celeba-vae``), see :func:`writable_cache`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV, OUTPUTS_ENV, CACHE_ENV = "CELEBA_VAE_DATA", "CELEBA_VAE_OUTPUTS", "CELEBA_VAE_CACHE"


def project_path(path: str | Path | None, default: str) -> Path:
    """The absolute path a user means by ``path``.

    ``None`` (or the bare default name ``"data"``/``"outputs"``) means the environment variable
    (``CELEBA_VAE_DATA``/``CELEBA_VAE_OUTPUTS``) when set, else the repository's folder of that name. Any other
    relative path is taken relative to the repository root, never to the working directory; ``~`` is expanded.
    """
    env = {"data": DATA_ENV, "outputs": OUTPUTS_ENV}[default]
    if path is None or str(path) == default:
        path = os.environ.get(env) or default
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def writable_cache(folder: str | Path) -> Path:
    """Where files made from the read-only data folder ``folder`` go: ``$CELEBA_VAE_CACHE/<name>-<fingerprint>``.

    ``CELEBA_VAE_CACHE`` defaults to ``~/.cache/celeba-vae`` (a relative value is relative to the repository root);
    the fingerprint of ``folder``'s absolute path keeps two data folders of the same name apart.
    """
    folder = Path(folder).expanduser().resolve()
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "celeba-vae").expanduser()
    base = base if base.is_absolute() else REPO_ROOT / base
    return base / f"{folder.name or 'root'}-{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class RunFiles:
    """Where one training run's files go: ``<output_dir>/<decoder>/`` for its weights, ``<output_dir>/figures``
    and ``<output_dir>/metrics.json`` for what the notebooks draw and measure, ``<output_dir>/notebooks`` for the
    runner's executed notebooks."""

    output_dir: Path
    decoder: str

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.decoder

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def weights(self) -> Path:
        """The lecture's plain state dict, ``vae_celeba_02.pt``."""
        return self.run_dir / "vae_celeba_02.pt"

    @property
    def epoch_images(self) -> Path:
        return self.run_dir / "epochs"

    @property
    def figures(self) -> Path:
        return self.output_dir / "figures"

    @property
    def metrics(self) -> Path:
        return self.output_dir / "metrics.json"

    @property
    def notebooks(self) -> Path:
        """Where ``run_lecture.py`` keeps the executed notebooks, each with its own output."""
        return self.output_dir / "notebooks"


def run_files(output_dir: str | Path, decoder: str) -> RunFiles:
    """The one place that knows where the run of ``decoder`` under ``output_dir`` keeps its files."""
    return RunFiles(Path(output_dir), decoder)
