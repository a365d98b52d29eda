"""Checkpoints are safe and explain themselves; training survives a real kill."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from celeba_vae import atomic_files
from celeba_vae import checkpoint as ckpt
from celeba_vae.atomic_files import atomic_write
from celeba_vae.checkpoint import load_checkpoint, save_checkpoint
from helper_utils import load_model
from model import VAE

REPO = Path(__file__).resolve().parent.parent


def _checkpoint(tmp_path: Path, model: VAE | None = None) -> Path:
    model = model or VAE()
    optimizer = torch.optim.Adam(model.parameters())
    return save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, epoch=3,
                           log_dict={"epoch": [1, 2, 3]}, settings={"dataset": "synthetic", "crop": 128})


def test_checkpoint_holds_everything_and_loads_with_weights_only(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"model", "optimizer", "epoch", "rng", "log", "settings"}
    assert raw["epoch"] == 3 and raw["log"]["epoch"] == [1, 2, 3]
    assert raw["settings"] == {"dataset": "synthetic", "crop": 128, "latent_dim": 200, "decoder": "transpose"}
    ckpt.restore_rng_states(raw["rng"])


def test_settings_mismatch_is_spelled_out(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, VAE(latent_dim=100))
    with pytest.raises(ValueError, match="checkpoint has latent_dim=100, model has 200"):
        load_model(path, model=VAE())
    assert load_model(path).latent_dim == 100


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, VAE(decoder="nearest"))
    with pytest.raises(ValueError, match="checkpoint has decoder='nearest', model has 'transpose'"):
        load_model(path, model=VAE())
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt does not fit this model: missing weights"):
        load_model(tmp_path / "other.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_or_truncated_checkpoint(tmp_path: Path, damage: str) -> None:
    path = _checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 100)
    with pytest.raises(ValueError, match=f"checkpoint {path} is corrupted or truncated"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; train first"):
        load_model(tmp_path / "nope.pt")


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _checkpoint(tmp_path)
    before = path.read_bytes()

    def full_disk(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="could not write .*checkpoint.pt .*No space left.*previous file.*intact"):
        save_checkpoint(path, VAE(), epoch=4)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_output_folder_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(OSError, match="cannot write .*outputs/run/checkpoint.pt.*writable output folder"):
        save_checkpoint(blocker / "run" / "checkpoint.pt", VAE())
    with pytest.raises(OSError, match="cannot write"):
        atomic_write(blocker / "metrics.json", lambda f: f.write(b"{}"))


TRAIN_SCRIPT = """
import sys, time, torch
from helper_data import get_cached_dataloaders_celeba
from helper_train import train_vae_v1
from helper_utils import set_all_seeds
from model import VAE

root, checkpoint, resume, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
torch.set_num_threads(1)
set_all_seeds(123)
train_loader, valid_loader, _ = get_cached_dataloaders_celeba(16, "cpu", root=root, num_workers=1, progress=False)

class SlowLoader:
    def __len__(self): return len(train_loader)
    def __iter__(self):
        for batch in train_loader:
            time.sleep(0.3 if slow else 0)
            yield batch

model = VAE()
optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
train_vae_v1(5, model, optimizer, "cpu", SlowLoader(), valid_loader=valid_loader, checkpoint_path=checkpoint,
             resume=resume, progress=False, settings={"dataset": "synthetic"})
"""


def _train(root: Path, checkpoint: Path, resume: bool, slow: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(root), str(checkpoint), str(int(resume)),
                             str(int(slow))], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    from celeba_vae.synthetic import write_synthetic_celeba

    root = write_synthetic_celeba(tmp_path / "data", num_images=48, seed=5)
    reference = tmp_path / "reference.pt"
    out, _ = _train(root, reference, resume=False, slow=False).communicate(timeout=300)
    assert torch.load(reference, weights_only=True)["epoch"] == 5, out

    interrupted = tmp_path / "interrupted.pt"
    process = _train(root, interrupted, resume=False, slow=True)
    deadline = time.time() + 240
    while not interrupted.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    stopped_at = torch.load(interrupted, weights_only=True)["epoch"]
    assert 1 <= stopped_at < 5

    out, _ = _train(root, interrupted, resume=True, slow=False).communicate(timeout=300)
    assert f"{stopped_at} of 5 epochs already done" in out
    resumed, expected = torch.load(interrupted, weights_only=True), torch.load(reference, weights_only=True)
    assert resumed["epoch"] == 5 and resumed["log"]["epoch"] == [1, 2, 3, 4, 5]
    assert resumed["log"]["train_combined_loss_per_epoch"] == expected["log"]["train_combined_loss_per_epoch"]
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_a_cuda_checkpoint_loads_on_a_cpu_only_machine(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    with zipfile.ZipFile(path) as original:
        members = {name: original.read(name) for name in original.namelist()}
    pickle_name = next(name for name in members if name.endswith("data.pkl"))
    assert members[pickle_name].count(b"X\x03\x00\x00\x00cpu") == 1  # the storage location, memoized once
    members[pickle_name] = members[pickle_name].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    cuda_path = tmp_path / "saved_on_cuda.pt"
    with zipfile.ZipFile(cuda_path, "w", zipfile.ZIP_STORED) as forged:
        for name, data in members.items():
            forged.writestr(name, data)
    if not torch.cuda.is_available():
        with pytest.raises((RuntimeError, pickle.UnpicklingError), match="CUDA"):  # torch 2.4: UnpicklingError
            torch.load(cuda_path, weights_only=True)
    model = load_model(cuda_path, "cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.equal(model.state_dict()["z_mean.weight"], load_model(path).state_dict()["z_mean.weight"])


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_usual_permissions(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    atomic_files._file_mode.cache_clear()
    try:
        atomic_write(tmp_path / "metrics.json", lambda f: f.write(b"{}"))
        save_checkpoint(tmp_path / "checkpoint.pt", VAE(latent_dim=8))
        assert os.umask(umask) == umask
    finally:
        os.umask(previous)
        atomic_files._file_mode.cache_clear()
    for name in ("metrics.json", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


SYNTHETIC = {"kind": "synthetic", "layout": "torchvision", "root": "/x/synthetic-celeba-2000-seed123", "images": 1638}
CELEBA = {"kind": "celeba", "layout": "kaggle", "root": "/x/data", "images": 162770}


def _data_checkpoint(tmp_path: Path, data: dict | None) -> Path:
    settings = {"dataset": "synthetic"} if data is None else {"data": data}
    return save_checkpoint(tmp_path / "checkpoint.pt", VAE(latent_dim=8), settings=settings)


def test_weights_trained_on_other_data_are_refused(tmp_path: Path) -> None:
    path = _data_checkpoint(tmp_path, SYNTHETIC)
    expected = (f"{path} was trained on synthetic faces (torchvision layout, /x/synthetic-celeba-2000-seed123, "
                "1,638 training images) but this run uses CelebA (kaggle layout, /x/data, 162,770 training images): "
                "train again with these data (resume=False), or point data_root at the data the weights were "
                "trained on.")
    with pytest.raises(ValueError) as raised:
        load_model(path, data=CELEBA)
    assert str(raised.value) == expected
    with pytest.raises(ValueError, match="this run uses CelebA"):
        ckpt.check_settings(load_checkpoint(path), VAE(latent_dim=8), path, data=CELEBA)
    for key, value in (("layout", "kaggle"), ("images", 1600)):
        with pytest.raises(ValueError, match="was trained on synthetic faces"):
            load_model(path, data={**SYNTHETIC, key: value})
    assert load_model(path, data={**SYNTHETIC, "root": "/elsewhere"}).latent_dim == 8


def test_weights_trained_on_the_same_data_or_without_a_record_load(tmp_path: Path) -> None:
    assert load_model(_data_checkpoint(tmp_path, SYNTHETIC), data=dict(SYNTHETIC)).latent_dim == 8
    assert load_model(_data_checkpoint(tmp_path, SYNTHETIC)).latent_dim == 8
    assert load_model(_data_checkpoint(tmp_path, None), data=CELEBA).latent_dim == 8
    torch.save(VAE().state_dict(), tmp_path / "vae_celeba_02.pt")
    assert load_model(tmp_path / "vae_celeba_02.pt", data=CELEBA).latent_dim == 200


def test_resume_refuses_a_checkpoint_trained_on_other_data(tmp_path: Path) -> None:
    from helper_train import train_vae_v1

    batches = [(torch.rand(2, 3, 128, 128), torch.zeros(2))]
    path = tmp_path / "checkpoint.pt"

    def run(num_epochs: int, data: dict, resume: bool) -> dict:
        model = VAE(latent_dim=8)
        return train_vae_v1(num_epochs, model, torch.optim.Adam(model.parameters()), "cpu", batches,
                            checkpoint_path=path, resume=resume, settings={"data": data}, progress=False)

    run(1, SYNTHETIC, resume=False)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="checkpoint.pt was trained on synthetic faces .* this run uses CelebA"):
        run(2, CELEBA, resume=True)
    assert path.read_bytes() == before
    assert run(2, SYNTHETIC, resume=True)["epoch"] == [1, 2]
