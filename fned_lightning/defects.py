"""Made-up damage. Training corruptions take away a generator's reason to copy its input
(model.train_corruption); defects painted on held-out normal validation images let a user choose
settings without a single real test label (data.synthetic_val_defects)."""

import math

import torch

from fned_lightning.errors import InputError

CORRUPTIONS = ("none", "noise", "patches")
VISIBLE = 16  # grey levels (of 255): a painted pixel that changed less is not counted as a defect pixel
PATCH_GRID = 8  # patches: the image is cut into 8 x 8 cells (4 px at 32, 16 px at 128)


def check_corruption(kind: str, strength: float) -> None:
    if kind not in CORRUPTIONS:
        raise InputError(f"unknown model.train_corruption={kind}; choose one of: {', '.join(CORRUPTIONS)}")
    if kind == "noise" and not strength > 0:
        raise InputError(
            f"model.train_corruption=noise needs model.corruption_strength > 0 (the noise's standard "
            f"deviation, images in [-1, 1]; e.g. 0.2), got {strength}"
        )
    if kind == "patches" and not 0 < strength < 1:
        raise InputError(
            f"model.train_corruption=patches needs 0 < model.corruption_strength < 1 (the share of "
            f"cells masked out; e.g. 0.25), got {strength}"
        )


def corrupt(x: torch.Tensor, kind: str, strength: float) -> torch.Tensor:
    """What the generator sees in training (the losses compare its output with the clean x).

    noise: x + strength * N(0, 1), clamped to [-1, 1]: a denoising autoencoder (Vincent et al., 2008)
    must learn what normal looks like, since copying its input now costs it the noise.
    patches: each cell of a PATCH_GRID x PATCH_GRID grid is, with probability `strength`, replaced by
    the image's mean: the generator must inpaint it from its surroundings (RIAD, Zavrtanik et al., 2021).
    Draws from the global generator, which the module seeds per epoch (resumable)."""
    if kind == "none":
        return x
    if kind == "noise":
        return (x + strength * torch.randn_like(x)).clamp(-1, 1)
    n, _, height, width = x.shape
    cells = torch.rand(n, 1, PATCH_GRID, PATCH_GRID, device=x.device) < strength
    masked = torch.nn.functional.interpolate(cells.float(), size=(height, width), mode="nearest").bool()
    return torch.where(masked, x.mean(dim=(1, 2, 3), keepdim=True), x)


def paint_defects(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of each uint8 image (N x C x S x S) with one made-up defect, and its mask (int8 N x S x S,
    1 on the painted pixels), in the manner of the synthetic parts: a scratch (a thin line), a spot (a
    disc), or a missing patch (a square filled with the image's mean grey, as if material were gone).
    Scratches and spots take the image's darkest or brightest value, whichever contrasts more with
    what lies under them, so that each defect is visible on dark and on bright parts alike. The mask
    keeps only the pixels that visibly changed (by VISIBLE grey levels or more)."""
    n, _, size, _ = images.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, 1, 1, generator=generator)

    axis = torch.arange(size, dtype=torch.float32) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    cx, cy = uniform(0.2, 0.8), uniform(0.2, 0.8)
    dx, dy = x - cx, y - cy
    kind = torch.randint(0, 3, (n, 1, 1), generator=generator)
    direction, length = uniform(0, math.pi), uniform(0.2, 0.5)
    along = dx * torch.cos(direction) + dy * torch.sin(direction)
    across = -dx * torch.sin(direction) + dy * torch.cos(direction)
    scratch = (across.abs() <= torch.maximum(uniform(0.01, 0.02), torch.tensor(0.5 / size))) & (
        along.abs() < length / 2
    )
    spot = (dx**2 + dy**2).sqrt() < uniform(0.04, 0.09)
    half_side = uniform(0.05, 0.12)
    patch = (dx.abs() < half_side) & (dy.abs() < half_side)
    masks = torch.where(kind == 0, scratch, torch.where(kind == 1, spot, patch))

    grey = images.float().mean(1)  # N x S x S
    low, high = grey.flatten(1).amin(1), grey.flatten(1).amax(1)
    under = (grey * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp_min(1)
    contrast = torch.where(under - low > high - under, low, high)
    value = torch.where(kind.flatten() == 2, grey.flatten(1).mean(1), contrast).round().to(torch.uint8)
    painted = torch.where(masks[:, None], value[:, None, None, None], images)
    changed = (painted.float() - images.float()).abs().amax(1) >= VISIBLE
    return painted, (masks & changed).to(torch.int8)
