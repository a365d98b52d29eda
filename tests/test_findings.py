"""What a notebook says about a run is computed from that run: each finding follows the numbers it is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import helper_findings as hf
from celeba_vae.celeba_files import CELEBA_ATTRIBUTE_NAMES
from helper_data import AttributeMeans
from helper_latent import latent_statistics
from helper_plotting import EpochImages
from helper_probe import attribute_probe
from helper_spectra import checkerboard_score
from model import VAE


def _log(valid: list[float], batches: int = 4, first: float = 5000.0) -> dict[str, list[float]]:
    return {"train_combined_loss_per_batch": [first] + [valid[-1]] * (batches * len(valid) - 1),
            "train_combined_loss_per_epoch": [v + 50 for v in valid],
            "valid_combined_loss_per_epoch": valid, "epoch": list(range(1, len(valid) + 1))}


def _text(markdown: object) -> str:
    return markdown.data


def test_a_still_falling_loss_says_so_and_a_flat_one_says_levelled_off() -> None:
    falling = hf.training_facts(_log([1000.0, 900.0]), train_images=8000, minutes=11.0)
    assert falling["last_change"] == pytest.approx(0.1)
    text = _text(hf.training_findings(falling, "transpose"))
    assert "still falling" in text and "-10.0%" in text and "levelled off" not in text
    flat = _text(hf.training_findings(hf.training_facts(_log([1000.0, 999.0]), 8000, 11.0), "transpose"))
    assert "levelled off" in flat and "still falling" not in flat
    rose = _text(hf.training_findings(hf.training_facts(_log([900.0, 1000.0]), 8000, 11.0), "transpose"))
    assert "rose" in rose
    single = _text(hf.training_findings(hf.training_facts(_log([900.0]), 8000, 11.0), "transpose"))
    assert "too short to tell" in single


def test_training_findings_state_this_runs_numbers_beside_the_lectures() -> None:
    facts = hf.training_facts(_log([700.0, 650.0], first=4321.0), train_images=8000, minutes=11.04)
    assert facts["image_steps"] == 16_000 and facts["first_minibatch_loss"] == 4321.0
    transpose = _text(hf.training_findings(facts, "transpose"))
    assert "4,321.0" in transpose and "5,556.7" in transpose and "82.0 min" in transpose
    assert "the training cell ran 11.0 min" in transpose
    assert "16,000 of 8,138,500" in transpose
    assert "training loss 700.0, validation loss 650.0" in transpose and "above" in transpose
    nearest = _text(hf.training_findings(facts, "nearest"))
    assert "4,594.0" in nearest and "90.7 min" in nearest and "5,556.7" not in nearest
    assert "not comparable" in _text(hf.training_findings(facts, "transpose", reconstruction_term_weight=10))
    assert "do not compare" in _text(hf.training_findings(facts, "transpose", dataset="synthetic"))


def test_lecture_share_of_the_laptop_recipe_is_about_one_percent() -> None:
    assert hf.lecture_share(8000 * 10).startswith("about 0.98% of the lecture's image-steps (80,000 of 8,138,500")
    assert hf.lecture_share(hf.LECTURE_IMAGE_STEPS).startswith("about 100%")


def test_progress_findings_read_part_1s_record_or_say_it_is_missing() -> None:
    metrics = {"training": {"transpose": {"epochs": 10, "train_images": 8000, "image_steps": 80_000}}}
    assert "10 epoch(s) on 8,000 images: about 0.98%" in _text(hf.progress_findings(metrics, "transpose"))
    assert "no training record" in _text(hf.progress_findings(metrics, "nearest"))


def _checkerboard(images: torch.Tensor, strength: float) -> torch.Tensor:
    pattern = torch.ones(images.shape[-2:])
    pattern[::2, ::2] = -1
    return (images + strength * pattern).clamp(0, 1)


class _Painter(torch.nn.Module):
    """A stand-in model whose reconstructions and samples carry a stride-2 pattern of a chosen strength."""

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength
        self.faces = torch.rand(1, 3, 32, 32).repeat_interleave(4, -1).repeat_interleave(4, -2) * 0.5 + 0.25

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return _checkerboard(images, self.strength)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return _checkerboard(self.faces.expand(len(z), -1, -1, -1), self.strength)


def test_checkerboard_over_training_reads_the_epoch_pictures_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    faces = torch.rand(4, 3, 32, 32).repeat_interleave(4, -1).repeat_interleave(4, -2) * 0.5 + 0.25
    pictures = EpochImages(faces, torch.randn(4, 8), tmp_path / "epochs")
    for epoch, strength in ((1, 0.1), (2, 0.0), (3, 0.0)):
        pictures.save(_Painter(strength), torch.device("cpu"), epoch)
    originals, reconstructions, _ = EpochImages.read(tmp_path / "epochs" / "epoch_001.png")
    assert originals.shape == (4, 3, 128, 128) and (originals - faces).abs().max() < 1 / 255
    assert checkerboard_score(reconstructions) > 10 * checkerboard_score(originals)
    scores = hf.checkerboard_over_training(tmp_path / "epochs", num_epochs=2)
    assert [s["epoch"] for s in scores] == [1, 2] and scores[0]["faces"] == 4
    assert scores[0]["reconstructions"] > 5 * scores[1]["reconstructions"]
    assert scores[0]["samples"] > 5 * scores[1]["samples"]
    assert scores[0]["real"] == scores[1]["real"] == pytest.approx(checkerboard_score(originals)), "the same faces"
    with pytest.raises(FileNotFoundError, match="no epoch_"):
        hf.checkerboard_over_training(tmp_path / "nothing")


def test_checkerboard_findings_above_and_below_the_threshold() -> None:
    measured = {"real_checkerboard_score": 1.05, "reconstruction_checkerboard_score": 8.1,
                "sample_checkerboard_score": 1.2, "num_images": 300.0}
    over = [{"epoch": e, "reconstructions": r, "samples": s, "real": 1.1, "faces": 8}
            for e, r, s in ((1, 20.0, 9.0), (2, 32.3, 79.9), (3, 9.0, 7.5))]
    text = _text(hf.checkerboard_findings(measured, "transpose", over, image_steps=80_000))
    assert "Real test faces score 1.05 (300 of them, and as many samples)" in text
    assert "Reconstructions: 8.10, 7.7x the real faces': **a checkerboard**" in text
    assert "Samples: 1.20, within 1.5x of the real faces': no checkerboard" in text
    assert "on the 8 fixed test faces of part 1's epoch pictures (which themselves score 1.10" in text
    assert ("reconstructions 20.00 after epoch 1 and 9.00 after epoch 3, down in 1 and up in 1 of 2 epochs "
            "(highest 32.30 after epoch 2)") in text
    assert "Both scores fell from the first epoch to the last" in text and "102 times as much training" in text
    rising = [{**entry, "samples": 2.0 * entry["epoch"]} for entry in over]
    text = _text(hf.checkerboard_findings(measured, "transpose", rising, image_steps=80_000))
    assert "samples 2.00 after epoch 1 and 6.00 after epoch 3, up every epoch" in text
    assert "The reconstructions' score fell from the first epoch to the last, the samples' did not" in text
    flat = [{**entry, "reconstructions": 30.0 - 0.01 * entry["epoch"], "samples": 30.0} for entry in over]
    text = _text(hf.checkerboard_findings(measured, "transpose", flat))
    assert "reconstructions 29.99 after epoch 1 and 29.97 after epoch 3, about the same every epoch" in text
    assert "Neither score fell" in text
    assert "Neither score fell" in _text(hf.checkerboard_findings(measured, "transpose", [
        {**entry, "reconstructions": 30.0, "samples": 30.0} for entry in over]))
    clean = _text(hf.checkerboard_findings({**measured, "reconstruction_checkerboard_score": 1.1}, "nearest"))
    assert "agrees with the lecture" in clean and "**a checkerboard**" not in clean


def _facts(model: torch.nn.Module, images: torch.Tensor) -> dict:
    return hf.sample_facts(model, [(images, torch.zeros(len(images)))], "cpu", num_samples=16, seed=3)


def test_sample_findings_follow_the_code_lengths_and_the_blur_of_this_run() -> None:
    torch.manual_seed(0)
    images = torch.rand(6, 3, 128, 128)
    facts = _facts(VAE(), images)
    assert facts["images"] == 6 and facts["prior_length"] == pytest.approx(200 ** 0.5, rel=0.1)
    torch.manual_seed(1)
    model = VAE()
    facts = _facts(model, images)
    with torch.no_grad():
        lengths = model.eval().encode(images)[0].norm(dim=1)
    assert facts["max_length"] == pytest.approx(float(lengths.max()), rel=1e-5)
    assert facts["mean_length"] == pytest.approx(float(lengths.mean()), rel=1e-5)
    short = {**facts, "mean_length": 4.0, "min_length": 3.0, "max_length": 5.0, "prior_beyond_longest": 1.0,
             "edges": {"real": 0.05, "reconstructions": 0.02, "samples": 0.01}}
    text = _text(hf.sample_findings(short))
    assert "length 4.0 on average (from 3.0 to 5.0)" in text
    assert "100% of the draws are longer than every face's" in text
    assert "prior draws land farther out than most faces' codes" in text
    assert "samples are blurrier than the reconstructions (50% of their edge strength)" in text
    sharp = {**short, "mean_length": 14.0, "prior_beyond_longest": 0.0,
             "edges": {"real": 0.05, "reconstructions": 0.02, "samples": 0.03}}
    text = _text(hf.sample_findings(sharp))
    assert "none of the draws is longer than the longest face's code" in text
    assert "by length, prior draws sit among the faces' codes" in text
    assert "sharper than the reconstructions (150%" in text


def test_the_edge_strength_ignores_a_stride_2_pattern_but_sees_blur() -> None:
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 16, 16), size=128, mode="bicubic").clamp(0, 1)
    pattern = torch.ones(128, 128)
    pattern[::2, ::2] = pattern[1::2, 1::2] = -1
    assert hf._edge_strength(smooth + 0.05 * pattern) == pytest.approx(hf._edge_strength(smooth), abs=1e-5)
    flat = torch.full((2, 3, 128, 128), 0.5)
    assert (hf._edge_strength(flat) < hf._edge_strength(smooth)).all()


class _Blur(torch.nn.Module):
    """Reconstructs every face as flat grey (``coarse=True``) or exactly but with fine noise added."""

    def __init__(self, coarse: bool) -> None:
        super().__init__()
        self.coarse = coarse

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        if self.coarse:
            return torch.full_like(images, 0.5)
        return images + 0.05 * torch.randn_like(images)


def test_reconstruction_findings_split_the_error_into_coarse_content_and_detail() -> None:
    torch.manual_seed(0)
    faces = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4), size=128, mode="bicubic").clamp(0, 1)
    loader = [(faces, torch.zeros(4))]
    grey = hf.reconstruction_facts(_Blur(coarse=True), loader, "cpu")
    noisy = hf.reconstruction_facts(_Blur(coarse=False), loader, "cpu")
    assert grey["coarse_share"] > 0.9 and noisy["coarse_share"] < 0.1
    assert grey["sse_per_image"] == pytest.approx(float(((faces - 0.5) ** 2).sum()) / 4, rel=1e-4)
    assert "even the layout and colours are not reproduced" in _text(hf.reconstruction_findings(grey))
    assert "most of what is lost is finer detail" in _text(hf.reconstruction_findings(noisy))
    assert "split about evenly" in _text(hf.reconstruction_findings({**noisy, "coarse_share": 0.5}))


def test_decoder_findings_say_alike_or_not_from_the_pictures() -> None:
    torch.manual_seed(0)
    faces = torch.rand(4, 3, 8, 8)
    near = faces + 0.1
    alike = _text(hf.decoder_findings(faces, {"transpose": near, "nearest": near + 0.01}))
    assert "differ by 0.010 per pixel" in alike and "alike, as the lecture found" in alike
    apart = _text(hf.decoder_findings(faces, {"transpose": near, "nearest": faces - 0.1}))
    assert "not the same faces" in apart


def test_latent_findings_count_the_active_units_and_their_kl() -> None:
    torch.manual_seed(0)
    z_mean = torch.randn(500, 6)
    z_mean[:, 4:] = 0.0
    z_log_var = torch.full((500, 6), -1.0)
    z_log_var[:, 4:] = 0.0
    facts = hf.latent_facts(latent_statistics(z_mean, z_log_var), 500)
    assert facts["active_units"] == 4 and facts["inactive"] == [4, 5]
    assert facts["inactive_kl"] == pytest.approx(0.0, abs=1e-6)
    text = _text(hf.latent_findings(facts))
    assert "4 of 6 dimensions are active over 500" in text and "z[4, 5]" in text
    every = hf.latent_facts(latent_statistics(torch.randn(500, 3), torch.zeros(500, 3)), 500)
    assert "No dimension has collapsed" in _text(hf.latent_findings(every))


def _means(with_rows: torch.Tensor, without_rows: torch.Tensor) -> AttributeMeans:
    counts = torch.full((len(CELEBA_ATTRIBUTE_NAMES),), 10.0)
    return AttributeMeans(with_rows, without_rows, counts, counts)


def test_average_faces_and_entanglement_come_from_the_run() -> None:
    n = len(CELEBA_ATTRIBUTE_NAMES)
    images = torch.full((n, 3, 8, 8), 0.5)
    changed = images.clone()
    changed[CELEBA_ATTRIBUTE_NAMES.index("Eyeglasses"), :, 2:3, :] += 0.2  # a band two rows from the top
    text = _text(hf.average_faces_findings(_means(changed, images), ["Smiling", "Eyeglasses"]))
    assert "Smiling: the averages are nearly identical: 0.0% of the pixels differ by 0.05" in text
    assert "Eyeglasses: the averages **differ visibly**: 12.5% of the pixels differ by 0.05 or more" in text
    assert "largest 0.20), most in rows 2-2 of 8 from the top" in text and "(20 faces;" in text
    faint = images.clone()
    faint[CELEBA_ATTRIBUTE_NAMES.index("Eyeglasses")] += 0.04
    assert "Eyeglasses: the averages are nearly identical" in _text(hf.average_faces_findings(
        _means(faint, images), ["Eyeglasses"]))
    torch.manual_seed(0)
    codes = torch.randn(n, 16)
    glasses, male = CELEBA_ATTRIBUTE_NAMES.index("Eyeglasses"), CELEBA_ATTRIBUTE_NAMES.index("Male")
    codes[male] = -codes[glasses] + 0.01 * torch.randn(16)
    text = _text(hf.entanglement_findings(_means(codes, torch.zeros(n, 16)), "Eyeglasses"))
    assert "most aligned with Male's: it points the opposite way to it (cosine -1.00" in text
    assert "remove some Male" in text


def test_code_lengths_and_strongest_dimensions() -> None:
    z_mean = torch.zeros(100, 200)
    z_mean[:, 7] = torch.linspace(-3, 3, 100)
    z_mean[:, 3] = torch.linspace(-1, 1, 100)
    std = z_mean.std(dim=0)
    assert f"z[7] ({std[7]:.2f}), z[3] ({std[3]:.2f})." in _text(hf.strongest_dimensions_findings(z_mean, 2))
    short = hf.code_length_facts(torch.full((10, 200), 0.5), torch.full((10, 200), 1.0))
    assert short["prior_beyond_median"] == 1.0 and abs(short["prior_length"] - 14.1) < 0.2
    text = _text(hf.code_length_findings(short))
    assert "length 7.1 on average" in text and "sqrt(200) = 14.1" in text and "z = mu + sigma * eps" in text
    assert "14.1; codes drawn" in text and "100% of the prior's draws are longer than the median face's mean" in text
    assert "only as a face's mean plus the encoder's noise" in text
    torch.manual_seed(0)
    like_prior = _text(hf.code_length_findings(hf.code_length_facts(torch.randn(500, 200))))
    assert "about as long as the prior's draws" in like_prior and "sampled codes" not in like_prior
    assert "reach further out" in _text(hf.code_length_findings(hf.code_length_facts(torch.full((10, 200), 2.0))))


def test_decoded_averages_are_measured_against_the_pixel_averages() -> None:
    torch.manual_seed(0)
    ramp = torch.linspace(0.2, 0.8, 64).repeat(4, 3, 64, 1)
    pixel, smooth = ramp + 0.02 * torch.randn(4, 3, 64, 64), ramp + 0.002 * torch.randn(4, 3, 64, 64)
    grid = torch.zeros(64, 64)
    grid[::2, ::2] = 0.3
    detail = torch.nn.functional.interpolate(0.1 * torch.randn(4, 3, 32, 32), scale_factor=2)
    text = _text(hf.decoded_averages_findings(pixel, ramp + detail + grid))
    assert "decoded averages are **sharper**" in text and "**a grid** shows" in text
    text = _text(hf.decoded_averages_findings(pixel, smooth))
    assert "decoded averages are **blurrier**" in text and "no grid beyond" in text
    edges = f"{hf._edge_strength(smooth).mean():.4f} decoded vs {hf._edge_strength(pixel).mean():.4f} in pixel space"
    assert edges in text
    text = _text(hf.decoded_averages_findings(pixel, pixel + grid))
    assert "**no sharper**" in text and "**a grid** shows" in text, "the grid is no detail"


def test_the_probe_findings_quote_this_runs_scores() -> None:
    scores = {"Smiling": 0.83, "Eyeglasses": 0.91, "Male": 0.55, "Bald": 0.62, "Wavy_Hair": 0.51}
    probe = [{"attribute": name, "probeable": True, "balanced_accuracy": score} for name, score in scores.items()]
    probe.append({"attribute": "Mustache", "probeable": False, "balanced_accuracy": float("nan")})
    text = _text(hf.probe_findings(probe, fit_images=600, test_images=600))
    assert "fitted on 600 codes, scored on 600 others" in text and "above 0.6 for 3 of 5 attributes" in text
    assert "highest Eyeglasses 0.91, Smiling 0.83, Bald 0.62" in text
    assert "lowest Bald 0.62, Male 0.55, Wavy_Hair 0.51" in text
    assert "; the attributes parts 3 and 4 name: Smiling 0.83, Eyeglasses 0.91, Male 0.55 (0.5 is chance)" in text


def test_probe_weighs_a_rare_attribute_as_its_balanced_accuracy_scores_it() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 4))
    score = z[:, 0] + rng.normal(size=4000)
    labels = np.zeros((4000, len(CELEBA_ATTRIBUTE_NAMES)), dtype=np.int64)
    labels[:, 0] = score > np.quantile(score, 0.95)
    labels[:, 1] = rng.random(4000) < 0.5
    rare = attribute_probe(z[:2000], labels[:2000], z[2000:], labels[2000:])[0]
    assert rare["positive_rate"] < 0.1
    assert rare["balanced_accuracy"] > 0.7, "an unweighted fit answers 'no' almost always (about 0.56)"
