"""Run the lecture's notebooks in order, headless, with papermill.

    python run_lecture.py                       # CelebA if found under data/, else a quick synthetic demo
    python run_lecture.py --dataset celeba      # the lecture's full run (50 epochs)
    python run_lecture.py --decoder both        # train and compare both decoders

Writes the executed notebooks, every figure (PNG) and metrics.json under --output-dir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import papermill as pm

from helper_data import find_celeba

NOTEBOOKS_DIR = Path(__file__).resolve().parent / "notebooks"
TRAIN, SAMPLE, LATENT, ARITHMETIC = (
    "1_train_vae.ipynb", "2_sample_and_reconstruct.ipynb", "3_latent_histograms.ipynb", "4_latent_arithmetic.ipynb"
)
DEMO_EPOCHS, DEMO_BATCH_SIZE = 5, 64
LECTURE_EPOCHS, LECTURE_BATCH_SIZE = 50, 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["auto", "celeba", "synthetic"], default="auto")
    parser.add_argument("--data-root", default="data", help="folder holding CelebA (any supported layout)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default {LECTURE_EPOCHS} on CelebA, {DEMO_EPOCHS} on the synthetic demo")
    parser.add_argument("--num-synthetic", type=int, default=2000, help="size of the synthetic set (demo budget)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default {LECTURE_BATCH_SIZE} on CelebA, {DEMO_BATCH_SIZE} on the synthetic demo")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--decoder", choices=["transpose", "nearest", "both"], default="transpose")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cuda, mps or cpu")
    parser.add_argument("--loader", choices=["fast", "lecture"], default="fast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--resume", action="store_true", help="continue training from the last saved epoch")
    parser.add_argument("--num-latent-images", type=int, default=10000, help="images encoded for the histograms")
    parser.add_argument("--output-dir", default="outputs")
    parser.add_argument("--seed", type=int, default=123)
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[str, int, int]:
    """The dataset the run will use, its epoch count and batch size, announced plainly."""
    dataset = args.dataset
    if dataset == "auto":
        try:
            find_celeba(args.data_root)
            dataset = "celeba"
        except FileNotFoundError:
            dataset = "synthetic"
            print(f"CelebA was not found under {args.data_root}: running the DEMO on {args.num_synthetic} synthetic "
                  "faces (not CelebA). See the README to get CelebA.")
    celeba = dataset == "celeba"
    epochs = args.epochs if args.epochs is not None else (LECTURE_EPOCHS if celeba else DEMO_EPOCHS)
    batch_size = args.batch_size if args.batch_size is not None else (LECTURE_BATCH_SIZE if celeba else DEMO_BATCH_SIZE)
    print(f"Dataset: {dataset}, epochs: {epochs}, batch size: {batch_size}, decoder(s): {args.decoder}, "
          f"output: {args.output_dir}")
    return dataset, epochs, batch_size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dataset, epochs, batch_size = plan(args)
    output_dir = Path(args.output_dir).resolve()
    executed = output_dir / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    common = {"dataset": dataset, "data_root": str(Path(args.data_root).resolve()), "num_synthetic": args.num_synthetic,
              "device": args.device, "batch_size": batch_size, "random_seed": args.seed,
              "output_dir": str(output_dir)}
    decoders = ["transpose", "nearest"] if args.decoder == "both" else [args.decoder]
    steps: list[tuple[str, str, dict]] = []
    for decoder in decoders:
        steps.append((TRAIN, decoder, {"num_epochs": epochs, "learning_rate": args.learning_rate, "loader": args.loader,
                                       "compile": args.compile, "resume": args.resume}))
    for decoder in decoders:
        steps += [(SAMPLE, decoder, {}), (LATENT, decoder, {"num_images": args.num_latent_images}),
                  (ARITHMETIC, decoder, {})]
    for notebook, decoder, extra in steps:
        out = executed / f"{Path(notebook).stem}_{decoder}.ipynb"
        print(f"Running {notebook} ({decoder}) -> {out}")
        pm.execute_notebook(NOTEBOOKS_DIR / notebook, out, parameters={**common, "decoder": decoder, **extra},
                            cwd=str(NOTEBOOKS_DIR), progress_bar=False, stdout_file=sys.stdout)
    metrics_path = output_dir / "metrics.json"
    print(f"Figures: {output_dir / 'figures'}\nMetrics: {metrics_path}")
    print(json.dumps(json.loads(metrics_path.read_text()).get("runs", {}), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
