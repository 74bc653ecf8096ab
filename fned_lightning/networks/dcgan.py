"""DCGAN building blocks: the encoder / discriminator pyramid and the decoder (Radford et al. 2016)."""

import torch
from torch import nn

from fned_lightning.errors import check_halved_to_4x4
from fned_lightning.networks.layers import WholeImageConv2d, WholeImageConvTranspose2d


def dcgan_init(module: nn.Module) -> None:
    """DCGAN weight init: N(0, 0.02) convs, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANEncoder(nn.Module):
    """Conv 4x4 stride 2 (+ BatchNorm) + LeakyReLU(0.2) down to 4x4 (`features`), then a 4x4 conv to
    `out_channels` x 1 x 1 (`head`)."""

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 64, out_channels: int = 100):
        super().__init__()
        check_halved_to_4x4(image_size, type(self).__name__)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        size, ch = image_size // 2, width
        while size > 4:
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            size, ch = size // 2, ch * 2
        self.features = nn.Sequential(*layers)
        self.head = WholeImageConv2d(ch, out_channels, 4, 1, 0, bias=False)  # 4x4 -> 1x1: a matrix product
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DCGANDiscriminator(DCGANEncoder):
    """The encoder with one output: `forward` returns (logits, f(x) flattened). The sigmoid lives in
    BCE-with-logits for numerical stability."""

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 64):
        super().__init__(image_size, channels, width, out_channels=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features).flatten(), features.flatten(1)


class DCGANLatentDiscriminator(DCGANEncoder):
    """Skip-GANomaly's D (its reference's `BasicDiscriminator`): f(x) is the encoder's whole output, a
    `latent`-d vector from the 4x4 conv (no activation), and a 3x3 conv `latent` -> 1 classifies it.
    On that 1x1 input only the conv's centre tap meets the vector: a matrix product (networks.layers)."""

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 64, latent: int = 100):
        super().__init__(image_size, channels, width, out_channels=latent)
        self.classifier = WholeImageConv2d(latent, 1, 3, 1, 1, bias=False)
        dcgan_init(self.classifier)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.head(self.features(x))
        return self.classifier(features).flatten(), features.flatten(1)


class DCGANDecoder(nn.Module):
    """z (N x latent x 1 x 1) -> image: ConvTranspose 4x4 + BatchNorm + ReLU up from 4x4, Tanh output."""

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 64, latent: int = 100):
        super().__init__()
        check_halved_to_4x4(image_size, type(self).__name__)
        ch = width * image_size // 8  # mirrors the encoder: `width` channels at image_size / 2
        layers: list[nn.Module] = [
            WholeImageConvTranspose2d(latent, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        size = 4
        while size < image_size // 2:
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            size, ch = size * 2, ch // 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
