import pytest
import torch

from fned_lightning.errors import InputError
from fned_lightning.networks.dcgan import DCGANDiscriminator
from fned_lightning.networks.fned import FNEDGenerator


@pytest.mark.parametrize("size,channels", [(16, 1), (32, 3), (64, 1)])
def test_generator_reconstructs_same_shape_in_tanh_range(size, channels):
    generator = FNEDGenerator(channels=channels, width=4)
    x = torch.rand(2, channels, size, size) * 2 - 1
    x_fake = generator(x)
    assert x_fake.shape == x.shape
    assert x_fake.abs().max() <= 1


def test_generator_is_fully_nested_with_dense_skips():
    width = 4
    generator = FNEDGenerator(channels=3, width=width)
    assert len(generator.encoder) == 5  # X[0][0] and z1..z4
    assert sorted(generator.nodes) == sorted(f"{i}_{j}" for j in range(1, 5) for i in range(5 - j))  # 4+3+2+1 nodes
    # X[0][4], the end of branch D4, reads X[0][0..3] and the upsampled X[1][3]: 4*w + 2*w channels.
    assert generator.nodes["0_4"].body[0].in_channels == 4 * width + 2 * width
    assert generator.nodes["3_1"].body[0].in_channels == 8 * width + 16 * width
    assert isinstance(generator.nodes["0_1"].shortcut[0], torch.nn.Conv2d)  # residual blocks, projected shortcut


def test_generator_rejects_sizes_that_are_not_multiples_of_16():
    with pytest.raises(InputError, match="multiples of 16"):
        FNEDGenerator(channels=1, width=4)(torch.zeros(1, 1, 40, 40))


@pytest.mark.parametrize("size,feature_dim", [(32, 4 * 8 * 16), (64, 8 * 8 * 16)])
def test_discriminator_gives_one_logit_and_flat_features(size, feature_dim):
    discriminator = DCGANDiscriminator(image_size=size, channels=3, width=8)
    logits, features = discriminator(torch.randn(5, 3, size, size))
    assert logits.shape == (5,)
    assert features.shape == (5, feature_dim)


def test_discriminator_rejects_bad_size():
    with pytest.raises(ValueError, match="multiple of 16"):
        DCGANDiscriminator(image_size=40)
