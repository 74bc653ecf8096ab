"""CIFAR-10 one-class splits (paper section 2.1): one class is the anomaly, the other nine are normal."""

import hashlib
import logging
import shutil
from pathlib import Path

import torch
from torchvision.transforms.v2.functional import resize

from fned_lightning.data.base import AnomalyDataModule, LoadedData, labelled
from fned_lightning.data.images import list_images, load_images
from fned_lightning.errors import InputError

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_ALIASES = {"plane": "airplane", "car": "automobile"}  # the paper's short names


def resolve_cifar10_class(name: str) -> str:
    """A CIFAR-10 class name or the paper's alias, checked; the error lists the valid names."""
    valid = ", ".join(CIFAR10_CLASSES)
    if name is None:
        raise InputError(
            f"data=cifar10 needs an anomaly class, e.g. anomaly_class=horse; choose one of: {valid} (or plane, car)"
        )
    resolved = CIFAR10_ALIASES.get(str(name).lower(), str(name).lower())
    if resolved not in CIFAR10_CLASSES:
        raise InputError(f"unknown anomaly_class {name!r}; choose one of: {valid} (or plane, car)")
    return resolved


class CIFAR10OneClass(AnomalyDataModule):
    """One CIFAR-10 class is the anomaly (paper section 2.1).

    Train: the nine normal classes' 45,000 training images (less the validation split).
    Test: their 9,000 test images (label 0) + all 6,000 anomaly-class images (label 1).
    `root` holds either torchvision's `cifar-10-batches-py` (downloaded when `download`) or
    an image-folder copy `train/<class>/*`, `test/<class>/*`.
    """

    ANCHORS_SORT_TEST_BY_LABEL = (
        True  # the anchors' CIFAR-10 test loader: normal test images, then the anomaly class, unshuffled
    )

    def __init__(self, root: str, anomaly_class: str, download: bool = True, cache_dir: str | None = None, **kwargs):
        super().__init__(root=root, **kwargs)
        self.anomaly_class = resolve_cifar10_class(anomaly_class)
        self.download = download
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None

    def load(self):
        train, train_classes, train_names, test, test_classes, test_names = self.read_cifar10()
        if train.shape[-1] != self.image_size:
            train = resize(train, [self.image_size] * 2, antialias=True)
            test = resize(test, [self.image_size] * 2, antialias=True)
        if self.channels == 1:
            train, test = (to_grayscale(x) for x in (train, test))
        anomaly = CIFAR10_CLASSES.index(self.anomaly_class)
        normal_train, abnormal_train = train_classes != anomaly, train_classes == anomaly
        normal_test, abnormal_test = test_classes != anomaly, test_classes == anomaly
        images, labels = labelled(test[normal_test], torch.cat([train[abnormal_train], test[abnormal_test]]))
        names = (
            [n for n, keep in zip(test_names, normal_test.tolist(), strict=True) if keep]
            + [n for n, keep in zip(train_names, abnormal_train.tolist(), strict=True) if keep]
            + [n for n, keep in zip(test_names, abnormal_test.tolist(), strict=True) if keep]
        )
        return LoadedData(train[normal_train], images, labels, names, None)

    def read_cifar10(self):
        """All 60,000 images at 32x32 with class indices and names, from whichever copy `root` holds."""
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            return self.read_image_folder_copy()
        from torchvision.datasets import CIFAR10

        made = first_missing(self.root)  # torchvision makes the folder before it tries to download
        try:
            splits = [CIFAR10(str(self.root), train=train, download=self.download) for train in (True, False)]
        except (RuntimeError, OSError) as error:  # no copy here, and none to be had
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)  # leave no empty folder behind
            fix = (
                f"The download failed ({error}); with no internet, point data.root at a copy"
                if self.download
                else "Set data.download=true where there is internet, or point data.root at a copy"
            )
            raise InputError(
                f"no CIFAR-10 at data.root={self.root}: expected torchvision's cifar-10-batches-py/ or an image-folder "
                f"copy train/<class>/*.jpg + test/<class>/*.jpg there. {fix}, e.g. "
                f"`make cifar10` (which runs `tar -xzf ../shared/datasets/cifar10-jpeg.tar.gz -C data/cifar10`)."
            ) from error
        out = []
        for split_name, split in zip(("train", "test"), splits, strict=True):
            images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
            classes = torch.as_tensor(split.targets)
            names = [f"{split_name}/{CIFAR10_CLASSES[c]}/{i:05d}" for i, c in enumerate(split.targets)]
            out += [images, classes, names]
        return tuple(out)

    def read_image_folder_copy(self):
        """Decode `train/<class>/*` and `test/<class>/*` once; cache the uint8 tensors if `cache_dir` is set."""
        layout = "Expected the CIFAR-10 folder layout train/<class>/*.jpg and test/<class>/*.jpg, classes " + ", ".join(
            CIFAR10_CLASSES
        )
        files = {
            split: [list_images(self.root / split / name, layout) for name in CIFAR10_CLASSES]
            for split in ("train", "test")
        }
        key = hashlib.sha1(
            "\n".join(str(p.resolve()) for split in files.values() for c in split for p in c).encode()
        ).hexdigest()[:16]
        cache = self.cache_dir / f"cifar10-{key}.pt" if self.cache_dir else None
        if cache is not None and cache.exists():
            return torch.load(cache)
        out = []
        for split, per_class in files.items():
            paths = [p for class_files in per_class for p in class_files]
            log.info("decoding %d CIFAR-10 %s images from %s (once)", len(paths), split, self.root / split)
            images = load_images(paths, channels=3, image_size=32)
            classes = torch.cat([torch.full((len(f),), c, dtype=torch.long) for c, f in enumerate(per_class)])
            out += [images, classes, [str(p.relative_to(self.root)) for p in paths]]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(tuple(out), cache)
        return tuple(out)


def first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what making `path` would create)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
