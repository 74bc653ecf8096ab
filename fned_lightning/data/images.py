"""Reading image files: every raster format Pillow knows (PNG, JPEG, BMP, 8- and 16-bit TIFF, ...),
converted to 1 or 3 channels, decoded and resized once into uint8 tensors."""

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import resize, to_dtype

from fned_lightning.errors import InputError

log = logging.getLogger(__name__)

DECODED_BY_TORCHVISION = {".png", ".jpg", ".jpeg", ".webp", ".gif"}  # fast, in C++; the rest through Pillow
_NOT_RASTER = {".bufr", ".grib", ".h5", ".hdf", ".eps", ".ps", ".wmf", ".emf", ".mpeg", ".mpg"}  # stubs, vector, video
Image.init()
IMAGE_SUFFIXES = {ext for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN} - _NOT_RASTER
READABLE = (
    ".png, .jpg, .bmp, .tif/.tiff (8 or 16 bit), .webp, .gif, .pgm/.ppm and every other raster format Pillow reads"
)


def suffixes_of(files: Sequence[Path]) -> str:
    return ", ".join(sorted({p.suffix.lower() or "(none)" for p in files}))


def list_images(folder: Path, expected_layout: str) -> list[Path]:
    """The image files in `folder`, sorted; a clear error when it is missing or holds none."""
    if not folder.is_dir():
        raise InputError(f"expected a folder of images at {folder}, but it does not exist.\n{expected_layout}")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning(
            "skipped %d files in %s that are not images (%s; readable: %s)",
            len(others),
            folder,
            suffixes_of(others),
            READABLE,
        )
    if not images:
        found = f"found only {suffixes_of(files)} files" if files else "it is empty"
        raise InputError(f"no images in {folder}: {found}; readable: {READABLE}.\n{expected_layout}")
    return images


def read_image(path: Path, channels: int) -> torch.Tensor:
    """One image as uint8 CxHxW with `channels` channels (grey, palette, RGBA and 16-bit converted)."""
    try:
        if path.suffix.lower() not in DECODED_BY_TORCHVISION:
            return read_with_pillow(path, channels)
        image = decode_image(str(path), mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except (RuntimeError, ValueError, OSError) as error:
        raise InputError(f"cannot read image {path}: {error}. Remove or replace the file.") from error
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


def read_with_pillow(path: Path, channels: int) -> torch.Tensor:
    """BMP, TIFF (8- and 16-bit) and every other format Pillow reads, as read_image returns them."""
    with Image.open(path) as image:
        if image.mode.startswith("I") or image.mode == "F":  # 16-bit (or integer / float) grey: scale, not clip
            values = np.asarray(image, dtype=np.float64)
            full_scale = (
                1.0 if image.mode == "F" and values.max() <= 1 else 65535.0 if values.max() <= 65535 else values.max()
            )
            grey = torch.from_numpy(np.clip(np.round(values / full_scale * 255), 0, 255).astype(np.uint8))[None]
            return grey.expand(channels, -1, -1).contiguous()
        converted = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    picture = torch.from_numpy(converted.copy())
    return picture[None] if channels == 1 else picture.permute(2, 0, 1).contiguous()


FAR_SMALLER = 4  # images whose shorter side is under a quarter of data.image_size are blown up past recognition


def load_images(paths: Sequence[Path], channels: int, image_size: int) -> torch.Tensor:
    """Decode and resize every file once into an NxCxSxS uint8 tensor (decoding in threads); a warning
    names how many images are far smaller than `image_size`, and the smallest."""
    sizes = []

    def load(path: Path) -> torch.Tensor:
        image = read_image(path, channels)
        sizes.append(tuple(image.shape[-2:]))
        if image.shape[-2:] != (image_size, image_size):
            image = resize(image, [image_size, image_size], antialias=True)
        return image

    with ThreadPoolExecutor(max_workers=4) as pool:
        images = torch.stack(list(pool.map(load, paths)))
    small = [size for size in sizes if min(size) * FAR_SMALLER < image_size]
    if small:
        height, width = min(small, key=min)
        log.warning(
            "%d of %d images in %s are far smaller than data.image_size=%d (the smallest %d x %d): they are "
            "blown up and carry little detail; check the folder, or lower data.image_size",
            len(small),
            len(sizes),
            Path(paths[0]).parent,
            image_size,
            width,
            height,
        )
    return images
