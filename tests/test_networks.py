import pytest
import torch

from fned_lightning.errors import InputError
from fned_lightning.networks.dcgan import DCGANDiscriminator
from fned_lightning.networks.fned import FNEDGenerator
from fned_lightning.networks.layers import (
    FoldConvTranspose2d,
    WholeImageConv2d,
    WholeImageConvTranspose2d,
    to_channels_last,
)
from fned_lightning.networks.unet import UNetGenerator


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
    with pytest.raises(InputError, match="input side=40 is not a multiple of 16"):
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


@pytest.mark.parametrize(
    "layer,parent,in_shape,args",
    [
        (WholeImageConv2d, torch.nn.Conv2d, (5, 6, 2, 2), (6, 7, 4, 2, 1)),  # U-Net's innermost, 2x2 -> 1x1
        (WholeImageConv2d, torch.nn.Conv2d, (5, 6, 4, 4), (6, 7, 4, 1, 0)),  # DCGAN head, 4x4 -> 1x1
        (WholeImageConvTranspose2d, torch.nn.ConvTranspose2d, (5, 6, 1, 1), (6, 7, 4, 2, 1)),  # 1x1 -> 2x2
        # DCGAN decoder, 1x1 -> 4x4
        (WholeImageConvTranspose2d, torch.nn.ConvTranspose2d, (5, 6, 1, 1), (6, 7, 4, 1, 0)),
        (FoldConvTranspose2d, torch.nn.ConvTranspose2d, (5, 6, 2, 2), (6, 7, 4, 2, 1)),
        (FoldConvTranspose2d, torch.nn.ConvTranspose2d, (5, 6, 3, 5), (6, 7, 3, 1, 1)),
    ],
)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_matrix_product_layers_compute_what_their_parents_do(layer, parent, in_shape, args, bias, memory_format):
    torch.manual_seed(0)
    fast, reference = layer(*args, bias=bias), parent(*args, bias=bias)
    reference.load_state_dict(fast.state_dict())  # the same keys: checkpoints load either way
    fast, reference = fast.to(memory_format=memory_format), reference.to(memory_format=memory_format)
    x = torch.randn(in_shape).contiguous(memory_format=memory_format).requires_grad_()
    outputs = [module(x) for module in (fast, reference)]
    torch.testing.assert_close(outputs[0], outputs[1])
    upstream = torch.randn_like(outputs[1])
    grads = [
        torch.autograd.grad(out, [x, *module.parameters()], upstream)
        for out, module in zip(outputs, (fast, reference), strict=True)
    ]
    for fast_grad, reference_grad in zip(*grads, strict=True):
        torch.testing.assert_close(fast_grad, reference_grad)


def test_whole_image_layers_refuse_inputs_they_do_not_cover():
    with pytest.raises(ValueError, match="covers exactly"):
        WholeImageConv2d(3, 4, 4, 2, 1)(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="1x1 inputs"):
        WholeImageConvTranspose2d(3, 4, 4, 2, 1)(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="groups=1"):
        FoldConvTranspose2d(4, 4, 4, 2, 1, groups=2)


def test_channels_last_skips_the_matrix_product_layers():
    network = to_channels_last(UNetGenerator(image_size=16, channels=3, width=4))
    for module in network.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            matrix_product = isinstance(module, (WholeImageConv2d, WholeImageConvTranspose2d, FoldConvTranspose2d))
            assert module.weight.is_contiguous(memory_format=torch.channels_last) != matrix_product, module
    assert any(isinstance(module, FoldConvTranspose2d) for module in network.modules())
