"""What every data source shares: images held in memory as uint8 tensors, the seeded validation
split, the samplers, and the LightningDataModule that serves them.

Every image is decoded and resized once, then held as a uint8 tensor; batches are sliced from it
(no per-item PIL, no per-epoch decode) and scaled to [-1, 1] on the device. Test sets are shuffled
once with a fixed seed so that `limit_test_batches` draws from both classes.
"""

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fned_lightning.defects import paint_defects
from fned_lightning.errors import InputError, check_image_size, check_number
from fned_lightning.models.intensity import INTENSITIES, image_moments
from fned_lightning.protocols import PAPER_TEST_BATCHES, anchors_order, batches_read
from fned_lightning.scoring import MASK_UNKNOWN
from fned_lightning.seeding import epoch_seed

log = logging.getLogger(__name__)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the generators' Tanh range."""
    return images.float().div_(127.5).sub_(1.0)


class LoadedData(NamedTuple):
    """What a source's `load()` gives: images uint8 N x C x S x S, masks as `InMemoryImages` holds them."""

    train: torch.Tensor  # the normal training images (validation is split from them)
    test: torch.Tensor  # the test images
    test_labels: torch.Tensor  # 0 normal, 1 abnormal
    test_names: list[str]  # a path or an index, for scores.csv
    test_masks: torch.Tensor | None  # ground truth, where the source has it


class InMemoryImages(Dataset):
    """uint8 images with labels and indices; `__getitems__` slices a whole batch at once. `masks`, where
    ground truth exists: int8 N x S x S, 1 on defect pixels, 0 elsewhere, MASK_UNKNOWN for a defect
    image without its mask (read by index at test: batches stay (images, labels, index)). `from_test`,
    in a validation split with data.val_defects: True for the images moved there from the test set."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        from_test: torch.Tensor | None = None,
    ):
        self.images, self.labels, self.masks = images, labels, masks
        self.from_test = from_test if from_test is not None else torch.zeros(len(images), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], index

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices, device=self.images.device)
        return self.images[index], self.labels[index], index

    def to(self, device: torch.device) -> "InMemoryImages":
        """Images, labels and masks moved together (data.on_device), in place."""
        self.images, self.labels, self.from_test = (
            self.images.to(device),
            self.labels.to(device),
            self.from_test.to(device),
        )
        self.masks = self.masks.to(device) if self.masks is not None else None
        return self

    def subset(self, index: torch.Tensor) -> "InMemoryImages":
        return InMemoryImages(
            self.images[index],
            self.labels[index],
            self.masks[index] if self.masks is not None else None,
            self.from_test[index],
        )


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

    def __init__(
        self,
        dataset: InMemoryImages,
        batch_size: int,
        seed: int,
        epoch: Callable[[], int],
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        self.dataset, self.batch_size, self.seed, self.epoch = dataset, batch_size, seed, epoch
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.per_rank = len(dataset) // world_size

    def __len__(self) -> int:  # drops a ragged last batch unless told not to, as the host loader does
        whole, ragged = divmod(self.per_rank, self.batch_size)
        return max(whole + (ragged > 0 and not self.drop_last), 1)

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

    With `val_defects=K`, K normal and K abnormal test images, drawn with `split_seed`, move from the
    test set into the validation split (the test set shrinks by 2K, and every output counts it): each
    validation then measures detection of real defects (`val_real_*`), the honest way to choose
    settings when a handful of known bad parts exist. The test images left are never read until the test.

    Under protocol=paper the test set is batched as the anchors' code batches it (`paper_test_batches`,
    default `anchors`): their training batch size and, where their loader does not shuffle the test set
    (`ANCHORS_SORT_TEST_BY_LABEL`: CIFAR-10), the normal images first and then the anomalies. With
    BatchNorm in training mode a batch is normalised by its own statistics, so label-pure batches let the
    label reach every score (results/cifar10_paper_budget/paper_batches.md); `mixed` batches it as the
    honest test is (the paper protocol of earlier commits).
    """

    ANCHORS_SORT_TEST_BY_LABEL = False  # their folder loaders shuffle the test set

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
        val_defects: int = 0,
        paper_test_batches: str = "anchors",
    ):
        super().__init__()
        check_number("data.image_size", image_size, 1, integer=True)
        check_image_size(image_size)
        check_number("data.batch_size", batch_size, 1, integer=True)
        check_number("data.eval_batch_size", eval_batch_size, 1, integer=True)
        check_number("data.num_workers", num_workers, 0, integer=True)
        check_number("data.split_seed", split_seed, 0, 2**63 - 1, integer=True)
        check_number("data.val_defects", val_defects, 0, integer=True)
        if intensity not in INTENSITIES:  # checked here, for the data.* message; the model applies it (models.detector)
            raise InputError(f"unknown data.intensity={intensity}; choose one of: {', '.join(INTENSITIES)}")
        if paper_test_batches not in PAPER_TEST_BATCHES:
            raise InputError(
                f"unknown data.paper_test_batches={paper_test_batches}; choose one of: {', '.join(PAPER_TEST_BATCHES)}"
            )
        if channels not in (1, 3):
            raise InputError(f"data.channels must be 1 (grey) or 3 (colour), got {channels}")
        if on_device and num_workers:
            raise InputError(
                f"data.on_device=true keeps the images on the accelerator, which data.num_workers={num_workers} "
                f"worker processes cannot read: give data.num_workers=0 (the data is in memory already)"
            )
        if not 0 <= val_fraction < 1:
            raise InputError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(root).expanduser() if root is not None else None
        if self.root is not None and self.root.is_file():
            raise InputError(
                f"data.root={self.root} is a file, not a folder: point it at the folder that holds train/ and test/"
            )
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.split_seed, self.num_workers = val_fraction, split_seed, num_workers
        self.synthetic_val_defects, self.val_defects = synthetic_val_defects, val_defects
        self.paper_test_batches = paper_test_batches
        self.on_device = on_device  # keep the uint8 images on the accelerator: shuffled and sliced there, no copies
        self.train_set: InMemoryImages | None = None

    def load(self) -> LoadedData:
        """The source's normal training images and its labelled test set."""
        raise NotImplementedError(f"{type(self).__name__} must define load()")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.split()
        if self.on_device and self.trainer is not None:
            for dataset in (self.train_set, self.val_set, self.test_set):
                dataset.to(self.trainer.strategy.root_device)

    def split(self) -> None:
        data = self.load()
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(data.train), generator=generator)
        n_val = math.floor(len(data.train) * self.val_fraction)
        self.train_set = InMemoryImages(
            data.train[order[n_val:]], torch.zeros(len(data.train) - n_val, dtype=torch.long)
        )
        self.val_set = InMemoryImages(data.train[order[:n_val]], torch.zeros(n_val, dtype=torch.long))
        if self.synthetic_val_defects:
            self.val_set = with_painted_copies(self.val_set, self.split_seed)
        test_order = torch.randperm(len(data.test), generator=generator)
        masks = data.test_masks[test_order] if data.test_masks is not None else None
        test_set = InMemoryImages(data.test[test_order], data.test_labels[test_order], masks)
        test_names = [data.test_names[i] for i in test_order.tolist()]
        if self.val_defects:
            moved = self.moved_to_validation(test_set.labels)
            kept = torch.ones(len(test_set), dtype=torch.bool).index_fill_(0, moved, False).nonzero().flatten()
            self.val_names = [test_names[i] for i in moved.tolist()]
            log.info(
                "data.val_defects=%d: these test images validate instead: %s",
                self.val_defects,
                ", ".join(self.val_names),
            )
            real = test_set.subset(moved)
            real.from_test.fill_(True)
            self.val_set = mixed(self.val_set, real, generator)
            test_set, test_names = test_set.subset(kept), [test_names[i] for i in kept.tolist()]
        self.test_set, self.test_names = test_set, test_names
        log.info("split sizes: %s", self.split_sizes())

    def moved_to_validation(self, test_labels: torch.Tensor) -> torch.Tensor:
        """The first `val_defects` normal and abnormal images of the (seeded) test order; at least one of
        each stays in the test set."""
        counts = {label: int((test_labels == value).sum()) for value, label in enumerate(("normal", "abnormal"))}
        if min(counts.values()) <= self.val_defects:
            raise InputError(
                f"data.val_defects={self.val_defects} needs more than {self.val_defects} normal and "
                f"abnormal test images, but the test set has {counts['normal']} normal and "
                f"{counts['abnormal']} abnormal: give a smaller data.val_defects"
            )
        return torch.cat([(test_labels == value).nonzero().flatten()[: self.val_defects] for value in (0, 1)])

    def intensity_reference(self) -> tuple[float, float]:
        """The mean, over the normal training images, of each image's mean and of its standard
        deviation, in [-1, 1]: what data.intensity=per_image maps every image to."""
        moments = [image_moments(to_model_range(chunk)) for chunk in self.train_set.images.split(1024)]
        return tuple(torch.cat(parts).mean().item() for parts in zip(*moments, strict=True))

    def split_sizes(self) -> dict[str, int]:
        labels, val, from_test = self.test_set.labels, self.val_set, self.val_set.from_test
        painted = int(((val.labels == 1) & ~from_test).sum())
        return {
            "n_train": len(self.train_set),
            "n_val": int((~from_test).sum()) - painted,  # normal images held out of training
            **({"n_val_painted": painted} if self.synthetic_val_defects else {}),
            **(
                {
                    "n_val_real_normal": int((from_test & (val.labels == 0)).sum()),
                    "n_val_real_abnormal": int((from_test & (val.labels == 1)).sum()),
                }
                if self.val_defects
                else {}
            ),
            "n_test": len(self.test_set),
            "n_test_normal": int((labels == 0).sum()),
            "n_test_abnormal": int((labels == 1).sum()),
        }

    def _loader(
        self, dataset: InMemoryImages, batch_size: int, train: bool = False, order: list[int] | None = None
    ) -> DataLoader:
        trainer = self.trainer
        shuffle = train and trainer is not None  # with a trainer: each epoch's order from the run's seed and the epoch
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and not shuffle,
            sampler=EpochShuffle(len(dataset), torch.initial_seed(), lambda: trainer.current_epoch)
            if shuffle
            else order,
            drop_last=train and len(dataset) > batch_size and self.drop_ragged_batch(),
            collate_fn=already_batched,
            num_workers=self.num_workers,
            generator=torch.Generator(),  # its own: starting a loader must not draw from the global generator
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, torch.Tensor):  # the model summary's example input: already in [-1, 1]
            return batch
        images, labels, index = batch
        return to_model_range(images), labels, index  # on the device: the host only slices uint8

    def drop_ragged_batch(self) -> bool:
        """Whether training drops a ragged last batch: the model says (a last batch of 1-2 images upsets the
        BatchNorm a GAN trains; a model fitted in one pass reads every image)."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        return getattr(model, "drop_ragged_batch", True)

    def train_dataloader(self) -> DataLoader | DeviceShuffledBatches:
        if self.on_device and self.trainer is not None:
            trainer = self.trainer
            return DeviceShuffledBatches(
                self.train_set,
                self.batch_size,
                seed=torch.initial_seed(),  # the run's seed, as set by train.py
                epoch=lambda: trainer.current_epoch,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                drop_last=self.drop_ragged_batch(),
            )
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, self.eval_batch_size) if len(self.val_set) else []

    def test_dataloader(self) -> DataLoader:
        model = self.trainer.lightning_module if self.trainer is not None else None
        # the paper's test, after fit: batched as the anchors batched it
        if getattr(model, "protocol", None) == "paper":
            return self.paper_test_dataloader()
        return self._loader(self.test_set, self.eval_batch_size)

    def paper_test_dataloader(self) -> DataLoader:
        """The test set in the paper protocol's batches (see the class docstring); every image once."""
        if self.paper_test_batches == "mixed":
            return self._loader(self.test_set, self.eval_batch_size)
        order = torch.arange(len(self.test_set))
        if self.ANCHORS_SORT_TEST_BY_LABEL:
            order = anchors_order(self.test_set.labels, self.images_read(self.batch_size))
        return self._loader(self.test_set, self.batch_size, order=order.tolist())

    def images_read(self, batch_size: int) -> int:
        """How many test images a test in batches of `batch_size` reads under trainer.limit_test_batches."""
        limit = self.trainer.limit_test_batches if self.trainer is not None else 1.0
        return min(len(self.test_set), batches_read(limit, math.ceil(len(self.test_set) / batch_size)) * batch_size)


def with_painted_copies(normal: InMemoryImages, seed: int) -> InMemoryImages:
    """The normal images and a copy of each with a painted defect (label 1, its mask), in a seeded order
    that mixes the two, so that `limit_val_batches` draws from both."""
    generator = torch.Generator().manual_seed(seed + 1)
    painted, masks = paint_defects(normal.images, generator)
    images, labels = labelled(normal.images, painted)
    all_masks = torch.cat([torch.zeros_like(masks), masks])
    order = torch.randperm(len(images), generator=generator)
    return InMemoryImages(images[order], labels[order], all_masks[order])


def mixed(first: InMemoryImages, second: InMemoryImages, generator: torch.Generator) -> InMemoryImages:
    """Two sets as one, in a seeded order that mixes them (so that `limit_val_batches` draws from both);
    where only one has masks, the other's are 0 for its normal images and MASK_UNKNOWN for its abnormal ones."""

    def masks_of(part: InMemoryImages) -> torch.Tensor:
        if part.masks is not None:
            return part.masks
        unknown = torch.full(part.images.shape[:1] + part.images.shape[2:], MASK_UNKNOWN, dtype=torch.int8)
        return unknown.masked_fill_((part.labels == 0)[:, None, None], 0)

    masks = (
        torch.cat([masks_of(first), masks_of(second)]) if first.masks is not None or second.masks is not None else None
    )
    joined = InMemoryImages(
        torch.cat([first.images, second.images]),
        torch.cat([first.labels, second.labels]),
        masks,
        torch.cat([first.from_test, second.from_test]),
    )
    return joined.subset(torch.randperm(len(joined.images), generator=generator))


def labelled(normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.cat([normal, abnormal])
    labels = torch.cat([torch.zeros(len(normal), dtype=torch.long), torch.ones(len(abnormal), dtype=torch.long)])
    return images, labels
