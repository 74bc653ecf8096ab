"""The DCGAN discriminator, split into a feature extractor f(x) and a classifier head."""

import torch
from torch import nn


def dcgan_init(module: nn.Module) -> None:
    """DCGAN weight init (Radford et al.): N(0, 0.02) convs, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANDiscriminator(nn.Module):
    """Conv 4x4 stride 2 + BatchNorm + LeakyReLU(0.2) down to 4x4, then a 4x4 conv to one logit.

    `forward` returns (logits, f(x)); the sigmoid lives in BCE-with-logits for stability.
    """

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 64):
        super().__init__()
        if image_size < 8 or image_size % 16:
            raise ValueError(f"DCGANDiscriminator needs an image_size that is a multiple of 16, got {image_size}")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        size, ch = image_size // 2, width
        while size > 4:
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, inplace=True)]
            size, ch = size // 2, ch * 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(ch, 1, 4, 1, 0, bias=False)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.classifier(features).flatten(), features.flatten(1)
