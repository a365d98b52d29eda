"""Synthetic CelebA-shaped faces for the offline demo and the tests (never a silent stand-in for CelebA).

Each face is a 178x218 RGB JPEG with all 40 CelebA attributes annotated; Smiling, Eyeglasses, Male, hair
colour (Black, Blond, Brown, Gray, Bald), Wearing_Hat, Wearing_Lipstick, Pale_Skin, Bangs and beards are drawn
so that they are visible. Files and annotations follow the real CelebA formats, in any of the layouts that
``helper_data.find_celeba`` reads. The same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image

from celeba_vae.celeba_files import CELEBA_ATTRIBUTE_NAMES, OFFICIAL_SPLIT_SIZES

LAYOUTS = ("torchvision", "flat", "kaggle", "zip", "bare")
HEIGHT, WIDTH = 218, 178
A = {name: i for i, name in enumerate(CELEBA_ATTRIBUTE_NAMES)}
BASE_RATES = {
    "5_o_Clock_Shadow": 0.11, "Arched_Eyebrows": 0.27, "Attractive": 0.51, "Bags_Under_Eyes": 0.2, "Bangs": 0.15,
    "Big_Lips": 0.24, "Big_Nose": 0.23, "Blurry": 0.05, "Bushy_Eyebrows": 0.14, "Chubby": 0.06, "Double_Chin": 0.05,
    "Eyeglasses": 0.12, "High_Cheekbones": 0.45, "Narrow_Eyes": 0.12, "Oval_Face": 0.28, "Pale_Skin": 0.04,
    "Pointy_Nose": 0.28, "Receding_Hairline": 0.08, "Rosy_Cheeks": 0.07, "Smiling": 0.48, "Straight_Hair": 0.21,
    "Wavy_Hair": 0.32, "Wearing_Earrings": 0.19, "Wearing_Hat": 0.05, "Wearing_Necklace": 0.12, "Young": 0.77,
}
HAIR = {"Black_Hair": (25, 20, 18), "Blond_Hair": (225, 190, 110), "Brown_Hair": (110, 65, 35),
        "Gray_Hair": (170, 170, 170), None: (60, 40, 30)}
HAIR_CHOICES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Bald", None)
HAIR_RATES = (0.24, 0.15, 0.2, 0.04, 0.02, 0.35)
NOISE_BLOCK = 64  # faces whose pixel noise one generator draws
CHUNK = 8 * NOISE_BLOCK


def sample_attributes(num_images: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 40) uint8 attributes with CelebA-like frequencies and the obvious correlations."""
    attrs = np.zeros((num_images, 40), dtype=np.uint8)
    for name, rate in BASE_RATES.items():
        attrs[:, A[name]] = rng.random(num_images) < rate
    male = rng.random(num_images) < 0.42
    attrs[:, A["Male"]] = male
    hair = rng.choice(len(HAIR_CHOICES), size=num_images, p=HAIR_RATES)
    hair[(np.array(HAIR_CHOICES, dtype=object)[hair] == "Bald") & ~male] = len(HAIR_CHOICES) - 1
    for k, name in enumerate(HAIR_CHOICES[:-1]):
        attrs[:, A[name]] = hair == k
    bearded = male & (rng.random(num_images) < 0.4)
    attrs[:, A["No_Beard"]] = ~bearded
    for name, rate in (("Goatee", 0.35), ("Mustache", 0.25), ("Sideburns", 0.3), ("5_o_Clock_Shadow", 0.4)):
        attrs[:, A[name]] = bearded & (rng.random(num_images) < rate)
    attrs[:, A["Wearing_Lipstick"]] = ~male & (rng.random(num_images) < 0.8)
    attrs[:, A["Heavy_Makeup"]] = ~male & (rng.random(num_images) < 0.65)
    attrs[:, A["Wearing_Necktie"]] = male & (rng.random(num_images) < 0.15)
    smiling = attrs[:, A["Smiling"]].astype(bool)
    attrs[:, A["Mouth_Slightly_Open"]] = rng.random(num_images) < np.where(smiling, 0.8, 0.2)
    return attrs


def _draw_params(num_images: int, rng: np.random.Generator) -> np.ndarray:
    return np.column_stack([
        rng.uniform(-3, 3, num_images), rng.uniform(-3, 3, num_images), rng.uniform(-3, 3, num_images),
        rng.uniform(0.75, 1.1, num_images), rng.uniform(0.85, 1.1, num_images),
        rng.uniform(40, 230, num_images), rng.uniform(40, 230, num_images), rng.uniform(40, 230, num_images),
    ]).astype(np.float32)


def render_batch(attributes: np.ndarray, params: np.ndarray, base: int, start: int,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """(N, 218, 178, 3) uint8 faces drawn from (N, 40) ``attributes`` and the jitter, tones and colours in ``params``
    with torch operations on the whole batch (on ``device``).

    Each face part is painted as a layer number into one (N, H, W) map, and each face's palette gives the layers their
    colours. Face ``start + k`` gets pixel noise from block ``(start + k) // NOISE_BLOCK`` of seed ``base``, so the
    faces do not depend on how they are batched.
    """
    n = len(attributes)
    has = {name: torch.from_numpy(attributes[:, i].astype(bool)).to(device).view(n, 1, 1) for name, i in A.items()}
    dx, dy, width_jitter, skin_tone, light, bg_r, bg_g, bg_b = (
        torch.from_numpy(np.ascontiguousarray(params[:, k])).to(device).view(n, 1, 1) for k in range(8))
    yy = torch.arange(HEIGHT, dtype=torch.float32, device=device).view(1, HEIGHT, 1)
    xx = torch.arange(WIDTH, dtype=torch.float32, device=device).view(1, 1, WIDTH)
    male = has["Male"]
    cx, cy = 89 + dx, 112 + dy
    face_w = torch.where(male, 41.0, 36.0) + width_jitter
    face_h = 50 + width_jitter / 2
    layers = torch.zeros((n, HEIGHT, WIDTH), dtype=torch.uint8, device=device)  # 0: the background

    def ellipse(ex: torch.Tensor, ey: torch.Tensor, ax: torch.Tensor | float, ay: torch.Tensor | float) -> torch.Tensor:
        return ((xx - ex) / ax) ** 2 + ((yy - ey) / ay) ** 2 < 1

    def paint(mask: torch.Tensor, layer: int) -> None:
        layers.masked_fill_(mask, layer)

    def rgb(values: tuple[float, float, float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).expand(n, 3)

    hair_colour = rgb(HAIR[None])
    for name in ("Gray_Hair", "Brown_Hair", "Blond_Hair", "Black_Hair"):  # the first in CelebA's order wins
        hair_colour = torch.where(has[name].view(n, 1), rgb(HAIR[name]), hair_colour)
    skin = torch.where(has["Pale_Skin"].view(n, 1), rgb((246, 226, 214)), rgb((224, 180, 150)) * skin_tone.view(n, 1))
    lips = torch.where(has["Wearing_Lipstick"].view(n, 1), rgb((200, 30, 50)), rgb((150, 70, 70)))
    palette = torch.stack([rgb((0, 0, 0)), hair_colour, skin, skin * 0.55, rgb((40, 30, 30)), hair_colour * 0.7,
                           rgb((15, 15, 20)), skin * 0.8, lips, rgb((70, 10, 20)), rgb((250, 250, 245)),
                           hair_colour * 0.8, rgb((50, 60, 140))], dim=1)  # (N, 13, 3), in the layers' order
    hair, face_layer, beard, eye, brow, glasses, nose, lip, mouth, teeth, mustache, hat = range(1, 13)
    not_bald = ~has["Bald"]
    paint(ellipse(cx, cy - 6, face_w + 11, face_h + 15) & (yy < torch.where(male, cy - 5, cy + 55)) & not_bald, hair)
    face = ellipse(cx, cy, face_w, face_h)
    paint(face, face_layer)
    paint(face & (yy > cy + 12) & ((male & ~has["No_Beard"]) | has["5_o_Clock_Shadow"]), beard)
    fringe = torch.where(has["Bangs"], 0.45, 0.7) * face_h
    paint(face & (yy < cy - fringe) & not_bald & (has["Bangs"] | male), hair)
    eye_y = cy - 10
    has_glasses = has["Eyeglasses"]
    for side in (-1, 1):
        ex = cx + side * 15
        paint(ellipse(ex, eye_y, 5, 3), eye)
        paint(ellipse(ex, eye_y - 8, 7, 1.6), brow)
        r = torch.sqrt((xx - ex) ** 2 + (yy - eye_y) ** 2)
        paint((r > 8.5) & (r < 12) & has_glasses, glasses)
    paint(((yy - eye_y).abs() < 1.5) & ((xx - cx).abs() < 4) & has_glasses, glasses)
    paint(ellipse(cx, cy + 6, 3.5, 7), nose)
    mouth_y = cy + 25
    smiling = has["Smiling"]
    paint(ellipse(cx, mouth_y - 2, 23, 15) & (yy > mouth_y - 4) & smiling, lip)
    paint(ellipse(cx, mouth_y - 2, 20, 12) & (yy > mouth_y - 3) & smiling, mouth)
    paint(ellipse(cx, mouth_y - 2, 19, 11) & (yy > mouth_y - 3) & (yy < mouth_y + 3) & smiling, teeth)
    paint(((yy - mouth_y).abs() < 2) & ((xx - cx).abs() < 11) & ~smiling, lip)
    paint(((yy - (mouth_y - 6)).abs() < 2) & ((xx - cx).abs() < 12) & has["Mustache"], mustache)
    paint((yy < cy - face_h * 0.55) & ((xx - cx).abs() < face_w + 16) & (yy > cy - face_h - 25) & has["Wearing_Hat"],
          hat)
    img = palette[torch.arange(n, device=device).view(n, 1, 1), layers.long()]  # (N, H, W, 3)
    background = torch.stack([bg_r, bg_g, bg_b], dim=-1) * (0.8 + 0.2 * yy / HEIGHT).unsqueeze(-1)  # (N, H, 1, 3)
    img = torch.where((layers == 0).unsqueeze(-1), background, img)
    noise = torch.empty((n, HEIGHT, WIDTH, 3), dtype=torch.float32)
    for block in range(start // NOISE_BLOCK, -(-(start + n) // NOISE_BLOCK)):
        first, last = max(block * NOISE_BLOCK, start), min((block + 1) * NOISE_BLOCK, start + n)
        generator = torch.Generator().manual_seed(base * 1_000_003 + block)
        drawn = torch.randn((NOISE_BLOCK, HEIGHT, WIDTH, 3), generator=generator)
        noise[first - start:last - start] = drawn[first - block * NOISE_BLOCK:last - block * NOISE_BLOCK]
    pixels = img.mul_(light.unsqueeze(-1)).add_(noise.to(device).mul_(4)).clamp_(0, 255).to(torch.uint8)
    return pixels.cpu().numpy()


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_faces(folder: Path, names: list[str], pixels: np.ndarray) -> None:
    for name, face in zip(names, pixels, strict=True):
        (folder / name).write_bytes(_jpeg(face))


def _pool_size(jobs: int) -> int:
    return max(1, min(os.cpu_count() or 1, jobs))


def render_faces_to_files(folder: Path, names: list[str], attributes: np.ndarray, params: np.ndarray, base: int,
                          device: str | torch.device = "cpu") -> None:
    """Render :data:`CHUNK` faces at a time (:func:`render_batch`) while the JPEGs of the chunk before are encoded and
    written on one thread per CPU (PIL lets go of the GIL while it encodes); at most two chunks are in memory."""
    threads = _pool_size(len(names))
    with ThreadPoolExecutor(threads, thread_name_prefix="synthetic-faces") as pool:
        writing: list = []
        for start in range(0, len(names), CHUNK):
            pixels = render_batch(attributes[start:start + CHUNK], params[start:start + CHUNK], base, start, device)
            for done in writing:
                done.result()
            step = -(-len(pixels) // threads)
            writing = [pool.submit(_write_faces, folder, names[start + i:start + i + step], pixels[i:i + step])
                       for i in range(0, len(pixels), step)]
        for done in writing:
            done.result()


def _partition(num_images: int) -> np.ndarray:
    total = sum(OFFICIAL_SPLIT_SIZES.values())
    n_valid = max(1, round(num_images * OFFICIAL_SPLIT_SIZES["valid"] / total)) if num_images >= 3 else 0
    n_test = max(1, round(num_images * OFFICIAL_SPLIT_SIZES["test"] / total)) if num_images >= 3 else 0
    return np.repeat([0, 1, 2], [num_images - n_valid - n_test, n_valid, n_test]).astype(np.int8)


def _annotations(names: list[str], attributes: np.ndarray, rng: np.random.Generator, csv: bool) -> dict[str, str]:
    """The annotation files' contents in the official (text) or Kaggle (CSV) format."""
    n = len(names)
    signed = np.where(attributes > 0, 1, -1)
    part = _partition(n)
    bbox = np.column_stack([rng.integers(40, 120, n), rng.integers(40, 120, n), rng.integers(150, 300, n),
                            rng.integers(200, 400, n)])
    jitter = rng.integers(-2, 3, (n, 10))
    landmarks = np.array([74, 102, 104, 102, 89, 118, 75, 137, 103, 137]) + jitter
    bbox_names = ["image_id", "x_1", "y_1", "width", "height"]
    mark_names = ["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                  "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y"]
    if csv:
        def table(header: list[str], rows: np.ndarray) -> str:
            return ",".join(header) + "\n" + "".join(
                f"{name},{','.join(map(str, row))}\n" for name, row in zip(names, rows, strict=True))
        return {
            "list_attr_celeba.csv": table(["image_id", *CELEBA_ATTRIBUTE_NAMES], signed),
            "list_eval_partition.csv": table(["image_id", "partition"], part[:, None]),
            "list_bbox_celeba.csv": table(bbox_names, bbox),
            "list_landmarks_align_celeba.csv": table(["image_id", *mark_names], landmarks),
        }

    def rows(values: np.ndarray, width: int) -> str:
        return "".join(f"{name} {' '.join(f'{v:>{width}}' for v in row)}\n"
                       for name, row in zip(names, values, strict=True))
    return {
        "list_attr_celeba.txt": f"{n}\n{' '.join(CELEBA_ATTRIBUTE_NAMES)} \n" + rows(signed, 2),
        "list_eval_partition.txt": rows(part[:, None], 1),
        "identity_CelebA.txt": rows(rng.integers(1, 10178, (n, 1)), 1),
        "list_bbox_celeba.txt": f"{n}\n{' '.join(bbox_names)}\n" + rows(bbox, 4),
        "list_landmarks_align_celeba.txt": f"{n}\n{' '.join(mark_names)}\n" + rows(landmarks, 4),
    }


def write_synthetic_celeba(
    root: str | Path,
    num_images: int = 2000,
    seed: int = 123,
    layout: str = "torchvision",
    file_numbers: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """Write ``num_images`` synthetic faces under ``root`` in a CelebA ``layout``; return ``root``.

    Layouts: ``torchvision`` (root/celeba/img_align_celeba + 5 text files), ``flat`` (no celeba/ level),
    ``kaggle`` (nested image folder + CSV files), ``zip`` (root/celeba/img_align_celeba.zip + text files) and
    ``bare`` (root/img_align_celeba/*.jpg only). The partition follows the official proportions, in file order.
    Faces are drawn a chunk at a time with torch operations (on ``device``: a GPU draws them in a blink; the files
    then differ from the CPU's in a few pixel values) and encoded on one thread per CPU (no process is started, so a
    script calling this needs no ``if __name__ == "__main__":`` guard).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be at least 1")
    if file_numbers is not None and len(file_numbers) != num_images:
        raise ValueError(f"file_numbers has {len(file_numbers)} entries for num_images={num_images}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    attributes = sample_attributes(num_images, rng)
    params = _draw_params(num_images, rng)
    base = int(rng.integers(2**31))
    names = [f"{n:06d}.jpg" for n in (file_numbers or range(1, num_images + 1))]
    text_dir = {"torchvision": root / "celeba", "zip": root / "celeba"}.get(layout, root)
    image_dir = {"torchvision": root / "celeba" / "img_align_celeba", "kaggle": root / "img_align_celeba" /
                 "img_align_celeba"}.get(layout, root / "img_align_celeba")
    staging = Path(tempfile.mkdtemp()) if layout == "zip" else image_dir
    staging.mkdir(parents=True, exist_ok=True)
    text_dir.mkdir(parents=True, exist_ok=True)
    render_faces_to_files(staging, names, attributes, params, base, device)
    from celeba_vae.atomic_files import atomic_write

    if layout == "zip":
        def write_zip(f: IO[bytes]) -> None:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                for name in names:
                    zf.write(staging / name, f"img_align_celeba/{name}")

        atomic_write(text_dir / "img_align_celeba.zip", write_zip)
        shutil.rmtree(staging)
    if layout != "bare":
        for filename, text in _annotations(names, attributes, rng, csv=layout == "kaggle").items():
            atomic_write(text_dir / filename, lambda f, text=text: f.write(text.encode()))
    return root
