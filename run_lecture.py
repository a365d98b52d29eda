"""Run the lecture's notebooks in order, headless, with papermill.

    python run_lecture.py                   # CelebA if found under data/ (the laptop recipe without a GPU), else a demo
    python run_lecture.py --recipe lecture  # the lecture's full run: 50 epochs, batch 256, all 162,770 images
    python run_lecture.py --download        # fetch CelebA from the Hugging Face Hub into data/ first
    python run_lecture.py --decoder both    # train and compare both decoders
    python run_lecture.py --self-check      # check every precision/compile/data path this machine's GPU supports
    python run_lecture.py --knobs           # then notebook 5: short runs, one knob changed at a time (--knobs decoder)

Relative paths are relative to the repository root. Every input is checked before any work starts. Writes the
executed notebooks, every figure (PNG) and metrics.json under --output-dir.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import papermill as pm
from jupyter_client.manager import AsyncKernelManager
from traitlets import Unicode, default

from celeba_vae import selfcheck
from celeba_vae.checkpoint import check_settings, load_checkpoint
from celeba_vae.paths import REPO_ROOT, project_path
from celeba_vae.recipes import RECIPES, choose_recipe
from helper_data import DatasetChoice, prepare_dataset
from helper_knobs import KNOB_VALUES
from helper_utils import get_device
from model import VAE

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
TRAIN, SAMPLE, LATENT, ARITHMETIC = (
    "1_train_vae.ipynb", "2_sample_and_reconstruct.ipynb", "3_latent_histograms.ipynb", "4_latent_arithmetic.ipynb"
)
KNOBS = "5_what_the_knobs_do.ipynb"


class InputError(Exception):
    """A bad argument, data folder, checkpoint or output folder, explained in a few lines."""

    exit_code = 2


class NotebookFailed(InputError):
    """A notebook stopped with an error: summarized, with the path of the executed notebook."""

    exit_code = 1


class ShortErrorParser(argparse.ArgumentParser):
    """argparse that answers a bad argument in two lines instead of the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"run_lecture.py: {message}\nSee `python run_lecture.py --help` for every option.\n")


def _whole_number(minimum: int) -> type:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value
    parse.__name__ = "whole number"
    return parse


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a positive number")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    positive = _whole_number(1)
    parser = ShortErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["auto", "celeba", "synthetic"], default="auto")
    parser.add_argument("--data-root", default=None, help="folder holding CelebA in any supported layout (default: "
                        "the repository's data/, or $CELEBA_VAE_DATA); a folder given here must hold CelebA")
    parser.add_argument("--download", action="store_true", help="fetch CelebA from the Hugging Face Hub first")
    parser.add_argument("--recipe", choices=["auto", *RECIPES], default="auto",
                        help="auto: lecture on a GPU, laptop on a CPU, demo on synthetic faces")
    parser.add_argument("--epochs", type=positive, help="override the recipe's epochs")
    parser.add_argument("--batch-size", type=positive, help="override the recipe's batch size")
    parser.add_argument("--train-images", type=positive, help="train on N training images chosen from the seed")
    parser.add_argument("--eval-images", type=positive, help="cap the validation and test images")
    parser.add_argument("--num-synthetic", type=_whole_number(10), default=2000, help="size of the synthetic set")
    parser.add_argument("--learning-rate", type=_positive_number, default=5e-4)
    parser.add_argument("--decoder", choices=["transpose", "nearest", "both"], default="transpose")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cuda, cuda:N, mps or cpu")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    parser.add_argument("--data-on-gpu", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--loader", choices=["fast", "lecture"], default="fast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--resume", action="store_true", help="continue training from the last saved epoch")
    parser.add_argument("--num-latent-images", type=positive, default=10000, help="images encoded for histograms")
    parser.add_argument("--output-dir", default=None, help="default: the repository's outputs/ ($CELEBA_VAE_OUTPUTS)")
    parser.add_argument("--seed", type=_whole_number(0), default=123)
    parser.add_argument("--self-check", action="store_true", help="check this machine's training paths and exit")
    parser.add_argument("--knobs", nargs="*", choices=list(KNOB_VALUES), metavar="KNOB",
                        help=f"after the others, run notebook 5's sweep over these knobs (none named: all of "
                             f"{', '.join(KNOB_VALUES)})")
    return parser.parse_args(argv)


def _problem(err: BaseException) -> str:
    return str(err).strip() or type(err).__name__


def dataset_asked(args: argparse.Namespace) -> str:
    """The ``dataset`` the notebooks get: a ``--data-root`` given (or ``--download``) must hold CelebA."""
    explicit = args.data_root is not None or args.download
    return "celeba" if explicit and args.dataset == "auto" else args.dataset


def check_data(args: argparse.Namespace) -> DatasetChoice:
    """Decide the data as the notebooks will (:func:`prepare_dataset`, downloading first if asked), checking them."""
    try:
        return prepare_dataset(dataset_asked(args), project_path(args.data_root, "data"), args.num_synthetic,
                               args.seed, download=args.download)
    except FileNotFoundError as err:
        raise InputError(f"{_problem(err)}\n(--dataset synthetic runs the demo without CelebA)") from None
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        raise InputError(_problem(err)) from None


def check_output_dir(output_dir: Path) -> None:
    """Fail early, in one line, when the output folder cannot be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as err:
        raise InputError(f"cannot write to the output folder {output_dir} ({err.strerror or err}); "
                         "choose another with --output-dir") from None


def check_resume(output_dir: Path, decoders: list[str], data: dict[str, object]) -> None:
    """--resume needs, for every decoder, a readable checkpoint of that model trained on these data."""
    for decoder in decoders:
        path = output_dir / decoder / "checkpoint.pt"
        if not path.is_file():
            raise InputError(f"--resume: there is no checkpoint to resume at {path}; run without --resume to start "
                             "training, or give the --output-dir of the interrupted run")
        try:
            check_settings(load_checkpoint(path), VAE(decoder=decoder), path, data=data)
        except (ValueError, TypeError) as err:
            raise InputError(f"--resume: {_problem(err)}") from None


class IPCKernelManager(AsyncKernelManager):
    """A kernel reached over local sockets in a private folder (no unencrypted TCP, nothing in the working dir)."""

    transport = Unicode("ipc")

    @default("ip")
    def _socket_prefix(self) -> str:
        return str(Path(tempfile.mkdtemp(prefix="celeba-vae-kernel-")) / "kernel")


def run_notebook(notebook: str, out: Path, parameters: dict[str, object]) -> None:
    """Execute one notebook as Jupyter would (kernel in notebooks/); a failing cell becomes an InputError."""
    manager = {} if os.name == "nt" else {"kernel_manager_class": IPCKernelManager}
    try:
        pm.execute_notebook(NOTEBOOKS_DIR / notebook, out, parameters=parameters, cwd=str(NOTEBOOKS_DIR),
                            kernel_name="python3", progress_bar=False, stdout_file=sys.stdout, **manager)
    except pm.PapermillExecutionError as err:
        last = (str(err.evalue).strip() or err.ename).splitlines()[-1]
        raise NotebookFailed(f"{notebook} failed in cell {err.exec_count}: {err.ename}: {last}\n"
                         f"The executed notebook, with the full traceback: {out}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_check:
        return selfcheck.main(["--device", args.device])
    try:
        return run(args)
    except InputError as err:
        print(f"run_lecture.py: {err}", file=sys.stderr)
        return err.exit_code


def run(args: argparse.Namespace) -> int:
    """Check every input, then run the notebooks."""
    try:
        device = get_device(args.device)
    except RuntimeError as err:
        raise InputError(f"--device {args.device}: {_problem(err).splitlines()[0]}") from None
    data = check_data(args)
    output_dir = project_path(args.output_dir, "outputs")
    check_output_dir(output_dir)
    decoders = ["transpose", "nearest"] if args.decoder == "both" else [args.decoder]
    print(data.message)
    choose_recipe(args.recipe, device, data.kind).override(
        num_epochs=args.epochs, batch_size=args.batch_size, train_images=args.train_images,
        eval_images=args.eval_images)
    if args.resume:
        check_resume(output_dir, decoders, data.record())
    executed = output_dir / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    common = {"dataset": dataset_asked(args), "data_root": str(project_path(args.data_root, "data")),
              "output_dir": str(output_dir), "device": args.device,
              "recipe": args.recipe, "random_seed": args.seed, "num_synthetic": args.num_synthetic}
    train = {"num_epochs": args.epochs, "batch_size": args.batch_size, "train_images": args.train_images,
             "eval_images": args.eval_images, "learning_rate": args.learning_rate, "loader": args.loader,
             "data_on_gpu": {"yes": True, "no": False}.get(args.data_on_gpu, "auto"), "precision": args.precision,
             "compile": args.compile, "resume": args.resume}
    steps = [(TRAIN, decoder, train) for decoder in decoders]
    for decoder in decoders:
        steps += [(SAMPLE, decoder, {}), (LATENT, decoder, {"num_images": args.num_latent_images}),
                  (ARITHMETIC, decoder, {"interactive": False})]
    for notebook, decoder, extra in steps:
        out = executed / f"{Path(notebook).stem}_{decoder}.ipynb"
        print(f"Running {notebook} ({decoder}) -> {out}")
        run_notebook(notebook, out, {**common, "decoder": decoder, **extra})
    if args.knobs is not None:
        sweep = {"knobs": args.knobs or list(KNOB_VALUES), "num_epochs": args.epochs, "batch_size": args.batch_size,
                 "train_images": args.train_images, "eval_images": args.eval_images}
        print(f"Running {KNOBS} -> {executed / KNOBS}")
        run_notebook(KNOBS, executed / KNOBS, {**common, **sweep})
    print(f"Figures: {output_dir / 'figures'}\nMetrics: {output_dir / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
