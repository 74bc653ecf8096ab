"""The fully-nested encoder-decoder generator (FNED, paper section 1.1).

UNet++ nesting with residual blocks: node X[i][j] = H(concat(X[i][0..j-1], Up(X[i+1][j-1]))),
X[i][0] the shared encoder. Encoder levels 1..4 are z = (z1, z2, z3, z4); decoder branch Dk
climbs from zk to X[0][k], inner branches feeding outer ones through the dense skips, and
x_fake comes from the outermost branch D4 through a 1x1 conv and Tanh.
"""

import torch
from torch import nn

from fned_lightning.errors import InputError

DEPTH = 4  # four decoder branches, so inputs must be multiples of 2**4


class ResidualBlock(nn.Module):
    """H: two 3x3 conv-BN-ReLU with an identity or 1x1-projection shortcut (the paper's "residual structure")."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class FNEDGenerator(nn.Module):
    """x -> x_fake, same shape. `width` is X[0][*]'s channels, doubling per level (UNet++: 32)."""

    def __init__(self, channels: int = 3, width: int = 32):
        super().__init__()
        widths = [width * 2**level for level in range(DEPTH + 1)]
        self.encoder = nn.ModuleList(
            ResidualBlock(channels if level == 0 else widths[level - 1], widths[level]) for level in range(DEPTH + 1)
        )
        self.nodes = nn.ModuleDict(
            {
                f"{i}_{j}": ResidualBlock(j * widths[i] + widths[i + 1], widths[i])
                for j in range(1, DEPTH + 1)
                for i in range(DEPTH + 1 - j)
            }
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.head = nn.Sequential(nn.Conv2d(widths[0], channels, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.shape[-1] % 2**DEPTH or x.shape[-2] % 2**DEPTH):
            raise InputError(
                f"FNED needs image sides that are multiples of {2**DEPTH}, got {tuple(x.shape[-2:])}; "
                f"set data.image_size to one (32, 64, 128, 256)"
            )
        grid: list[list[torch.Tensor]] = []  # grid[i][j] is node X[i][j]
        h = x
        for level, block in enumerate(self.encoder):
            h = block(h if level == 0 else self.pool(h))
            grid.append([h])
        for j in range(1, DEPTH + 1):
            for i in range(DEPTH + 1 - j):
                skips = grid[i][:j] + [self.up(grid[i + 1][j - 1])]
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat(skips, dim=1)))
        return self.head(grid[0][DEPTH])
