"""The segmentation head (model.head): DRAEM's discriminative network (Zavrtanik et al., ICCV 2021), a
small U-Net that reads an image beside its reconstruction and gives a defect logit per pixel."""

import torch
from torch import nn

from fned_lightning.errors import InputError


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with BatchNorm and ReLU (DRAEM's block)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SegmentationUNet(nn.Module):
    """concat(x, x_fake), 2C channels -> N x 1 x S x S logits. `depth` halvings (the image size must be a
    multiple of 2**depth), widths `width` * 1, 2, 4, 8, 8, ...; skips concatenated as in U-Net."""

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 32, depth: int = 4):
        super().__init__()
        if not (isinstance(width, int) and width >= 1 and isinstance(depth, int) and depth >= 1):
            raise InputError(
                f"model.head.width and model.head.depth must be whole numbers >= 1, got {width} and {depth}"
            )
        if image_size % 2**depth:
            raise InputError(
                f"model.head.depth={depth} needs a data.image_size that is a multiple of {2**depth}, got "
                f"{image_size}: give a smaller model.head.depth or another data.image_size"
            )
        self.depth = depth
        widths = [width * min(2**level, 8) for level in range(depth + 1)]
        self.down = nn.ModuleList([conv_block(2 * channels, widths[0])])
        self.down.extend(conv_block(widths[level - 1], widths[level]) for level in range(1, depth + 1))
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.up = nn.ModuleList(conv_block(widths[level + 1] + widths[level], widths[level]) for level in range(depth))
        self.logits = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
        h = self.down[0](torch.cat([x, x_fake], 1))
        skips = [h]
        for block in self.down[1:]:
            h = block(self.pool(h))
            skips.append(h)
        for level in range(self.depth - 1, -1, -1):
            h = self.up[level](torch.cat([self.upsample(h), skips[level]], 1))
        return self.logits(h)
