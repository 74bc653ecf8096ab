"""The identity shortcut (issue 13): its diagnostic, the remedies, and the painted validation defects."""

import lightning as L
import pytest
import torch
from torch import nn

from fned_lightning.data.synthetic import SyntheticParts, draw_parts
from fned_lightning.defects import PATCH_GRID, VISIBLE, corrupt, paint_defects
from fned_lightning.errors import InputError
from fned_lightning.networks.fned import DEPTH, FNEDGenerator
from fned_lightning.scoring import MASK_UNKNOWN, defect_residual_ratio, residual_map
from tests.conftest import tiny_parts
from tests.test_module import tiny_model


def parts_with_defects(n: int = 24, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normal parts in [-1, 1], the same parts with painted defects, and the defects' masks."""
    normal, _ = draw_parts(n, size, 1, torch.Generator().manual_seed(0))
    painted, masks = paint_defects(normal, torch.Generator().manual_seed(1))
    return normal.float() / 127.5 - 1, painted.float() / 127.5 - 1, masks


def test_a_generator_that_copies_its_input_has_ratio_one_and_one_that_gives_the_normal_part_a_large_one():
    torch.manual_seed(0)
    normal, painted, masks = parts_with_defects()
    assert masks.sum() > 1000
    copy = defect_residual_ratio(residual_map(painted, painted), masks)
    noisy_copy = defect_residual_ratio(residual_map(painted, painted + 0.05 * torch.randn_like(painted)), masks)
    normal_part = defect_residual_ratio(residual_map(painted, normal), masks)  # the ideal: the part without its defect
    constant = defect_residual_ratio(residual_map(painted, normal.mean(0, keepdim=True).expand_as(normal)), masks)
    assert copy == pytest.approx(1.0) and noisy_copy == pytest.approx(1.0, abs=0.05)
    assert normal_part > 1e4 and constant > 3


def test_the_ratio_reads_only_images_with_a_known_defect():
    residuals = torch.ones(3, 4, 4)
    residuals[0, 0, 0] = 5.0
    masks = torch.zeros(3, 4, 4, dtype=torch.int8)
    masks[0, 0, 0] = 1
    masks[2] = MASK_UNKNOWN
    residuals[2] = 100.0  # an image without its mask, left out
    assert defect_residual_ratio(residuals, masks) == pytest.approx((5 + 1e-6) / (1 + 1e-6))
    assert torch.isnan(torch.tensor(defect_residual_ratio(residuals[1:], masks[1:])))  # no defect: undefined


def test_painted_defects_are_deterministic_and_their_masks_are_the_pixels_that_visibly_changed():
    normal, _ = draw_parts(12, 32, 3, torch.Generator().manual_seed(0))
    painted, masks = paint_defects(normal, torch.Generator().manual_seed(1))
    again, same_masks = paint_defects(normal, torch.Generator().manual_seed(1))
    assert torch.equal(painted, again) and torch.equal(masks, same_masks)
    change = (painted.float() - normal.float()).abs().amax(1)
    assert torch.equal(masks.bool(), change >= VISIBLE)
    assert change[~masks.bool()].max() < VISIBLE  # nothing else touched visibly
    assert (masks.flatten(1).sum(1) > 0).float().mean() > 0.8  # nearly every copy carries a visible defect


def test_no_corruption_leaves_the_input_alone():
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert corrupt(x, "none", 0.0) is x


def test_noise_corruption_adds_noise_of_the_given_strength():
    x = torch.zeros(4, 1, 64, 64)
    noisy = corrupt(x, "noise", 0.2)
    assert noisy.std().item() == pytest.approx(0.2, rel=0.05) and noisy.abs().max() <= 1


def test_patch_corruption_masks_the_given_share_of_grid_cells_with_the_image_mean():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 32, 32) * 2 - 1
    damaged = corrupt(x, "patches", 0.25)
    changed = damaged != x
    cell = 32 // PATCH_GRID
    per_cell = changed.view(64, 1, PATCH_GRID, cell, PATCH_GRID, cell).any(5).any(3)
    assert per_cell.float().mean().item() == pytest.approx(0.25, abs=0.03)
    filled = torch.where(changed, damaged, torch.nan)
    assert torch.allclose(
        filled.nan_to_num(0).sum((1, 2, 3)) / changed.sum((1, 2, 3)).clamp_min(1),
        x.mean((1, 2, 3)) * changed.any((1, 2, 3)),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "hparams,message",
    [
        ({"train_corruption": "blur", "corruption_strength": 1.0}, "none, noise, patches"),
        ({"train_corruption": "noise"}, "corruption_strength > 0"),
        ({"train_corruption": "patches", "corruption_strength": 1.5}, "0 < model.corruption_strength < 1"),
    ],
)
def test_bad_corruption_settings_are_refused(hparams, message):
    with pytest.raises(InputError, match=message):
        tiny_model(**hparams)


class Recorder(nn.Module):
    """Wraps a network and keeps what it was given."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network, self.inputs = network, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.network(x)


@pytest.mark.parametrize("kind,strength", [("noise", 0.3), ("patches", 0.5), ("none", 0.0)])
def test_corruption_changes_what_the_generator_sees_in_training_and_never_at_test(kind, strength):
    L.seed_everything(0)
    model = tiny_model(train_corruption=kind, corruption_strength=strength)
    model.generator, model.discriminator = Recorder(model.generator), Recorder(model.discriminator)
    data = SyntheticParts(
        n_train=40, n_test_normal=8, n_test_abnormal=8, image_size=16, channels=1, batch_size=8, val_fraction=0.2
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    # each training step: G(x_in), then D(x) on the clean batch, then D(x_fake) for each of the two steps
    seen_in_training, clean = model.generator.inputs[:2], model.discriminator.inputs[0:6:3]
    for x_in, x in zip(seen_in_training, clean, strict=True):
        assert torch.equal(x_in, x) == (kind == "none")
    model.generator.inputs.clear()
    model.discriminator.inputs.clear()
    trainer.test(model, datamodule=data, verbose=False)
    assert torch.equal(model.generator.inputs[0], model.discriminator.inputs[0])  # the test image itself


@pytest.mark.parametrize("cut", range(DEPTH + 1))
def test_skip_levels_removes_exactly_the_dense_skips_of_the_top_levels(cut):
    width, size = 4, 32
    generator = FNEDGenerator(channels=1, width=width, skip_levels=cut)
    widths = [width * 2**i for i in range(DEPTH + 1)]
    for i in range(DEPTH):
        for j in range(1, DEPTH + 1 - i):
            name = f"{i}_{j}"
            if i < cut:  # a cut level keeps only the node the level above reads, and it reads only the upsampling
                assert (name in generator.nodes) == (j == DEPTH - i), name
                if name in generator.nodes:
                    assert generator.nodes[name].body[0].in_channels == widths[i + 1]
            else:  # untouched: X[i][0..j-1] and Up(X[i+1][j-1])
                assert generator.nodes[name].body[0].in_channels == j * widths[i] + widths[i + 1]
    assert generator(torch.rand(2, 1, size, size) * 2 - 1).shape == (2, 1, size, size)


class Blocked(nn.Module):
    """A pooling that passes nothing on: what still reaches the output did not go through a downsampling."""

    def forward(self, x):
        return x[..., ::2, ::2] * 0  # zero, yet still in the graph: a gradient of exactly 0, not None


@pytest.mark.parametrize("cut,full_resolution_path", [(0, True), (1, False), (2, False)])
def test_with_the_top_level_cut_nothing_reaches_the_output_without_a_downsampling(cut, full_resolution_path):
    torch.manual_seed(0)
    generator = FNEDGenerator(channels=1, width=4, skip_levels=cut).eval()
    generator.pool = Blocked()
    x = torch.rand(1, 1, 32, 32, requires_grad=True)
    generator(x).sum().backward()
    assert (x.grad.abs().sum() > 0) == full_resolution_path


def test_skip_levels_out_of_range_is_refused():
    with pytest.raises(InputError, match="skip_levels must be 0"):
        FNEDGenerator(channels=1, width=4, skip_levels=DEPTH + 1)


def test_painted_validation_defects_double_the_validation_split_with_masks():
    plain, painted = tiny_parts(), tiny_parts(synthetic_val_defects=True)
    plain.setup("fit"), painted.setup("fit")
    assert painted.split_sizes()["n_val"] == plain.split_sizes()["n_val"] == 8
    assert painted.split_sizes()["n_val_painted"] == 8 and "n_val_painted" not in plain.split_sizes()
    val = painted.val_set
    assert torch.equal(val.images[val.labels == 0].sort(0).values, plain.val_set.images.sort(0).values)
    assert val.masks[val.labels == 0].eq(0).all() and val.masks[val.labels == 1].flatten(1).any(1).float().mean() > 0.5
    assert val.labels[:8].unique().numel() == 2  # mixed, so that limit_val_batches reads both kinds
    assert torch.equal(plain.train_set.images, painted.train_set.images)


def test_only_normal_validation_images_fit_the_normalisation_and_the_defects_are_measured_every_epoch():
    results = {}
    for with_defects in (False, True):
        L.seed_everything(0)
        model = tiny_model()
        trainer = L.Trainer(
            max_epochs=2,
            limit_train_batches=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, datamodule=tiny_parts(synthetic_val_defects=with_defects))
        results[with_defects] = model, dict(trainer.logged_metrics)
    plain, painted = results[False][0], results[True][0]
    for buffer in ("score_min", "score_max", "score_threshold", "pixel_threshold"):
        assert torch.equal(getattr(plain, buffer), getattr(painted, buffer)), buffer
    assert plain.val_results == {}
    for key in ("val_auroc", "val_auroc_score_map_max", "val_pixel_auroc", "val_defect_residual_ratio"):
        assert painted.val_results[key] > 0, key
        assert f"val/{key.removeprefix('val_')}" in results[True][1]
