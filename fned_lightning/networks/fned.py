"""The fully-nested encoder-decoder generator (FNED, paper section 1.1).

UNet++ nesting with residual blocks: node X[i][j] = H(concat(X[i][0..j-1], Up(X[i+1][j-1]))),
X[i][0] the shared encoder. Encoder levels 1..4 are z = (z1, z2, z3, z4); decoder branch Dk
climbs from zk to X[0][k], inner branches feeding outer ones through the dense skips, and
x_fake comes from the outermost branch D4 through a 1x1 conv and Tanh.

`skip_levels=k` cuts the dense skips of the top k levels: there, X[i][DEPTH-i] = H(Up(X[i+1][DEPTH-i-1]))
and the other nodes of the level, which only fed those skips, are not built. With k >= 1 nothing
reaches the output at full resolution without first being pooled: the generator cannot simply copy
its input through X[0][0] -> X[0][1] -> ... -> X[0][4] (the identity shortcut).
"""

import torch
from torch import nn

from fned_lightning.errors import InputError, check_image_size

DEPTH = 4  # four decoder branches: images halve four times (errors.SIZE_MULTIPLE)


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
    """x -> x_fake, same shape. `width` is X[0][*]'s channels, doubling per level (UNet++: 32);
    `skip_levels` (0, the paper's, to DEPTH) top levels without dense skips."""

    def __init__(self, channels: int = 3, width: int = 32, skip_levels: int = 0):
        super().__init__()
        if not 0 <= skip_levels <= DEPTH:
            raise InputError(f"model.generator.skip_levels must be 0 (the paper's) to {DEPTH}, got {skip_levels}")
        self.skip_levels = skip_levels
        widths = [width * 2**level for level in range(DEPTH + 1)]
        self.encoder = nn.ModuleList(
            ResidualBlock(channels if level == 0 else widths[level - 1], widths[level]) for level in range(DEPTH + 1)
        )
        self.nodes = nn.ModuleDict(
            {
                f"{i}_{j}": ResidualBlock((j * widths[i] if self.has_skips(i) else 0) + widths[i + 1], widths[i])
                for j in range(1, DEPTH + 1)
                for i in range(DEPTH + 1 - j)
                if self.has_skips(i) or j == DEPTH - i
            }
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.head = nn.Sequential(nn.Conv2d(widths[0], channels, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            for side in x.shape[-2:]:
                check_image_size(side, "FNEDGenerator input side")
        grid: list[list[torch.Tensor]] = []  # grid[i][j] is node X[i][j]
        h = x
        for level, block in enumerate(self.encoder):
            h = block(h if level == 0 else self.pool(h))
            grid.append([h])
        for j in range(1, DEPTH + 1):
            for i in range(DEPTH + 1 - j):
                if f"{i}_{j}" not in self.nodes:  # a cut level's inner node: it would only have fed skips
                    grid[i].append(None)
                    continue
                skips = (grid[i][:j] if self.has_skips(i) else []) + [self.up(grid[i + 1][j - 1])]
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat(skips, dim=1)))
        return self.head(grid[0][DEPTH])

    def has_skips(self, level: int) -> bool:
        return level >= self.skip_levels
