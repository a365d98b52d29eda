"""The project's one checkpoint format: weights, optimizer, RNG states, log and settings, and their checks."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from celeba_vae.atomic_files import atomic_write
from model import VAE

CHECKPOINT_FORMAT = "celeba-vae/1"
DATA_KEYS = ("kind", "splits", "names", "synthetic", "images")
LEGACY_DATA_KEYS = ("kind", "layout", "images")


def rng_states(device: str | torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy and PyTorch RNG states, as plain types and tensors (``weights_only``-loadable).

    With CUDA: every card's generator (``"cuda"``) and, when ``device`` is a CUDA device, the state of that training
    card (``"cuda_training"``), which is the one a resume restores; with MPS: its generator (``"mps"``).
    """
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
        if device is not None and torch.device(device).type == "cuda":
            states["cuda_training"] = torch.cuda.get_rng_state(_cuda_index(torch.device(device)))
    if torch.backends.mps.is_available():
        states["mps"] = torch.mps.get_rng_state()
    return states


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def restore_rng_states(states: dict[str, Any], device: str | torch.device | None = None) -> None:
    """Undo :func:`rng_states`, wherever the checkpoint's tensors were loaded (the states are CPU byte tensors).

    Of the GPU generators only the training ``device``'s is restored: on CUDA the saved training card's state goes
    to ``device`` (a checkpoint from two GPUs resumes on one, or on another card), on MPS the MPS generator's.
    """
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states["torch"].to("cpu", torch.uint8))
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        index = _cuda_index(device)
        saved = states.get("cuda_training")
        if saved is None and index < len(states.get("cuda", [])):
            saved = states["cuda"][index]
        if saved is not None:
            torch.cuda.set_rng_state(saved.to("cpu", torch.uint8), index)
        elif "cuda" in states:
            print(f"The checkpoint holds no CUDA generator state for cuda:{index} (it was saved on "
                  f"{len(states['cuda'])} card(s)): this card's random draws are not restored, so the resumed run is "
                  "not bit-identical to an uninterrupted one.")
    if device is not None and device.type == "mps" and "mps" in states:
        torch.mps.set_rng_state(states["mps"].to("cpu", torch.uint8))


def _cpu_copy(value: Any) -> Any:
    """``value`` with every tensor in it (nested in dicts, lists, tuples) copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def checkpoint_contents(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    epoch: int = 0,
    log_dict: dict[str, list[float]] | None = None,
    settings: dict[str, Any] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The checkpoint dict :func:`save_checkpoint` writes, as a copy on the CPU that training can go on beside:
    model, optimizer, completed ``epoch``, RNG states (those of the model's device among the GPU generators, see
    :func:`rng_states`), log, settings, the fp16 gradient ``scaler`` (when one is enabled) and the ``run_id`` of the
    training run that wrote it (a new one when none is given)."""
    model = getattr(model, "_orig_mod", model)
    parameter = next(model.parameters(), None)
    return _cpu_copy({
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "rng": rng_states(parameter.device if parameter is not None else None),
        "log": {k: list(v) for k, v in (log_dict or {}).items()},
        "settings": {**(settings or {}), **model.settings()} if isinstance(model, VAE) else dict(settings or {}),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "run_id": run_id or uuid.uuid4().hex,
    })


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, **contents: Any
) -> Path:
    """Atomically save the :func:`checkpoint_contents` of ``model``, ``optimizer`` and the keyword ``contents``
    (``epoch``, ``log_dict``, ``settings``, ``scaler``, ``run_id``)."""
    checkpoint = checkpoint_contents(model, optimizer, **contents)
    return atomic_write(path, lambda f: torch.save(checkpoint, f))


def save_weights(path: str | Path, model: torch.nn.Module) -> Path:
    """Atomically save the model's plain state dict, the lecture's ``vae_celeba_02.pt`` format."""
    state = getattr(model, "_orig_mod", model).state_dict()
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (never runs code).

    A plain state dict, as the lecture's notebook saves it, is returned wrapped as ``{"model": state_dict}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first or check the path")
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {path} is corrupted or truncated ({type(err).__name__}: {err}); "
            "delete it and train again, or resume from an older copy"
        ) from err
    if not isinstance(loaded, dict):
        raise TypeError(f"checkpoint {path} holds a {type(loaded).__name__}, not a state dict or checkpoint")
    if loaded.get("format") == CHECKPOINT_FORMAT:
        return loaded
    if all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return {"model": loaded, "epoch": None, "settings": {}, "log": {}}
    raise ValueError(f"checkpoint {path} is not a celeba-vae checkpoint nor a plain state dict")


def checkpoint_run_id(path: str | Path) -> str | None:
    """The ``run_id`` of the training run that wrote the checkpoint at ``path`` (kept when a run is resumed), or None
    for checkpoints from before run ids and plain state dicts."""
    return load_checkpoint(path).get("run_id")


def _describe_data(data: dict[str, Any]) -> str:
    kind = {"celeba": "CelebA", "synthetic": "synthetic faces"}.get(data.get("kind"), repr(data.get("kind")))
    splits = data.get("splits")
    details = [f"{data['layout']} layout" if "layout" in data else None,
               "/".join(f"{n:,}" for n in splits.values()) + " train/valid/test images" if splits else None,
               f"file names {data['names']}" if "names" in data else None, data.get("root"),
               f"{data['images']:,} training images" if isinstance(data.get("images"), int) else None]
    return f"{kind} ({', '.join(str(d) for d in details if d is not None)})"


def check_data(checkpoint: dict[str, Any], data: dict[str, Any] | None, source: str | Path = "checkpoint") -> None:
    """Raise a ValueError when the checkpoint was trained on other data than ``data``.

    Data are compared by what they are (:data:`DATA_KEYS`: kind, split sizes, fingerprint of the file names,
    synthetic set, training images), never by where they sit, so the same CelebA at another path or in another
    layout passes. Records from before the fingerprint (holding ``root``) compare kind, layout and training images.
    Checkpoints without a ``"data"`` setting (older ones, plain state dicts) and ``data=None`` always pass.
    """
    saved = checkpoint.get("settings", {}).get("data")
    if data is None or saved is None:
        return
    keys = DATA_KEYS if "names" in saved and "names" in data else LEGACY_DATA_KEYS
    if any(str(saved[k]) != str(data[k]) for k in keys if k in saved and k in data):
        raise ValueError(
            f"{source} was trained on {_describe_data(saved)} but this run uses {_describe_data(data)}: train again "
            "with these data (resume=False), or point data_root at the data the weights were trained on."
        )


def check_settings(
    checkpoint: dict[str, Any],
    model: torch.nn.Module,
    source: str | Path = "checkpoint",
    data: dict[str, Any] | None = None,
) -> None:
    """Raise a ValueError listing how the checkpoint's settings differ from ``model``'s, or its weights' shapes,
    or, given ``data`` (``DatasetChoice.record()``), how its training data differ (:func:`check_data`).
    """
    model = getattr(model, "_orig_mod", model)
    expected = model.settings() if isinstance(model, VAE) else {}
    saved = checkpoint.get("settings", {})
    diffs = [f"checkpoint has {k}={saved[k]!r}, model has {v!r}"
             for k, v in expected.items() if k in saved and saved[k] != v]
    state = model.state_dict()
    weights = checkpoint["model"]
    missing = sorted(set(state) - set(weights))
    unexpected = sorted(set(weights) - set(state))
    if missing:
        diffs.append(f"missing weights {missing[:3]}{'...' if len(missing) > 3 else ''}")
    if unexpected:
        diffs.append(f"unexpected weights {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    diffs += [
        f"{k} has shape {tuple(weights[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
        for k, v in state.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if diffs:
        raise ValueError(f"{source} does not fit this model: " + "; ".join(diffs) + ". Build the model with the "
                         "checkpoint's settings (see load_model) or pick the matching checkpoint.")
    check_data(checkpoint, data, source)

