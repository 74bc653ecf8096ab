"""Synthetic parts: procedurally drawn washers and their defects, with exact masks; no files needed."""

import math

import torch

from fned_lightning.data.base import AnomalyDataModule, LoadedData, labelled
from fned_lightning.errors import check_number


class SyntheticParts(AnomalyDataModule):
    """Procedurally drawn washers (a textured ring, slightly jittered), and the same with a defect:
    a scratch across the ring, a dent, or a missing wedge. No files needed: the offline demo."""

    def __init__(
        self, n_train: int = 1024, n_test_normal: int = 128, n_test_abnormal: int = 128, seed: int = 0, **kwargs
    ):
        super().__init__(**kwargs)
        check_number("data.n_train", n_train, 2, integer=True)  # at least one to train on after the validation split
        check_number("data.n_test_normal", n_test_normal, 0, integer=True)
        check_number("data.n_test_abnormal", n_test_abnormal, 0, integer=True)
        check_number("data.seed", seed, 0, 2**63 - 1, integer=True)
        self.n_train, self.n_test_normal, self.n_test_abnormal, self.seed = (
            n_train,
            n_test_normal,
            n_test_abnormal,
            seed,
        )

    def load(self):
        generator = torch.Generator().manual_seed(self.seed)
        train, _ = draw_parts(self.n_train, self.image_size, self.channels, generator)
        normal, normal_masks = draw_parts(self.n_test_normal, self.image_size, self.channels, generator)
        abnormal, defect_masks = draw_parts(
            self.n_test_abnormal, self.image_size, self.channels, generator, defective=True
        )
        images, labels = labelled(normal, abnormal)
        names = [f"synthetic/normal/{i:04d}" for i in range(len(normal))]
        names += [f"synthetic/defect/{i:04d}" for i in range(len(abnormal))]
        return LoadedData(train, images, labels, names, torch.cat([normal_masks, defect_masks]))


def draw_parts(
    n: int, size: int, channels: int, generator: torch.Generator, defective: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n uint8 images N x channels x size x size, their int8 masks N x size x size: the painted pixels)."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, 1, 1, generator=generator)

    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    cx, cy = uniform(-0.06, 0.06), uniform(-0.06, 0.06)
    dx, dy = x - cx, y - cy
    radius, angle = (dx**2 + dy**2).sqrt(), torch.atan2(dy, dx) + uniform(0, 2 * math.pi)
    outer, inner = uniform(0.62, 0.68), uniform(0.26, 0.30)
    ring = (radius < outer) & (radius > inner)
    image = 0.25 + 0.04 * torch.randn(n, size, size, generator=generator)
    image = torch.where(ring, 0.7 + 0.06 * torch.cos(6 * angle), image)  # six flats, like a nut
    painted = torch.zeros(n, size, size, dtype=torch.bool)
    if defective:
        kind = torch.randint(0, 3, (n, 1, 1), generator=generator)
        direction = uniform(0, math.pi)
        offset = uniform(-0.4, 0.4)
        scratch = ((dx * torch.sin(direction) - dy * torch.cos(direction) - offset).abs() < 0.05) & ring
        spot_angle = uniform(0, 2 * math.pi)
        spot_r = (outer + inner) / 2
        dent = ((dx - spot_r * torch.cos(spot_angle)) ** 2 + (dy - spot_r * torch.sin(spot_angle)) ** 2).sqrt() < 0.12
        wedge = ring & (torch.remainder(angle - spot_angle, 2 * math.pi) < 0.5)
        for value, defect in ((0.15, (kind == 0) & scratch), (0.95, (kind == 1) & dent), (0.25, (kind == 2) & wedge)):
            image = torch.where(defect, value, image)
            painted |= defect
    image = (image.clamp(0, 1) * 255).round().to(torch.uint8).unsqueeze(1)
    return image.expand(-1, channels, -1, -1).contiguous(), painted.to(torch.int8)
