"""Lecture pipeline vs this project's, on the same machine and the same synthetic CelebA-shaped data.

    python benchmarks/benchmark_pipeline.py                  # CPU: 2,048 images; GPU: 202,599 images
    python benchmarks/benchmark_pipeline.py --num-images 20000 --train-steps 100 --compile

Prints a table and writes every figure to a JSON file (default benchmarks/results_<device>.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader

from helper_data import CachedLoader, build_decoded_cache, default_transform, find_celeba, read_index
from helper_train import evaluate_vae, train_vae_v1, vae_loss
from helper_utils import atomic_write, get_device, set_all_seeds
from model import VAE
from synthetic_celeba import write_synthetic_celeba

TRAIN_IMAGES = 162_770
LECTURE_EPOCHS = 50


class LectureCelebA(torchvision.datasets.CelebA):
    """torchvision's CelebA, as the lecture uses it, without the md5 check (the images are synthetic)."""

    def _check_integrity(self) -> bool:
        return True


class FirstBatches:
    """The first ``count`` batches of a loader, cycling through epochs if needed."""

    def __init__(self, loader: Iterable, count: int) -> None:
        self.loader, self.count = loader, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator:
        served = 0
        while served < self.count:
            for batch in self.loader:
                yield batch
                served += 1
                if served == self.count:
                    return


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def data_throughput(loader: Iterable, device: torch.device, batches: int) -> float:
    start, images = time.perf_counter(), 0
    for features, _ in FirstBatches(loader, batches):
        features = features.to(device)
        images += len(features)
    sync(device)
    return images / (time.perf_counter() - start)


def lecture_training(loader: Iterable, device: torch.device, steps: int, warmup: int) -> float:
    """The lecture's loop: fp32 eager, a ``.item()`` per batch for logging."""
    set_all_seeds(123)
    model = VAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    log: list[float] = []
    start, images = 0.0, 0
    for i, (features, _) in enumerate(FirstBatches(loader, warmup + steps)):
        if i == warmup:
            sync(device)
            start, images = time.perf_counter(), 0
        features = features.to(device)
        _, z_mean, z_log_var, decoded = model(features)
        loss = vae_loss(features, decoded, z_mean, z_log_var)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        log.append(loss.item())
        images += len(features)
    sync(device)
    return images / (time.perf_counter() - start)


def project_training(loader: CachedLoader, device: torch.device, steps: int, warmup: int, compile: bool) -> float:
    set_all_seeds(123)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    kwargs = {"skip_epoch_stats": True, "progress": False, "compile": compile, "logging_interval": 50}
    train_vae_v1(1, model, optimizer, device, FirstBatches(loader, max(warmup, 1)), **kwargs)
    sync(device)
    start = time.perf_counter()
    train_vae_v1(1, model, optimizer, device, FirstBatches(loader, steps), **kwargs)
    sync(device)
    return steps * loader.batch_size / (time.perf_counter() - start)


def loss_check(train: CachedLoader, test: CachedLoader, device: torch.device, steps: int) -> dict[str, float]:
    """Same initial weights, same batches: test loss after ``steps`` with fp32 eager vs the fast settings."""
    results = {}
    for name, precision, channels_last in (("fp32_eager", "fp32", False), ("fast", "auto", None)):
        set_all_seeds(123)
        model = VAE()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
        train_vae_v1(1, model, optimizer, device, FirstBatches(train, steps), precision=precision,
                     channels_last=channels_last, skip_epoch_stats=True, progress=False)
        set_all_seeds(0)
        results[name] = evaluate_vae(model, test, device)["combined"]
    results["relative_difference"] = abs(results["fast"] - results["fp32_eager"]) / results["fp32_eager"]
    return results


def main(argv: list[str] | None = None) -> int:
    on_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=202_599 if on_gpu else 2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=200 if on_gpu else 5)
    parser.add_argument("--warmup-steps", type=int, default=20 if on_gpu else 1)
    parser.add_argument("--data-batches", type=int, default=None, help="batches timed for data throughput")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None, help="reuse a synthetic set here (default: a temporary folder)")
    parser.add_argument("--compile", action="store_true", help="also use torch.compile on the project's path")
    parser.add_argument("--check-loss-steps", type=int, default=100 if on_gpu else 10)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    device = get_device(args.device)
    workdir = Path(args.data_root or tempfile.mkdtemp(prefix="celeba-bench-"))
    results: dict[str, object] = {
        "machine": {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
                    "device_type": device.type, "cpu_count": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "settings": vars(args),
    }

    start = time.perf_counter()
    if not (workdir / "celeba" / "list_eval_partition.txt").is_file():
        write_synthetic_celeba(workdir, num_images=args.num_images, seed=0)
    results["generate_s"] = time.perf_counter() - start
    index = read_index(find_celeba(workdir))
    shutil.rmtree(workdir / "celeba" / "decoded_cache", ignore_errors=True)
    start = time.perf_counter()
    splits = {s: build_decoded_cache(workdir, s, index=index, progress=False) for s in ("train", "valid", "test")}
    results["cache_build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    build_decoded_cache(workdir, "train", index=index, progress=False)
    results["cache_reuse_s"] = time.perf_counter() - start
    train_images = len(splits["train"])

    lecture_loader = DataLoader(LectureCelebA(str(workdir), split="train", transform=default_transform()),
                                batch_size=args.batch_size, shuffle=True, num_workers=2, persistent_workers=True)
    batches = args.data_batches or len(lecture_loader)
    results["lecture_data_img_s"] = data_throughput(lecture_loader, device, batches)
    results["lecture_train_img_s"] = lecture_training(lecture_loader, device, args.train_steps, args.warmup_steps)
    # The project's loader tunes the process's allocator (see helper_data), so it is only built after the lecture's
    # pipeline has been measured.
    cached = CachedLoader(splits["train"], args.batch_size, shuffle=True, device=device)
    data_throughput(cached, device, 2)
    results["project_data_img_s"] = data_throughput(cached, device, max(batches, len(cached)))
    results["project_train_img_s"] = project_training(cached, device, args.train_steps, args.warmup_steps,
                                                      args.compile)
    test = CachedLoader(splits["test"], args.batch_size, device=device)
    results["loss_check"] = loss_check(CachedLoader(splits["train"], args.batch_size, device=device), test, device,
                                       args.check_loss_steps)
    for who in ("lecture", "project"):
        epoch_s = TRAIN_IMAGES / results[f"{who}_train_img_s"]
        results[f"{who}_epoch_s"] = epoch_s
        results[f"{who}_50_epochs_min"] = epoch_s * LECTURE_EPOCHS / 60
    results["cache_build_s_per_202599"] = results["cache_build_s"] * 202_599 / args.num_images
    results["peak_host_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["peak_host_children_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if device.type == "cuda":
        results["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    results["train_images"] = train_images

    data_x = results["project_data_img_s"] / results["lecture_data_img_s"]
    train_x = results["project_train_img_s"] / results["lecture_train_img_s"]
    rows = [
        ("data throughput (img/s)", results["lecture_data_img_s"], results["project_data_img_s"], data_x,
         ">= 10x" if device.type == "cpu" else ""),
        ("training throughput (img/s)", results["lecture_train_img_s"], results["project_train_img_s"], train_x,
         ">= 1.2x (CPU), >= 68,000 img/s and >= 20x (H100)"),
        ("epoch of 162,770 images (s)", results["lecture_epoch_s"], results["project_epoch_s"], None, ""),
        ("50 epochs (min)", results["lecture_50_epochs_min"], results["project_50_epochs_min"], None, "<= 2 (H100)"),
    ]
    print(f"\n{'metric':<30}{'lecture':>14}{'project':>14}{'speed-up':>10}  target")
    for name, lecture, project, speedup, target in rows:
        print(f"{name:<30}{lecture:>14,.1f}{project:>14,.1f}{f'{speedup:.1f}x' if speedup else '':>10}  {target}")
    print(f"cache build: {results['cache_build_s']:.1f} s for {args.num_images:,} images "
          f"(~{results['cache_build_s_per_202599']:.0f} s per 202,599; target <= 60 s on the GPU machine); "
          f"reuse {results['cache_reuse_s']:.2f} s")
    check = results["loss_check"]
    print(f"test loss after {args.check_loss_steps} steps: fp32 eager {check['fp32_eager']:.2f}, "
          f"fast {check['fast']:.2f} "
          f"({100 * check['relative_difference']:.2f}% apart; target < 1%)")
    print(f"peak host memory: {results['peak_host_mib']:.0f} MiB (DataLoader workers: "
          f"{results['peak_host_children_mib']:.0f} MiB)"
          + (f", peak GPU memory: {results['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in results else ""))
    output = Path(args.output or Path(__file__).resolve().parent / f"results_{device.type}.json")
    atomic_write(output, lambda f: f.write(json.dumps(results, indent=2).encode()))
    print(f"wrote {output}")
    if args.data_root is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
