"""Parts in MVTec AD's folder layout: normal training images, a labelled test set, and ground-truth
masks where the folder has them."""

import logging
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import resize

from fned_lightning.data.base import AnomalyDataModule, LoadedData, labelled
from fned_lightning.data.images import list_images, load_images, read_image
from fned_lightning.errors import InputError
from fned_lightning.scoring import MASK_UNKNOWN

log = logging.getLogger(__name__)


class ImageFolderAnomaly(AnomalyDataModule):
    """Parts in MVTec AD's layout: root/train/<normal_dir>/, root/test/<normal_dir>/, root/test/<defect>/...

    Every folder under root/test other than `normal_dir` is abnormal. Images of any size,
    grey or colour, are converted to `channels` and resized to `image_size`. Where root/ground_truth/
    exists, each defect image's mask is read from root/ground_truth/<defect>/<stem>_mask.png (resized
    nearest-neighbour); normal images have none to read (no defect pixels).
    """

    def __init__(self, root: str, normal_dir: str = "good", **kwargs):
        super().__init__(root=root, **kwargs)
        self.normal_dir = normal_dir

    def load(self):
        if self.root is None:
            raise InputError("data=folder needs data.root=/path/to/parts")
        layout = (
            f"Expected layout: {self.root}/train/{self.normal_dir}/*.png (normal training images), "
            f"{self.root}/test/{self.normal_dir}/*.png (normal test images) and "
            f"{self.root}/test/<defect>/*.png (abnormal test images, any folder name)."
        )
        train_paths = list_images(self.root / "train" / self.normal_dir, layout)
        normal_paths = list_images(self.root / "test" / self.normal_dir, layout)
        defect_dirs = sorted(p for p in (self.root / "test").iterdir() if p.is_dir() and p.name != self.normal_dir)
        abnormal_paths = [p for d in defect_dirs for p in list_images(d, layout)]
        if not abnormal_paths:
            log.warning("no abnormal test images under %s: AUROC/AUPRC will be undefined (null)", self.root / "test")
        train = load_images(train_paths, self.channels, self.image_size)
        images, labels = labelled(
            load_images(normal_paths, self.channels, self.image_size),
            load_images(abnormal_paths, self.channels, self.image_size)
            if abnormal_paths
            else torch.empty(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8),
        )
        names = [str(p.relative_to(self.root)) for p in normal_paths + abnormal_paths]
        masks = self.load_masks(len(normal_paths), abnormal_paths) if (self.root / "ground_truth").is_dir() else None
        return LoadedData(train, images, labels, names, masks)

    def load_masks(self, n_normal: int, abnormal_paths: list[Path]) -> torch.Tensor:
        """Ground truth for the test set: zeros for the normal images, each defect image's mask file, and
        MASK_UNKNOWN (named in a warning) for a defect image without one: never counted as all-normal."""
        size = [self.image_size, self.image_size]
        masks = torch.full((n_normal + len(abnormal_paths), *size), MASK_UNKNOWN, dtype=torch.int8)
        masks[:n_normal] = 0
        missing = []
        for i, path in enumerate(abnormal_paths, start=n_normal):
            mask_path = self.root / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
            if not mask_path.is_file():
                missing.append(str(mask_path))
                continue
            mask = resize(read_image(mask_path, channels=1), size, interpolation=InterpolationMode.NEAREST)
            masks[i] = (mask[0] > 127).to(torch.int8)
        if missing:
            log.warning(
                "%d defect images have no ground-truth mask and are left out of the pixel metrics; expected: %s",
                len(missing),
                ", ".join(missing),
            )
        return masks
