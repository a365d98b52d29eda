"""The model, the loss and the training loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from helper_data import get_cached_dataloaders_celeba
from helper_train import decoder_comparison_table, evaluate_vae, mean_image_baseline, train_vae_v1, vae_loss
from helper_utils import load_model, set_all_seeds
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
    assert torch.allclose(ours.decoder(ours.encode(x)[0]), lecture(x), atol=1e-6)
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
    from synthetic_celeba import write_synthetic_celeba

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


def test_decoder_comparison_table_has_both_rows() -> None:
    runs = {d: {"epochs": 2, "test": {"reconstruction": r, "kl": 10.0, "combined": r + 10}}
            for d, r in (("transpose", 500.0), ("nearest", 480.0))}
    table = decoder_comparison_table({"runs": runs}).splitlines()
    assert len(table) == 4
    assert table[2].startswith("| nearest | 2 | 480.00 | 10.00 | 490.00")
    assert table[3].startswith("| transpose | 2 | 500.00 | 10.00 | 510.00")


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
