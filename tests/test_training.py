"""The training machinery: what a run keeps, its run id, resuming with another optimizer, one line per epoch."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from PIL import Image

from celeba_vae import atomic_files
from celeba_vae.checkpoint import checkpoint_contents, checkpoint_run_id, load_checkpoint, save_checkpoint
from helper_plotting import save_epoch_gif
from helper_train import EpochImages, train_vae_v1
from helper_utils import set_all_seeds
from model import VAE


def _batches(count: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.rand(2, 3, 128, 128, generator=generator), torch.zeros(2)) for _ in range(count)]


def _train(folder: Path, num_epochs: int, resume: bool = False, **kwargs: Any) -> dict[str, list[float]]:
    """Train a small VAE as notebook 1 does: checkpoint, the lecture's weights file and per-epoch images."""
    model = VAE(latent_dim=8)
    images = EpochImages(images=torch.rand(2, 3, 128, 128), noise=torch.randn(2, 8), folder=folder / "epochs")
    return train_vae_v1(num_epochs, model, torch.optim.Adam(model.parameters()), "cpu", _batches(1),
                        save_model=folder / "vae_celeba_02.pt", checkpoint_path=folder / "checkpoint.pt",
                        resume=resume, epoch_images=images, progress=False, **kwargs)


def test_a_new_run_keeps_the_weights_it_replaces_and_shows_only_its_own_epochs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _train(tmp_path, 2)
    first_weights = (tmp_path / "vae_celeba_02.pt").read_bytes()
    first_checkpoint = (tmp_path / "checkpoint.pt").read_bytes()
    first_frames = {p.name: p.read_bytes() for p in (tmp_path / "epochs").iterdir()}
    assert sorted(first_frames) == ["epoch_001.png", "epoch_002.png"]
    capsys.readouterr()

    _train(tmp_path, 1)
    assert (tmp_path / "vae_celeba_02.pt.bak").read_bytes() == first_weights
    assert (tmp_path / "checkpoint.pt.bak").read_bytes() == first_checkpoint
    assert (tmp_path / "vae_celeba_02.pt").read_bytes() != first_weights
    assert sorted(p.name for p in (tmp_path / "epochs").iterdir()) == ["epoch_001.png"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "epochs.bak").iterdir()} == first_frames
    kept = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Starting a new run")]
    assert len(kept) == 1 and "vae_celeba_02.pt.bak" in kept[0] and "epochs.bak" in kept[0]
    with Image.open(save_epoch_gif(tmp_path / "epochs", tmp_path / "training.gif")) as animation:
        assert animation.n_frames == 1


def test_a_resumed_run_keeps_its_epoch_images_and_the_backups(tmp_path: Path) -> None:
    _train(tmp_path, 1)
    _train(tmp_path, 1)
    backups = {p: p.read_bytes() for p in (tmp_path / "vae_celeba_02.pt.bak", tmp_path / "epochs.bak" / "epoch_001.png",
                                           tmp_path / "checkpoint.pt.bak")}
    frame = (tmp_path / "epochs" / "epoch_001.png").read_bytes()
    _train(tmp_path, 2, resume=True)
    assert sorted(p.name for p in (tmp_path / "epochs").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert (tmp_path / "epochs" / "epoch_001.png").read_bytes() == frame
    assert all(path.read_bytes() == data for path, data in backups.items())
    assert sorted(p.name for p in (tmp_path / "epochs.bak").iterdir()) == ["epoch_001.png"]


def test_the_run_id_is_new_for_each_run_and_kept_on_resume(tmp_path: Path) -> None:
    _train(tmp_path, 1)
    first = checkpoint_run_id(tmp_path / "checkpoint.pt")
    assert isinstance(first, str) and len(first) == 32 and int(first, 16) >= 0
    _train(tmp_path, 2, resume=True)
    assert checkpoint_run_id(tmp_path / "checkpoint.pt") == first
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2
    _train(tmp_path, 1)
    assert checkpoint_run_id(tmp_path / "checkpoint.pt") not in (None, first)
    assert checkpoint_run_id(tmp_path / "checkpoint.pt.bak") == first


def test_checkpoints_without_a_run_id_have_none(tmp_path: Path) -> None:
    torch.save(VAE(latent_dim=8).state_dict(), tmp_path / "vae_celeba_02.pt")
    assert checkpoint_run_id(tmp_path / "vae_celeba_02.pt") is None
    path = save_checkpoint(tmp_path / "old.pt", VAE(latent_dim=8), epoch=1)
    older = {k: v for k, v in torch.load(path, weights_only=True).items() if k != "run_id"}
    torch.save(older, path)
    assert checkpoint_run_id(path) is None


def test_resuming_an_older_checkpoint_without_a_run_id_gives_the_run_one(tmp_path: Path) -> None:
    _train(tmp_path, 1)
    path = tmp_path / "checkpoint.pt"
    torch.save({k: v for k, v in torch.load(path, weights_only=True).items() if k != "run_id"}, path)
    _train(tmp_path, 2, resume=True)
    assert len(checkpoint_run_id(path) or "") == 32


def test_resume_keeps_the_new_optimizers_fused_adam(tmp_path: Path) -> None:
    """A checkpoint of plain Adam (CPU, MPS, older runs) resumed with fused Adam and the fp16 gradient scaler: the
    fused flag must survive loading the old state, or the scaler's step fails inside Adam."""
    path = tmp_path / "checkpoint.pt"
    set_all_seeds(0)
    model = VAE(latent_dim=8)
    train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cpu", _batches(1), checkpoint_path=path,
                 progress=False)
    assert load_checkpoint(path)["optimizer"]["param_groups"][0]["fused"] is None
    model = VAE(latent_dim=8)
    fused = torch.optim.Adam(model.parameters(), fused=True)
    log = train_vae_v1(2, model, fused, "cpu", _batches(1), checkpoint_path=path, resume=True, precision="fp16",
                       progress=False)
    assert log["epoch"] == [1, 2] and all(torch.isfinite(torch.tensor(log["train_combined_loss_per_batch"])))
    assert [group["fused"] for group in fused.param_groups] == [True]
    assert load_checkpoint(path)["optimizer"]["param_groups"][0]["fused"] is True


def test_resume_keeps_the_new_optimizers_foreach_and_capturable_flags(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    model = VAE(latent_dim=8)
    train_vae_v1(1, model, torch.optim.Adam(model.parameters(), foreach=True), "cpu", _batches(1),
                 checkpoint_path=path, progress=False)
    model = VAE(latent_dim=8)
    optimizer = torch.optim.Adam(model.parameters(), foreach=False, lr=1e-3)
    train_vae_v1(1, model, optimizer, "cpu", _batches(1), checkpoint_path=path, resume=True, progress=False)
    assert optimizer.param_groups[0]["foreach"] is False
    assert optimizer.param_groups[0]["lr"] == load_checkpoint(path)["optimizer"]["param_groups"][0]["lr"]


class RecordingBar:
    """Stands in for tqdm: records each bar made and the lines written through it."""

    made: ClassVar[list[RecordingBar]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.kwargs, self.disable, self.updates = kwargs, kwargs.get("disable", False), 0
        RecordingBar.made.append(self)

    def update(self, n: int) -> None:
        self.updates += n

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    @classmethod
    def write(cls, line: str) -> None:
        print(line)


def test_one_progress_bar_per_run_and_one_line_per_epoch(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A notebook keeps every progress bar it ever showed: one for the run, not one left over per epoch."""
    import celeba_vae.training

    RecordingBar.made = []
    monkeypatch.setattr(celeba_vae.training, "tqdm", RecordingBar)
    model = VAE(latent_dim=8)
    train_vae_v1(3, model, torch.optim.Adam(model.parameters()), "cpu", _batches(2), logging_interval=1)
    assert len(RecordingBar.made) == 1 and RecordingBar.made[0].updates == 3 * 2
    printed = capsys.readouterr().out.splitlines()
    assert [line[:13] for line in printed if line.startswith("***Epoch")] == [f"***Epoch: 00{k}" for k in (1, 2, 3)]
    assert len(printed) == 1 + 3 + 1  # the precision, one line per epoch, the total time


class _ShortLoader:
    """A loader that yields fewer batches than its ``len()`` says (an iterable dataset's length is a guess)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], claimed: int) -> None:
        self.batches, self.claimed = batches, claimed

    def __len__(self) -> int:
        return self.claimed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)


def test_an_epoch_shorter_than_its_loaders_len_still_logs_every_batch() -> None:
    set_all_seeds(0)
    model = VAE(latent_dim=8)
    log = train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cpu", _ShortLoader(_batches(2), claimed=5),
                       logging_interval=100, progress=False)
    per_batch = log["train_combined_loss_per_batch"]
    assert len(per_batch) == 2
    assert log["train_combined_loss_per_epoch"] == [pytest.approx(sum(per_batch) / 2)]


def test_checkpoints_are_written_on_a_background_thread_and_done_when_training_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: list[str] = []
    real_write = atomic_files.atomic_write

    def recording(path: Path, write: Any) -> Path:
        writers.append(threading.current_thread().name)
        return real_write(path, write)

    monkeypatch.setattr(atomic_files, "atomic_write", recording)
    _train(tmp_path, 2)
    assert writers == ["checkpoint writer"] * 2 and threading.current_thread().name not in writers
    assert not any(thread.name == "checkpoint writer" for thread in threading.enumerate())
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2


def test_a_checkpoint_write_that_fails_stops_training_with_its_error_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pt"
    model = VAE(latent_dim=8)
    optimizer = torch.optim.Adam(model.parameters())
    train_vae_v1(1, model, optimizer, "cpu", _batches(1), checkpoint_path=path, progress=False)
    good = path.read_bytes()

    def disk_full(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=r"could not write .*checkpoint.pt \(No space left on device\); the previous "
                                      "file, if any, is intact"):
        train_vae_v1(3, model, optimizer, "cpu", _batches(1), checkpoint_path=path, resume=True, progress=False)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_checkpoint_contents_are_cpu_copies_that_training_cannot_change() -> None:
    """The checkpoint is written while the next epoch trains: what it holds must not move with the model."""
    model = VAE(latent_dim=8)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 3, 128, 128))[0].sum().backward()
    optimizer.step()
    log = {"epoch": [1]}
    contents = checkpoint_contents(model, optimizer, epoch=1, log_dict=log)
    weight, moment = contents["model"]["z_mean.weight"].clone(), contents["optimizer"]["state"][0]["exp_avg"].clone()
    with torch.no_grad():
        model.z_mean.weight.add_(1.0)
        optimizer.state[next(model.parameters())]["exp_avg"].add_(1.0)
    log["epoch"].append(2)
    assert torch.equal(contents["model"]["z_mean.weight"], weight)
    assert torch.equal(contents["optimizer"]["state"][0]["exp_avg"], moment)
    assert contents["log"] == {"epoch": [1]} and contents["epoch"] == 1
