"""f-AnoGAN's ResNet generator, critic and encoder (Schlegl et al. 2019, reference `tSchlegl/f-AnoGAN`
`wgangp_64x64.py` and `z_encoding_izif.py`, after the WGAN-GP ResNet of Gulrajani et al. 2017).

Channels at each resolution as the reference has them at 64x64 (`DIM` x 1, 2, 4, 8, 8 from 64 down to
4): width * min(2**level, 8) at image_size / 2**level, so every image size ends at a width*8 x 4 x 4
map. 64x64 gets the reference's four residual blocks, 32x32 one fewer, 128x128 one more.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from fned_lightning.errors import check_halved_to_4x4


def level_widths(image_size: int, width: int) -> list[int]:
    """Channels at image_size / 2**level, from the full resolution down to 4x4."""
    return [width * min(2**level, 8) for level in range(int(math.log2(image_size // 4)) + 1)]


def layer_norm(channels: int) -> nn.Module:
    """The reference critic's Layernorm: statistics over (C, H, W) of each image, a scale and offset per channel."""
    return nn.GroupNorm(1, channels)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: norm, ReLU, 3x3 conv, norm, ReLU, 3x3 conv, plus a 1x1-conv
    shortcut. "up" doubles the size (nearest neighbour) before the first conv and the shortcut's;
    "down" halves it (2x2 mean) after the second conv and before the shortcut's."""

    def __init__(self, in_channels: int, out_channels: int, resample: str, norm=nn.BatchNorm2d):
        super().__init__()
        if resample not in ("up", "down"):
            raise ValueError(f"resample must be 'up' or 'down', got {resample!r}")
        self.resample = resample
        middle = out_channels if resample == "up" else in_channels
        self.norm1, self.conv1 = norm(in_channels), nn.Conv2d(in_channels, middle, 3, padding=1, bias=False)
        self.norm2, self.conv2 = norm(middle), nn.Conv2d(middle, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(x))
        if self.resample == "up":
            x, h = F.interpolate(x, scale_factor=2.0), F.interpolate(h, scale_factor=2.0)
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        if self.resample == "down":
            x, h = F.avg_pool2d(x, 2), F.avg_pool2d(h, 2)
        return self.shortcut(x) + h


class ResNetGenerator(nn.Module):
    """z (N x latent) -> image: linear to width*8 x 4 x 4, residual up-blocks (BatchNorm), BatchNorm,
    ReLU, 3x3 conv, Tanh."""

    def __init__(self, image_size: int = 64, channels: int = 1, width: int = 64, latent: int = 128):
        super().__init__()
        check_halved_to_4x4(image_size, type(self).__name__)
        widths = level_widths(image_size, width)
        self.input = nn.Linear(latent, widths[-1] * 16)
        self.blocks = nn.Sequential(
            *(ResidualBlock(widths[i + 1], widths[i], "up") for i in reversed(range(len(widths) - 1)))
        )
        self.output = nn.Sequential(
            nn.BatchNorm2d(widths[0]), nn.ReLU(), nn.Conv2d(widths[0], channels, 3, padding=1), nn.Tanh()
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.input(z.flatten(1)).unflatten(1, (-1, 4, 4))
        return self.output(self.blocks(h))


class ResNetEncoder(nn.Module):
    """image -> `out_features`: 3x3 conv, residual down-blocks, flatten (f(x), width*8*16 values), linear.
    The critic normalises with LayerNorm (the gradient penalty is per image: no batch coupling), the
    izi_f encoder with BatchNorm."""

    def __init__(
        self, image_size: int = 64, channels: int = 1, width: int = 64, out_features: int = 128, norm: str = "batch"
    ):
        super().__init__()
        check_halved_to_4x4(image_size, type(self).__name__)
        norms = {"batch": nn.BatchNorm2d, "layer": layer_norm}
        if norm not in norms:
            raise ValueError(f"norm must be one of {', '.join(norms)}, got {norm!r}")
        widths = level_widths(image_size, width)
        self.input = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.blocks = nn.Sequential(
            *(ResidualBlock(widths[i], widths[i + 1], "down", norms[norm]) for i in range(len(widths) - 1))
        )
        self.output = nn.Linear(widths[-1] * 16, out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.input(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x))


class ResNetCritic(ResNetEncoder):
    """The WGAN-GP critic: the encoder layout with LayerNorm and one output. `forward` returns
    (critic values, f(x)), f(x) the flattened output of the last residual block."""

    def __init__(self, image_size: int = 64, channels: int = 1, width: int = 64):
        super().__init__(image_size, channels, width, out_features=1, norm="layer")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.output(features).flatten(), features
