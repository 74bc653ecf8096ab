"""Anomalies simulated on normal training images, as DRAEM draws them (Zavrtanik et al., ICCV 2021): a
thresholded Perlin-noise mask, of random scale and rotation, filled with some other content at a
random opacity. The segmentation head (model.head) learns to find them; the generator learns to restore
what lies under them. DRAEM fills its masks with external textures; its own ablation finds plain
colours nearly as good, so every source here is available offline: plain colours, another training
image's content (shifted, rotated, recoloured), and random noise textures.

Every draw comes from the global generator on the images' device, which the module seeds from the run's
seed and the epoch (models.detector.on_train_epoch_start): a resumed run draws what an uninterrupted one does.
"""

import math

import torch
import torch.nn.functional as F

from fned_lightning.errors import InputError

SOURCES = ("colour", "image", "noise")
ANOMALY_SHARE = 0.5  # DRAEM's: half the images stay clean, so the head also learns that most parts are fine
MASK_THRESHOLD = 0.5  # DRAEM's, on Perlin noise scaled to about [-1, 1]
OPACITY = (0.1, 1.0)  # the anomaly's weight against the image under it
ROTATION = 90.0  # degrees either way (DRAEM's)
SMALLEST_CELL = 8  # pixels: the finest Perlin lattice (DRAEM at 256 px: 2**0 to 2**5 cells a side, 8 px the least)


def check_sources(sources) -> tuple[str, ...]:
    sources = tuple(sources)
    unknown = [s for s in sources if s not in SOURCES]
    if not sources or unknown:
        raise InputError(f"model.anomaly_sources={list(sources)}: choose one or more of: {', '.join(SOURCES)}")
    return sources


def uniform(shape: tuple[int, ...], low: float, high: float, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, device=device)


def perlin_noise(n: int, size: int, device) -> torch.Tensor:
    """N x size x size gradient noise (Perlin, 1985) in about [-1, 1], each image with its own lattice
    (2**i by 2**j cells, i and j drawn apart, as DRAEM) and turned by its own angle in [-90, 90] degrees.
    All images in one pass, every draw and index on `device`: nothing waits for it or copies to it."""
    largest = max(int(math.log2(max(size // SMALLEST_CELL, 1))), 0)
    rows, cols = 2 ** torch.randint(0, largest + 1, (2, n), device=device)  # each image's lattice
    noise = lattice_noise(rows, cols, size, 2**largest)
    angle = uniform((n,), -ROTATION, ROTATION, device) * math.pi / 180
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    turn = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(turn, [n, 1, size, size], align_corners=False)
    return F.grid_sample(noise[:, None], grid, padding_mode="reflection", align_corners=False)[:, 0]


def lattice_noise(rows: torch.Tensor, cols: torch.Tensor, size: int, most: int) -> torch.Tensor:
    """Perlin noise, image k on a rows[k] x cols[k] lattice (each at most `most`): a random unit gradient at
    each lattice point, each pixel the faded blend of its cell's four corner gradients dotted with its
    offsets from them. Gradients are drawn for the largest lattice; a smaller one uses its corner."""
    n, device = len(rows), rows.device
    angles = uniform((n, most + 1, most + 1), 0, 2 * math.pi, device)
    gradients = torch.stack([angles.cos(), angles.sin()], -1)  # n x most+1 x most+1 x 2
    pixels = torch.arange(size, device=device, dtype=torch.float32)
    y, x = pixels * rows[:, None] / size, pixels * cols[:, None] / size  # n x size: lattice coordinates
    cell_y, cell_x = y.long(), x.long()
    fy, fx = y - cell_y, x - cell_x
    image = torch.arange(n, device=device)[:, None, None]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[image, (cell_y + dy)[:, :, None], (cell_x + dx)[:, None, :]]  # n x size x size x 2
        return g[..., 0] * (fx - dx)[:, None, :] + g[..., 1] * (fy - dy)[:, :, None]

    def fade(t: torch.Tensor) -> torch.Tensor:
        return t**3 * (t * (t * 6 - 15) + 10)

    wy, wx = fade(fy)[:, :, None], fade(fx)[:, None, :]
    top = torch.lerp(corner(0, 0), corner(0, 1), wx)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), wx)
    return math.sqrt(2) * torch.lerp(top, bottom, wy)


def anomaly_masks(n: int, size: int, device) -> torch.Tensor:
    """N x 1 x size x size float masks, 1 inside the anomaly: thresholded Perlin noise for ANOMALY_SHARE of
    the images, all zeros for the others."""
    masks = (perlin_noise(n, size, device) > MASK_THRESHOLD).float()
    keep = torch.rand(n, device=device) < ANOMALY_SHARE
    return (masks * keep[:, None, None])[:, None]


def fill(x: torch.Tensor, source: str) -> torch.Tensor:
    """What goes into the anomaly, for every image of the batch from one source, in [-1, 1]."""
    n, channels, size, _ = x.shape
    if source == "colour":  # one plain colour an image (grey for grey parts)
        return uniform((n, channels, 1, 1), -1, 1, x.device).expand_as(x)
    if source == "noise":  # a noise texture: Perlin noise per channel, of random contrast and level
        texture = perlin_noise(n * channels, size, x.device).view_as(x)
        return (uniform((n, 1, 1, 1), 0.5, 1.5, x.device) * texture + uniform((n, 1, 1, 1), -0.5, 0.5, x.device)).clamp(
            -1, 1
        )
    # another image's content: the next image of the batch, each shifted (wrapping round) and turned by a
    # multiple of 90 degrees of its own, recoloured; indexed on the device, so nothing waits for it
    other = x.roll(1, dims=0)
    shift = torch.randint(0, size, (n, 2, 1), device=x.device)
    rows, cols = ((torch.arange(size, device=x.device) + shift) % size).unbind(1)  # n x size each
    images = torch.arange(n, device=x.device)
    other = other[images[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    turns = torch.stack([other.rot90(k, dims=(2, 3)) for k in range(4)])
    other = turns[torch.randint(0, 4, (n,), device=x.device), images]
    gain, offset = uniform((n, channels, 1, 1), 0.5, 1.5, x.device), uniform((n, channels, 1, 1), -0.5, 0.5, x.device)
    return (gain * other + offset).clamp(-1, 1)


def simulate_anomalies(x: torch.Tensor, sources: tuple[str, ...] = SOURCES) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] (N x C x S x S) with simulated anomalies, and their masks (N x 1 x S x S, 1 in the
    anomaly): x + opacity * mask * (fill - x), each image's fill from one of `sources`, its opacity in OPACITY."""
    n, _, size, _ = x.shape
    masks = anomaly_masks(n, size, x.device)
    which = torch.randint(0, len(sources), (n,), device=x.device)
    content = torch.zeros_like(x)
    for k, source in enumerate(sources):
        content = torch.where((which == k)[:, None, None, None], fill(x, source), content)
    opacity = uniform((n, 1, 1, 1), *OPACITY, x.device)
    return x + opacity * masks * (content - x), masks
