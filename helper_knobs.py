"""What the knobs do: a small sweep of short runs, one knob changed at a time, each measured the same way.

* :func:`knob_grid`: the lecture's settings plus one run per other value of each knob (latent size, reconstruction
  term weight, decoder, learning rate).
* :class:`KnobSweep`: trains and measures every run on the same images, seeds and epochs; each finished run is saved
  under ``folder/<run name>/`` (laid out by :func:`celeba_vae.paths.run_files`: ``metrics.json``, and the
  checkpoint and ``faces.pt`` in ``<decoder>/``) and skipped when the sweep runs again.
* :func:`run_sweep`: the notebook's one call: the loaders, the plan printed with its time, FID when it can be had,
  every run trained and measured, recorded in ``metrics.json``.
* :func:`show_knob`: the table and two figures of one knob (:func:`knob_table`, :func:`plot_knob`,
  :func:`plot_knob_faces`), or one line when the knob was not swept.

What the numbers show, in sentences, is :func:`helper_findings.knob_findings`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display
from matplotlib.figure import Figure

from celeba_vae.atomic_files import atomic_write
from celeba_vae.paths import RunFiles, run_files
from celeba_vae.recipes import KNOB_VALUES, Recipe, knob_runs
from helper_data import first_images, get_cached_dataloaders_celeba
from helper_latent import encode_dataset, latent_statistics
from helper_plotting import plot_image_grid, save_figure
from helper_probe import attribute_probe
from helper_quality import FrechetScore, PosteriorMeans, inception_fid, reconstruction_metrics
from helper_spectra import checkerboard_score
from helper_train import adam, evaluate_vae, train_vae_v1
from helper_utils import eval_mode, format_number, load_model, markdown_table, set_all_seeds
from model import VAE

if TYPE_CHECKING:
    from helper_setup import NotebookRun

MEASURES: tuple[tuple[str, str, int], ...] = (
    ("test_loss", "test loss (rec. + KL)", 1),
    ("test_reconstruction", "reconstruction", 1),
    ("test_kl", "KL", 1),
    ("psnr", "PSNR (dB)", 2),
    ("ssim", "SSIM", 3),
    ("checkerboard", "checkerboard (samples)", 3),
    ("active_units", "active units", 0),
    ("probe_balanced_accuracy", "probe balanced acc.", 3),
    ("fd_baseline_encoder", "FD, baseline encoder (not FID)", 2),
    ("fid", "FID", 1),
)


@dataclass(frozen=True)
class KnobSettings:
    """The settings a sweep varies; the defaults are the lecture's."""

    latent_dim: int = 200
    reconstruction_term_weight: float = 1.0
    decoder: str = "transpose"
    learning_rate: float = 5e-4

    @property
    def name(self) -> str:
        """The run's folder name, e.g. ``latent200-weight1-transpose-lr0.0005``."""
        return (f"latent{self.latent_dim}-weight{self.reconstruction_term_weight:g}-{self.decoder}"
                f"-lr{self.learning_rate:g}")

    @property
    def changed_knob(self) -> str:
        """The knob that differs from the lecture's settings (``"baseline"`` for none)."""
        changed = [k for k, v in asdict(self).items() if v != getattr(BASELINE, k)]
        if len(changed) > 1:
            raise ValueError(f"{self.name} changes {changed}; a sweep changes one knob at a time")
        return changed[0] if changed else "baseline"


BASELINE = KnobSettings()
SHORTER = 5


def short_plan(recipe: Recipe, num_epochs: int | None = None, batch_size: int | None = None,
               train_images: int | None = None, eval_images: int | None = None) -> Recipe:
    """The sweep's runs: ``recipe`` with a fifth of its epochs (at least 1: 10 for the lecture's, 2 for the laptop
    recipe), or ``num_epochs``; the other values override the recipe's as in notebook 1. Printed in one line."""
    return recipe.override(num_epochs=num_epochs or max(1, recipe.num_epochs // SHORTER), batch_size=batch_size,
                           train_images=train_images, eval_images=eval_images)


def knob_grid(knobs: Sequence[str] = tuple(KNOB_VALUES), values: Mapping[str, Sequence[Any]] = KNOB_VALUES
              ) -> list[KnobSettings]:
    """The lecture's settings first, then one run for every other value of each knob in ``knobs`` (one knob
    changed at a time). Fewer knobs, fewer runs: ``knob_grid([])`` is the baseline alone."""
    unknown = [k for k in knobs if k not in values]
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; choose from {list(values)}")
    runs = [BASELINE]
    for knob in knobs:
        runs += [replace(BASELINE, **{knob: v}) for v in values[knob] if v != getattr(BASELINE, knob)]
    return runs


@dataclass
class KnobSweep:
    """Every run of a sweep on the same data, seed and epochs (``plan``), saved under ``folder``.

    ``data_settings``: what identifies the data and recipe (``NotebookRun.checkpoint_settings``); a saved run
    with other settings is refused, not silently reused. ``num_samples`` test faces and as many samples from the
    prior are compared by the sample measures; ``probe_images`` validation codes fit the attribute probe.
    ``frechet=False`` builds no Fréchet metric at all (its column stays empty).
    """

    folder: Path
    plan: Recipe
    train_loader: Iterable
    valid_loader: Iterable
    test_loader: Iterable
    device: torch.device
    data_settings: dict[str, Any]
    seed: int = 123
    num_samples: int = 512
    probe_images: int = 2000
    frechet: bool = True
    real_images: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.device = torch.device(self.device)
        self.real_images = torch.cat([x.cpu() for x, _ in first_images(self.test_loader, self.num_samples)])
        self.num_samples = len(self.real_images)
        self._reference: FrechetScore | None = None

    def settings(self, knob: KnobSettings) -> dict[str, Any]:
        """Everything a run's numbers depend on (stored with it and compared when it is found again)."""
        return {**self.data_settings, "epochs": self.plan.num_epochs, "batch_size": self.plan.batch_size,
                "eval_images": self.plan.eval_images, "seed": self.seed, "num_samples": self.num_samples,
                "probe_images": self.probe_images, **asdict(knob)}

    def files(self, knob: KnobSettings) -> RunFiles:
        """Where the run of ``knob`` keeps its files, under ``folder/<run name>``."""
        return sweep_run_files(self.folder, knob.name, knob.decoder)

    def finished(self, knob: KnobSettings) -> dict[str, Any] | None:
        """The saved metrics of ``knob``'s run, or ``None`` when it has not finished; a saved run with other
        settings is an error that names its folder."""
        path = self.files(knob).metrics
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        if result.get("settings") != json.loads(json.dumps(self.settings(knob))):
            saved, now = result.get("settings", {}), self.settings(knob)
            differ = [f"{k}: {saved.get(k)!r} saved, {v!r} now" for k, v in now.items() if saved.get(k) != v]
            raise ValueError(f"{path.parent} holds a finished run with other settings ({'; '.join(differ)}); "
                             "delete that folder to rerun it, or choose another output_dir")
        return result

    def estimate_seconds(self, knob: KnobSettings, steps: int = 3) -> float:
        """Seconds one run of ``knob`` will take on this device: ``steps`` training steps (after one warm-up step)
        and two batches of evaluation, timed, scaled to the plan's epochs and the images measured. The steps are
        timed eagerly (too few to capture a CUDA graph), so on CUDA, where the runs replay one, this is an upper
        bound."""
        set_all_seeds(self.seed)
        model = VAE(knob.latent_dim, knob.decoder).to(self.device)
        optimizer = adam(model, lr=knob.learning_rate)
        batches = list(islice(self.train_loader, steps + 1))
        with contextlib.redirect_stdout(io.StringIO()):
            train_vae_v1(1, model, optimizer, self.device, batches[:1], progress=False, cuda_graph=False)
            start = time.perf_counter()
            train_vae_v1(1, model, optimizer, self.device, batches[1:], progress=False, cuda_graph=False)
            step = (time.perf_counter() - start) / max(len(batches) - 1, 1)
            test_batches = list(islice(self.test_loader, 2))
            start = time.perf_counter()
            evaluate_vae(model, test_batches, self.device)
            per_image = (time.perf_counter() - start) / sum(len(x) for x, _ in test_batches)
        steps_per_run = self.plan.num_epochs * len(self.train_loader)
        probed = min(self.probe_images, len(self.valid_loader.dataset))
        evaluated = 3 * len(self.test_loader.dataset) + probed + 2 * self.num_samples
        return step * steps_per_run + per_image * evaluated

    def print_plan(self, runs: Sequence[KnobSettings]) -> float:
        """Print how many runs, how long each takes on this device (measured now) and the total; return the total
        in seconds (runs already finished count zero)."""
        todo = [k for k in runs if self.finished(k) is None]
        print(f"{len(runs)} runs ({len(runs) - len(todo)} already finished and skipped, {len(todo)} to train), each "
              f"{self.plan.num_epochs} epochs over {len(self.train_loader.dataset):,} training images at batch size "
              f"{self.plan.batch_size}, on {self.device}.")
        per_decoder = {d: self.estimate_seconds(replace(BASELINE, decoder=d)) for d in {k.decoder for k in todo}}
        for decoder, seconds in sorted(per_decoder.items()):
            print(f"  about {_duration(seconds)} per run with the {decoder} decoder (measured from the first "
                  "training steps on this device)")
        total = sum(per_decoder[k.decoder] for k in todo)
        print(f"  total: about {_duration(total)}, plus FID's Inception-v3 passes where FID is measured")
        return total

    def run(self, runs: Sequence[KnobSettings], fid: FrechetScore | None = None) -> list[dict[str, Any]]:
        """Train and measure every run not finished yet (the baseline first: its encoder scores the others'
        samples), and return every run's metrics in the order of ``runs``."""
        ordered = [BASELINE, *[k for k in runs if k != BASELINE]]
        results = {}
        for i, knob in enumerate(ordered, 1):
            result = self.finished(knob)
            if result is not None:
                print(f"[{i}/{len(ordered)}] {knob.name}: finished before, skipped")
            else:
                print(f"[{i}/{len(ordered)}] {knob.name}: training")
                result = self._train_and_measure(knob, fid)
            results[knob] = result
        return [results[k] for k in runs]

    def _train_and_measure(self, knob: KnobSettings, fid: FrechetScore | None) -> dict[str, Any]:
        files = self.files(knob)
        settings = self.settings(knob)
        set_all_seeds(self.seed)
        model = VAE(knob.latent_dim, knob.decoder).to(self.device)
        optimizer = adam(model, lr=knob.learning_rate)
        result: dict[str, Any] = {"name": knob.name, "knob": knob.changed_knob, **asdict(knob), "settings": settings}
        try:
            train_vae_v1(self.plan.num_epochs, model, optimizer, self.device, self.train_loader,
                         reconstruction_term_weight=knob.reconstruction_term_weight,
                         checkpoint_path=files.checkpoint, resume=files.checkpoint.is_file(), settings=settings)
        except FloatingPointError as err:
            print(f"{knob.name} diverged: {str(err).splitlines()[0]}")
            result["diverged"] = str(err).splitlines()[0]
        if "diverged" not in result:
            result.update(self.measure(model, knob, fid))
        atomic_write(files.metrics, lambda f: f.write(json.dumps(result, indent=2).encode()))
        return result

    def inception_fid(self) -> tuple[FrechetScore | None, str]:
        """FID against this sweep's real test faces, or ``None`` and the reason in one line (see
        :func:`helper_quality.inception_fid`)."""
        return inception_fid(self.real_images, self.device)

    def reference(self) -> FrechetScore | None:
        """The Fréchet distance in the feature space of the baseline run's encoder (posterior means): not FID, but
        the same yardstick for every run of this sweep, and it needs no download. ``None`` when ``frechet=False``."""
        if self._reference is None and self.frechet:
            baseline = load_model(self.files(BASELINE).checkpoint, self.device,
                                  data=self.data_settings.get("data"))
            self._reference = FrechetScore(self.real_images, PosteriorMeans(baseline), device=self.device)
        return self._reference

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, knob: KnobSettings, fid: FrechetScore | None = None) -> dict[str, Any]:
        """Every measure of one trained model: test losses (reconstruction + KL, weight 1 for every run), PSNR/SSIM,
        checkerboard of samples, active units, attribute probe, Fréchet distances; saves 8 reconstructions and 8
        samples as ``faces.pt`` in the run's folder."""
        model.to(self.device).eval()
        test = evaluate_vae(model, self.test_loader, self.device)
        quality = reconstruction_metrics(model, self.test_loader, self.device)
        codes = torch.randn(self.num_samples, knob.latent_dim, generator=torch.Generator().manual_seed(self.seed))
        with eval_mode(model):
            samples = torch.cat([model.decode(z.to(self.device)).float().cpu() for z in codes.split(64)])
            reconstructions = model.reconstruct(self.real_images[:8].to(self.device)).float().cpu()
        test_codes = encode_dataset(model, self.test_loader, self.device)
        probe_codes = encode_dataset(model, self.valid_loader, self.device, max_images=self.probe_images)
        probe = attribute_probe(probe_codes["z_mean"], probe_codes["attributes"], test_codes["z_mean"],
                                test_codes["attributes"])
        faces = {"reconstructions": _to_uint8(reconstructions), "samples": _to_uint8(samples[:8])}
        atomic_write(_faces(self.files(knob)), lambda f: torch.save(faces, f))
        return {
            "epochs": self.plan.num_epochs,
            "test_loss": test["reconstruction"] + test["kl"],
            "test_reconstruction": test["reconstruction"],
            "test_kl": test["kl"],
            "psnr": quality["psnr"],
            "ssim": quality["ssim"],
            "checkerboard": checkerboard_score(samples),
            "active_units": latent_statistics(test_codes["z_mean"], test_codes["z_log_var"])["active_units"],
            "probe_balanced_accuracy": float(np.nanmean([r["balanced_accuracy"] for r in probe])),
            "probe_fit_images": len(probe_codes["z_mean"]),
            "probe_test_images": len(test_codes["z_mean"]),
            "fd_baseline_encoder": reference(samples) if (reference := self.reference()) is not None else None,
            "fid": fid(samples) if fid is not None else None,
            "num_samples": self.num_samples,
        }


def sweep_run_files(folder: str | Path, name: str, decoder: str) -> RunFiles:
    """Where the run ``name`` of the sweep in ``folder`` keeps its files: ``folder/<name>/`` laid out as a run's
    output folder (``metrics.json``; checkpoint and ``faces.pt`` in ``<decoder>/``)."""
    return run_files(Path(folder) / name, decoder)


def _faces(files: RunFiles) -> Path:
    return files.run_dir / "faces.pt"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def _value_label(run: Mapping[str, Any], knob: str) -> str:
    """The run's value of ``knob`` as a label: ``0.0005``, ``2``, ``nearest``."""
    return f"{run[knob]:g}" if isinstance(run[knob], float) else str(run[knob])


def knob_table(results: Sequence[Mapping[str, Any]], knob: str) -> Markdown:
    """The runs that change ``knob`` (and the baseline), every measure side by side: a table Jupyter renders
    (Markdown; its text is ``.data``)."""
    rows = []
    for run in knob_runs(results, knob):
        label = _value_label(run, knob) + (" (lecture)" if run["knob"] == "baseline" else "")
        if "diverged" in run:
            rows.append([label, f"diverged: {run['diverged']}", *[""] * (len(MEASURES) - 1)])
        else:
            rows.append([label, *(format_number(run.get(k), d) for k, _, d in MEASURES)])
    return markdown_table([knob, *(label for _, label, _ in MEASURES)], rows)


def plot_knob(results: Sequence[Mapping[str, Any]], knob: str, title: str | None = None,
              save_path: str | Path | None = None) -> Figure:
    """One panel per measure, one bar per value of ``knob`` (the lecture's value in a darker colour)."""
    runs = [r for r in knob_runs(results, knob) if "diverged" not in r]
    measures = [(k, label) for k, label, _ in MEASURES if any(r.get(k) is not None for r in runs)]
    columns = 5
    fig, axes = plt.subplots(math.ceil(len(measures) / columns), columns, squeeze=False,
                             figsize=(3.0 * columns, 2.6 * math.ceil(len(measures) / columns)))
    labels = [_value_label(r, knob) for r in runs]
    colors = ["tab:blue" if r["knob"] == "baseline" else "tab:orange" for r in runs]
    for ax, (key, label) in zip(axes.flat, measures, strict=False):
        ax.bar(labels, [math.nan if r.get(key) is None else r[key] for r in runs], color=colors)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(knob, fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, save_path, title or f"{knob}: one short run per value (blue: the lecture's)")


def plot_knob_faces(results: Sequence[Mapping[str, Any]], knob: str, folder: str | Path, originals: torch.Tensor,
                    title: str | None = None, save_path: str | Path | None = None) -> Figure:
    """The ``originals`` (8 test faces), then each run's reconstructions of them and 8 samples from the prior."""
    rows, labels = [originals[:8].float()], ["test faces"]
    for run in knob_runs(results, knob):
        path = _faces(sweep_run_files(folder, run["name"], run["decoder"]))
        if "diverged" in run or not path.is_file():
            continue
        faces = torch.load(path, weights_only=True)
        value = _value_label(run, knob)
        rows += [faces["reconstructions"].float() / 255, faces["samples"].float() / 255]
        labels += [f"{knob}={value}\nreconstructed", f"{knob}={value}\nsampled"]
    return plot_image_grid(rows, row_labels=labels, title=title or f"{knob}: reconstructions and samples",
                           save_path=save_path)


@dataclass(frozen=True)
class SweepResults:
    """What :func:`run_sweep` gives back: every run's metrics (``runs``, in the order asked), where the runs are saved
    (``folder``), the test faces every run reconstructed (``real_images``) and the training images per epoch."""

    runs: list[dict[str, Any]]
    folder: Path
    real_images: torch.Tensor
    train_images: int

    def swept(self, knob: str) -> bool:
        """Whether a run of this sweep changed ``knob``."""
        return any(run["knob"] == knob for run in self.runs)


def run_sweep(runs: Sequence[KnobSettings], notebook: NotebookRun, plan: Recipe, measure_fid: bool = True,
              num_samples: int = 512, probe_images: int = 2000) -> SweepResults:
    """Notebook 5's sweep in one call: the same loaders for every run (``plan``'s images and batch size, the
    notebook's seed and data), the plan printed with the time it will take, FID set up (or one line why not),
    every run trained and measured (:class:`KnobSweep`, under ``output_dir/knobs``), and the results recorded in
    ``metrics.json`` (section ``knobs``). ``notebook``: what :func:`helper_setup.start_notebook` returned."""
    loaders = get_cached_dataloaders_celeba(plan.batch_size, notebook.device, root=notebook.data,
                                            train_images=plan.train_images, eval_images=plan.eval_images,
                                            seed=notebook.seed)
    print("{:,} training, {:,} validation, {:,} test images, the same for every run".format(
        *(len(loader.dataset) for loader in loaders)))
    sweep = KnobSweep(notebook.output_dir / "knobs", plan, *loaders, notebook.device,
                      notebook.checkpoint_settings(plan, len(loaders[0].dataset)), seed=notebook.seed,
                      num_samples=num_samples, probe_images=probe_images, frechet=measure_fid)
    sweep.print_plan(runs)
    fid, message = sweep.inception_fid() if measure_fid else (
        None, "FID and the encoder-space Fréchet distance not measured (measure_fid = False).")
    print(message)
    results = sweep.run(runs, fid)
    notebook.record("knobs", {r["name"]: r for r in results})
    return SweepResults(results, sweep.folder, sweep.real_images, len(loaders[0].dataset))


def show_knob(results: SweepResults, knob: str) -> None:
    """The section of one knob: its table, one bar chart per measure and the faces of its runs; for a knob this
    sweep did not change, one line saying so (no one-row table)."""
    if not results.swept(knob):
        print(f"{knob} was not swept (it is not in `knobs`): nothing to compare.")
        return
    label = knob.replace("_", " ").capitalize()
    display(knob_table(results.runs, knob))
    display(plot_knob(results.runs, knob, title=f"{label}: one short run per value"))
    display(plot_knob_faces(results.runs, knob, results.folder, results.real_images,
                            title=f"{label}: reconstructions and samples"))
