"""data.intensity=per_image: each image's mean and spread matched to those of the normal training
images before the networks see it (a lighting drift is not an anomaly). The model applies it, so
training, test, predict and the exported model all see the same (models.detector)."""

import torch

INTENSITIES = ("none", "per_image")


def image_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's mean and standard deviation over all its pixels and channels, shaped N x 1 x 1 x 1."""
    flat = x.flatten(1).float()
    return flat.mean(1)[:, None, None, None], flat.std(1)[:, None, None, None]


def match_intensity(x: torch.Tensor, mean: float | torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] with each one's mean and standard deviation mapped to (mean, std), clamped to
    [-1, 1] (data.intensity=per_image; a blank image is not stretched past 1e-3 of spread)."""
    image_mean, image_std = image_moments(x)
    return ((x - image_mean) * (std / image_std.clamp_min(1e-3)) + mean).clamp(-1, 1)
