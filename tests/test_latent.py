"""Latent arithmetic, interpolation and latent statistics on a VAE trained briefly on synthetic faces."""

from __future__ import annotations

import pytest
import torch

from helper_data import attribute_index, attribute_means, compute_average_faces, get_cached_dataloaders_celeba
from helper_latent import aligned_attributes_table, decode, encode_dataset, interpolate, latent_statistics, reconstruct
from helper_plotting import plot_modified_faces, plot_pixel_and_latent_edit
from helper_train import evaluate_vae, train_vae_v1
from helper_utils import set_all_seeds
from model import VAE


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[VAE, tuple]:
    from celeba_vae.synthetic import write_synthetic_celeba

    root = write_synthetic_celeba(tmp_path_factory.mktemp("latent") / "data", num_images=480, seed=21)
    loaders = get_cached_dataloaders_celeba(16, "cpu", root=root, num_workers=1, progress=False)
    set_all_seeds(123)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_vae_v1(8, model, optimizer, "cpu", loaders[0], skip_epoch_stats=True, progress=False, logging_interval=1000)
    return model.eval(), loaders


def test_smiling_direction_moves_a_face_towards_the_average_smile(trained: tuple) -> None:
    model, (train_loader, _, test_loader) = trained
    smiling = attribute_index("Smiling")
    direction = attribute_means(train_loader, "cpu", model=model, max_images=None).direction("Smiling")
    assert direction.shape == (200,) and direction.norm() > 0.1
    average_smile, _ = compute_average_faces(smiling, (3, 128, 128), train_loader)
    faces = torch.cat([images[labels[:, smiling] == 0] for images, labels in test_loader])[:16]
    assert len(faces) >= 8
    z, _ = model.encode(faces)
    plain = decode(model, z.detach(), "cpu")
    moved = decode(model, z.detach() + direction, "cpu")

    def distance(images: torch.Tensor, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        return (images[:, :, rows, cols] - average_smile[:, rows, cols]).pow(2).flatten(1).sum(1)

    mouth = (slice(78, 108), slice(40, 88))  # where the synthetic faces draw the mouth, in the 128x128 crop
    assert (distance(moved, *mouth) < distance(plain, *mouth)).float().mean() >= 0.75
    assert distance(moved, *mouth).mean() < distance(plain, *mouth).mean()
    assert distance(moved).mean() < distance(plain).mean()


def test_interpolation_endpoints_are_the_reconstructions(trained: tuple) -> None:
    model, (_, _, test_loader) = trained
    images, _ = next(iter(test_loader))
    frames = interpolate(model, images[0], images[1], "cpu", steps=7)
    assert frames.shape == (7, 3, 128, 128)
    ends = reconstruct(model, images[:2], "cpu")
    assert torch.allclose(frames[0], ends[0], atol=1e-5) and torch.allclose(frames[-1], ends[1], atol=1e-5)
    assert not torch.allclose(frames[3], ends[0], atol=1e-3)
    with pytest.raises(ValueError, match="steps=1"):
        interpolate(model, images[0], images[1], "cpu", steps=1)


def test_latent_statistics_agree_with_the_test_kl(trained: tuple) -> None:
    model, (_, _, test_loader) = trained
    codes = encode_dataset(model, test_loader, "cpu")
    assert codes["z"].shape == (len(test_loader.dataset.filenames), 200)
    stats = latent_statistics(codes["z_mean"], codes["z_log_var"])
    assert stats["kl_per_dim"].shape == (200,) and (stats["kl_per_dim"] >= 0).all()
    assert stats["total_kl"] == pytest.approx(evaluate_vae(model, test_loader, "cpu")["kl"], rel=1e-4)
    assert 0 < stats["active_units"] <= 200
    limited = encode_dataset(model, test_loader, "cpu", max_images=5)
    assert len(limited["z"]) == 5


def test_active_units_and_aggregate_posterior_on_known_codes() -> None:
    torch.manual_seed(0)
    z_mean = torch.zeros(5000, 10)
    z_mean[:, :3] = torch.randn(5000, 3)
    z_log_var = torch.zeros(5000, 10)
    z_log_var[:, :3] = -20.0
    stats = latent_statistics(z_mean, z_log_var)
    assert stats["active_units"] == 3
    assert torch.allclose(stats["aggregate_std"], torch.ones(10), atol=0.05)
    assert torch.allclose(stats["aggregate_kl_to_prior"], torch.zeros(10), atol=0.01)
    assert torch.allclose(stats["kl_per_dim"][3:], torch.zeros(7))


def test_attribute_means_in_one_pass_match_the_lecture_per_attribute(trained: tuple) -> None:
    model, (train_loader, _, _) = trained
    pixels = attribute_means(train_loader, "cpu", max_images=None)
    codes = attribute_means(train_loader, "cpu", model=model, max_images=None)
    assert pixels.with_attribute.shape == (40, 3, 128, 128) and codes.with_attribute.shape == (40, 200)
    for name in ("Smiling", "Eyeglasses", "Male"):
        index = attribute_index(name)
        with_face, without_face = compute_average_faces(index, (3, 128, 128), train_loader)
        assert torch.allclose(pixels.with_attribute[index], with_face, atol=1e-4)
        assert torch.allclose(pixels.without_attribute[index], without_face, atol=1e-4)
        with torch.no_grad():
            code_with, code_without = compute_average_faces(index, 200, train_loader,
                                                            encoding_fn=lambda x: model.encode(x)[0])
        assert torch.allclose(codes.direction(name), code_with - code_without, atol=1e-4)
    assert model.training is False


def test_attribute_means_stop_at_the_cap_and_name_missing_attributes() -> None:
    labels = torch.zeros(6, 40, dtype=torch.int64)
    labels[:3, attribute_index("Smiling")] = 1
    images = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 3, 2, 2)
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    capped = attribute_means(loader, "cpu", max_images=4)
    smiling = attribute_index("Smiling")
    assert capped.count_with[smiling] == 3 and capped.count_without[smiling] == 1
    assert torch.allclose(capped.with_attribute[smiling], torch.full((3, 2, 2), 1.0))
    assert torch.allclose(capped.without_attribute[smiling], torch.full((3, 2, 2), 3.0))
    with pytest.raises(ValueError, match="Eyeglasses is never present"):
        capped.direction("Eyeglasses")
    with pytest.raises(ValueError, match="no CelebA attributes"):
        attribute_means([(images, torch.zeros(6, 0))], "cpu")


def test_aligned_attributes_find_the_attribute_that_moves_along() -> None:
    """Codes where Eyeglasses shifts dimension 0 and Smiling dimension 1; Male goes with glasses in the labels."""
    index = torch.arange(400)
    labels = ((index // 4) % 2).unsqueeze(1).repeat(1, 40)
    glasses, male, smiling = (attribute_index(n) for n in ("Eyeglasses", "Male", "Smiling"))
    labels[:, glasses] = labels[:, male] = index % 2
    labels[:, smiling] = (index // 2) % 2
    codes = torch.zeros(400, 8)
    codes[:, 0] += 2 * labels[:, glasses]
    codes[:, 1] += 2 * labels[:, smiling]
    means = attribute_means([(codes, labels)], "cpu")
    aligned = means.aligned_attributes("Eyeglasses", k=3)
    assert aligned[0][0] == "Male" and aligned[0][1] > 0.99
    assert all(abs(cosine) < 0.5 for _, cosine in aligned[1:])
    table = aligned_attributes_table(means, ["Eyeglasses", "Smiling"], k=2).data
    assert "| Eyeglasses | Male (+1.00)" in table and table.count("\n") == 3


def test_the_lectures_average_faces_are_one_attribute_of_attribute_means() -> None:
    labels = torch.zeros(6, 40, dtype=torch.int64)
    smiling = attribute_index("Smiling")
    labels[[0, 2, 5], smiling] = 1
    images = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 3, 2, 2)
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    with_face, without_face = compute_average_faces(smiling, (3, 2, 2), loader)
    assert torch.allclose(with_face, torch.full((3, 2, 2), 7 / 3)) and torch.allclose(without_face, torch.full(
        (3, 2, 2), 8 / 3))
    code_with, _ = compute_average_faces(smiling, 2, loader, encoding_fn=lambda x: x.flatten(1)[:, :2] * 2)
    assert torch.allclose(code_with, torch.full((2,), 14 / 3))
    with pytest.raises(ValueError, match="Eyeglasses is never present"):
        compute_average_faces(attribute_index("Eyeglasses"), (3, 2, 2), loader)


def test_the_pixel_edit_adds_the_average_difference_beside_the_latent_edit() -> None:
    face = torch.full((3, 8, 8), 0.2)
    pixel_direction = torch.zeros(3, 8, 8)
    pixel_direction[0] = 0.1  # the attribute makes faces redder
    decoded: list[torch.Tensor] = []

    def decoding_fn(z: torch.Tensor) -> torch.Tensor:
        decoded.append(z)
        return torch.full((1, 3, 8, 8), float(z.sum()) / 10)

    fig = plot_pixel_and_latent_edit(face, pixel_direction, torch.zeros(4), torch.ones(4), decoding_fn,
                                     diff_coefficients=(0, 1, 3))
    images = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert len(images) == 6 and [float(z.sum()) for z in decoded] == [0.0, 4.0, 12.0]
    assert images[2][0, 0, 0] == pytest.approx(0.5) and images[2][0, 0, 1] == pytest.approx(0.2)  # 0.2 + 3 * 0.1
    assert images[5][0, 0, 0] == pytest.approx(1.0)  # decode(0 + 3 * ones(4)) = 12 / 10, clamped to 1
    assert fig.get_size_inches()[0] / 3 * fig.dpi >= 128, "each face at its own 128 pixels at least"
    modified = plot_modified_faces(torch.zeros(4), torch.ones(4), decoding_fn=decoding_fn)
    width, height = modified.get_size_inches() * modified.dpi
    assert width / 7 >= 128 and height / 2 >= 128, "the lecture's 7 alphas, each face at 128 pixels at least"
