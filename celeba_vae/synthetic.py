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
YY, XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
CHUNK = 500


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


def _ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((XX - cx) / ax) ** 2 + ((YY - cy) / ay) ** 2 < 1


def _render_one(attrs: np.ndarray, params: np.ndarray, noise_seed: Sequence[int]) -> np.ndarray:
    """Draw one face; ``params`` holds jitter, tones and colours drawn by the caller."""
    has = {name: bool(attrs[i]) for name, i in A.items()}
    dx, dy, width_jitter, skin_tone, light, bg_r, bg_g, bg_b = params
    cx, cy = 89 + dx, 112 + dy
    face_w = (41 if has["Male"] else 36) + width_jitter
    face_h = 50 + width_jitter / 2
    background = np.array([bg_r, bg_g, bg_b], dtype=np.float32)
    img = np.empty((HEIGHT, WIDTH, 3), dtype=np.float32)
    img[:] = background * (0.8 + 0.2 * YY[..., None] / HEIGHT)
    hair_name = next((n for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair") if has[n]), None)
    hair_colour = np.array(HAIR[hair_name], dtype=np.float32)
    if not has["Bald"]:
        long_hair = not has["Male"]
        hair = _ellipse(cx, cy - 6, face_w + 11, face_h + 15)
        hair &= YY < (cy + 55 if long_hair else cy - 5)
        img[hair] = hair_colour
    skin = np.array([224, 180, 150], dtype=np.float32) * skin_tone
    if has["Pale_Skin"]:
        skin = np.array([246, 226, 214], dtype=np.float32)
    face = _ellipse(cx, cy, face_w, face_h)
    img[face] = skin
    if (has["Male"] and not has["No_Beard"]) or has["5_o_Clock_Shadow"]:
        beard = face & (YY > cy + 12)
        img[beard] *= 0.55
    if not has["Bald"] and (has["Bangs"] or has["Male"]):
        img[face & (YY < cy - face_h * (0.45 if has["Bangs"] else 0.7))] = hair_colour
    eye_y = cy - 10
    for side in (-1, 1):
        ex = cx + side * 15
        img[_ellipse(ex, eye_y, 5, 3)] = (40, 30, 30)
        img[_ellipse(ex, eye_y - 8, 7, 1.6)] = hair_colour * 0.7
        if has["Eyeglasses"]:
            r = np.sqrt((XX - ex) ** 2 + (YY - eye_y) ** 2)
            img[(r > 8.5) & (r < 12)] = (15, 15, 20)
    if has["Eyeglasses"]:
        img[(np.abs(YY - eye_y) < 1.5) & (np.abs(XX - cx) < 4)] = (15, 15, 20)
    img[_ellipse(cx, cy + 6, 3.5, 7)] = skin * 0.8
    mouth_y = cy + 25
    lips = np.array((200, 30, 50) if has["Wearing_Lipstick"] else (150, 70, 70), dtype=np.float32)
    if has["Smiling"]:
        img[_ellipse(cx, mouth_y - 2, 23, 15) & (YY > mouth_y - 4)] = lips
        img[_ellipse(cx, mouth_y - 2, 20, 12) & (YY > mouth_y - 3)] = (70, 10, 20)
        img[_ellipse(cx, mouth_y - 2, 19, 11) & (YY > mouth_y - 3) & (YY < mouth_y + 3)] = (250, 250, 245)
    else:
        img[(np.abs(YY - mouth_y) < 2) & (np.abs(XX - cx) < 11)] = lips
    if has["Mustache"]:
        img[(np.abs(YY - (mouth_y - 6)) < 2) & (np.abs(XX - cx) < 12)] = hair_colour * 0.8
    if has["Wearing_Hat"]:
        img[(YY < cy - face_h * 0.55) & (np.abs(XX - cx) < face_w + 16) & (YY > cy - face_h - 25)] = (50, 60, 140)
    noise = np.random.default_rng(list(noise_seed)).normal(0, 4, size=img.shape).astype(np.float32)
    return np.clip(img * light + noise, 0, 255).astype(np.uint8)


def _draw_params(num_images: int, rng: np.random.Generator) -> np.ndarray:
    return np.column_stack([
        rng.uniform(-3, 3, num_images), rng.uniform(-3, 3, num_images), rng.uniform(-3, 3, num_images),
        rng.uniform(0.75, 1.1, num_images), rng.uniform(0.85, 1.1, num_images),
        rng.uniform(40, 230, num_images), rng.uniform(40, 230, num_images), rng.uniform(40, 230, num_images),
    ]).astype(np.float32)


def render_faces(attributes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 218, 178, 3) uint8 faces drawn from (N, 40) attributes; deterministic for ``rng``'s state."""
    params = _draw_params(len(attributes), rng)
    base = int(rng.integers(2**31))
    return np.stack([_render_one(a, p, (base, i)) for i, (a, p) in enumerate(zip(attributes, params, strict=True))])


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_chunk(job: tuple[Path, list[str], np.ndarray, np.ndarray, int, int]) -> None:
    folder, names, attributes, params, base, start = job
    for k, name in enumerate(names):
        (folder / name).write_bytes(_jpeg(_render_one(attributes[k], params[k], (base, start + k))))


def _pool_size(jobs: int) -> int:
    return min(os.cpu_count() or 1, jobs)


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
) -> Path:
    """Write ``num_images`` synthetic faces under ``root`` in a CelebA ``layout``; return ``root``.

    Layouts: ``torchvision`` (root/celeba/img_align_celeba + 5 text files), ``flat`` (no celeba/ level),
    ``kaggle`` (nested image folder + CSV files), ``zip`` (root/celeba/img_align_celeba.zip + text files) and
    ``bare`` (root/img_align_celeba/*.jpg only). The partition follows the official proportions, in file order.
    Faces are drawn and encoded on one thread per CPU (no process is started, so a script calling this needs no
    ``if __name__ == "__main__":`` guard).
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
    chunk = max(1, min(CHUNK, -(-num_images // (os.cpu_count() or 1))))
    jobs = [(staging, names[s:s + chunk], attributes[s:s + chunk], params[s:s + chunk], base, s)
            for s in range(0, num_images, chunk)]
    if _pool_size(len(jobs)) > 1:
        with ThreadPoolExecutor(_pool_size(len(jobs)), thread_name_prefix="synthetic-faces") as pool:
            list(pool.map(_write_chunk, jobs))
    else:
        for job in jobs:
            _write_chunk(job)
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
