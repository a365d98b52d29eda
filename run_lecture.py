"""Run the lecture's notebooks in order, headless, with papermill.

    python run_lecture.py                   # CelebA if found under data/ (the laptop recipe without a GPU), else a demo
    python run_lecture.py --recipe lecture  # the lecture's full run: 50 epochs, batch 256, all 162,770 images
    python run_lecture.py --download        # fetch CelebA from the Hugging Face Hub into data/ first
    python run_lecture.py --decoder both    # train and compare both decoders (the default on a CUDA GPU)
    python run_lecture.py --self-check      # check every precision/compile/data path this machine's GPU supports
    python run_lecture.py --knobs           # then notebook 5: short runs, one knob changed at a time (--knobs decoder)

Relative paths are relative to the repository root. Every input is checked before any work starts. Writes the
executed notebooks, every figure (PNG) and metrics.json under --output-dir. The terminal gets one line per notebook
and one per epoch, then how long the notebook spent starting, training and in the rest; each notebook's own output
(figures inline, whatever MPLBACKEND says) is in its executed copy.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from celeba_vae.paths import REPO_ROOT, project_path, run_files
from celeba_vae.recipes import KNOB_NAMES, RECIPES, recipe_line, recipe_name

if TYPE_CHECKING:
    import torch

    from helper_data import DatasetChoice

# torch, papermill and the helpers are imported where the work starts, so --help and a bad argument answer at once.
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
TRAIN, SAMPLE, LATENT, ARITHMETIC = (
    "1_train_vae.ipynb", "2_sample_and_reconstruct.ipynb", "3_latent_histograms.ipynb", "4_latent_arithmetic.ipynb"
)
KNOBS = "5_what_the_knobs_do.ipynb"
# The lines of a notebook the terminal shows: train_vae_v1's summary of an epoch, and notebook 5's line per run.
SHOWN_LINES = re.compile(r"\*\*\*Epoch: |\[\d+/\d+\] ")
# The cells that train, after the setup and import cells: notebook 1's call of train_vae_v1, notebook 5's sweep.
TRAINING_CELL = re.compile(r"\btrain_vae_v1\(|\brun_sweep\(")
# Jupyter's own backend, for the kernels whatever the caller's MPLBACKEND says (Agg would leave no figures).
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


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
    parser.add_argument("--decoder", choices=["transpose", "nearest", "both"],
                        help="default: both on a CUDA GPU, as the lecture trained both; transpose elsewhere")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cuda, cuda:N, mps or cpu")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    parser.add_argument("--data-on-gpu", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--loader", choices=["fast", "lecture"], default="fast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--resume", action="store_true", help="continue training from the last saved epoch")
    parser.add_argument("--num-latent-images", type=positive,
                        help="training images encoded for the histograms (default: those the recipe trained on, "
                             "at most 10,000)")
    parser.add_argument("--output-dir", default=None, help="default: the repository's outputs/ ($CELEBA_VAE_OUTPUTS)")
    parser.add_argument("--seed", type=_whole_number(0), default=123)
    parser.add_argument("--self-check", action="store_true", help="check this machine's training paths and exit")
    parser.add_argument("--knobs", nargs="*", choices=KNOB_NAMES, metavar="KNOB",
                        help=f"after the others, run notebook 5's sweep over these knobs (none named: all of "
                             f"{', '.join(KNOB_NAMES)})")
    return parser.parse_args(argv)


def _problem(err: BaseException) -> str:
    return str(err).strip() or type(err).__name__


def dataset_asked(args: argparse.Namespace) -> str:
    """The ``dataset`` the notebooks get: a ``--data-root`` given (or ``--download``) must hold CelebA."""
    explicit = args.data_root is not None or args.download
    return "celeba" if explicit and args.dataset == "auto" else args.dataset


def check_data(args: argparse.Namespace) -> DatasetChoice:
    """Decide the data as the notebooks will (:func:`prepare_dataset`, downloading first if asked), checking them."""
    from helper_data import prepare_dataset

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
    from celeba_vae.checkpoint import check_settings, load_checkpoint
    from model import VAE

    for decoder in decoders:
        path = run_files(output_dir, decoder).checkpoint
        if not path.is_file():
            raise InputError(f"--resume: there is no checkpoint to resume at {path}; run without --resume to start "
                             "training, or give the --output-dir of the interrupted run")
        try:
            check_settings(load_checkpoint(path), VAE(decoder=decoder), path, data=data)
        except (ValueError, TypeError) as err:
            raise InputError(f"--resume: {_problem(err)}") from None


def choose_decoders(asked: str | None, device: torch.device) -> tuple[list[str], str | None]:
    """The decoders to train: ``--decoder`` when given; otherwise both on a CUDA GPU, as the lecture trained both,
    and the transposed one elsewhere, where both would take twice as long. The second value is the line that says
    so (``None`` when the user chose)."""
    if asked is not None:
        return (["transpose", "nearest"] if asked == "both" else [asked]), None
    if device.type == "cuda":
        return ["transpose", "nearest"], ("Decoders: transpose and nearest, as the lecture trained both "
                                          "(--decoder transpose trains one, in half the time)")
    return ["transpose"], (f"Decoder: transpose (on the {device.type.upper()} both would take twice as long; "
                           "--decoder both trains both, as the lecture did)")


def kernel_manager(socket_folder: Path) -> type:
    """The kernel manager the runner's notebooks use: its kernels draw figures inline whatever the caller's
    ``MPLBACKEND`` says (``Agg``, common on servers, would leave only ``<Figure ...>`` texts); it does not interrupt a
    kernel it is shutting down (jupyter_client does, and an idle kernel then logs ``KeyboardInterrupt caught in
    kernel`` as an ERROR); except on Windows its kernel is reached over local sockets in ``socket_folder`` (no
    unencrypted TCP, nothing in the working dir)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode, default

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            kw["env"] = {**kw.get("env", os.environ), "MPLBACKEND": INLINE_BACKEND}
            await super().start_kernel(**kw)

        async def _async_interrupt_kernel(self) -> None:
            if not getattr(self, "shutting_down", False):
                await super()._async_interrupt_kernel()

    if os.name == "nt":
        return QuietShutdownKernelManager

    class IPCKernelManager(QuietShutdownKernelManager):
        transport = Unicode("ipc")

        @default("ip")
        def _socket_prefix(self) -> str:
            return str(socket_folder / "kernel")

    return IPCKernelManager


class EpochLines:
    """A stream for a kernel's stdout that passes on, indented, only the lines :data:`SHOWN_LINES` matches; the
    rest of a notebook's output stays in the executed notebook."""

    def __init__(self, terminal: TextIO) -> None:
        self.terminal = terminal
        self.pending = ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if SHOWN_LINES.match(line):
                print(f"    {line.lstrip('*')}", file=self.terminal, flush=True)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()


def run_notebook(notebook: str, out: Path, parameters: dict[str, object]) -> None:
    """Execute one notebook as Jupyter would (kernel in notebooks/, figures inline), showing only its epoch lines
    and then its times (:func:`time_line`); a failing cell becomes a NotebookFailed. The kernel's socket folder is
    removed afterwards."""
    import papermill as pm

    with tempfile.TemporaryDirectory(prefix="celeba-vae-kernel-") as sockets:
        try:
            pm.execute_notebook(NOTEBOOKS_DIR / notebook, out, parameters=parameters, cwd=str(NOTEBOOKS_DIR),
                                kernel_name="python3", progress_bar=False, stdout_file=EpochLines(sys.stdout),
                                kernel_manager_class=kernel_manager(Path(sockets)))
        except pm.PapermillExecutionError as err:
            last = (str(err.evalue).strip() or err.ename).splitlines()[-1]
            raise NotebookFailed(f"{notebook} failed in cell {err.exec_count}: {err.ename}: {last}\n"
                                 f"The executed notebook, with the full traceback: {out}") from None
    print(time_line(out), flush=True)


def time_line(executed: Path) -> str:
    """How long a notebook took: starting (its kernel, the setup and import cells), training (the cells
    :data:`TRAINING_CELL` matches) and the rest, read from the times papermill writes into the executed notebook."""
    import nbformat

    book = nbformat.read(executed, as_version=4)
    timing = book.metadata.papermill
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    moment = datetime.datetime.fromisoformat
    starting = (moment(code[1].metadata.papermill.end_time) - moment(timing.start_time)).total_seconds()
    training = sum(cell.metadata.papermill.duration for cell in code[2:] if TRAINING_CELL.search(cell.source))
    rest = timing.duration - starting - training
    return (f"    {timing.duration:.1f} s: starting {starting:.1f} s (kernel, setup and imports), training "
            f"{training:.1f} s, the rest {rest:.1f} s")


def choose_device(name: str) -> torch.device:
    """The device ``--device`` names (:func:`helper_utils.get_device`), or an InputError saying why not."""
    from helper_utils import get_device

    try:
        return get_device(name)
    except RuntimeError as err:
        raise InputError(f"--device {name}: {_problem(err)}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.self_check:
            return self_check(args)
        return run(args)
    except InputError as err:
        print(f"run_lecture.py: {err}", file=sys.stderr)
        return err.exit_code


def self_check(args: argparse.Namespace) -> int:
    """Train through every path the device supports with the lecture's training step and the notebooks' optimizer:
    0 when all pass."""
    from celeba_vae.selfcheck import run_self_check
    from helper_train import adam, train_vae_v1

    return 0 if run_self_check(train_vae_v1, choose_device(args.device), adam) else 1


def run(args: argparse.Namespace) -> int:
    """Check every input, then run the notebooks: one line per notebook, one per epoch."""
    started = time.monotonic()
    device = choose_device(args.device)
    data = check_data(args)
    output_dir = project_path(args.output_dir, "outputs")
    check_output_dir(output_dir)
    decoders, why = choose_decoders(args.decoder, device)
    print(data.message)
    plan = RECIPES[recipe_name(args.recipe, device.type, data.kind)].override(
        say=False, num_epochs=args.epochs, batch_size=args.batch_size, train_images=args.train_images,
        eval_images=args.eval_images)
    print(recipe_line(args.recipe, plan))
    if why:
        print(why)
    if args.resume:
        check_resume(output_dir, decoders, data.record())
    executed = run_files(output_dir, decoders[0]).notebooks
    executed.mkdir(parents=True, exist_ok=True)
    common = {"dataset": dataset_asked(args), "data_root": str(project_path(args.data_root, "data")),
              "output_dir": str(output_dir), "device": args.device,
              "recipe": args.recipe, "random_seed": args.seed, "num_synthetic": args.num_synthetic}
    train = {"num_epochs": args.epochs, "batch_size": args.batch_size, "train_images": args.train_images,
             "eval_images": args.eval_images, "learning_rate": args.learning_rate, "loader": args.loader,
             "data_on_gpu": {"yes": True, "no": False}.get(args.data_on_gpu, "auto"), "precision": args.precision,
             "compile": args.compile, "resume": args.resume}
    steps = [(TRAIN, decoder, train) for decoder in decoders]
    latent_images = args.num_latent_images or (min(args.train_images, 10_000) if args.train_images else None)
    for decoder in decoders:
        steps += [(SAMPLE, decoder, {}), (LATENT, decoder, {"num_images": latent_images}),
                  (ARITHMETIC, decoder, {"interactive": False})]
    if args.knobs is not None:
        sweep = {"knobs": args.knobs or list(KNOB_NAMES), "num_epochs": args.epochs, "batch_size": args.batch_size,
                 "train_images": args.train_images, "eval_images": args.eval_images}
        steps.append((KNOBS, None, sweep))
    print(f"Each notebook's own output (tables, figures, messages) is in its executed copy in {executed}")
    for number, (notebook, decoder, extra) in enumerate(steps, start=1):
        name = Path(notebook).stem + (f"_{decoder}" if decoder else "")
        print(f"[{number}/{len(steps)}] {notebook}" + (f" ({decoder})" if decoder else ""), flush=True)
        run_notebook(notebook, executed / f"{name}.ipynb", {**common, **({"decoder": decoder} if decoder else {}),
                                                               **extra})
    files = run_files(output_dir, decoders[0])
    print(f"Done in {(time.monotonic() - started) / 60:.1f} min. Figures: {files.figures} | metrics: {files.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
