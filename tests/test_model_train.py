"""The model, the loss and the training loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import helper_latent
import helper_plotting
from helper_data import get_cached_dataloaders_celeba
from helper_train import (
    EpochImages,
    evaluate_vae,
    mean_image_baseline,
    train_vae_v1,
    vae_loss,
)
from helper_utils import eval_mode, load_model, set_all_seeds
from model import VAE


class LectureReshape(nn.Module):
    def __init__(self, *args: int) -> None:
        super().__init__()
        self.shape = args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.shape)


class LectureTrim(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :128, :128]


class LectureVAE(nn.Module):
    """The VAE exactly as the lecture's notebook defines it (attribute names and Sequential indices)."""

    def __init__(self) -> None:
        super().__init__()
        def enc(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, stride=2, kernel_size=3, bias=False, padding=1), nn.BatchNorm2d(c_out),
                    nn.LeakyReLU(0.1, inplace=True), nn.Dropout2d(0.25)]
        self.encoder = nn.Sequential(*enc(3, 32), *enc(32, 64), *enc(64, 64), *enc(64, 64), nn.Flatten())
        self.z_mean = torch.nn.Linear(4096, 200)
        self.z_log_var = torch.nn.Linear(4096, 200)
        self.decoder = nn.Sequential(
            torch.nn.Linear(200, 4096), LectureReshape(-1, 64, 8, 8),
            nn.ConvTranspose2d(64, 64, stride=2, kernel_size=3), nn.BatchNorm2d(64), nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout2d(0.25),
            nn.ConvTranspose2d(64, 64, stride=2, kernel_size=3, padding=1), nn.BatchNorm2d(64),
            nn.LeakyReLU(0.1, inplace=True), nn.Dropout2d(0.25),
            nn.ConvTranspose2d(64, 32, stride=2, kernel_size=3, padding=1), nn.BatchNorm2d(32),
            nn.LeakyReLU(0.1, inplace=True), nn.Dropout2d(0.25),
            nn.ConvTranspose2d(32, 3, stride=2, kernel_size=3, padding=1), LectureTrim(), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)
        return self.decoder(self.z_mean(x))


@pytest.mark.parametrize("decoder", ["transpose", "nearest"])
def test_parameter_count(decoder: str) -> None:
    assert sum(p.numel() for p in VAE(decoder=decoder).parameters()) == 2_649_075


def test_unknown_decoder() -> None:
    with pytest.raises(ValueError, match="'bilinear'"):
        VAE(decoder="bilinear")


def test_state_dict_round_trip_with_the_lecture_model(tmp_path: Path) -> None:
    lecture = LectureVAE()
    path = tmp_path / "vae_celeba_02.pt"
    torch.save(lecture.state_dict(), path)
    ours = load_model(path)
    for key, value in lecture.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    x = torch.rand(2, 3, 128, 128)
    lecture.eval()
    assert torch.allclose(ours.reconstruct(x), lecture(x), atol=1e-6)
    back = LectureVAE()
    back.load_state_dict(VAE().state_dict(), strict=True)


@pytest.mark.parametrize("decoder", ["transpose", "nearest"])
def test_cpu_forward_and_backward(decoder: str) -> None:
    model = VAE(decoder=decoder)
    x = torch.rand(3, 3, 128, 128)
    encoded, z_mean, z_log_var, decoded = model(x)
    assert encoded.shape == z_mean.shape == z_log_var.shape == (3, 200)
    assert decoded.shape == x.shape and decoded.min() >= 0 and decoded.max() <= 1
    vae_loss(x, decoded, z_mean, z_log_var)[0].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.encoding_fn(x).shape == (3, 200)


def test_loss_matches_a_hand_computation() -> None:
    torch.manual_seed(0)
    x, decoded = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    mu, log_var = torch.randn(2, 5), torch.randn(2, 5)
    rec_hand, kl_hand = 0.0, 0.0
    for i in range(2):
        rec_hand += sum(float(d - t) ** 2 for d, t in zip(decoded[i].flatten(), x[i].flatten(), strict=True))
        kl_hand += sum(0.5 * (float(m) ** 2 + float(v.exp()) - float(v) - 1)
                       for m, v in zip(mu[i], log_var[i], strict=True))
    combined, rec, kl = vae_loss(x, decoded, mu, log_var, reconstruction_term_weight=2.0)
    assert rec.item() == pytest.approx(rec_hand / 2, rel=1e-5)
    assert kl.item() == pytest.approx(kl_hand / 2, rel=1e-5)
    assert combined.item() == pytest.approx(2 * rec_hand / 2 + kl_hand / 2, rel=1e-5)


@pytest.fixture(scope="module")
def loaders(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from celeba_vae.synthetic import write_synthetic_celeba

    root = write_synthetic_celeba(tmp_path_factory.mktemp("train") / "data", num_images=200, seed=11)
    return get_cached_dataloaders_celeba(16, "cpu", root=root, num_workers=1, progress=False)


def test_short_training_lowers_the_validation_loss(loaders: tuple, tmp_path: Path) -> None:
    train_loader, valid_loader, _ = loaders
    set_all_seeds(123)
    model = VAE()
    before = evaluate_vae(model, valid_loader, "cpu")["combined"]
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    log = train_vae_v1(4, model, optimizer, "cpu", train_loader, valid_loader=valid_loader, logging_interval=2,
                       save_model=tmp_path / "weights.pt", progress=False)
    assert log["valid_combined_loss_per_epoch"][-1] < 0.9 * before
    assert len(log["train_combined_loss_per_batch"]) == 4 * len(train_loader)
    assert log["epoch"] == [1, 2, 3, 4]
    assert load_model(tmp_path / "weights.pt").state_dict()["z_mean.weight"].equal(model.state_dict()["z_mean.weight"])


def test_the_lectures_call_still_works(loaders: tuple) -> None:
    train_loader, _, _ = loaders
    set_all_seeds(123)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    log_dict = train_vae_v1(num_epochs=1, model=model, optimizer=optimizer, device=torch.device("cpu"),
                            train_loader=train_loader, skip_epoch_stats=True, logging_interval=50)
    for key in ("train_combined_loss_per_batch", "train_combined_loss_per_epoch",
                "train_reconstruction_loss_per_batch", "train_kl_loss_per_batch"):
        assert log_dict[key], key


def test_fast_settings_match_the_plain_fp32_path(loaders: tuple) -> None:
    train_loader, _, test_loader = loaders
    results = []
    for channels_last in (False, True):
        set_all_seeds(123)
        model = VAE()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
        train_vae_v1(2, model, optimizer, "cpu", train_loader, precision="fp32", channels_last=channels_last,
                     skip_epoch_stats=True, progress=False)
        set_all_seeds(0)
        results.append(evaluate_vae(model, test_loader, "cpu")["combined"])
    assert results[1] == pytest.approx(results[0], rel=0.01)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(loaders: tuple, tmp_path: Path) -> None:
    train_loader, _, _ = loaders
    set_all_seeds(123)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    checkpoint = tmp_path / "checkpoint.pt"
    train_vae_v1(1, model, optimizer, "cpu", train_loader, checkpoint_path=checkpoint, progress=False,
                 skip_epoch_stats=True)
    good = checkpoint.read_bytes()

    def exploding(decoded: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return (decoded - target) ** 2 * float("inf")

    with pytest.raises(FloatingPointError, match=r"loss became inf at epoch 2, batch 0.*checkpoint.pt \(epoch 1\)"):
        train_vae_v1(3, model, optimizer, "cpu", train_loader, loss_fn=exploding, checkpoint_path=checkpoint,
                     resume=True, progress=False, skip_epoch_stats=True, logging_interval=1)
    assert checkpoint.read_bytes() == good


def test_mean_image_baseline_by_hand() -> None:
    train = [(torch.tensor([[0.0, 2.0]]), None), (torch.tensor([[2.0, 4.0]]), None)]
    test = [(torch.tensor([[1.0, 3.0], [3.0, 3.0]]), None)]
    assert mean_image_baseline(train, test) == pytest.approx((0.0 + 4.0) / 2)


def test_a_new_run_keeps_the_previous_checkpoint_as_backup(loaders: tuple, tmp_path: Path) -> None:
    train_loader, _, _ = loaders
    checkpoint = tmp_path / "checkpoint.pt"

    def one_step_run() -> None:
        model = VAE()
        train_vae_v1(1, model, torch.optim.Adam(model.parameters()), "cpu", [next(iter(train_loader))],
                     checkpoint_path=checkpoint, skip_epoch_stats=True, progress=False)

    one_step_run()
    first = checkpoint.read_bytes()
    one_step_run()
    assert checkpoint.with_name("checkpoint.pt.bak").read_bytes() == first
    assert checkpoint.read_bytes() != first


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_previous_mode_also_on_errors(training: bool) -> None:
    model = VAE(latent_dim=8).train(training)
    with eval_mode(model), torch.no_grad():
        assert not model.training and not model.encoder[2].training
    assert model.training == training and model.encoder[2].training == training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert all(m.training == training for m in model.modules())


class BrokenDecoder(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("decoder failed")


@pytest.mark.parametrize("call", [
    lambda m: helper_latent.decode(m, torch.zeros(2, 8), "cpu"),
    lambda m: helper_latent.reconstruct(m, torch.rand(2, 3, 128, 128), "cpu"),
    lambda m: helper_latent.interpolate(m, torch.rand(3, 128, 128), torch.rand(3, 128, 128), "cpu", steps=3),
    lambda m: helper_latent.encode_dataset(m, [(torch.rand(2, 3, 128, 128), None)], "cpu"),
    lambda m: helper_plotting.plot_generated_images([(torch.rand(2, 3, 128, 128), None)], m, "cpu", modeltype="VAE"),
    lambda m: helper_plotting.plot_images_sampled_from_vae(m, "cpu", 8, num_images=2),
], ids=["decode", "reconstruct", "interpolate", "encode_dataset", "plot_generated_images", "plot_sampled"])
def test_helpers_leave_a_training_model_in_training_mode_when_they_fail(call: Callable) -> None:
    model = VAE(latent_dim=8)
    model.decoder = BrokenDecoder()
    model.encode = lambda x: (_ for _ in ()).throw(RuntimeError("encoder failed"))
    with pytest.raises(RuntimeError, match="failed"):
        call(model)
    assert model.training


def test_training_saves_one_picture_per_epoch_and_a_gif(tmp_path: Path) -> None:
    set_all_seeds(0)
    model = VAE(latent_dim=8)
    images = (torch.rand(4, 3, 128, 128) * 255).to(torch.uint8)
    batches = [(images[:2].float() / 255, torch.zeros(2)), (images[2:].float() / 255, torch.zeros(2))]
    folder = tmp_path / "epochs"
    train_vae_v1(2, model, torch.optim.Adam(model.parameters()), "cpu", batches, progress=False,
                 epoch_images=EpochImages(images=images, noise=torch.randn(4, 8), folder=folder))
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_001.png", "epoch_002.png"]
    for name in ("epoch_001.png", "epoch_002.png"):
        with Image.open(folder / name) as picture:
            assert picture.size == (4 * 130 + 2, 3 * 130 + 2)  # 4 columns, 3 rows of 128 px with 2 px gaps
            pixels = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(pixels[:, 2:130, 2:130], images[0])
        assert torch.equal(pixels[:, 2:130, 132:260], images[1])
    assert model.training
    with Image.open(helper_plotting.save_epoch_gif(folder, tmp_path / "training.gif")) as animation:
        assert animation.n_frames == 2
    with Image.open(helper_plotting.save_epoch_gif(folder, tmp_path / "first.gif", num_epochs=1)) as animation:
        assert animation.n_frames == 1


def test_epoch_images_from_a_loader_are_fixed_by_the_seed(tmp_path: Path) -> None:
    images = torch.rand(10, 3, 128, 128)
    loader = [(images[:6], torch.zeros(6)), (images[6:], torch.zeros(4))]
    first, again = (EpochImages.from_loader(loader, tmp_path, num_images=4, seed=3) for _ in range(2))
    assert torch.equal(first.images, images[:4]) and first.noise.shape == (4, 200)
    assert torch.equal(first.noise, again.noise)
    assert not torch.equal(first.noise, EpochImages.from_loader(loader, tmp_path, num_images=4, seed=4).noise)


def test_epoch_images_of_a_small_first_batch_draw_as_many_noise_vectors(tmp_path: Path) -> None:
    images = torch.rand(3, 3, 128, 128)
    epoch_images = EpochImages.from_loader([(images, torch.zeros(3))], tmp_path, num_images=8, latent_dim=8)
    assert epoch_images.noise.shape == (3, 8)
    with Image.open(epoch_images.save(VAE(latent_dim=8), torch.device("cpu"), 1)) as picture:
        assert picture.size == (3 * 130 + 2, 3 * 130 + 2)  # three rows: originals, reconstructions, samples


def test_a_long_run_prints_about_twenty_epoch_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """A 41-epoch run prints the first, every third and the last epoch's line; the log keeps all 41."""
    model = VAE(latent_dim=4)
    batch = [(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)), torch.zeros(2))]
    log = train_vae_v1(41, model, torch.optim.Adam(model.parameters()), "cpu", batch, progress=False,
                       logging_interval=1)
    printed = [int(line[10:13]) for line in capsys.readouterr().out.splitlines() if line.startswith("***Epoch")]
    assert printed == [1, *range(3, 41, 3), 41]
    assert log["epoch"] == list(range(1, 42))
