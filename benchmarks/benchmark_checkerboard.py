"""How strong the transposed decoder's checkerboard is, and how it changes over training, on your own faces.

    python benchmarks/benchmark_checkerboard.py /tmp/real_celeba --epochs 10 --report-epochs 1 2 10

(``/tmp/real_celeba``: any CelebA folder, e.g. one built from a few thousand real faces.)

For each decoder one run (the lecture's model, seed, learning rate 5e-4 and batch size 64 of the laptop recipe, fp32)
is trained on every training image of the folder, drawing after every epoch the reconstructions of ``--faces`` fixed
test faces and as many faces decoded from fixed noise, as notebook 1 does. After each of ``--report-epochs`` it
prints the test loss and the checkerboard scores that notebook 2 reads from those pictures
(:func:`helper_findings.checkerboard_over_training`, with :func:`helper_spectra.checkerboard_score`: about 1 = no
stride-2 peak): of the reconstructions, the samples and the fixed faces themselves. The run is trained up to each
reported epoch by resuming its checkpoint, so with a constant learning rate the figures after epoch 2 are those of a
2-epoch run (notebook 5's short runs) and those after the last epoch those of the whole run. ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from celeba_vae.atomic_files import atomic_write
from celeba_vae.paths import run_files
from helper_data import get_cached_dataloaders_celeba
from helper_findings import checkerboard_over_training
from helper_plotting import EpochImages
from helper_train import adam, evaluate_vae, train_vae_v1
from helper_utils import set_all_seeds
from model import VAE


def measure_run(root: Path, decoder: str, report_epochs: list[int], batch_size: int = 64,
                learning_rate: float = 5e-4, seed: int = 123, faces: int = 32) -> list[dict[str, float]]:
    """One run of ``decoder`` on ``root``'s training faces; its test loss and the checkerboard scores of its epoch
    pictures (``faces`` fixed test faces and as many samples) after each of ``report_epochs`` (ascending)."""
    train_loader, _, test_loader = get_cached_dataloaders_celeba(batch_size, "cpu", root=root, seed=seed,
                                                                 progress=False)
    set_all_seeds(seed)
    model = VAE(200, decoder)
    optimizer = adam(model, lr=learning_rate)
    rows = []
    with tempfile.TemporaryDirectory(prefix="checkerboard-bench-") as folder:
        files, seconds = run_files(Path(folder), decoder), 0.0
        pictures = EpochImages.from_loader(test_loader, files.epoch_images, num_images=faces, seed=seed)
        for epoch in report_epochs:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                train_vae_v1(epoch, model, optimizer, "cpu", train_loader, checkpoint_path=files.checkpoint,
                             resume=True, precision="fp32", progress=False, epoch_images=pictures)
            seconds += time.perf_counter() - start
            test = evaluate_vae(model, test_loader, "cpu")
            scores = checkerboard_over_training(files.epoch_images, epoch)[-1]
            rows.append({"decoder": decoder, "epoch": epoch, "train_images": len(train_loader.dataset),
                         "test_loss": test["reconstruction"] + test["kl"], "training_seconds": seconds,
                         "reconstructions": scores["reconstructions"], "samples": scores["samples"],
                         "real_faces": scores["real"], "num_images": scores["faces"]})
            print(_row(rows[-1]), flush=True)
    return rows


def _row(row: dict[str, float]) -> str:
    return (f"| {row['decoder']} | {row['epoch']} | {row['epoch'] * row['train_images']:,} | {row['test_loss']:.1f} "
            f"| {row['reconstructions']:.2f} | {row['samples']:.2f} | {row['real_faces']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    """Print one Markdown table row per decoder and reported epoch (the header first)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a CelebA folder (any layout the project reads)")
    parser.add_argument("--epochs", type=int, default=10, help="the run's length (the laptop recipe's 10)")
    parser.add_argument("--report-epochs", type=int, nargs="+", default=[1, 2],
                        help="epochs after which to measure (the last epoch is always added)")
    parser.add_argument("--decoders", nargs="+", default=["transpose", "nearest"])
    parser.add_argument("--faces", type=int, default=32, help="fixed test faces, and as many samples, drawn")
    parser.add_argument("--json", type=Path, help="also write every row to this JSON file")
    args = parser.parse_args(argv)
    epochs = sorted({e for e in args.report_epochs if 1 <= e < args.epochs} | {args.epochs})
    print(f"{args.root}: epochs {epochs} of a {args.epochs}-epoch run, decoders {args.decoders}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print("| decoder | epoch | image-steps | test loss | checkerboard: reconstructions | samples | real faces |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [row for decoder in args.decoders for row in measure_run(args.root, decoder, epochs, faces=args.faces)]
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(rows, indent=2).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
