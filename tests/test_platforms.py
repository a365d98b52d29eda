"""What a learner meets on another platform: a plain script without a ``__main__`` guard, Windows (no POSIX-only
modules, no replacing or removing a memory-mapped file) and an Apple GPU's recipe, checked on Linux."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from celeba_vae import selfcheck
from celeba_vae.decoded_cache import build_decoded_cache
from celeba_vae.paths import REPO_ROOT
from celeba_vae.recipes import RECIPES, choose_recipe
from helper_train import train_vae_v1

UNGUARDED_SCRIPT = """\
import torch
from celeba_vae.synthetic import write_synthetic_celeba
from helper_data import get_cached_dataloaders_celeba
from helper_train import train_vae_v1
from model import VAE

write_synthetic_celeba("data", num_images=340)
train_loader, valid_loader, test_loader = get_cached_dataloaders_celeba(64, "cpu", root="data", num_workers=2)
model = VAE()
optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
log = train_vae_v1(1, model, optimizer, "cpu", train_loader, skip_epoch_stats=True, progress=False)
print("trained on", len(train_loader.dataset), "images")
"""


def test_a_script_without_a_main_guard_trains(tmp_path: Path) -> None:
    """The lecture's style: no ``if __name__ == "__main__":``. Its 273 training images take two decode chunks, so
    the parallel decoding runs; a spawned worker would re-run the script and the build would never finish."""
    script = tmp_path / "train.py"
    script.write_text(UNGUARDED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=os.name == "posix")
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the unguarded script did not finish in 240 s; its output ends with:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    assert "trained on 273 images" in output
    assert "bootstrapping phase" not in output


POSIX_ONLY = ("resource", "fcntl", "termios", "pwd", "grp")
IMPORT_EVERYTHING = f"""\
import importlib, importlib.util, os, pkgutil, sys
from pathlib import Path
for name in {POSIX_ONLY!r}:
    sys.modules[name] = None  # import raises ImportError, as on Windows
del os.getloadavg
root = Path({str(REPO_ROOT)!r})
import celeba_vae
names = sorted(p.stem for p in root.glob("*.py"))
names += sorted(f"celeba_vae.{{m.name}}" for m in pkgutil.iter_modules(celeba_vae.__path__))
for name in names:
    importlib.import_module(name)
for script in sorted((root / "benchmarks").glob("*.py")):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[script.stem] = module  # as importlib's recipe does: a dataclass looks its module up there
    spec.loader.exec_module(module)
    if script.stem == "benchmark_pipeline":
        print("load average:", module.load_average())
print("imported", len(names), "modules")
"""


def test_every_module_imports_without_the_posix_only_modules() -> None:
    """Windows has no ``resource``, ``fcntl``, ``termios``, ``pwd``, ``grp`` nor ``os.getloadavg``."""
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "load average: None" in done.stdout and "imported" in done.stdout


def _cropped(path: Path) -> np.ndarray:
    """One image as the lecture's pipeline crops it (``CenterCrop((128, 128))``): uint8 (3, 128, 128)."""
    with Image.open(path) as image:
        return np.asarray(transforms.CenterCrop((128, 128))(image.convert("RGB"))).transpose(2, 0, 1)


def test_the_stand_in_refuses_to_replace_a_mapped_file(tmp_path: Path, windows_file_locks: None) -> None:
    np.save(tmp_path / "a.npy", np.zeros(4096, np.uint8))
    (tmp_path / "b.npy").write_bytes(b"new")
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    with pytest.raises(PermissionError):
        os.replace(tmp_path / "b.npy", tmp_path / "a.npy")
    del mapped
    os.replace(tmp_path / "b.npy", tmp_path / "a.npy")


def test_a_split_still_mapped_elsewhere_is_rebuilt_beside_it(celeba_copy: Path, windows_file_locks: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cache_dir = celeba_copy / "celeba" / "decoded_cache"
    held = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    old_first = np.array(held.images[0])
    victim = celeba_copy / "celeba" / "img_align_celeba" / held.filenames[0]
    Image.open(victim).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim, quality=95)

    rebuilt = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    assert f"{held.path} is still in use" in capsys.readouterr().out
    assert rebuilt.path != held.path and rebuilt.path.parent == cache_dir
    assert np.array_equal(rebuilt.images[0], _cropped(victim))
    assert np.array_equal(held.images[0], old_first)
    assert build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False).path == rebuilt.path

    del held, rebuilt
    gc.collect()
    Image.open(victim).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(victim, quality=95)
    again = build_decoded_cache(celeba_copy, "valid", num_workers=1, progress=False)
    assert again.path == cache_dir / "valid_128.npy"
    assert sorted(p.name for p in cache_dir.iterdir()) == ["valid_128.json", "valid_128.npy"]


def test_the_self_check_removes_its_temporary_folder(tmp_path: Path, windows_file_locks: None,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    selfcheck.run_self_check(train_vae_v1, torch.device("cpu"), steps=2, batch_size=8, num_images=60,
                             resume_batches=2)
    assert "could not remove" not in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_a_mac_gets_the_mps_recipe_said_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    chosen = choose_recipe("auto", torch.device("mps"), "celeba")
    assert chosen == RECIPES["mps"] and chosen.train_images is not None
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "Apple GPU" in line and "recipe='lecture'" in line
    assert choose_recipe("auto", torch.device("mps"), "synthetic") == RECIPES["demo"]
    assert choose_recipe("lecture", torch.device("mps"), "celeba") == RECIPES["lecture"]

