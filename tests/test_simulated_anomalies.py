"""The simulated anomalies the segmentation head learns from (DRAEM's recipe): masks, sources, opacity, seeds."""

import pytest
import torch

from fned_lightning.errors import InputError
from fned_lightning.simulated_anomalies import (
    ANOMALY_SHARE,
    OPACITY,
    anomaly_masks,
    check_sources,
    fill,
    perlin_noise,
    simulate_anomalies,
)


def draw(x: torch.Tensor, sources=("colour", "image", "noise"), seed: int = 0):
    torch.manual_seed(seed)
    return simulate_anomalies(x, sources)


def test_the_same_seed_gives_the_same_draw_and_another_seed_another():
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    first, again, other = draw(x, seed=1), draw(x, seed=1), draw(x, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])


def test_about_half_the_images_get_an_anomaly_covering_a_small_part_of_the_image():
    torch.manual_seed(0)
    masks = anomaly_masks(400, 64, "cpu")
    assert masks.shape == (400, 1, 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    coverage = masks.flatten(1).mean(1)
    assert ANOMALY_SHARE - 0.12 < (coverage > 0).float().mean() <= ANOMALY_SHARE + 0.05
    assert 0.01 < coverage[coverage > 0].median() < 0.2 and coverage.max() < 0.9  # blobs, never the whole image


def test_perlin_noise_is_smooth_and_in_range_and_its_lattice_varies_between_images():
    torch.manual_seed(0)
    noise = perlin_noise(64, 64, "cpu")
    assert noise.abs().max() <= 1.0 + 1e-5 and noise.std() > 0.1
    step = (noise[:, :, 1:] - noise[:, :, :-1]).abs().mean()
    assert step < 0.2 * noise.std()  # neighbours alike: noise with structure, not white noise
    roughness = (noise[:, :, 1:] - noise[:, :, :-1]).abs().flatten(1).mean(1)
    assert roughness.max() > 3 * roughness.min()  # coarse and fine lattices both drawn


def test_outside_its_mask_an_image_is_untouched():
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    y, masks = draw(x)
    outside = masks.expand_as(x) == 0
    assert torch.equal(y[outside], x[outside])
    assert (y[~outside] != x[~outside]).float().mean() > 0.9


def test_the_opacity_is_drawn_in_its_range():
    """With plain colours c the fill does not depend on the image: from the same draw on an all -1 and an
    all +1 image, y_minus - y_plus = 2 * opacity - 2 inside the mask."""
    n = 400
    minus, masks = draw(torch.full((n, 1, 16, 16), -1.0), ("colour",))
    plus, same_masks = draw(torch.full((n, 1, 16, 16), 1.0), ("colour",))
    assert torch.equal(masks, same_masks)
    has = masks.flatten(1).any(1)
    inside = masks[has].bool()[:, 0]
    opacity = 1 + (minus[has][:, 0] - plus[has][:, 0])[inside] / 2
    assert OPACITY[0] - 1e-5 <= opacity.min() < 0.2 and 0.9 < opacity.max() <= OPACITY[1] + 1e-5


def test_a_plain_colour_fills_each_image_with_one_value_per_channel():
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    colour = fill(x, "colour")
    assert torch.equal(colour, colour[:, :, :1, :1].expand_as(colour)) and colour.abs().max() <= 1
    assert colour[:, :, 0, 0].unique().numel() == 24


def test_another_images_content_is_the_next_image_moved_and_recoloured():
    """Shifts and quarter turns keep an image's values; a gain and an offset per channel keep their order:
    each fill's sorted values are an affine function of the previous image's."""
    x = torch.rand(6, 1, 16, 16) * 0.6 - 0.3  # no clamping at the largest gain and offset
    torch.manual_seed(0)
    content = fill(x, "image")
    for i in range(6):
        got, source = content[i].flatten().sort().values, x[i - 1].flatten().sort().values
        assert torch.corrcoef(torch.stack([got, source]))[0, 1] > 0.9999
        assert not torch.equal(content[i], x[i])


def test_a_noise_texture_is_smooth_varied_and_in_range():
    x = torch.zeros(8, 3, 32, 32)
    torch.manual_seed(0)
    texture = fill(x, "noise")
    assert texture.abs().max() <= 1 and texture.flatten(2).std(2).min() > 0.02
    assert not torch.equal(texture[:, 0], texture[:, 1])  # a texture per channel


@pytest.mark.parametrize("sources", [(), ("colour", "paint")])
def test_unknown_or_no_sources_are_refused(sources):
    with pytest.raises(InputError, match="choose one or more of: colour, image, noise"):
        check_sources(sources)
