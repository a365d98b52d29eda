"""What this run shows: short Markdown blocks built from the run's own numbers, beside the lecture's reference.

Each ``*_facts`` function measures (and returns a dict that a notebook records in ``metrics.json``); each
``*_findings`` function turns such a dict into a few sentences that say what agrees with the lecture and what does
not. A notebook states a result only through these, so every sentence is true for the run in front of the learner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from IPython.display import Markdown

from celeba_vae.celeba_files import OFFICIAL_SPLIT_SIZES
from celeba_vae.recipes import KNOB_VALUES, knob_runs
from helper_data import AttributeMeans, attribute_index, first_images
from helper_plotting import EpochImages
from helper_spectra import checkerboard_score
from helper_utils import eval_mode

LECTURE_EPOCHS = 50
LECTURE_IMAGE_STEPS = LECTURE_EPOCHS * OFFICIAL_SPLIT_SIZES["train"]
LECTURE_FIRST_LOSS = {"transpose": 5556.7, "nearest": 4594.0}
LECTURE_MINUTES = {"transpose": 82.0, "nearest": 90.7}
STILL_FALLING = 0.01  # a last epoch that lowers the loss by more than 1% counts as still falling
CHECKERBOARD_RATIO = 1.5  # a checkerboard score above 1.5x the real faces' counts as a checkerboard
SAME_SCORE = 0.01  # checkerboard scores within 1% of each other count as the same
VISIBLE = 0.05  # a pixel difference of 0.05 (13 of 255 grey levels) shows when two images are side by side
VISIBLE_SHARE = 0.01  # an attribute's average faces differ visibly when 1% of the pixels differ by VISIBLE or more
SAME_LENGTH = 0.1  # code lengths within 10% of each other count as about the same
SHARPER = 1.25  # one set of images is sharper than another when its edge strength is 25% higher
PROBE_SHOWN = ("Smiling", "Eyeglasses", "Male", "Blond_Hair")


def _percent(share: float) -> str:
    """A share as a percentage with two significant digits for small values: 0.0098 -> '0.98%'."""
    return f"{share:.0%}" if share >= 0.095 else f"{share * 100:.2g}%"


def lecture_share(image_steps: int) -> str:
    """'about 1% of the lecture's image-steps (80,000 of 8,138,500)'."""
    return (f"about {_percent(image_steps / LECTURE_IMAGE_STEPS)} of the lecture's image-steps "
            f"({image_steps:,} of {LECTURE_IMAGE_STEPS:,}: {LECTURE_EPOCHS} epochs x "
            f"{OFFICIAL_SPLIT_SIZES['train']:,} images)")


def training_facts(log_dict: Mapping[str, Sequence[float]], train_images: int, minutes: float) -> dict[str, Any]:
    """What a notebook records about training: first minibatch loss, per-epoch losses, image-steps, time.

    ``last_change`` is the relative fall of the last epoch's loss (validation when measured, else training):
    ``(previous - last) / previous``, ``None`` after a single epoch.
    """
    train = list(log_dict["train_combined_loss_per_epoch"])
    valid = list(log_dict.get("valid_combined_loss_per_epoch") or [])
    curve = valid or train
    epochs = len(log_dict["epoch"])
    return {
        "first_minibatch_loss": float(log_dict["train_combined_loss_per_batch"][0]),
        "epochs": epochs,
        "train_images": train_images,
        "image_steps": train_images * epochs,
        "minutes": minutes,
        "last_train_loss": train[-1],
        "last_valid_loss": valid[-1] if valid else None,
        "curve": "validation" if valid else "training",
        "last_change": (curve[-2] - curve[-1]) / curve[-2] if len(curve) > 1 else None,
    }


def _trend(facts: Mapping[str, Any]) -> str:
    change = facts["last_change"]
    if change is None:
        return "With one epoch there is no second point: too short to tell whether the loss levels off."
    said = f"The {facts['curve']} loss changed by {-change:+.1%} in the last epoch"
    if change > STILL_FALLING:
        return f"{said}: **still falling**; more epochs would likely lower it further."
    if change < -STILL_FALLING:
        return f"{said}: it **rose**, so the last epochs no longer helped (noise, or the start of overfitting)."
    return f"{said}: it has **levelled off** at this learning rate."


def training_findings(
    facts: Mapping[str, Any], decoder: str, dataset: str = "celeba", reconstruction_term_weight: float = 1.0
) -> Markdown:
    """What this training run shows beside the lecture's: start, trend, train against validation, length, time."""
    lines = [(f"**This run** ({decoder} decoder): {facts['epochs']} epoch(s) on {facts['train_images']:,} "
             f"images, {lecture_share(facts['image_steps'])}; the training cell ran {facts['minutes']:.1f} min "
             f"(the lecture's {decoder} run: {LECTURE_MINUTES[decoder]} min on a GPU).")]
    first = facts["first_minibatch_loss"]
    if dataset != "celeba":
        lines.append(f"First minibatch loss {first:,.1f}: on {dataset} faces the values do not compare with the "
                     "lecture's.")
    elif reconstruction_term_weight != 1:
        lines.append(f"First minibatch loss {first:,.1f}, with w = {reconstruction_term_weight:g}: not comparable "
                     f"with the lecture's (w = 1) {LECTURE_FIRST_LOSS[decoder]:,.1f}.")
    else:
        lines.append(f"First minibatch loss {first:,.1f}; the lecture's {decoder} run started at "
                     f"{LECTURE_FIRST_LOSS[decoder]:,.1f} (a different random initialization and batch).")
    lines.append(_trend(facts))
    if facts["last_valid_loss"] is not None:
        above = facts["last_train_loss"] > facts["last_valid_loss"]
        reading = " (explained below)" if above else "; a gap that widens over more epochs would mean overfitting"
        lines.append(f"Last epoch: training loss {facts['last_train_loss']:,.1f}, validation loss "
                     f"{facts['last_valid_loss']:,.1f}: the training loss is "
                     f"{'above' if above else 'below'} the validation loss{reading}.")
    return Markdown("\n\n".join(lines))


def progress_findings(metrics: Mapping[str, Any], decoder: str) -> Markdown:
    """How much the weights a notebook reads were trained, from part 1's ``training`` record in ``metrics.json``."""
    facts = metrics.get("training", {}).get(decoder)
    if not facts:
        return Markdown(f"`metrics.json` has no training record for the {decoder} decoder (part 1 writes it), so "
                        "this notebook cannot say how long these weights were trained.")
    return Markdown(f"These weights were trained for {facts['epochs']} epoch(s) on {facts['train_images']:,} "
                    f"images: {lecture_share(facts['image_steps'])}. The lecture's faces are from the end of its "
                    "50 epochs; read what you see here as a model at that point of training.")


def checkerboard_over_training(folder: str | Path, num_epochs: int | None = None) -> list[dict[str, float]]:
    """Checkerboard scores of the fixed faces' reconstructions and decoded noise after each epoch, read back from
    the ``epoch_*.png`` part 1 kept (the first ``num_epochs``), beside the score of the fixed faces themselves (the
    same faces, so the three compare): ``[{"epoch", "reconstructions", "samples", "real", "faces"}]``."""
    scores = []
    for epoch, file in EpochImages.saved(folder, num_epochs):
        originals, reconstructions, samples = EpochImages.read(file)
        scores.append({"epoch": epoch, "reconstructions": checkerboard_score(reconstructions),
                       "samples": checkerboard_score(samples), "real": checkerboard_score(originals),
                       "faces": len(originals)})
    return scores


def _verdict(score: float, real: float) -> str:
    if score > CHECKERBOARD_RATIO * real:
        return f"{score:,.2f}, {score / real:,.1f}x the real faces': **a checkerboard**"
    return f"{score:,.2f}, within {CHECKERBOARD_RATIO}x of the real faces': no checkerboard beyond theirs"


def _series(over_training: Sequence[Mapping[str, float]], key: str) -> str:
    """'32.30 after epoch 1 and 4.90 after epoch 10, down in 8 of 9 epochs (highest 40.10 after epoch 2)'."""
    epochs = [entry["epoch"] for entry in over_training]
    values = [entry[key] for entry in over_training]
    steps = list(pairwise(values))
    moved = [(a, b) for a, b in steps if abs(b - a) > SAME_SCORE * max(a, b)]
    down, up = sum(b < a for a, b in moved), sum(b > a for a, b in moved)
    said = f"{values[0]:,.2f} after epoch {epochs[0]} and {values[-1]:,.2f} after epoch {epochs[-1]}"
    if not moved:
        return f"{said}, about the same every epoch"
    if down == len(steps):
        return f"{said}, down every epoch"
    if up == len(steps):
        return f"{said}, up every epoch"
    peak = max(range(len(values)), key=values.__getitem__)
    return (f"{said}, down in {down} and up in {up} of {len(steps)} epochs (highest {values[peak]:,.2f} after "
            f"epoch {epochs[peak]})")


def checkerboard_findings(
    measures: Mapping[str, float], decoder: str, over_training: Sequence[Mapping[str, float]] = (),
    image_steps: int | None = None,
) -> Markdown:
    """The checkerboard scores of this run (``spectral_measures`` of one decoder), their course over the epochs on
    part 1's fixed faces (each compared with those faces' own score), and how that squares with the lecture's
    "I don't see any checkerboard" after 50 epochs."""
    real = measures["real_checkerboard_score"]
    faces = f" ({measures['num_images']:,.0f} of them, and as many samples)" if "num_images" in measures else ""
    lines = [(f"**This run's {decoder} decoder.** Real test faces score {real:.2f}{faces}. Reconstructions: "
             f"{_verdict(measures['reconstruction_checkerboard_score'], real)}. Samples: "
             f"{_verdict(measures['sample_checkerboard_score'], real)}.")]
    fell: list[str] | None = None
    if len(over_training) > 1:
        last = over_training[-1]
        lines.append(f"Over training, on the {last['faces']:.0f} fixed test faces of part 1's epoch pictures (which "
                     f"themselves score {last['real']:.2f}; a score averages the spectrum of its faces, so it differs "
                     f"from the numbers above): reconstructions {_series(over_training, 'reconstructions')}; samples "
                     f"{_series(over_training, 'samples')}. After the last epoch: reconstructions "
                     f"{_verdict(last['reconstructions'], last['real'])}; samples "
                     f"{_verdict(last['samples'], last['real'])}.")
        fell = [k for k in ("reconstructions", "samples") if last[k] < (1 - SAME_SCORE) * over_training[0][k]]
    elif over_training:
        lines.append("Part 1 kept the faces of a single epoch, so there is no change over training to show.")
    seen = any(measures[k] > CHECKERBOARD_RATIO * real
               for k in ("reconstruction_checkerboard_score", "sample_checkerboard_score"))
    steps = f" after {lecture_share(image_steps)}" if image_steps else ""
    more = f"{LECTURE_IMAGE_STEPS / image_steps:,.0f} times as much training" if image_steps else "more training"
    if seen:
        if fell is None:
            course = f"With one epoch, this run cannot show how the pattern changes with training ({more})."
        elif len(fell) == 2:
            course = ("Both scores fell from the first epoch to the last: the pattern was fading as training went on; "
                      f"whether it is gone after {more}, as in the lecture, this run cannot show.")
        elif fell:
            other = "samples" if fell == ["reconstructions"] else "reconstructions"
            course = (f"The {fell[0]}' score fell from the first epoch to the last, the {other}' did not: no clear "
                      f"sign yet of the pattern fading (the lecture's run had {more}).")
        else:
            course = ("Neither score fell from the first epoch to the last: no sign yet of the pattern fading (the "
                      f"lecture's run had {more}).")
        lines.append(f"The lecture saw no checkerboard after its 50 epochs (\"I don't see any checkerboard\"); this "
                     f"run measures one{steps}. {course} A score well above the real faces' can still be faint at "
                     "normal size: the zoom shows how it looks.")
    else:
        lines.append(f"This agrees with the lecture's \"I don't see any checkerboard\"{steps}.")
    return Markdown("\n\n".join(lines))


@torch.no_grad()
def sample_facts(model: torch.nn.Module, data_loader: Iterable, device: str | torch.device, num_samples: int = 16,
                 max_images: int = 512, seed: int = 123) -> dict[str, Any]:
    """Where codes drawn from N(0, I) land, and how sharp their faces are, against the test faces' own codes.

    The lengths of the posterior means of up to ``max_images`` faces of ``data_loader`` against draws from N(0, I)
    (:func:`code_length_facts`, with ``seed``); ``edges``: the mean absolute difference between neighbouring pixels
    of the images at half resolution (2x2 averages, which remove a stride-2 pattern, so this measures blur alone) of
    the real faces, their reconstructions and ``num_samples`` samples decoded from codes drawn with ``seed``.
    """
    z_means, edges = [], {"real": [], "reconstructions": [], "samples": []}
    with eval_mode(model):
        for images, _ in first_images(data_loader, max_images):
            images = images.to(device, torch.float32)
            z_mean = model.encode(images)[0].float()
            z_means.append(z_mean.cpu())
            edges["real"].append(_edge_strength(images))
            edges["reconstructions"].append(_edge_strength(model.decode(z_mean)))
        z = torch.randn(num_samples, model.latent_dim, generator=torch.Generator().manual_seed(seed))
        edges["samples"].append(_edge_strength(model.decode(z.to(device))))
    return {**code_length_facts(torch.cat(z_means), seed=seed), "samples": num_samples,
            "edges": {kind: float(torch.cat(values).mean()) for kind, values in edges.items()}}


def _edge_strength(images: torch.Tensor) -> torch.Tensor:
    """Per image: the mean absolute difference between neighbouring pixels after 2x2 averaging."""
    half = F.avg_pool2d(images.float(), 2)
    return ((half[..., 1:, :] - half[..., :-1, :]).abs().mean(dim=(1, 2, 3))
            + (half[..., 1:] - half[..., :-1]).abs().mean(dim=(1, 2, 3))).cpu() / 2


def sample_findings(facts: Mapping[str, Any]) -> Markdown:
    """Where this run's samples come from and how blurry they are, against its reconstructions; and a question."""
    edges = facts["edges"]
    ratio = edges["samples"] / edges["reconstructions"]
    blur = ("blurrier than" if ratio < 0.9 else "sharper than" if ratio > 1.1 else "about as sharp as")
    share = facts["mean_length"] / facts["prior_length"]
    where = ("prior draws land farther out than most faces' codes" if share < 0.85 else
             "prior draws land nearer the centre than most faces' codes" if share > 1.15 else
             "by length, prior draws sit among the faces' codes")
    beyond = (f"{facts['prior_beyond_longest']:.0%} of the draws are longer than every face's code (farther out "
              "than any code the decoder was trained on here)" if facts["prior_beyond_longest"] else
              "none of the draws is longer than the longest face's code")
    return Markdown(
        f"**This run's samples.** The posterior means of {facts['images']:,} test faces have length "
        f"{facts['mean_length']:.1f} on average (from {facts['min_length']:.1f} to "
        f"{facts['max_length']:.1f}); codes drawn from N(0, I), as for the samples above, "
        f"have length {facts['prior_length']:.1f} on average (about sqrt({facts['latent_dim']}) = "
        f"{facts['latent_dim'] ** 0.5:.1f}): {where}, and {beyond}. Edge strength (at half resolution, where a "
        f"stride-2 pattern averages out): real faces {edges['real']:.4f}, reconstructions "
        f"{edges['reconstructions']:.4f}, samples {edges['samples']:.4f}, so the samples are {blur} the "
        f"reconstructions ({ratio:.0%} of their edge strength).\n\n"
        "**Your turn:** how many of the 16 would you call a face? Length is only one thing the KL term pulls "
        "towards the prior; part 3 looks at the codes dimension by dimension.")


@torch.no_grad()
def reconstruction_facts(model: torch.nn.Module, data_loader: Iterable, device: str | torch.device,
                         max_images: int = 512, block: int = 16) -> dict[str, Any]:
    """How the reconstructions' squared error splits into coarse content (the mean colour of each ``block`` x
    ``block`` square: layout, skin tone, background) and finer detail; the two add up to the whole."""
    coarse = total = 0.0
    seen = 0
    with eval_mode(model):
        for images, _ in first_images(data_loader, max_images):
            images = images.to(device, torch.float32)
            error = model.reconstruct(images).float() - images
            total += float(error.pow(2).sum())
            coarse += float(F.avg_pool2d(error, block).pow(2).sum()) * block**2
            seen += len(images)
    return {"images": seen, "block": block, "sse_per_image": total / seen, "coarse_share": coarse / total}


def reconstruction_findings(facts: Mapping[str, Any]) -> Markdown:
    """Whether this run's reconstructions lose more of the coarse content or of the detail."""
    share = facts["coarse_share"]
    reading = ("most of what is lost is finer detail; the coarse content comes through better" if share < 0.4 else
               "the error is split about evenly between coarse content and detail" if share <= 0.6 else
               "most of the error is in the coarse content itself: even the layout and colours are not reproduced "
               "well yet")
    return Markdown(f"**These reconstructions** ({facts['images']:,} test faces, decoded posterior means): "
                    f"{share:.0%} of the squared error ({facts['sse_per_image']:,.1f} per image) is in the coarse "
                    f"content (the mean colour of each {facts['block']}x{facts['block']} square: layout, skin tone, "
                    f"background), {1 - share:.0%} in finer detail: {reading}. Which faces above lost the most, "
                    "and what did they have in common?")


def decoder_findings(originals: torch.Tensor, reconstructions: Mapping[str, torch.Tensor]) -> Markdown:
    """How far apart two decoders' reconstructions of the same faces are, against how far each is from the faces:
    this run's answer to the lecture's "pretty much the same"."""
    (first, a), (second, b) = list(reconstructions.items())[:2]
    between = float((a - b).abs().mean())
    misses = {name: float((images - originals).abs().mean()) for name, images in ((first, a), (second, b))}
    alike = between < 0.5 * min(misses.values())
    reading = ("they differ much less than either differs from the faces: alike, as the lecture found" if alike else
               "they differ about as much as they miss the faces: not the same faces, unlike the lecture's")
    return Markdown(f"**Here:** the {first} and {second} reconstructions of these {len(originals)} faces differ by "
                    f"{between:.3f} per pixel on average (pixels in [0, 1]); from the originals the {first} ones are "
                    f"{misses[first]:.3f} away, the {second} ones {misses[second]:.3f}: {reading}.")


def latent_facts(stats: Mapping[str, Any], num_images: int) -> dict[str, Any]:
    """Active units and where the KL sits, from :func:`helper_latent.latent_statistics`."""
    active = stats["active_mask"]
    kl = stats["kl_per_dim"].double()
    return {"active_units": int(active.sum()), "latent_dim": len(active), "images": num_images,
            "total_kl": float(kl.sum()), "inactive_kl": float(kl[~active].sum()),
            "inactive": [int(j) for j in torch.nonzero(~active).flatten()]}


def latent_findings(facts: Mapping[str, Any]) -> Markdown:
    """Active units of this run, and what that means for the histograms and the exercises."""
    active, total = facts["active_units"], facts["latent_dim"]
    lines = [(f"**This run:** {active} of {total} dimensions are active over {facts['images']:,} encoded images; "
             f"total KL {facts['total_kl']:.1f} nats per image.")]
    if active == total:
        lines.append("No dimension has collapsed to the prior, so no histogram above is a prior-only copy: every "
                     "one carries some information. (Collapsed dimensions tend to appear with longer training or a "
                     "smaller reconstruction weight.)")
    else:
        shown = ", ".join(map(str, facts["inactive"][:12])) + (" ..." if len(facts["inactive"]) > 12 else "")
        lines.append(f"{total - active} inactive: z[{shown}]. Together they cost {facts['inactive_kl']:.2f} nats "
                     f"of the {facts['total_kl']:.2f}.")
    return Markdown("\n\n".join(lines))


def average_faces_findings(pixel_means: AttributeMeans, attributes: Sequence[str]) -> Markdown:
    """How the average faces with and without each attribute differ in this run: the mean absolute difference, the
    share of pixels that differ visibly (by at least :data:`VISIBLE`) and the band of rows where the difference is
    largest; visible or not by that stated measure."""
    parts = []
    for name in attributes:
        i = attribute_index(name)
        difference = (pixel_means.with_attribute[i] - pixel_means.without_attribute[i]).abs().mean(0)  # (H, W)
        share = float((difference >= VISIBLE).float().mean())
        rows = difference.mean(1)
        band = max(len(rows) // 8, 1)
        top = int(torch.argmax(rows.unfold(0, band, 1).mean(1)))
        kind = ("**differ visibly**" if share >= VISIBLE_SHARE else "are nearly identical")
        parts.append(f"{name}: the averages {kind}: {share:.1%} of the pixels differ by {VISIBLE} or more (mean "
                     f"difference {float(difference.mean()):.3f}, largest {float(difference.max()):.2f}), most in "
                     f"rows {top}-{top + band - 1} of {len(rows)} from the top")
    faces = int(pixel_means.count_with[0] + pixel_means.count_without[0])
    return Markdown(f"**These averages** ({faces:,} faces; pixels in [0, 1]; a difference of {VISIBLE} is about "
                    f"13 of 255 grey levels; an attribute counts as visible when {VISIBLE_SHARE:.0%} of the pixels "
                    "differ that much):\n\n"
                    + "\n".join(f"* {part}." for part in parts))


def decoded_averages_findings(pixel_averages: torch.Tensor, decoded_averages: torch.Tensor) -> Markdown:
    """Decoded average codes against pixel averages of the same faces, measured: edge strength (sharpness) and the
    checkerboard score (the grid of stride-2 layers), each (N, 3, H, W) in [0, 1]."""
    pixel_edges, decoded_edges = (float(_edge_strength(images).mean()) for images in (pixel_averages, decoded_averages))
    if decoded_edges > SHARPER * pixel_edges:
        sharper = "the decoded averages are **sharper** than the pixel averages"
    elif pixel_edges > SHARPER * decoded_edges:
        sharper = "the decoded averages are **blurrier** than the pixel averages"
    else:
        sharper = f"the decoded averages are **no sharper** than the pixel averages (within {SHARPER - 1:.0%})"
    real, decoded = checkerboard_score(pixel_averages), checkerboard_score(decoded_averages)
    grid = (f"**a grid** shows in the decoded ones ({decoded / real:,.1f}x the pixel averages' score)"
            if decoded > CHECKERBOARD_RATIO * real else
            f"no grid beyond the pixel averages' (within {CHECKERBOARD_RATIO}x)")
    return Markdown(f"**Measured on these {len(pixel_averages)} averages:** edge strength (mean difference between "
                    f"neighbouring pixels at half resolution, where the grid cancels out) {decoded_edges:.4f} decoded "
                    f"vs {pixel_edges:.4f} in pixel space: {sharper}. "
                    f"Checkerboard score {decoded:,.2f} decoded vs {real:,.2f} in pixel space: {grid}.")


def entanglement_findings(latent_means: AttributeMeans, attribute: str) -> Markdown:
    """The example of entanglement, taken from this run's own table: the direction most aligned with ``attribute``."""
    (other, cosine), *_ = latent_means.aligned_attributes(attribute, k=1)
    with_other = float(latent_means.count_with[attribute_index(other)])
    way = "the same way as" if cosine > 0 else "the opposite way to"
    return Markdown(f"**In this run** the {attribute} direction is most aligned with {other}'s: it points {way} "
                    f"it (cosine {cosine:+.2f}; {with_other:,.0f} of the averaged faces have {other}). Moving a face "
                    f"along {attribute} is likely to {'add' if cosine > 0 else 'remove'} some {other} too.")


def code_length_facts(z_mean: torch.Tensor, z: torch.Tensor | None = None, seed: int = 0) -> dict[str, Any]:
    """Lengths of the posterior means (and of the sampled codes ``z``) against as many codes drawn from N(0, I), the
    codes the decoder gets when it samples: mean, median and range, and the shares of prior draws longer than the
    median face's mean and than the longest."""
    means = z_mean.detach().float().norm(dim=1)
    prior = torch.randn(max(len(means), 1000), z_mean.shape[1], generator=torch.Generator().manual_seed(seed))
    prior = prior.norm(dim=1)
    median = float(means.median())
    return {"images": len(means), "latent_dim": z_mean.shape[1], "mean_length": float(means.mean()),
            "median_length": median, "min_length": float(means.min()), "max_length": float(means.max()),
            "sampled_length": float(z.detach().float().norm(dim=1).mean()) if z is not None else None,
            "prior_length": float(prior.mean()), "prior_beyond_median": float((prior > median).float().mean()),
            "prior_beyond_longest": float((prior > means.max()).float().mean())}


def code_length_findings(facts: Mapping[str, Any]) -> Markdown:
    """What :func:`code_length_facts` measured, and what it means for decoding codes drawn from N(0, I)."""
    dim, mean, prior = facts["latent_dim"], facts["mean_length"], facts["prior_length"]
    sampled = facts["sampled_length"]
    lines = [(f"**Code lengths in this run:** the posterior means of {facts['images']:,} faces have length "
              f"{mean:.1f} on average (median {facts['median_length']:.1f}, range {facts['min_length']:.1f}-"
              f"{facts['max_length']:.1f}); "
              + (f"the sampled codes z = mu + sigma * eps, which the decoder trained on, {sampled:.1f}; "
                 if sampled is not None else "")
              + f"codes drawn from N(0, I) {prior:.1f} (sqrt({dim}) = {dim ** 0.5:.1f}).")]
    beyond = f"{facts['prior_beyond_median']:.0%} of the prior's draws are longer than the median face's mean"
    if mean < (1 - SAME_LENGTH) * prior:
        noise = (" The decoder met codes that long only as a face's mean plus the encoder's noise (the sampled codes "
                 "above)." if sampled is not None else "")
        lines.append(f"The faces' means sit closer to the origin than the prior's draws: {beyond}. Reconstructions "
                     "decode the means; a sample from N(0, I) lies further out than most of them." + noise
                     + " Do part 2's samples look less like faces than its reconstructions?")
    elif mean > (1 + SAME_LENGTH) * prior:
        lines.append(f"The faces' means reach further out than the prior's draws ({beyond}): a sample from N(0, I) "
                     "lies nearer the origin than most faces' codes. Do part 2's samples look like average faces?")
    else:
        lines.append(f"The faces' means are about as long as the prior's draws (within {SAME_LENGTH:.0%}; {beyond}): "
                     "by length alone, a sample from N(0, I) looks like a face's code to the decoder.")
    return Markdown("\n\n".join(lines))


def probe_findings(probe: Sequence[Mapping[str, Any]], fit_images: int, test_images: int) -> Markdown:
    """The probe of this run in numbers: how many attributes it reads above chance, its best and worst, and the
    attributes the lecture's recap names; ``fit_images``/``test_images``: the codes it was fitted and scored on."""
    scored = sorted(((r["attribute"], r["balanced_accuracy"]) for r in probe if r["probeable"]),
                    key=lambda item: -item[1])
    if not scored:
        return Markdown("**The probe:** no attribute has both classes among the fitting codes, so none was probed.")
    above = sum(score > 0.6 for _, score in scored)
    by_name = dict(scored)
    named = ", ".join(f"{name} {by_name[name]:.2f}" for name in PROBE_SHOWN if name in by_name)
    best = ", ".join(f"{name} {score:.2f}" for name, score in scored[:3])
    worst = ", ".join(f"{name} {score:.2f}" for name, score in scored[-3:])
    return Markdown(f"**This run's probe** (fitted on {fit_images:,} codes, scored on {test_images:,} others): "
                    f"balanced accuracy above 0.6 for {above} of {len(scored)} attributes; highest {best}; lowest "
                    f"{worst}" + (f"; the attributes parts 3 and 4 name: {named}" if named else "")
                    + " (0.5 is chance).")


def strongest_dimensions_findings(z_mean: torch.Tensor, k: int = 5) -> Markdown:
    """The ``k`` dimensions whose posterior means vary most (the explorer's), with their spread."""
    std = z_mean.detach().float().std(dim=0)
    values, indices = torch.topk(std, min(k, len(std)))
    listed = ", ".join(f"z[{j}] ({v:.2f})" for v, j in zip(values.tolist(), indices.tolist(), strict=True))
    return Markdown(f"**Strongest dimensions** (standard deviation of the posterior mean across faces): {listed}. "
                    "In part 3's summary plot these have the tallest black ticks (std of the means mu).")


def _knob_run(results: Sequence[Mapping[str, Any]], knob: str, value: Any) -> Mapping[str, Any] | None:
    """The measured run of ``results`` that has ``knob`` at ``value`` (the baseline counts), or ``None``."""
    return next((r for r in knob_runs(results, knob) if r[knob] == value and "diverged" not in r), None)


def _ordered(values: Sequence[float]) -> str:
    """'rises', 'falls' or 'goes up and down' for a sequence of numbers."""
    steps = [b - a for a, b in pairwise(values)]
    return "rises" if all(d > 0 for d in steps) else "falls" if all(d < 0 for d in steps) else "goes up and down"


def knob_findings(results: Sequence[Mapping[str, Any]], train_images: int) -> Markdown:
    """What this sweep's runs show, one bullet per knob that was swept, every number taken from ``results`` (the
    runs' metrics; ``train_images``: images per epoch). Only what one seed and short runs can say."""
    base = next((r for r in results if r["knob"] == "baseline" and "diverged" not in r), None)
    if base is None:
        return Markdown("The run with the lecture's settings is missing or diverged: nothing to compare with.")
    epochs = base["epochs"]
    lines = [(f"Every run: {epochs} epoch(s) over {train_images:,} images, {lecture_share(epochs * train_images)}; "
              "one seed: differences of a few percent may be noise.")]
    small = _knob_run(results, "latent_dim", min(KNOB_VALUES["latent_dim"]))
    if small is not None and small is not base:
        lines.append(f"**Latent size**: with {small['latent_dim']} dimensions the reconstruction error is "
                     f"{small['test_reconstruction'] / base['test_reconstruction']:.1f} times the 200-dimensional "
                     f"model's ({small['test_reconstruction']:.0f} vs {base['test_reconstruction']:.0f}), PSNR "
                     f"{small['psnr']:.1f} vs {base['psnr']:.1f} dB, probe {small['probe_balanced_accuracy']:.2f} vs "
                     f"{base['probe_balanced_accuracy']:.2f} (0.5 is chance).")
    weights = [r for r in knob_runs(results, "reconstruction_term_weight") if "diverged" not in r]
    if len(weights) > 1:
        said = " / ".join(f"{r['reconstruction_term_weight']:g}" for r in weights)
        rec, kl = [r["test_reconstruction"] for r in weights], [r["test_kl"] for r in weights]
        lines.append(f"**Reconstruction weight** {said}: reconstruction {' / '.join(f'{v:.0f}' for v in rec)} "
                     f"({_ordered(rec)}), KL {' / '.join(f'{v:.0f}' for v in kl)} ({_ordered(kl)}); theory expects "
                     "the reconstruction to fall and the KL to rise as the weight grows.")
        distances = [r.get("fd_baseline_encoder") for r in weights]
        if None not in distances:
            lines.append(f"The samples' Fréchet distance {_ordered(distances)} with the weight "
                         f"({' / '.join(f'{v:.1f}' for v in distances)}): {base['num_samples']} samples, one seed, "
                         "measured in the baseline encoder's space (which favours the baseline), so read it as a "
                         "hint, not a ranking.")
    nearest = _knob_run(results, "decoder", "nearest")
    if nearest is not None:
        lines.append(f"**Decoder**: SSIM {nearest['ssim']:.3f} with nearest-neighbour upsampling vs {base['ssim']:.3f}"
                     f" with transposed convolutions ({nearest['ssim'] - base['ssim']:+.3f}); test loss "
                     f"{nearest['test_loss']:.0f} vs {base['test_loss']:.0f}; checkerboard of samples "
                     f"{nearest['checkerboard']:.2f} vs {base['checkerboard']:.2f} (1 = none).")
    rates = [r for r in knob_runs(results, "learning_rate") if r is not base]
    for run in rates:
        rate = f"**Learning rate {run['learning_rate']:g}**"
        if "diverged" in run:
            lines.append(f"{rate} diverged: {run['diverged']}")
        else:
            lines.append(f"{rate}: test loss {run['test_loss']:.0f}, {run['test_loss'] / base['test_loss']:.2f} times "
                         f"the lecture rate's {base['test_loss']:.0f} after the same {epochs} epoch(s).")
    measured = [r for r in results if "diverged" not in r]
    if "probe_fit_images" in base:
        lines.append(f"**Probe**: every run's probe is fitted on {base['probe_fit_images']:,} validation codes and "
                     f"scored on {base['probe_test_images']:,} test codes; part 3 fits on half of the training codes "
                     "it encodes and scores on the other half, so compare these probes with each other, not with "
                     "part 3's.")
    partial = [f"{r['name']} ({r['active_units']} of {r['latent_dim']})" for r in measured
               if r["active_units"] < r["latent_dim"]]
    lines.append(f"**Active units**: some dimensions collapsed to the prior in {', '.join(partial)}." if partial else
                 f"**Active units**: every run kept all its latent dimensions active: no collapse is seen in runs "
                 f"of {epochs} epoch(s), which says nothing about how many the lecture's 50 epochs keep.")
    return Markdown("\n".join(f"* {line}" for line in lines))
