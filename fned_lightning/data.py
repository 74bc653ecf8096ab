"""Data modules: CIFAR-10 one-class splits, image folders of parts (MVTec layout), and synthetic parts.

Every image is decoded and resized once, then held as a uint8 tensor; batches are sliced
from it (no per-item PIL, no per-epoch decode) and scaled to [-1, 1] on the device by the
LightningModule. Test sets are shuffled once with a fixed seed so that `limit_test_batches`
draws from both classes.
"""

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import resize, to_dtype

from fned_lightning.defects import paint_defects
from fned_lightning.errors import InputError
from fned_lightning.scoring import MASK_UNKNOWN

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_ALIASES = {"plane": "airplane", "car": "automobile"}  # the paper's short names
DECODED_BY_TORCHVISION = {".png", ".jpg", ".jpeg", ".webp", ".gif"}  # fast, in C++; the rest through Pillow
_NOT_RASTER = {".bufr", ".grib", ".h5", ".hdf", ".eps", ".ps", ".wmf", ".emf", ".mpeg", ".mpg"}  # stubs, vector, video
Image.init()
IMAGE_SUFFIXES = {ext for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN} - _NOT_RASTER
READABLE = ".png, .jpg, .bmp, .tif/.tiff (8 or 16 bit), .webp, .gif, .pgm/.ppm and every other raster format Pillow reads"


def suffixes_of(files: Sequence[Path]) -> str:
    return ", ".join(sorted({p.suffix.lower() or "(none)" for p in files}))
SIZE_MULTIPLE = 16  # the generators downsample four times


def resolve_cifar10_class(name: str) -> str:
    """A CIFAR-10 class name or the paper's alias, checked; the error lists the valid names."""
    valid = ", ".join(CIFAR10_CLASSES)
    if name is None:
        raise InputError(f"data=cifar10 needs an anomaly class, e.g. anomaly_class=horse; choose one of: {valid} (or plane, car)")
    resolved = CIFAR10_ALIASES.get(str(name).lower(), str(name).lower())
    if resolved not in CIFAR10_CLASSES:
        raise InputError(f"unknown anomaly_class {name!r}; choose one of: {valid} (or plane, car)")
    return resolved


def list_images(folder: Path, expected_layout: str) -> list[Path]:
    """The image files in `folder`, sorted; a clear error when it is missing or holds none."""
    if not folder.is_dir():
        raise InputError(f"expected a folder of images at {folder}, but it does not exist.\n{expected_layout}")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning("skipped %d files in %s that are not images (%s; readable: %s)", len(others), folder,
                    suffixes_of(others), READABLE)
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
            full_scale = 1.0 if image.mode == "F" and values.max() <= 1 else 65535.0 if values.max() <= 65535 else values.max()
            grey = torch.from_numpy(np.clip(np.round(values / full_scale * 255), 0, 255).astype(np.uint8))[None]
            return grey.expand(channels, -1, -1).contiguous()
        converted = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    picture = torch.from_numpy(converted.copy())
    return picture[None] if channels == 1 else picture.permute(2, 0, 1).contiguous()


def load_images(paths: Sequence[Path], channels: int, image_size: int) -> torch.Tensor:
    """Decode and resize every file once into an NxCxSxS uint8 tensor (decoding in threads)."""
    def load(path: Path) -> torch.Tensor:
        image = read_image(path, channels)
        if image.shape[-2:] != (image_size, image_size):
            image = resize(image, [image_size, image_size], antialias=True)
        return image

    with ThreadPoolExecutor(max_workers=4) as pool:
        return torch.stack(list(pool.map(load, paths)))


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the generators' Tanh range."""
    return images.float().div_(127.5).sub_(1.0)


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


def check_image_size(image_size: int) -> None:
    if image_size < SIZE_MULTIPLE or image_size % SIZE_MULTIPLE:
        raise InputError(
            f"data.image_size={image_size} is not a multiple of {SIZE_MULTIPLE}; the networks halve it four "
            f"times. Use e.g. 32, 64, 128 or 256."
        )


class InMemoryImages(Dataset):
    """uint8 images with labels and indices; `__getitems__` slices a whole batch at once. `masks`, where
    ground truth exists: int8 N x S x S, 1 on defect pixels, 0 elsewhere, MASK_UNKNOWN for a defect
    image without its mask (read by index at test: batches stay (images, labels, index))."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None):
        self.images, self.labels, self.masks = images, labels, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], index

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices, device=self.images.device)
        return self.images[index], self.labels[index], index


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's random draws, from the run's seed and the epoch alone: a run resumed
    from a checkpoint draws what an uninterrupted one does."""
    return (seed * 1_000_003 + epoch) % 2**63


class EpochShuffle(Sampler):
    """The training order of each epoch, drawn from `epoch_seed(seed, epoch())`, not from the global
    generator: Lightning may start a resumed run's first loader before any epoch hook has run."""

    def __init__(self, size: int, seed: int, epoch: Callable[[], int]):
        self.size, self.seed, self.epoch = size, seed, epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch()))
        return iter(torch.randperm(self.size, generator=generator).tolist())


class DeviceShuffledBatches:
    """Training batches of a dataset held on the accelerator: each epoch's order is drawn there
    (from `epoch_seed(seed, epoch)`, so a run is reproducible and resumable), split evenly across DDP ranks, and
    the batches sliced there; no index crosses from the host."""

    def __init__(self, dataset: InMemoryImages, batch_size: int, seed: int, epoch: Callable[[], int],
                 rank: int = 0, world_size: int = 1):
        self.dataset, self.batch_size, self.seed, self.epoch = dataset, batch_size, seed, epoch
        self.rank, self.world_size = rank, world_size
        self.per_rank = len(dataset) // world_size

    def __len__(self) -> int:  # drops a ragged last batch, as the host loader does
        return max(self.per_rank // self.batch_size, 1)

    def __iter__(self):
        device = self.dataset.images.device
        generator = torch.Generator(device=device).manual_seed(epoch_seed(self.seed, self.epoch()))
        order = torch.randperm(len(self.dataset), device=device, generator=generator)
        order = order[self.rank :: self.world_size][: self.per_rank]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.dataset.images[index], self.dataset.labels[index], index


def already_batched(batch):
    """DataLoader collate for `InMemoryImages.__getitems__`, which returns a finished batch."""
    return batch


class AnomalyDataModule(L.LightningDataModule):
    """Shared split logic: `load()` gives normal training images and a labelled test set.

    A seeded `val_fraction` of the normal training images is held out as the validation split,
    on which the score normalisation (and threshold) is fitted; it never sees test labels.
    With `synthetic_val_defects`, the validation split also holds a copy of each of its images with
    a defect painted on (defects.paint_defects; label 1, with its mask): every validation then
    measures detection and the shortcut diagnostic on them, a way to choose settings without any real
    test label. Only the unpainted images fit the normalisation and thresholds.
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        num_workers: int = 0,
        on_device: bool = False,
        intensity: str = "none",
        synthetic_val_defects: bool = False,
    ):
        super().__init__()
        check_image_size(image_size)
        if intensity not in INTENSITIES:  # checked here, for the data.* message; the model applies it (models.detector)
            raise InputError(f"unknown data.intensity={intensity}; choose one of: {', '.join(INTENSITIES)}")
        if channels not in (1, 3):
            raise InputError(f"data.channels must be 1 (grey) or 3 (colour), got {channels}")
        if not 0 <= val_fraction < 1:
            raise InputError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(root).expanduser() if root is not None else None
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.split_seed, self.num_workers = val_fraction, split_seed, num_workers
        self.synthetic_val_defects = synthetic_val_defects
        self.on_device = on_device  # keep the uint8 images on the accelerator: shuffled and sliced there, no copies
        self.train_set: InMemoryImages | None = None

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], torch.Tensor | None]:
        """(normal training images, test images, test labels 0/1, test names, test masks or None),
        images uint8 NxCxSxS, masks as `InMemoryImages` holds them."""
        raise NotImplementedError(f"{type(self).__name__} must define load()")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.split()
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            for dataset in (self.train_set, self.val_set, self.test_set):
                dataset.images, dataset.labels = dataset.images.to(device), dataset.labels.to(device)

    def split(self) -> None:
        train, test, test_labels, names, test_masks = self.load()
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(train), generator=generator)
        n_val = math.floor(len(train) * self.val_fraction)
        self.train_set = InMemoryImages(train[order[n_val:]], torch.zeros(len(train) - n_val, dtype=torch.long))
        self.val_set = InMemoryImages(train[order[:n_val]], torch.zeros(n_val, dtype=torch.long))
        if self.synthetic_val_defects:
            self.val_set = with_painted_copies(self.val_set, self.split_seed)
        test_order = torch.randperm(len(test), generator=generator)
        self.test_set = InMemoryImages(test[test_order], test_labels[test_order],
                                       test_masks[test_order] if test_masks is not None else None)
        self.test_names = [names[i] for i in test_order.tolist()]
        log.info("split sizes: %s", self.split_sizes())

    def intensity_reference(self) -> tuple[float, float]:
        """The mean, over the normal training images, of each image's mean and of its standard
        deviation, in [-1, 1]: what data.intensity=per_image maps every image to."""
        moments = [image_moments(to_model_range(chunk)) for chunk in self.train_set.images.split(1024)]
        return tuple(torch.cat(parts).mean().item() for parts in zip(*moments))

    def split_sizes(self) -> dict[str, int]:
        labels, painted = self.test_set.labels, int((self.val_set.labels == 1).sum())
        return {
            "n_train": len(self.train_set),
            "n_val": len(self.val_set) - painted,
            **({"n_val_painted": painted} if self.synthetic_val_defects else {}),
            "n_test": len(self.test_set),
            "n_test_normal": int((labels == 0).sum()),
            "n_test_abnormal": int((labels == 1).sum()),
        }

    def _loader(self, dataset: InMemoryImages, batch_size: int, train: bool = False) -> DataLoader:
        trainer = self.trainer
        shuffle = train and trainer is not None  # with a trainer: each epoch's order from the run's seed and the epoch
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and not shuffle,
            sampler=EpochShuffle(len(dataset), torch.initial_seed(), lambda: trainer.current_epoch) if shuffle else None,
            drop_last=train and len(dataset) > batch_size,  # a last batch of 1-2 images upsets BatchNorm
            collate_fn=already_batched,
            num_workers=self.num_workers,
            generator=torch.Generator(),  # its own: starting a loader must not draw from the global generator
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, torch.Tensor):  # the model summary's example input: already in [-1, 1]
            return batch
        images, labels, index = batch
        return to_model_range(images), labels, index  # on the device: the host only slices uint8

    def train_dataloader(self) -> DataLoader | DeviceShuffledBatches:
        if self.on_device and self.trainer is not None:
            trainer = self.trainer
            return DeviceShuffledBatches(self.train_set, self.batch_size, seed=torch.initial_seed(),  # the run's seed, as set by train.py
                                         epoch=lambda: trainer.current_epoch, rank=trainer.global_rank,
                                         world_size=trainer.world_size)
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, self.eval_batch_size) if len(self.val_set) else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)


def with_painted_copies(normal: InMemoryImages, seed: int) -> InMemoryImages:
    """The normal images and a copy of each with a painted defect (label 1, its mask), in a seeded order
    that mixes the two, so that `limit_val_batches` draws from both."""
    generator = torch.Generator().manual_seed(seed + 1)
    painted, masks = paint_defects(normal.images, generator)
    images, labels = _labelled(normal.images, painted)
    all_masks = torch.cat([torch.zeros_like(masks), masks])
    order = torch.randperm(len(images), generator=generator)
    return InMemoryImages(images[order], labels[order], all_masks[order])


def _labelled(normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.cat([normal, abnormal])
    labels = torch.cat([torch.zeros(len(normal), dtype=torch.long), torch.ones(len(abnormal), dtype=torch.long)])
    return images, labels


class CIFAR10OneClass(AnomalyDataModule):
    """One CIFAR-10 class is the anomaly (paper section 2.1).

    Train: the nine normal classes' 45,000 training images (less the validation split).
    Test: their 9,000 test images (label 0) + all 6,000 anomaly-class images (label 1).
    `root` holds either torchvision's `cifar-10-batches-py` (downloaded when `download`) or
    an image-folder copy `train/<class>/*`, `test/<class>/*`.
    """

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
        images, labels = _labelled(test[normal_test], torch.cat([train[abnormal_train], test[abnormal_test]]))
        names = (
            [n for n, keep in zip(test_names, normal_test.tolist()) if keep]
            + [n for n, keep in zip(train_names, abnormal_train.tolist()) if keep]
            + [n for n, keep in zip(test_names, abnormal_test.tolist()) if keep]
        )
        return train[normal_train], images, labels, names, None

    def read_cifar10(self):
        """All 60,000 images at 32x32 with class indices and names, from whichever copy `root` holds."""
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            return self.read_image_folder_copy()
        from torchvision.datasets import CIFAR10

        try:
            splits = [CIFAR10(str(self.root), train=train, download=self.download) for train in (True, False)]
        except (RuntimeError, OSError) as error:  # no copy here, and none to be had
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
        for split_name, split in zip(("train", "test"), splits):
            images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
            classes = torch.as_tensor(split.targets)
            names = [f"{split_name}/{CIFAR10_CLASSES[c]}/{i:05d}" for i, c in enumerate(split.targets)]
            out += [images, classes, names]
        return tuple(out)

    def read_image_folder_copy(self):
        """Decode `train/<class>/*` and `test/<class>/*` once; cache the uint8 tensors if `cache_dir` is set."""
        layout = "Expected the CIFAR-10 folder layout train/<class>/*.jpg and test/<class>/*.jpg, classes " + ", ".join(CIFAR10_CLASSES)
        files = {split: [list_images(self.root / split / name, layout) for name in CIFAR10_CLASSES] for split in ("train", "test")}
        key = hashlib.sha1("\n".join(str(p.resolve()) for split in files.values() for c in split for p in c).encode()).hexdigest()[:16]
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


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)


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
        images, labels = _labelled(
            load_images(normal_paths, self.channels, self.image_size),
            load_images(abnormal_paths, self.channels, self.image_size)
            if abnormal_paths
            else torch.empty(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8),
        )
        names = [str(p.relative_to(self.root)) for p in normal_paths + abnormal_paths]
        masks = self.load_masks(len(normal_paths), abnormal_paths) if (self.root / "ground_truth").is_dir() else None
        return train, images, labels, names, masks

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
            log.warning("%d defect images have no ground-truth mask and are left out of the pixel metrics; expected: %s",
                        len(missing), ", ".join(missing))
        return masks


class SyntheticParts(AnomalyDataModule):
    """Procedurally drawn washers (a textured ring, slightly jittered), and the same with a defect:
    a scratch across the ring, a dent, or a missing wedge. No files needed: the offline demo."""

    def __init__(self, n_train: int = 1024, n_test_normal: int = 128, n_test_abnormal: int = 128, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n_train, self.n_test_normal, self.n_test_abnormal, self.seed = n_train, n_test_normal, n_test_abnormal, seed

    def load(self):
        generator = torch.Generator().manual_seed(self.seed)
        train, _ = draw_parts(self.n_train, self.image_size, self.channels, generator)
        normal, normal_masks = draw_parts(self.n_test_normal, self.image_size, self.channels, generator)
        abnormal, defect_masks = draw_parts(self.n_test_abnormal, self.image_size, self.channels, generator, defective=True)
        images, labels = _labelled(normal, abnormal)
        names = [f"synthetic/normal/{i:04d}" for i in range(len(normal))]
        names += [f"synthetic/defect/{i:04d}" for i in range(len(abnormal))]
        return train, images, labels, names, torch.cat([normal_masks, defect_masks])


def draw_parts(n: int, size: int, channels: int, generator: torch.Generator,
               defective: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(n uint8 images N x channels x size x size, their int8 masks N x size x size: the painted pixels)."""
    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, 1, 1, generator=generator))

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
