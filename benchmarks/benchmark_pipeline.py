"""Lecture pipeline vs this project's, on the same machine and the same synthetic CelebA-shaped data.

    python benchmarks/benchmark_pipeline.py                  # CPU: 2,048 images; GPU: 202,599 images
    python benchmarks/benchmark_pipeline.py --num-images 20000 --train-steps 100 --compile

Prints a table and writes every figure to a JSON file (default benchmarks/results_<device>.json). The decoded
cache is built in a temporary folder of the benchmark's own: with ``--data-root`` the images there are only read,
and a cache the user built next to them is never touched. On CPU it also times the project's training step in fp32
and in bf16 autocast on the same batches (``--precision-repeats`` interleaved runs, median reported).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader

from celeba_vae.atomic_files import atomic_write
from celeba_vae.celeba_files import find_celeba, read_index
from celeba_vae.decoded_cache import CachedLoader, DecodedSplit, build_decoded_cache
from celeba_vae.selfcheck import TimedBatches, peak_host_mib, synchronize
from celeba_vae.synthetic import write_synthetic_celeba
from helper_data import default_transform
from helper_train import adam, evaluate_vae, train_vae_v1, vae_loss
from helper_utils import get_device, set_all_seeds
from model import VAE

TRAIN_IMAGES = 162_770
LECTURE_EPOCHS = 50
CPU = torch.device("cpu")


class LectureCelebA(torchvision.datasets.CelebA):
    """torchvision's CelebA, as the lecture uses it, without the md5 check (the images are synthetic)."""

    def _check_integrity(self) -> bool:
        return True


def data_throughput(loader: Iterable, device: torch.device, batches: int) -> float:
    start, images = time.perf_counter(), 0
    for features, _ in TimedBatches(loader, batches, 0, device):
        features = features.to(device)
        images += len(features)
    synchronize(device)
    return images / (time.perf_counter() - start)


def lecture_training(loader: Iterable, device: torch.device, steps: int, warmup: int) -> float:
    """The lecture's loop: fp32 eager, a ``.item()`` per batch for logging."""
    set_all_seeds(123)
    model = VAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    log: list[float] = []
    start, images = 0.0, 0
    for i, (features, _) in enumerate(TimedBatches(loader, warmup + steps, 0, device)):
        if i == warmup:
            synchronize(device)
            start, images = time.perf_counter(), 0
        features = features.to(device)
        _, z_mean, z_log_var, decoded = model(features)
        loss = vae_loss(features, decoded, z_mean, z_log_var)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        log.append(loss.item())
        images += len(features)
    synchronize(device)
    return images / (time.perf_counter() - start)


def project_training(loader: CachedLoader, device: torch.device, steps: int, warmup: int, compile: bool) -> float:
    """Images/s of ``train_vae_v1`` with the project's optimizer (:func:`helper_train.adam`: fused on CUDA)."""
    set_all_seeds(123)
    model = VAE().to(device)
    optimizer = adam(model, lr=5e-4)
    kwargs = {"skip_epoch_stats": True, "progress": False, "compile": compile, "logging_interval": 50}
    train_vae_v1(1, model, optimizer, device, TimedBatches(loader, max(warmup, 1), 0, device), **kwargs)
    synchronize(device)
    start = time.perf_counter()
    train_vae_v1(1, model, optimizer, device, TimedBatches(loader, steps, 0, device), **kwargs)
    synchronize(device)
    return steps * loader.batch_size / (time.perf_counter() - start)


def loss_check(train: CachedLoader, test: CachedLoader, device: torch.device, steps: int) -> dict[str, float]:
    """Same initial weights, same batches: test loss after ``steps`` with fp32 eager vs the fast settings."""
    results = {}
    for name, precision, channels_last in (("fp32_eager", "fp32", False), ("fast", "auto", None)):
        set_all_seeds(123)
        model = VAE()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
        train_vae_v1(1, model, optimizer, device, TimedBatches(train, steps, 0, device), precision=precision,
                     channels_last=channels_last, skip_epoch_stats=True, progress=False)
        set_all_seeds(0)
        results[name] = evaluate_vae(model, test, device)["combined"]
    results["relative_difference"] = abs(results["fast"] - results["fp32_eager"]) / results["fp32_eager"]
    return results


def device_name(device: torch.device) -> str:
    """The name of the card ``device`` is (``cuda:1`` is not card 0), or the CPU's for a CPU or MPS run."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or device.type


def load_average() -> float | None:
    """The machine's 1-minute load average, or ``None`` where the system has none (Windows)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def peak_children_mib() -> float | None:
    """Peak resident memory of the finished child processes (DataLoader workers) in MiB; ``None`` on Windows."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def cpu_description() -> dict[str, object]:
    """The CPU as PyTorch and ``lscpu`` see it: capability, model name, logical CPUs and bf16-related flags."""
    info: dict[str, object] = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                               "cpu_model": platform.processor() or None, "cpu_cores": os.cpu_count(),
                               "cpu_bf16_flags": []}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return info
    fields = {key.strip(): value.strip() for key, value in
              (line.split(":", 1) for line in lscpu.splitlines() if ":" in line)}
    info["cpu_model"] = fields.get("Model name", info["cpu_model"])
    if fields.get("CPU(s)", "").isdigit():
        info["cpu_cores"] = int(fields["CPU(s)"])
    info["cpu_bf16_flags"] = sorted(f for f in fields.get("Flags", "").split() if "bf16" in f or f.startswith("amx"))
    return info


def prepare_data(workdir: Path, cache_dir: Path, num_images: int) -> tuple[dict[str, DecodedSplit], dict[str, float]]:
    """Use the CelebA folder at ``workdir`` (writing a synthetic one when there is none) and decode every split
    into ``cache_dir``; return the splits and the generate, cold-build and reuse times.

    ``cache_dir`` belongs to the benchmark, so the build is always cold and a cache next to the images is never
    read, rebuilt or removed.
    """
    start = time.perf_counter()
    try:
        source = find_celeba(workdir)
    except FileNotFoundError:
        write_synthetic_celeba(workdir, num_images=num_images, seed=0)
        source = find_celeba(workdir)
    timings = {"generate_s": time.perf_counter() - start}
    if source.layout != "torchvision":
        raise ValueError(f"{workdir} holds CelebA in the {source.layout!r} layout; the lecture's pipeline "
                         "(torchvision.datasets.CelebA) needs torchvision's: root/celeba/img_align_celeba + text files")
    index = read_index(source)
    start = time.perf_counter()
    splits = {s: build_decoded_cache(workdir, s, index=index, cache_dir=cache_dir, progress=False)
              for s in ("train", "valid", "test")}
    timings["cache_build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    build_decoded_cache(workdir, "train", index=index, cache_dir=cache_dir, progress=False)
    timings["cache_reuse_s"] = time.perf_counter() - start
    return splits, timings


def precision_run(loader: CachedLoader, precision: str, steps: int, warmup: int) -> tuple[float, float]:
    """Images/s of the project's training step in ``precision`` over ``steps`` batches (after ``warmup`` untimed
    ones) from fixed weights, and the training loss of the last step."""
    set_all_seeds(123)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    kwargs = {"skip_epoch_stats": True, "progress": False, "precision": precision, "logging_interval": 50}
    with contextlib.redirect_stdout(io.StringIO()):
        if warmup:
            train_vae_v1(1, model, optimizer, "cpu", TimedBatches(loader, warmup, 0, CPU), **kwargs)
        start = time.perf_counter()
        log = train_vae_v1(1, model, optimizer, "cpu", TimedBatches(loader, steps, 0, CPU), **kwargs)
        elapsed = time.perf_counter() - start
    return steps * loader.batch_size / elapsed, log["train_combined_loss_per_batch"][-1]


def precision_comparison(loader: CachedLoader, steps: int, warmup: int, repeats: int) -> dict[str, object]:
    """CPU fp32 vs bf16 autocast through :func:`precision_run`, ``repeats`` times interleaved (ABBA order, so that
    a slow spell of a shared machine hits both); images/s and the speed-up are medians."""
    runs = []
    for repeat in range(repeats):
        run: dict[str, float] = {}
        for precision in ("fp32", "bf16") if repeat % 2 == 0 else ("bf16", "fp32"):
            run[f"{precision}_img_s"], run[f"{precision}_loss"] = precision_run(loader, precision, steps, warmup)
        runs.append(run)
    fp32_loss, bf16_loss = runs[0]["fp32_loss"], runs[0]["bf16_loss"]
    return {
        "steps": steps, "warmup_steps": warmup, "batch_size": loader.batch_size, "repeats": repeats, "runs": runs,
        "fp32_img_s": statistics.median(r["fp32_img_s"] for r in runs),
        "bf16_img_s": statistics.median(r["bf16_img_s"] for r in runs),
        "bf16_speedup": statistics.median(r["bf16_img_s"] / r["fp32_img_s"] for r in runs),
        "fp32_loss": fp32_loss, "bf16_loss": bf16_loss,
        "loss_relative_difference": abs(bf16_loss - fp32_loss) / fp32_loss,
    }


def main(argv: list[str] | None = None) -> int:
    on_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=202_599 if on_gpu else 2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=200 if on_gpu else 5)
    parser.add_argument("--warmup-steps", type=int, default=20 if on_gpu else 1)
    parser.add_argument("--data-batches", type=int, default=None, help="batches timed for data throughput")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None,
                        help="read CelebA (torchvision layout) or a synthetic set here, writing one if absent; "
                             "its decoded_cache/ is never used (default: a temporary folder)")
    parser.add_argument("--compile", action="store_true", help="also use torch.compile on the project's path")
    parser.add_argument("--check-loss-steps", type=int, default=100 if on_gpu else 10)
    parser.add_argument("--precision-repeats", type=int, default=3,
                        help="CPU only: interleaved fp32/bf16 runs of --train-steps steps each (median reported)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    device = get_device(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="celeba-bench-"))
    try:
        return run(args, device, Path(args.data_root) if args.data_root else scratch / "data", scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, device: torch.device, workdir: Path, scratch: Path) -> int:
    """Measure everything, print the table and write the JSON; ``scratch`` is the benchmark's own folder."""
    results: dict[str, object] = {
        "machine": {"device": device_name(device),
                    "device_type": device.type, "cpu_count": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), **cpu_description()},
        "settings": vars(args),
        "load_average_start": load_average(),
    }
    splits, timings = prepare_data(workdir, scratch / "decoded_cache", args.num_images)
    results.update(timings)
    train_images = len(splits["train"])

    lecture_loader = DataLoader(LectureCelebA(str(workdir), split="train", transform=default_transform()),
                                batch_size=args.batch_size, shuffle=True, num_workers=2, persistent_workers=True)
    batches = args.data_batches or len(lecture_loader)
    results["lecture_data_img_s"] = data_throughput(lecture_loader, device, batches)
    results["lecture_train_img_s"] = lecture_training(lecture_loader, device, args.train_steps, args.warmup_steps)
    # The project's loader tunes the process's allocator (see decoded_cache), so it is only built after the lecture's
    # pipeline has been measured.
    cached = CachedLoader(splits["train"], args.batch_size, shuffle=True, device=device)
    data_throughput(cached, device, 2)
    results["project_data_img_s"] = data_throughput(cached, device, max(batches, len(cached)))
    results["project_train_img_s"] = project_training(cached, device, args.train_steps, args.warmup_steps,
                                                      args.compile)
    test = CachedLoader(splits["test"], args.batch_size, device=device)
    results["loss_check"] = loss_check(CachedLoader(splits["train"], args.batch_size, device=device), test, device,
                                       args.check_loss_steps)
    if device.type == "cpu":
        fixed_batches = CachedLoader(splits["train"], args.batch_size)
        results["cpu_precision"] = precision_comparison(fixed_batches, args.train_steps, args.warmup_steps,
                                                        args.precision_repeats)
    for who in ("lecture", "project"):
        epoch_s = TRAIN_IMAGES / results[f"{who}_train_img_s"]
        results[f"{who}_epoch_s"] = epoch_s
        results[f"{who}_50_epochs_min"] = epoch_s * LECTURE_EPOCHS / 60
    decoded_images = sum(len(split) for split in splits.values())
    results["cache_build_s_per_202599"] = results["cache_build_s"] * 202_599 / decoded_images
    results["peak_host_mib"] = peak_host_mib()
    results["peak_host_children_mib"] = peak_children_mib()
    if device.type == "cuda":
        results["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    results["train_images"] = train_images
    results["load_average_end"] = load_average()

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
    print(f"cache build: {results['cache_build_s']:.1f} s for {decoded_images:,} images "
          f"(~{results['cache_build_s_per_202599']:.0f} s per 202,599; target <= 60 s on the GPU machine); "
          f"reuse {results['cache_reuse_s']:.2f} s")
    check = results["loss_check"]
    print(f"test loss after {args.check_loss_steps} steps: fp32 eager {check['fp32_eager']:.2f}, "
          f"fast {check['fast']:.2f} "
          f"({100 * check['relative_difference']:.2f}% apart; target < 1%)")
    if "cpu_precision" in results:
        cpu, machine = results["cpu_precision"], results["machine"]
        print(f"CPU training step, fp32 vs bf16 autocast ({machine['cpu_model']}, {machine['cpu_cores']} CPUs, "
              f"capability {machine['cpu_capability']}, bf16 flags: {' '.join(machine['cpu_bf16_flags']) or 'none'}; "
              f"median of {cpu['repeats']}): fp32 {cpu['fp32_img_s']:.1f} img/s, bf16 {cpu['bf16_img_s']:.1f} img/s "
              f"({cpu['bf16_speedup']:.2f}x); loss after {cpu['warmup_steps'] + cpu['steps']} steps: "
              f"fp32 {cpu['fp32_loss']:.2f}, bf16 {cpu['bf16_loss']:.2f} "
              f"({100 * cpu['loss_relative_difference']:.2f}% apart)")
    workers = results["peak_host_children_mib"]
    print(f"peak host memory: {results['peak_host_mib']:.0f} MiB (DataLoader workers: "
          + (f"{workers:.0f} MiB)" if workers is not None else "not measured on this system)")
          + (f", peak GPU memory: {results['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in results else ""))
    if results["load_average_start"] is not None:
        print(f"load average (1 min) of the machine: {results['load_average_start']:.1f} at the start, "
              f"{results['load_average_end']:.1f} at the end, on {os.cpu_count()} CPUs")
    else:
        print("load average: this system has none (Windows); close other programs for steady figures")
    output = Path(args.output or Path(__file__).resolve().parent / f"results_{device.type}.json")
    atomic_write(output, lambda f: f.write(json.dumps(results, indent=2).encode()))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
