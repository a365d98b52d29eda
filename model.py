"""The lecture's convolutional VAE for 128x128 CelebA faces, defined once for the whole project."""

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


def _block(out_channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.1, inplace=True), nn.Dropout2d(0.25)]


def _encoder() -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in [(3, 32), (32, 64), (64, 64), (64, 64)]:
        layers += [nn.Conv2d(c_in, c_out, stride=2, kernel_size=3, bias=False, padding=1), *_block(c_out)]
    return nn.Sequential(*layers, nn.Flatten())


def _decoder(latent_dim: int, kind: str) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(latent_dim, 4096), Reshape(-1, 64, 8, 8)]
    channels = [(64, 64), (64, 64), (64, 32), (32, 3)]
    for i, (c_in, c_out) in enumerate(channels):
        if kind == "transpose":
            layers.append(nn.ConvTranspose2d(c_in, c_out, stride=2, kernel_size=3, padding=0 if i == 0 else 1))
        else:
            layers += [nn.UpsamplingNearest2d(scale_factor=2),
                       nn.Conv2d(c_in, c_out, stride=1, kernel_size=3, padding=1)]
        if i < len(channels) - 1:
            layers += _block(c_out)
    if kind == "transpose":
        layers.append(Trim())
    return nn.Sequential(*layers, nn.Sigmoid())


class VAE(nn.Module):
    """Convolutional VAE: 3x128x128 image -> ``latent_dim`` Gaussian -> 3x128x128 image in [0, 1].

    ``decoder="transpose"`` is the lecture's main model (transposed convolutions);
    ``decoder="nearest"`` replaces each by nearest-neighbour upsampling + a 3x3 convolution.
    Attribute names and ``nn.Sequential`` indices match the lecture, so its state dicts load strictly.
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
        self.decoder = _decoder(latent_dim, decoder)

    def settings(self) -> dict[str, object]:
        """What is needed to rebuild this architecture (stored in checkpoints)."""
        return {"latent_dim": self.latent_dim, "decoder": self.decoder_kind}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(z_mean, z_log_var)`` of the approximate posterior."""
        h = self.encoder(x)
        return self.z_mean(h), self.z_log_var(h)

    def encoding_fn(self, x: torch.Tensor) -> torch.Tensor:
        """Encode and sample a latent code (the lecture's ``encoding_fn``)."""
        z_mean, z_log_var = self.encode(x)
        return self.reparameterize(z_mean, z_log_var)

    def reparameterize(self, z_mu: torch.Tensor, z_log_var: torch.Tensor) -> torch.Tensor:
        """Sample ``z = mu + eps * sigma`` on whatever device ``z_mu`` lives."""
        eps = torch.randn_like(z_mu)
        return z_mu + eps * torch.exp(z_log_var / 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z_mean, z_log_var = self.encode(x)
        encoded = self.reparameterize(z_mean, z_log_var)
        decoded = self.decoder(encoded)
        return encoded, z_mean, z_log_var, decoded
