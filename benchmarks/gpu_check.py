"""The project's GPU check, run once by whoever has a CUDA machine: about 8 minutes on an H100/H200.

    python benchmarks/gpu_check.py --out gpu_check_out                 # from the repository root, on a CUDA machine
    python benchmarks/gpu_check.py --out DIR --data-root /data/celeba  # the main job on a CelebA folder
    python benchmarks/gpu_check.py --out DIR --smoke                   # CPU: every part tiny, no main job (tested)

Four parts, each a subprocess with its own time limit (a part that runs over is stopped and reported as such):

1. **self-check**: ``python run_lecture.py --self-check`` (every precision, compile, the fast path, resume);
2. **step probe**: the training step at batch 256 eager and as a CUDA graph (``train_vae_v1(cuda_graph=...)``): ms a
   step from the slope of two training calls, and from ``torch.profiler`` the GPU's busy time a step against the wall
   time (a step the host holds up shows a low share) and the kernels a step;
3. **benchmark**: ``benchmarks/benchmark_pipeline.py`` (the lecture's pipeline, the eager step and the fast path side
   by side, the per-epoch overhead, the 50-epoch projection) on 20,000 synthetic faces;
4. **main job**: ``python run_lecture.py --recipe lecture --decoder transpose`` on the CelebA folder of
   ``--data-root`` (else the synthetic demo set): notebooks 1-4 at the lecture's settings, for the lecture's first
   run (``--decoder both``, a CUDA GPU's default, would run them twice). Needs jupyter and papermill (``pip install -r
   requirements.txt``); without them the part is skipped and says why.

Writes ``DIR/gpu_check.json`` (every figure, each part's status, time and reason when skipped or failed),
``DIR/gpu_check.md`` (a table to paste into benchmarks/README.md) and ``DIR/<part>.log``.

Through a device machine that lacks jupyter (the project's device tool: torch and torchvision, no jupyter, papermill,
ipykernel, torchinfo or torch-fidelity, no network; it receives the checkout only), bring the wheels along, and the
real faces for the main job. Once, from the repository root::

    printf '/.device/\\n' >> .git/info/exclude; mkdir -p .device/whl; cp -r ../shared/real_faces .device/
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
      --platform manylinux_2_5_x86_64 -d .device/whl $(cat ../shared/device_wheels.txt)

(the workplace's list of the notebooks' packages and their dependencies: 38 wheels, 17 MB; the faces 13 MB), then one
device call with ``carry [".device"]`` and ``timeout_s`` 560, command::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl && \\
      export PYTHONPATH=/tmp/site:$PWD && python3 .device/real_faces/make_celeba_folder.py /tmp/faces && \\
      python3 benchmarks/gpu_check.py --out /tmp/gc --data-root /tmp/faces; cp /tmp/gc/*.* $OUT/

The check writes to ``/tmp/gc`` and only its 8 top-level files are copied to ``$OUT``: the device tool brings back at
most 8 files, and the main job's folder alone holds more.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LIMITS_S = {"self-check": 150, "step probe": 45, "benchmark": 105, "main job": 180}  # 8 minutes in all
PROBE_BATCH, PROBE_STEPS, PROBE_PROFILED = 256, 100, 20


@dataclass
class Part:
    """One part of the check: ``status`` is ok, failed, timed out or skipped; ``figures`` what it measured."""

    name: str
    status: str = "skipped"
    seconds: float = 0.0
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def run_part(name: str, command: list[str], out: Path, limit_s: float) -> tuple[Part, str]:
    """Run ``command`` from the repository root within ``limit_s`` seconds; its output goes to ``out/<name>.log``."""
    log = out / f"{name.replace(' ', '_')}.log"
    start = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if name == "main job":
        env.pop("MPLBACKEND", None)  # the notebooks get Jupyter's inline figures
    with log.open("w") as sink:
        try:
            code = subprocess.run(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                  timeout=limit_s, check=False).returncode
            status, reason = ("ok", "") if code == 0 else ("failed", f"exit code {code}; see {log.name}")
        except subprocess.TimeoutExpired:
            status, reason = "timed out", f"stopped after its limit of {limit_s:.0f} s; see {log.name}"
    text = log.read_text(errors="replace")
    return Part(name, status, time.monotonic() - start, reason), text


def say(text: str, started: float) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)


def missing_for_notebooks() -> list[str]:
    """The packages the main job needs that are not installed."""
    return [name for name in ("papermill", "ipykernel", "jupyter_client", "nbformat")
            if importlib.util.find_spec(name) is None]


def self_check_part(args: argparse.Namespace, out: Path) -> Part:
    if args.smoke:
        code = ("import torch, helper_train; from celeba_vae.selfcheck import run_self_check; "
                "raise SystemExit(0 if run_self_check(helper_train.train_vae_v1, torch.device('cpu'), "
                "helper_train.adam, steps=2, batch_size=4, num_images=40, step_batches=1, resume_batches=1) else 1)")
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "run_lecture.py", "--self-check"]
    part, text = run_part("self-check", command, out, args.limit["self-check"])
    verdict = re.search(r"Self-check (passed|FAILED): (\d+) of (\d+) OK", text)
    if verdict:
        part.figures = {"verdict": verdict.group(1), "ok_rows": int(verdict.group(2)), "rows": int(verdict.group(3)),
                        "table": [line for line in text.splitlines()
                                  if line[59:68].strip() in ("OK", "FAIL", "FALLBACK")]}  # selfcheck's columns
    return part


def benchmark_part(args: argparse.Namespace, out: Path) -> Part:
    output = out / "benchmark.json"
    command = [sys.executable, "benchmarks/benchmark_pipeline.py", "--output", str(output)]
    command += (["--device", "cpu", "--num-images", "40", "--batch-size", "8", "--train-steps", "2",
                 "--warmup-steps", "1", "--lecture-steps", "1", "--check-loss-steps", "1", "--precision-repeats", "0"]
                if args.smoke else ["--num-images", "20000", "--train-steps", "150", "--lecture-steps", "30",
                                    "--check-loss-steps", "30"])
    part, _ = run_part("benchmark", command, out, args.limit["benchmark"])
    if output.is_file():
        results = json.loads(output.read_text())
        part.figures = {key: results[key] for key in ("lecture_train_img_s", "projection_50_epochs_min",
                                                      "epoch_overhead", "cache_build_s_per_202599")}
        part.figures.update({key: results[key] for key in results if key.startswith("project_")})
    return part


def probe_part(args: argparse.Namespace, out: Path) -> Part:
    output = out / "step_probe.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--probe", str(output)] + (["--smoke"] if args.smoke
                                                                                           else [])
    part, _ = run_part("step probe", command, out, args.limit["step probe"])
    if output.is_file():
        part.figures = json.loads(output.read_text())
    return part


def main_job_part(args: argparse.Namespace, out: Path) -> Part:
    if args.smoke:
        return Part("main job", reason="--smoke runs no main job (four notebooks take minutes on a CPU)")
    if missing := missing_for_notebooks():
        return Part("main job", reason=f"{', '.join(missing)} not installed (pip install -r requirements.txt, or "
                                        "the wheels in the docstring on a device machine)")
    data = ["--data-root", args.data_root] if args.data_root else ["--dataset", "synthetic"]
    command = [sys.executable, "run_lecture.py", "--recipe", "lecture", "--decoder", "transpose", *data,
               "--output-dir", str(out / "main_job")]
    part, text = run_part("main job", command, out, args.limit["main job"])
    done = re.search(r"Done in ([\d.]+) min", text)
    epochs = re.findall(r"Epoch: (\d+)/(\d+) \| Train loss: ([\d.]+)(?: \| Valid loss: ([\d.]+))?", text)
    part.figures = {"data": args.data_root or "synthetic demo set", "minutes": float(done.group(1)) if done else None,
                    "epochs_done": int(epochs[-1][0]) if epochs else 0,
                    "last_train_loss": float(epochs[-1][2]) if epochs else None}
    metrics = out / "main_job" / "metrics.json"
    if metrics.is_file():
        part.figures["metrics"] = json.loads(metrics.read_text())
    return part


def step_probe(output: Path, smoke: bool) -> None:
    """The step probe: ms a step eager and as a CUDA graph, and the profiler's GPU-busy share of the wall time."""
    import torch

    import helper_train
    from celeba_vae.timing import DeviceBatches, synchronize
    from model import VAE

    device = torch.device("cpu" if smoke else "cuda")
    batch, base, steps, profiled = (2, 1, 1, 1) if smoke else (PROBE_BATCH, 4, PROBE_STEPS, PROBE_PROFILED)
    torch.manual_seed(0)
    images = torch.rand(8, 3, 128, 128, device=device)
    pool = [(images[torch.randint(0, 8, (batch,), device=device)], torch.zeros(batch, device=device))
            for _ in range(8)]
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "batch_size": batch}

    def train(count: int, options: dict, profile: bool = False) -> tuple[float, Any]:
        model = VAE().to(device)
        optimizer = helper_train.adam(model, 5e-4)
        loader = DeviceBatches([pool[i % len(pool)] for i in range(count)], batch)
        context = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                          + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []))
                   if profile else contextlib.nullcontext())
        with contextlib.redirect_stdout(io.StringIO()), context as prof:
            synchronize(device)
            start = time.perf_counter()
            helper_train.train_vae_v1(1, model, optimizer, device, loader, skip_epoch_stats=True, progress=False,
                                      logging_interval=count, **options)
            synchronize(device)
        return time.perf_counter() - start, prof

    variants = {"eager": {"cuda_graph": False}, "fast path": {"cuda_graph": True}}
    if smoke:
        variants = {"eager": {"cuda_graph": False}}  # the fast path needs CUDA; on a CPU it is the eager step
    for name, options in variants.items():
        if not smoke:
            train(base, options)  # autotuning, allocator
        short, _ = train(base, options)
        long, _ = train(base + steps, options)
        ms = max(long - short, 1e-9) / steps * 1e3
        step_module = sys.modules.get("celeba_vae.fast_step")
        used = getattr(step_module, "last_step", None)
        wall, prof = train(base + profiled, options, profile=True)
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_ms = sum(e.device_time_total for e in kernels) / 1e3
        figures[name] = {"ms_per_step": ms, "img_s": batch / ms * 1e3,
                         "mode": f"{used.mode}{f' ({used.reason})' if used.reason else ''}" if used else None,
                         "profiled_steps": base + profiled, "profiled_wall_ms": wall * 1e3,
                         "gpu_busy_ms": busy_ms, "gpu_busy_share": busy_ms / (wall * 1e3) if kernels else None,
                         "kernels_per_step": len(kernels) / (base + profiled) if kernels else None}
        print(name, json.dumps(figures[name]), flush=True)
    output.write_text(json.dumps(figures, indent=2))


def markdown(machine: dict[str, Any], parts: list[Part]) -> str:
    """The table for benchmarks/README.md."""
    title = (f"GPU check on {machine['device']} (torch {machine['torch']}, {machine['cpus']} CPUs), "
             f"{machine['date']}, {sum(p.seconds for p in parts) / 60:.1f} min:")
    lines = [title, "",
             "| part | status | time (s) | figures |", "|---|---|---:|---|"]
    for part in parts:
        lines.append(f"| {part.name} | {part.status}{f': {part.reason}' if part.reason else ''} | {part.seconds:.0f} "
                     f"| {summary(part)} |")
    return "\n".join(lines) + "\n"


def summary(part: Part) -> str:
    """One cell of figures per part."""
    f = part.figures
    if not f:
        return "-"
    if part.name == "self-check":
        return f"{f['verdict']}, {f['ok_rows']} of {f['rows']} rows OK" if "verdict" in f else "-"
    if part.name == "step probe":
        cells = []
        for name in ("eager", "fast path"):
            if name in f:
                v = f[name]
                share = f", GPU busy {v['gpu_busy_share']:.0%} of wall" if v.get("gpu_busy_share") else ""
                cells.append(f"{name} {v['ms_per_step']:.2f} ms/step ({v['img_s']:,.0f} img/s{share})"
                             + (f" [{v['mode']}]" if v.get("mode") else ""))
        return "; ".join(cells)
    if part.name == "benchmark":
        projection = f.get("projection_50_epochs_min", {})
        paths = [f"{key[len('project_'):]} {value['img_s']:,.0f} img/s" for key, value in f.items()
                 if key.startswith("project_") and isinstance(value, dict)]
        return (f"lecture {f['lecture_train_img_s']:,.0f} img/s; {'; '.join(paths)}; per-epoch overhead "
                f"{f['epoch_overhead']['total_s']:.2f} s; 50 epochs of CelebA (min): "
                + ", ".join(f"{name} {minutes:.1f}" for name, minutes in projection.items()))
    minutes = f"{f['minutes']:.1f} min" if f.get("minutes") is not None else "unfinished"
    return f"{f['data']}: {minutes}, {f['epochs_done']} epochs, last train loss {f['last_train_loss']}"


def machine_description(smoke: bool) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available() and not smoke
    return {"device": torch.cuda.get_device_name(0) if cuda else "CPU (smoke)", "torch": torch.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
            "smoke": smoke}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_out", help="folder for the JSON, the table and the logs")
    parser.add_argument("--data-root", default=None, help="a CelebA folder for the main job (default: synthetic demo)")
    parser.add_argument("--smoke", action="store_true", help="CPU, every part tiny, no main job")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(LIMITS_S), help="parts not to run")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # the step probe's own subprocess
    args = parser.parse_args(argv)
    if args.probe:
        step_probe(Path(args.probe), args.smoke)
        return 0
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.limit = {name: 600 for name in LIMITS_S} if args.smoke else dict(LIMITS_S)  # a CPU is not timed
    machine = machine_description(args.smoke)
    say(f"GPU check on {machine['device']}, torch {machine['torch']}; writing to {out}", started)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device here; run it on a CUDA machine, or --smoke for the CPU smoke run",
              file=sys.stderr)
        return 2
    parts: list[Part] = []
    for name, run in (("self-check", self_check_part), ("step probe", probe_part), ("benchmark", benchmark_part),
                      ("main job", main_job_part)):
        if name in args.skip:
            parts.append(Part(name, reason="--skip asked for it"))
        else:
            say(f"{name}: started (limit {args.limit[name]} s)", started)
            parts.append(run(args, out))
        say(f"{name}: {parts[-1].status}{f' ({parts[-1].reason})' if parts[-1].reason else ''}", started)
    report = {"machine": machine, "parts": [asdict(part) for part in parts]}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(machine, parts))
    print(markdown(machine, parts), flush=True)
    say(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", started)
    return 0 if all(part.status in ("ok", "skipped") for part in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
