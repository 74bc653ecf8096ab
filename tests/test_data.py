from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from fned_lightning.data.base import DeviceShuffledBatches, InMemoryImages
from fned_lightning.data.cifar10 import CIFAR10OneClass, resolve_cifar10_class
from fned_lightning.data.folder import ImageFolderAnomaly
from fned_lightning.data.synthetic import SyntheticParts, draw_parts
from fned_lightning.errors import InputError
from fned_lightning.scoring import MASK_UNKNOWN


def cifar(root, anomaly_class="horse", **kwargs):
    module = CIFAR10OneClass(root=str(root), anomaly_class=anomaly_class, download=False, **kwargs)
    module.setup("fit")
    return module


def test_cifar10_one_class_split_counts_and_labels(cifar_folder):
    module = cifar(cifar_folder, val_fraction=0.0)
    # 9 normal classes x 3 training images; test: 9 x 2 normal + the anomaly's 3 train + 2 test images.
    assert module.split_sizes() == {"n_train": 27, "n_val": 0, "n_test": 23, "n_test_normal": 18, "n_test_abnormal": 5}
    for name, label in zip(module.test_names, module.test_set.labels.tolist(), strict=True):
        assert ("/horse/" in f"/{name}") == (label == 1), name
    assert module.train_set.images.dtype == torch.uint8
    assert module.train_set.images.shape[1:] == (3, 32, 32)


def test_validation_split_comes_from_normal_training_images(cifar_folder):
    module = cifar(cifar_folder, val_fraction=0.2)
    assert module.split_sizes()["n_val"] == 5 and module.split_sizes()["n_train"] == 22
    train = {tuple(image.flatten()[:64].tolist()) for image in module.train_set.images}
    val = {tuple(image.flatten()[:64].tolist()) for image in module.val_set.images}
    assert not train & val


def test_test_set_is_shuffled_so_a_prefix_holds_both_classes(cifar_folder):
    module = cifar(cifar_folder, eval_batch_size=12)
    images, labels, index = next(iter(module.test_dataloader()))
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8
    assert 0 < labels.sum() < 12
    assert torch.equal(module.test_set.labels[index], labels)


def test_paper_short_names_are_accepted():
    assert resolve_cifar10_class("plane") == "airplane"
    assert resolve_cifar10_class("Car") == "automobile"


@pytest.mark.parametrize("name", ["horses", None])
def test_unknown_class_lists_the_valid_names(name):
    with pytest.raises(InputError, match="airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck"):
        resolve_cifar10_class(name)


def test_missing_cifar10_names_the_path_and_the_layouts(tmp_path):
    with pytest.raises(InputError, match=f"(?s){tmp_path / 'nowhere'}.*train/<class>"):
        cifar(tmp_path / "nowhere")


def test_cifar10_folder_copy_is_cached_as_tensors(cifar_folder, tmp_path, monkeypatch):
    first = cifar(cifar_folder, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("cifar10-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the second load decoded the JPEGs again instead of reading the cache")

    monkeypatch.setattr("fned_lightning.data.cifar10.load_images", no_decoding)
    second = cifar(cifar_folder, cache_dir=str(tmp_path))
    assert torch.equal(first.test_set.images, second.test_set.images)


def test_folder_datamodule_reads_mvtec_layout(parts_folder):
    module = ImageFolderAnomaly(root=str(parts_folder), image_size=32, channels=1, val_fraction=0.25)
    module.setup("fit")
    assert module.split_sizes() == {"n_train": 9, "n_val": 3, "n_test": 9, "n_test_normal": 4, "n_test_abnormal": 5}
    assert module.train_set.images.shape[1:] == (1, 32, 32)  # 40x48 grey resized, notes.txt skipped
    for name, label in zip(module.test_names, module.test_set.labels.tolist(), strict=True):
        assert name.startswith("test/good/") == (label == 0)


def test_folder_datamodule_converts_grey_to_colour(parts_folder):
    module = ImageFolderAnomaly(root=str(parts_folder), image_size=16, channels=3)
    module.setup("fit")
    images = module.test_set.images
    assert images.shape[1:] == (3, 16, 16)
    assert torch.equal(images[:, 0], images[:, 2])


def test_missing_normal_folder_names_the_expected_layout(parts_folder):
    with pytest.raises(InputError, match=r"(?s)train/ok.*does not exist.*Expected layout"):
        ImageFolderAnomaly(root=str(parts_folder), normal_dir="ok", image_size=32).setup("fit")


def test_empty_folder_is_reported(tmp_path):
    (tmp_path / "train/good").mkdir(parents=True)
    with pytest.raises(InputError, match="no images in .*train/good"):
        ImageFolderAnomaly(root=str(tmp_path), image_size=32).setup("fit")


def test_unreadable_image_names_the_file(parts_folder, tmp_path):
    root = tmp_path / "parts"
    for folder in ("train/good", "test/good", "test/crack"):
        (root / folder).mkdir(parents=True)
        write_png(torch.zeros(1, 16, 16, dtype=torch.uint8), str(root / folder / "000.png"))
    (root / "train/good/001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError, match="cannot read image .*001.png"):
        ImageFolderAnomaly(root=str(root), image_size=16).setup("fit")


@pytest.mark.parametrize("size", [40, 8])
def test_image_size_must_be_a_multiple_of_16(size):
    with pytest.raises(InputError, match="not a multiple of 16"):
        SyntheticParts(image_size=size)


def test_synthetic_parts_are_deterministic_and_defects_differ():
    def make():
        module = SyntheticParts(n_train=32, n_test_normal=16, n_test_abnormal=16, image_size=32, channels=1)
        module.setup("fit")
        return module

    first, second = make(), make()
    assert torch.equal(first.test_set.images, second.test_set.images)
    assert first.split_sizes()["n_test_abnormal"] == 16
    images, labels = first.test_set.images.float(), first.test_set.labels
    mean_normal = first.train_set.images.float().mean(0)
    gap = (images - mean_normal).abs().mean((1, 2, 3))
    assert gap[labels == 1].mean() > gap[labels == 0].mean()


def test_device_batches_shuffle_each_epoch_and_split_ranks_evenly():
    dataset = InMemoryImages(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), torch.zeros(50, dtype=torch.long))
    epoch = [0]

    def batches(rank: int, seed: int = 7) -> list[torch.Tensor]:
        loader = DeviceShuffledBatches(
            dataset, batch_size=8, seed=seed, epoch=lambda: epoch[0], rank=rank, world_size=2
        )
        assert len(loader) == 3  # 25 images a rank: 3 whole batches, the ragged one dropped
        return [index for _, _, index in loader]

    first = [torch.cat(batches(rank)) for rank in (0, 1)]
    assert all(len(indices) == 24 for indices in first)
    assert not set(first[0].tolist()) & set(first[1].tolist())  # each rank its own images
    images, _, index = next(iter(DeviceShuffledBatches(dataset, 8, seed=7, epoch=lambda: 0)))
    assert torch.equal(images.flatten().long(), index)  # images and indices travel together
    assert torch.equal(torch.cat(batches(0)), first[0])  # reproducible for a seed and an epoch
    epoch[0] = 1
    assert not torch.equal(torch.cat(batches(0)), first[0])  # a new order every epoch
    kept = DeviceShuffledBatches(dataset, batch_size=8, seed=7, epoch=lambda: 0, rank=1, world_size=2, drop_last=False)
    # a model fitted in one pass reads every image
    assert len(kept) == 4 and sum(len(index) for _, _, index in kept) == 25


def test_synthetic_masks_cover_the_painted_defects_exactly():
    # The same draws with and without defects: a defect is painted over the part after it is drawn,
    # so the pixels that differ are the painted ones, and the masks must be exactly those.
    plain, no_defects = draw_parts(64, 32, 1, torch.Generator().manual_seed(3))
    defective, masks = draw_parts(64, 32, 1, torch.Generator().manual_seed(3), defective=True)
    assert not no_defects.any() and masks.dtype == torch.int8
    assert torch.equal(masks.bool(), plain[:, 0] != defective[:, 0])
    assert masks.flatten(1).any(1).all()  # every defect image has defect pixels
    module = SyntheticParts(n_train=16, n_test_normal=8, n_test_abnormal=8, image_size=32, channels=1)
    module.setup("fit")
    test = module.test_set
    assert torch.equal(test.masks.flatten(1).any(1), test.labels.bool())  # normal test images: no defect pixels


def mvtec_with_masks(root, mask_size=(60, 80)):
    """parts with root/ground_truth/<defect>/<stem>_mask.png for every defect image but crack/001."""
    for folder, count in (("train/good", 4), ("test/good", 2), ("test/scratch", 2), ("test/crack", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            write_png(torch.full((1, 30, 40), 50 * i, dtype=torch.uint8), str(root / folder / f"{i:03d}.png"))
    for defect, i in (("scratch", 0), ("scratch", 1), ("crack", 0)):
        mask = torch.zeros(1, *mask_size, dtype=torch.uint8)
        mask[:, : mask_size[0] // 2, : mask_size[1] // 4] = 255  # the top half of the first quarter of the columns
        (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        write_png(mask, str(root / "ground_truth" / defect / f"{i:03d}_mask.png"))
    return root


def test_mvtec_ground_truth_masks_are_read_resized_and_a_missing_one_is_named(tmp_path, caplog):
    root = mvtec_with_masks(tmp_path / "parts")
    module = ImageFolderAnomaly(root=str(root), image_size=16, channels=1)
    module.setup("fit")
    masks = {name: mask for name, mask in zip(module.test_names, module.test_set.masks, strict=True)}
    assert masks["test/good/000.png"].shape == (16, 16) and not masks["test/good/000.png"].any()
    expected = torch.zeros(16, 16, dtype=torch.int8)
    expected[:8, :4] = 1  # nearest-neighbour from 60x80: the same top-left block, scaled
    assert torch.equal(masks["test/scratch/001.png"], expected)
    assert (masks["test/crack/001.png"] == MASK_UNKNOWN).all()  # not counted as all-normal
    assert "ground_truth/crack/001_mask.png" in caplog.text and "left out of the pixel metrics" in caplog.text


def test_folders_without_ground_truth_have_no_masks(parts_folder):
    module = ImageFolderAnomaly(root=str(parts_folder), image_size=16, channels=1)
    module.setup("fit")
    assert module.test_set.masks is None


def test_bmp_and_16_bit_tiff_parts_are_read_like_png(tmp_path):
    import numpy as np
    from PIL import Image

    from fned_lightning.data.images import read_image

    grey = (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "part.bmp")
    Image.fromarray(grey).convert("RGB").save(tmp_path / "colour.bmp")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen_bit.tif")  # 16-bit, as cameras write
    assert Image.open(tmp_path / "sixteen_bit.tif").mode == "I;16"
    for name in ("part.bmp", "colour.bmp", "sixteen_bit.tif"):
        for channels in (1, 3):
            image = read_image(tmp_path / name, channels)
            assert image.dtype == torch.uint8 and image.shape == (channels, 24, 32), name
            assert torch.equal(image[0], torch.from_numpy(grey)), name  # scaled to 8 bits, not clipped


def test_a_folder_of_unreadable_types_names_what_it_found_and_what_it_reads(tmp_path):
    (tmp_path / "train/good").mkdir(parents=True)
    (tmp_path / "train/good/0001.raw").write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match=r"found only \.raw files; readable: \.png, \.jpg, \.bmp, \.tif"):
        ImageFolderAnomaly(root=str(tmp_path), image_size=32).setup("fit")


def test_on_device_moves_every_tensor_of_every_split_together():
    """data.on_device: images, labels and masks of each split go to the device in one place (the meta
    device stands in for a GPU); masks left on the host crashed GPU runs on data with masks."""
    from types import SimpleNamespace

    module = SyntheticParts(
        n_train=40,
        n_test_normal=4,
        n_test_abnormal=4,
        image_size=16,
        channels=1,
        val_fraction=0.2,
        on_device=True,
        synthetic_val_defects=True,
    )
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    module.setup("fit")
    for split in (module.train_set, module.val_set, module.test_set):
        tensors = [split.images, split.labels] + ([split.masks] if split.masks is not None else [])
        assert all(t.device.type == "meta" for t in tensors)
    assert module.val_set.masks is not None and module.test_set.masks is not None


def test_a_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    """`make train DATA=/nowhere/cifar10` offline: torchvision makes the folder, then cannot download."""
    import torchvision.datasets

    def offline(root, train, download):
        Path(root).mkdir(parents=True, exist_ok=True)
        raise RuntimeError("no internet")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(InputError, match="no CIFAR-10 at data.root="):
        CIFAR10OneClass(root=str(tmp_path / "nowhere" / "cifar10"), anomaly_class="horse", download=True).setup("fit")
    assert not (tmp_path / "nowhere").exists()


def test_images_far_smaller_than_the_image_size_are_named_in_a_warning(tmp_path, caplog):
    folder = tmp_path / "train" / "good"
    folder.mkdir(parents=True)
    for i, side in enumerate((1, 3, 64, 64)):
        write_png(torch.full((1, side, side), 128, dtype=torch.uint8), str(folder / f"{i}.png"))
    from fned_lightning.data.images import load_images

    images = load_images(sorted(folder.iterdir()), channels=1, image_size=64)
    assert images.shape == (4, 1, 64, 64)
    assert "2 of 4 images" in caplog.text and "far smaller than data.image_size=64 (the smallest 1 x 1)" in caplog.text


def batches_of(loader) -> list[tuple[list[int], list[int]]]:
    return [(labels.tolist(), index.tolist()) for _, labels, index in loader]


def test_the_paper_test_on_cifar10_is_batched_as_the_anchors_batched_it(cifar_folder):
    """Their CIFAR-10 test loader is not shuffled: the normal test images, then the anomaly class, in
    training-size batches. With BatchNorm in training mode each batch then normalises one label."""
    module = cifar(cifar_folder, batch_size=4, eval_batch_size=8)
    honest = batches_of(module.test_dataloader())
    paper = batches_of(module.paper_test_dataloader())
    assert [len(labels) for labels, _ in honest] == [8, 8, 7] and [len(labels) for labels, _ in paper] == [4] * 5 + [3]
    honest_labels = [label for labels, _ in honest for label in labels]
    paper_labels = [label for labels, _ in paper for label in labels]
    assert honest_labels != sorted(honest_labels)  # the honest test mixes the labels in every batch
    assert paper_labels == sorted(honest_labels)  # normal first, then the anomalies
    paper_index = [i for _, index in paper for i in index]
    assert sorted(paper_index) == list(range(23))  # every test image once
    normal_index = [i for i, label in zip(paper_index, paper_labels, strict=True) if label == 0]
    assert normal_index == sorted(normal_index)  # the normal images keep the seeded (class-mixed) order
    mixed = cifar(cifar_folder, batch_size=4, eval_batch_size=8, paper_test_batches="mixed")
    assert batches_of(mixed.paper_test_dataloader()) == honest  # the paper protocol of earlier commits


def test_the_paper_test_sorts_only_the_images_a_limited_test_reads(cifar_folder):
    from types import SimpleNamespace

    module = cifar(cifar_folder, batch_size=4)
    module.trainer = SimpleNamespace(limit_test_batches=2, lightning_module=SimpleNamespace(protocol="paper"))
    read = module.test_set.labels[:8].tolist()
    assert 0 < sum(read) < 8  # (the seeded order puts both labels in the first 8)
    batches = batches_of(module.test_dataloader())  # under protocol=paper, the test asks for the paper's batches
    assert [label for labels, _ in batches[:2] for label in labels] == sorted(read)
    assert sorted(i for _, index in batches[:2] for i in index) == list(range(8))
    module.trainer.limit_test_batches = 0.5  # 3 of the 6 batches
    assert module.images_read(4) == 12


def test_the_paper_test_on_folders_is_shuffled_as_the_anchors_shuffled_it(parts_folder):
    module = ImageFolderAnomaly(root=str(parts_folder), image_size=32, channels=1, batch_size=2, eval_batch_size=4)
    module.setup("fit")
    honest = [i for _, index in batches_of(module.test_dataloader()) for i in index]
    paper = batches_of(module.paper_test_dataloader())
    assert [len(labels) for labels, _ in paper] == [2, 2, 2, 2, 1]  # their batch size
    assert [i for _, index in paper for i in index] == honest  # the seeded mixed order: their loader shuffles


def test_an_unknown_paper_test_batching_is_refused(cifar_folder):
    with pytest.raises(InputError, match="data.paper_test_batches=sorted; choose one of: anchors, mixed"):
        CIFAR10OneClass(root=str(cifar_folder), anomaly_class="horse", download=False, paper_test_batches="sorted")
