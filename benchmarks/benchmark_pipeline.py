"""Lecture pipeline vs this project's eager step vs its fast path, on the same machine and the same CelebA-shaped
data, with the per-epoch overhead and the lecture's 50 epochs on all of CelebA projected.

    python benchmarks/benchmark_pipeline.py                    # CPU: 640 images, batch 32; CUDA: 50,000, batch 256
    python benchmarks/benchmark_pipeline.py --data-root DIR    # a CelebA folder (torchvision layout), e.g. one
                                                               # built from real faces; only read
    python benchmarks/benchmark_pipeline.py --num-images 20000 --train-steps 100 --compile

Every phase prints one timestamped line when it starts and when it ends. The GPU default is sized to finish within
5 minutes on a 16-CPU machine (the synthetic faces are drawn on the GPU and encoded on every CPU; not yet timed on
one). Prints a table and writes every
figure to a JSON file (default benchmarks/results_<device>.json). The decoded cache is built in a temporary folder
of the benchmark's own: with ``--data-root`` the images there are only read, and a cache the user built next to them
is never touched. The project's ms a step is the slope of the time of two training calls of different lengths
(epochs of the same batches), so set-up, a CUDA graph's capture and the first steps' warm-up cancel out. On CPU it
also times the project's training step in fp32 and in bf16 autocast on the same batches (``--precision-repeats``
interleaved runs, median reported).
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
from celeba_vae.celeba_files import OFFICIAL_SPLIT_SIZES, find_celeba, read_index
from celeba_vae.checkpoint import save_checkpoint
from celeba_vae.decoded_cache import CachedLoader, DecodedSplit, build_decoded_cache
from celeba_vae.synthetic import write_synthetic_celeba
from celeba_vae.timing import TimedBatches, peak_host_mib, synchronize
from helper_data import default_transform
from helper_plotting import EpochImages
from helper_train import adam, evaluate_vae, train_vae_v1, vae_loss
from helper_utils import get_device, set_all_seeds
from model import VAE

TRAIN_IMAGES = OFFICIAL_SPLIT_SIZES["train"]
VALID_IMAGES = OFFICIAL_SPLIT_SIZES["valid"]
ALL_IMAGES = sum(OFFICIAL_SPLIT_SIZES.values())
LECTURE_EPOCHS = 50
CPU = torch.device("cpu")
STARTED = time.monotonic()


def say(text: str) -> None:
    """One line, stamped with the seconds since the benchmark started, flushed at once."""
    print(f"[{time.monotonic() - STARTED:7.1f} s] {text}", flush=True)


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


def subset(split: DecodedSplit, images: int) -> DecodedSplit:
    """The first ``images`` of ``split`` (its own cache key, so a GPU copy is never shared with the whole split)."""
    return DecodedSplit(split.images[:images], None if split.attributes is None else split.attributes[:images],
                        split.filenames[:images], split.path, f"{split.key}:first{images}")


def timed_call(split: DecodedSplit, epochs: int, batch_size: int, device: torch.device, options: dict) -> float:
    """Seconds of one ``train_vae_v1`` call of ``epochs`` epochs over ``split`` (the loader built before the clock
    starts)."""
    with contextlib.redirect_stdout(io.StringIO()):
        loader = CachedLoader(split, batch_size, shuffle=True, device=device)
        set_all_seeds(123)
        model = VAE().to(device)
        optimizer = adam(model, lr=5e-4)
        synchronize(device)
        start = time.perf_counter()
        train_vae_v1(epochs, model, optimizer, device, loader, skip_epoch_stats=True, progress=False,
                     logging_interval=50, **options)
        synchronize(device)
    return time.perf_counter() - start


def project_step(split: DecodedSplit, batch_size: int, device: torch.device, steps: int, options: dict
                 ) -> dict[str, object]:
    """ms a step of ``train_vae_v1`` with ``options``: the slope between a call of one epoch of up to ``steps`` full
    batches and a call of enough more epochs for ``steps`` more steps (set-up, capture and warm-up cancel), and what
    the call said about its step."""
    batches = max(1, min(len(split) // batch_size, steps))
    part = subset(split, batches * batch_size)
    more = -(-steps // batches)
    timed_call(part, 1, batch_size, device, options)  # autotuning and compilation happen once, here
    short = timed_call(part, 1, batch_size, device, options)
    long = timed_call(part, 1 + more, batch_size, device, options)
    ms = max(long - short, 1e-9) / (more * batches) * 1e3
    return {"ms_per_step": ms, "img_s": batch_size / ms * 1e3, "steps": more * batches, "short_call_s": short,
            "long_call_s": long, "mode": fast_step_mode()}


def fast_step_mode() -> str | None:
    """How the last training call ran its step (``celeba_vae.fast_step.last_step``), where the package says so."""
    module = sys.modules.get("celeba_vae.fast_step")
    step = getattr(module, "last_step", None)
    return f"{step.mode}" + (f" ({step.reason})" if step.reason else "") if step is not None else None


def epoch_overhead(splits: dict[str, DecodedSplit], batch_size: int, device: torch.device, folder: Path
                   ) -> dict[str, float]:
    """Seconds of the per-epoch work besides the steps: validation (timed on the valid split, scaled to CelebA's
    19,867), the epoch picture and the checkpoint, each as ``train_vae_v1`` does it."""
    set_all_seeds(123)
    model = VAE().to(device, memory_format=torch.channels_last)
    optimizer = adam(model, lr=5e-4)
    with contextlib.redirect_stdout(io.StringIO()):
        valid = CachedLoader(splits["valid"], batch_size, device=device)
    evaluate_vae(model, valid, device)
    synchronize(device)
    start = time.perf_counter()
    evaluate_vae(model, valid, device)
    synchronize(device)
    validation = (time.perf_counter() - start) * VALID_IMAGES / len(splits["valid"])
    pictures = EpochImages.from_loader(valid, folder / "epoch_images")
    start = time.perf_counter()
    pictures.save(model, device, 1)
    picture = time.perf_counter() - start
    start = time.perf_counter()
    save_checkpoint(folder / "checkpoint.pt", model, optimizer, epoch=1, log_dict={}, settings=None)
    checkpoint = time.perf_counter() - start
    return {"validation_s": validation, "epoch_picture_s": picture, "checkpoint_s": checkpoint,
            "total_s": validation + picture + checkpoint}


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


def prepare_data(workdir: Path, cache_dir: Path, num_images: int, device: torch.device
                 ) -> tuple[dict[str, DecodedSplit], dict[str, float]]:
    """Use the CelebA folder at ``workdir`` (writing a synthetic one, drawn on ``device``, when there is none) and
    decode every split into ``cache_dir``; return the splits and the generate, cold-build and reuse times.

    ``cache_dir`` belongs to the benchmark, so the build is always cold and a cache next to the images is never
    read, rebuilt or removed.
    """
    start = time.perf_counter()
    try:
        source = find_celeba(workdir)
        say(f"data: reading the CelebA folder {workdir}")
    except FileNotFoundError:
        say(f"data: drawing {num_images:,} synthetic faces on {device.type} into {workdir}")
        write_synthetic_celeba(workdir, num_images=num_images, seed=0, device=device)
        source = find_celeba(workdir)
    timings = {"generate_s": time.perf_counter() - start}
    if source.layout != "torchvision":
        raise ValueError(f"{workdir} holds CelebA in the {source.layout!r} layout; the lecture's pipeline "
                         "(torchvision.datasets.CelebA) needs torchvision's: root/celeba/img_align_celeba + text files")
    index = read_index(source)
    say(f"data: {timings['generate_s']:.1f} s; decoding every split into the benchmark's own cache")
    start = time.perf_counter()
    splits = {s: build_decoded_cache(workdir, s, index=index, cache_dir=cache_dir, progress=False)
              for s in ("train", "valid", "test")}
    timings["cache_build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    build_decoded_cache(workdir, "train", index=index, cache_dir=cache_dir, progress=False)
    timings["cache_reuse_s"] = time.perf_counter() - start
    say(f"data: decoded {sum(map(len, splits.values())):,} images in {timings['cache_build_s']:.1f} s")
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
    parser.add_argument("--num-images", type=int, default=50_000 if on_gpu else 640,
                        help="synthetic faces to write when --data-root holds no CelebA")
    parser.add_argument("--batch-size", type=int, default=256 if on_gpu else 32)
    parser.add_argument("--train-steps", type=int, default=200 if on_gpu else 4,
                        help="steps timed per project path (the slope between two calls)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="CPU fp32 vs bf16: untimed steps before each run")
    parser.add_argument("--lecture-steps", type=int, default=40 if on_gpu else 3,
                        help="steps of the lecture's loop timed on its DataLoader")
    parser.add_argument("--data-batches", type=int, default=None,
                        help="batches timed for data throughput (default: as many as --lecture-steps)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None,
                        help="a CelebA folder (torchvision layout), e.g. one built from real faces, or where to "
                             "write a synthetic set; its decoded_cache/ is never used (default: a temporary folder)")
    parser.add_argument("--compile", action="store_true", help="also time the eager step with torch.compile")
    parser.add_argument("--check-loss-steps", type=int, default=50 if on_gpu else 2)
    parser.add_argument("--precision-repeats", type=int, default=3,
                        help="CPU only: interleaved fp32/bf16 runs of --train-steps steps each (median reported)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    device = get_device(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="celeba-bench-"))
    card = device_name(device) if device.type != "cpu" else cpu_description()["cpu_model"] or "a CPU"
    say(f"benchmark on {card} ({device.type}), {os.cpu_count()} CPUs, torch {torch.__version__}")
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
    splits, timings = prepare_data(workdir, scratch / "decoded_cache", args.num_images, device)
    results.update(timings)
    train_images = len(splits["train"])
    batch = args.batch_size

    say("lecture: torchvision CelebA + DataLoader(2 workers), data only")
    lecture_loader = DataLoader(LectureCelebA(str(workdir), split="train", transform=default_transform()),
                                batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True)
    batches = min(args.data_batches or args.lecture_steps, len(lecture_loader))
    results["lecture_data_img_s"] = data_throughput(lecture_loader, device, batches)
    say(f"lecture: data {results['lecture_data_img_s']:,.0f} img/s; its loop (fp32 eager, .item() a batch)")
    results["lecture_train_img_s"] = lecture_training(lecture_loader, device, args.lecture_steps,
                                                      min(2, args.lecture_steps))
    say(f"lecture: {results['lecture_train_img_s']:,.0f} img/s")
    # The project's loader tunes the process's allocator (see decoded_cache), so it is only built after the lecture's
    # pipeline has been measured.
    with contextlib.redirect_stdout(io.StringIO()):
        cached = CachedLoader(splits["train"], batch, shuffle=True, device=device)
    data_throughput(cached, device, 2)
    results["project_data_img_s"] = data_throughput(cached, device, max(batches, min(len(cached), 50)))
    paths = {"eager": {"cuda_graph": False}}
    if args.compile:
        paths["eager + compile"] = {**paths["eager"], "compile": True}
    if device.type != "cuda":
        say(f"fast path: CUDA graphs need CUDA; not timed on {device.type} (it would run the eager step)")
    else:
        paths["fast path"] = {"cuda_graph": True}
    for name, options in paths.items():
        say(f"project {name}: {args.train_steps} steps timed (the slope of two training calls)")
        results[f"project_{name}"] = step = project_step(splits["train"], batch, device, args.train_steps, options)
        say(f"project {name}: {step['ms_per_step']:.2f} ms a step, {step['img_s']:,.0f} img/s"
            + (f"; step: {step['mode']}" if step["mode"] else ""))
    say("per-epoch overhead: validation, epoch picture, checkpoint")
    results["epoch_overhead"] = overhead = epoch_overhead(splits, batch, device, scratch)
    say(f"per-epoch overhead: {overhead['total_s']:.2f} s (validation of {VALID_IMAGES:,} "
        f"{overhead['validation_s']:.2f} s, picture {overhead['epoch_picture_s']:.2f} s, checkpoint "
        f"{overhead['checkpoint_s']:.2f} s)")
    say(f"loss check: fp32 eager vs the fast settings after {args.check_loss_steps} steps")
    test = CachedLoader(splits["test"], batch, device=device)
    results["loss_check"] = loss_check(CachedLoader(splits["train"], batch, device=device), test, device,
                                       args.check_loss_steps)
    if device.type == "cpu" and args.precision_repeats:
        say(f"CPU fp32 vs bf16: {args.precision_repeats} interleaved runs")
        fixed_batches = CachedLoader(splits["train"], batch)
        results["cpu_precision"] = precision_comparison(fixed_batches, args.train_steps, args.warmup_steps,
                                                        args.precision_repeats)
    steps_per_epoch = -(-TRAIN_IMAGES // batch)
    projection = {"lecture": TRAIN_IMAGES / results["lecture_train_img_s"] * LECTURE_EPOCHS / 60}
    for name in paths:
        step_s = results[f"project_{name}"]["ms_per_step"] / 1e3
        projection[name] = (steps_per_epoch * step_s + overhead["total_s"]) * LECTURE_EPOCHS / 60
    results["projection_50_epochs_min"] = projection
    decoded_images = sum(len(split) for split in splits.values())
    results["cache_build_s_per_202599"] = results["cache_build_s"] * ALL_IMAGES / decoded_images
    results["peak_host_mib"] = peak_host_mib()
    results["peak_host_children_mib"] = peak_children_mib()
    if device.type == "cuda":
        results["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    results["train_images"] = train_images
    results["load_average_end"] = load_average()
    print_table(results, args, paths, decoded_images)
    output = Path(args.output or Path(__file__).resolve().parent / f"results_{device.type}.json")
    atomic_write(output, lambda f: f.write(json.dumps(results, indent=2).encode()))
    say(f"wrote {output}")
    return 0


def print_table(results: dict, args: argparse.Namespace, paths: dict, decoded_images: int) -> None:
    """The side-by-side table: the lecture's pipeline, each project path, the overhead and the projections."""
    batch = args.batch_size
    lecture_ms = batch / results["lecture_train_img_s"] * 1e3
    projection = results["projection_50_epochs_min"]
    print(f"\n{'pipeline (batch ' + str(batch) + ')':<28}{'img/s':>10}{'ms a step':>11}{'vs lecture':>11}"
          f"{'50 epochs of CelebA (min)':>27}")
    print(f"{'lecture (DataLoader + loop)':<28}{results['lecture_train_img_s']:>10,.0f}{lecture_ms:>11.2f}"
          f"{'1.0x':>11}{projection['lecture']:>27.1f}")
    for name in paths:
        step = results[f"project_{name}"]
        speedup = step["img_s"] / results["lecture_train_img_s"]
        print(f"{'project ' + name:<28}{step['img_s']:>10,.0f}{step['ms_per_step']:>11.2f}{speedup:>10.1f}x"
              f"{projection[name]:>27.1f}")
    overhead = results["epoch_overhead"]
    print(f"per-epoch overhead {overhead['total_s']:.2f} s (validation {overhead['validation_s']:.2f}, picture "
          f"{overhead['epoch_picture_s']:.2f}, checkpoint {overhead['checkpoint_s']:.2f}), included in the project's "
          "projections; the lecture's projection is its training steps only")
    print(f"data throughput: lecture {results['lecture_data_img_s']:,.0f} img/s, project "
          f"{results['project_data_img_s']:,.0f} img/s")
    print(f"cache build: {results['cache_build_s']:.1f} s for {decoded_images:,} images "
          f"(~{results['cache_build_s_per_202599']:.0f} s per 202,599); reuse {results['cache_reuse_s']:.2f} s")
    check = results["loss_check"]
    print(f"test loss after {args.check_loss_steps} steps: fp32 eager {check['fp32_eager']:.2f}, "
          f"fast {check['fast']:.2f} ({100 * check['relative_difference']:.2f}% apart)")
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


if __name__ == "__main__":
    sys.exit(main())
