"""Skip-GANomaly's generator (Akcay et al. 2019): pix2pix's U-Net, conv 4x4 stride 2 down to 1x1,
every encoder level concatenated onto the decoder level of the same size."""

import math

import torch
from torch import nn

from fned_lightning.errors import check_image_size
from fned_lightning.networks.dcgan import dcgan_init
from fned_lightning.networks.layers import FoldConvTranspose2d, WholeImageConv2d, WholeImageConvTranspose2d


class UNetGenerator(nn.Module):
    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 64):
        super().__init__()
        check_image_size(image_size, f"{type(self).__name__} image_size")
        depth = int(math.log2(image_size))  # down to 1x1
        chans = [min(width * 2**level, width * 8) for level in range(depth)]
        self.down = nn.ModuleList([nn.Conv2d(channels, chans[0], 4, 2, 1, bias=False)])
        for level in range(1, depth):
            innermost = level == depth - 1
            conv = WholeImageConv2d if innermost else nn.Conv2d  # 2x2 -> 1x1: a matrix product
            self.down.append(
                nn.Sequential(
                    nn.LeakyReLU(0.2),
                    conv(chans[level - 1], chans[level], 4, 2, 1, bias=False),
                    nn.Identity() if innermost else nn.BatchNorm2d(chans[level]),
                )
            )
        # up[k] undoes down[k]; the innermost reads only the bottleneck, the others concat(skip, below).
        self.up = nn.ModuleList(
            [nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(chans[0] * 2, channels, 4, 2, 1), nn.Tanh())]
        )
        for level in range(1, depth):
            innermost = level == depth - 1
            in_ch = chans[level] if innermost else chans[level] * 2
            # the same layers, computed faster where the input is 1x1 or 2x2 (see networks.layers)
            conv = (
                WholeImageConvTranspose2d
                if innermost
                else FoldConvTranspose2d
                if level == depth - 2
                else nn.ConvTranspose2d
            )
            self.up.append(
                nn.Sequential(
                    nn.ReLU(),
                    conv(in_ch, chans[level - 1], 4, 2, 1, bias=False),
                    nn.BatchNorm2d(chans[level - 1]),
                )
            )
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        h = self.up[-1](skips[-1])
        for level in range(len(self.up) - 2, -1, -1):
            h = self.up[level](torch.cat([skips[level], h], dim=1))
        return h
