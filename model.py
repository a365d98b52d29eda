"""The lecture's convolutional VAE for 128x128 CelebA faces, defined once for the whole project.

The layers are written out one by one as the lecture writes them, so the ``nn.Sequential`` indices (and so the
state-dict keys) are the lecture's and its saved weights load strictly.
"""

from __future__ import annotations

import torch
from torch import nn

LATENT_DIM = 200
DECODERS = ("transpose", "nearest")


class Reshape(nn.Module):
    """Reshape a batch to ``shape`` (the lecture's helper layer)."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.shape)


class Trim(nn.Module):
    """Cut the transposed-conv decoder's 129x129 output to 128x128."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :128, :128]


def _encoder() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 32, stride=2, kernel_size=3, bias=False, padding=1),   # 128 -> 64
        nn.BatchNorm2d(32),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.Conv2d(32, 64, stride=2, kernel_size=3, bias=False, padding=1),  # 64 -> 32
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.Conv2d(64, 64, stride=2, kernel_size=3, bias=False, padding=1),  # 32 -> 16
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.Conv2d(64, 64, stride=2, kernel_size=3, bias=False, padding=1),  # 16 -> 8
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.Flatten(),  # 64 * 8 * 8 = 4096
    )


def _transpose_decoder(latent_dim: int) -> nn.Sequential:
    """The lecture's decoder: four stride-2 transposed convolutions, 8 -> 17 -> 33 -> 65 -> 129, trimmed to 128."""
    return nn.Sequential(
        nn.Linear(latent_dim, 4096),
        Reshape(-1, 64, 8, 8),
        nn.ConvTranspose2d(64, 64, stride=2, kernel_size=3, padding=0),  # 8 -> 17
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.ConvTranspose2d(64, 64, stride=2, kernel_size=3, padding=1),  # 17 -> 33
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.ConvTranspose2d(64, 32, stride=2, kernel_size=3, padding=1),  # 33 -> 65
        nn.BatchNorm2d(32),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.ConvTranspose2d(32, 3, stride=2, kernel_size=3, padding=1),  # 65 -> 129
        Trim(),  # 129 -> 128
        nn.Sigmoid(),
    )


def _nearest_decoder(latent_dim: int) -> nn.Sequential:
    """The lecture's variant: each transposed convolution becomes nearest-neighbour upsampling + a 3x3 convolution."""
    return nn.Sequential(
        nn.Linear(latent_dim, 4096),
        Reshape(-1, 64, 8, 8),
        nn.UpsamplingNearest2d(scale_factor=2),  # 8 -> 16
        nn.Conv2d(64, 64, stride=1, kernel_size=3, padding=1),
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.UpsamplingNearest2d(scale_factor=2),  # 16 -> 32
        nn.Conv2d(64, 64, stride=1, kernel_size=3, padding=1),
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.UpsamplingNearest2d(scale_factor=2),  # 32 -> 64
        nn.Conv2d(64, 32, stride=1, kernel_size=3, padding=1),
        nn.BatchNorm2d(32),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout2d(0.25),
        nn.UpsamplingNearest2d(scale_factor=2),  # 64 -> 128
        nn.Conv2d(32, 3, stride=1, kernel_size=3, padding=1),
        nn.Sigmoid(),
    )


class VAE(nn.Module):
    """Convolutional VAE: 3x128x128 image -> ``latent_dim`` Gaussian -> 3x128x128 image in [0, 1].

    ``decoder="transpose"`` is the lecture's main model (transposed convolutions);
    ``decoder="nearest"`` replaces each by nearest-neighbour upsampling + a 3x3 convolution.
    """

    def __init__(self, latent_dim: int = LATENT_DIM, decoder: str = "transpose") -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder={decoder!r} is not supported; choose one of {DECODERS}")
        self.latent_dim = latent_dim
        self.decoder_kind = decoder
        self.encoder = _encoder()
        self.z_mean = nn.Linear(4096, latent_dim)
        self.z_log_var = nn.Linear(4096, latent_dim)
        self.decoder = _transpose_decoder(latent_dim) if decoder == "transpose" else _nearest_decoder(latent_dim)

    def settings(self) -> dict[str, object]:
        """What is needed to rebuild this architecture (stored in checkpoints)."""
        return {"latent_dim": self.latent_dim, "decoder": self.decoder_kind}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(z_mean, z_log_var)`` of the approximate posterior."""
        h = self.encoder(x)
        return self.z_mean(h), self.z_log_var(h)

    def reparameterize(self, z_mu: torch.Tensor, z_log_var: torch.Tensor) -> torch.Tensor:
        """Sample ``z = mu + eps * sigma`` on whatever device ``z_mu`` lives."""
        eps = torch.randn_like(z_mu)
        return z_mu + eps * torch.exp(z_log_var / 2.0)

    def encoding_fn(self, x: torch.Tensor) -> torch.Tensor:
        """Encode and sample a latent code (the lecture's ``encoding_fn``)."""
        return self.reparameterize(*self.encode(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] for latent codes ``z`` of shape (B, latent_dim)."""
        return self.decoder(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoded posterior mean of ``x``: the reconstruction without sampling noise."""
        return self.decode(self.encode(x)[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z_mean, z_log_var = self.encode(x)
        encoded = self.reparameterize(z_mean, z_log_var)
        decoded = self.decode(encoded)
        return encoded, z_mean, z_log_var, decoded
