"""How much GPU memory a decoded split may take: the room a training step needs, and the placement decision.

:func:`plan_placement` puts a split on the GPU only if it fits in the free memory after
:func:`training_step_bytes` has been set aside for training at the chosen batch size and precision; otherwise
batches come from pinned host memory. Everything here is arithmetic on sizes, so it is tested without a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from celeba_vae.atomic_files import GIB
from model import VAE

IMAGE_SHAPE = (3, 128, 128)
BYTES_PER_VALUE = {"auto": 2, "bf16": 2, "fp16": 2, "tf32": 4, "fp32": 4}
SAFETY_MARGIN_BYTES = GIB
DATA_ON_GPU = ("auto", True, False)
EVALUATION_BATCH_SIZE = 1024


@dataclass(frozen=True)
class Placement:
    """Where a split's images live: ``on_gpu`` (one copy in GPU memory) or host memory; ``message`` says why."""

    on_gpu: bool
    message: str


@functools.cache
def _layer_outputs() -> tuple[int, int, int]:
    """Per image: elements of the tensors the VAE's layers create, the largest of them, and the parameter count.

    The model runs once on the ``meta`` device (shapes only, no memory, no GPU) with a hook on every layer;
    in-place layers (LeakyReLU) and views (Flatten, Reshape, Trim) create no tensor and are not counted.
    """
    model = VAE().to("meta").train()
    sizes: list[int] = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if output is not inputs[0] and output._base is None:
            sizes.append(output[0].numel())

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    model(torch.empty(1, *IMAGE_SHAPE, device="meta"))
    for hook in hooks:
        hook.remove()
    return sum(sizes), max(sizes), sum(p.numel() for p in model.parameters())


def activation_bytes_per_image(precision: str) -> int:
    """GPU bytes one 3x128x128 image takes during a training step of the VAE at ``precision``.

    * the layers' outputs, which autograd keeps for the backward pass: 1.42 M values, 2 bytes each under
      bf16/fp16 autocast and 4 in fp32/tf32 (2.8 or 5.7 MB); ``"auto"`` is 16-bit autocast on CUDA (bf16, or
      fp16 where the card has no native bf16: see ``celeba_vae.precision.choose_precision``);
    * the float32 tensors of the loss: the input batch, ``decoded.float()`` and the squared error (0.59 MB);
    * the gradients in flight during backward: the largest layer output's twice, in float32 (1.1 MB).

    That is 4.5 MB per image in bf16 and 7.4 MB in fp32.
    """
    if precision not in BYTES_PER_VALUE:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(BYTES_PER_VALUE)}")
    total, largest, _ = _layer_outputs()
    image = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    return total * BYTES_PER_VALUE[precision] + 3 * image * 4 + 2 * largest * 4


def training_step_bytes(batch_size: int, precision: str) -> int:
    """GPU bytes to keep free for training at ``batch_size`` and ``precision``.

    Activations (:func:`activation_bytes_per_image`) times the batch, plus the model's weights, gradients and
    Adam's two moments in float32 (and the bf16/fp16 weight copies autocast caches), plus
    ``SAFETY_MARGIN_BYTES`` (1 GiB) for cuDNN/cuBLAS workspaces, allocator fragmentation and compiled kernels.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    params = _layer_outputs()[2]
    state = params * (4 + 4 + 8 + (2 if BYTES_PER_VALUE[precision] == 2 else 0))
    return batch_size * activation_bytes_per_image(precision) + state + SAFETY_MARGIN_BYTES


def evaluation_batch_size(free_bytes: int | None, batch_size: int, largest: int = EVALUATION_BATCH_SIZE) -> int:
    """The batch size to evaluate a GPU-resident split at: up to ``largest`` images where half of ``free_bytes``
    holds their fp32 forward pass without gradients (the float batch, two layer outputs of the largest size, the
    reconstruction and its squared error: 1.7 MB an image), never fewer than ``batch_size``; ``free_bytes`` None
    (not CUDA: nothing to measure) allows ``largest``."""
    _, largest_layer, _ = _layer_outputs()
    image = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    per_image = (2 * largest_layer + 3 * image) * 4
    room = largest if free_bytes is None else free_bytes // 2 // per_image
    return max(batch_size, min(largest, room))


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def plan_placement(
    split_bytes: int,
    free_bytes: int | None,
    batch_size: int,
    precision: str,
    data_on_gpu: bool | str = "auto",
    *,
    split: str = "split",
    device_type: str = "cuda",
) -> Placement:
    """Decide whether a split of ``split_bytes`` goes to the GPU, given ``free_bytes`` of free GPU memory.

    ``data_on_gpu="auto"`` puts it there only if it fits after :func:`training_step_bytes`; ``True`` insists
    (an error when it does not fit, or when ``device_type`` is not CUDA); ``False`` keeps it in host memory.
    """
    if data_on_gpu not in DATA_ON_GPU or not isinstance(data_on_gpu, (bool, str)):
        raise ValueError(f"data_on_gpu={data_on_gpu!r} is not one of 'auto', True, False")
    what = f"{split} split ({_gib(split_bytes)})"
    if device_type != "cuda":
        if data_on_gpu is True:
            raise ValueError(f"data_on_gpu=True needs a CUDA device, but the device is {device_type!r}: the "
                             f"{what} can only be streamed from host memory there; use data_on_gpu='auto' or False")
        return Placement(False, f"{what}: read from host memory (device is {device_type}, not CUDA)")
    if free_bytes is None:
        raise ValueError("free_bytes is needed to place a split on a CUDA device")
    room = training_step_bytes(batch_size, precision)
    fits = split_bytes <= free_bytes - room
    sizes = (f"{what}, {_gib(free_bytes)} free on the GPU, {_gib(room)} kept for training "
             f"(batch {batch_size}, {precision})")
    if data_on_gpu is True and not fits:
        raise ValueError(f"data_on_gpu=True, but the {sizes} leave only {_gib(max(free_bytes - room, 0))}: it does "
                         "not fit. Use data_on_gpu='auto' or False (batches then come from pinned host memory, "
                         "prefetched), or a smaller batch_size.")
    on_gpu = fits and data_on_gpu is not False
    if on_gpu:
        decision = "on the GPU"
    elif data_on_gpu is False:
        decision = "in pinned host memory (data_on_gpu=False)"
    else:
        decision = "in pinned host memory, prefetched (does not fit)"
    return Placement(on_gpu, f"{sizes} -> {decision}")


def free_gpu_bytes(device: torch.device) -> int:
    """Free memory on CUDA ``device``: the driver's free figure plus what PyTorch's allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
