"""Every model's losses and score on tiny fixed inputs, against values worked out by hand here
(never by calling the project's loss code), and which features each latent term reads."""

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from tests.conftest import TINY_MODELS, compose_config

# One 2x2 grey image and its reconstruction: residuals 0.5, -2, 0.25, 1.5 (inside and outside smooth-L1's
# quadratic zone, so smooth-L1, L1 and L2 all differ).
X = torch.zeros(1, 1, 2, 2)
X_FAKE = torch.tensor([0.5, -2.0, 0.25, 1.5]).view(1, 1, 2, 2)
L1 = (0.5 + 2.0 + 0.25 + 1.5) / 4  # 1.0625
L2 = (0.25 + 4.0 + 0.0625 + 2.25) / 4  # 1.640625
SMOOTH_L1 = (0.125 + 1.5 + 0.03125 + 1.0) / 4  # 0.5 r^2 below 1, |r| - 0.5 above
L1_SUM = 4.25
# D's features of x and x_fake: gaps -1, 3, 0
F_REAL = torch.tensor([[1.0, 0.0, -1.0]])
F_FAKE = torch.tensor([[0.0, 3.0, -1.0]])
F_SMOOTH_L1 = (0.5 + 2.5 + 0.0) / 3
F_L2 = (1.0 + 9.0 + 0.0) / 3
F_NORM = math.sqrt(10.0)
# D's logits: BCE(l, 1) = log(1 + e^-l), BCE(l, 0) = log(1 + e^l)
REAL_LOGITS, FAKE_LOGITS = torch.tensor([2.0]), torch.tensor([0.0])
BCE_REAL = math.log(1 + math.exp(-2.0))  # 0.126928
BCE_FAKE = math.log(2.0)  # the fake judged at logit 0
BCE_FAKE_AS_REAL = math.log(2.0)  # G's non-saturating adversarial term
Z, Z_HAT = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0]])
ENC_L2 = (0.0 + 4.0) / 2


def model(name: str, *overrides: str):
    return instantiate(compose_config("data=synthetic", "data.image_size=16", *TINY_MODELS[name], *overrides).model)


EXPECTED_GENERATOR_LOSSES = {
    "fned": {"adv": BCE_FAKE_AS_REAL, "con": SMOOTH_L1, "lat": F_SMOOTH_L1},
    "skip_ganomaly": {"adv": BCE_FAKE_AS_REAL, "con": L1, "lat": F_L2},
    "ganomaly": {"adv": F_L2, "con": L1, "enc": ENC_L2},  # adv: feature matching
}
EXPECTED_DISCRIMINATOR_LOSS = {
    "fned": BCE_REAL + BCE_FAKE,
    "skip_ganomaly": BCE_REAL + BCE_FAKE + 1.0 * F_L2,  # the reference adds w_lat * L_lat to D's loss
    "ganomaly": (BCE_REAL + BCE_FAKE) / 2,
}


@pytest.mark.parametrize("name", EXPECTED_GENERATOR_LOSSES)
def test_generator_losses_are_the_references(name):
    losses = model(name).generator_losses(X, X_FAKE, {"z": Z, "z_hat": Z_HAT}, F_REAL, FAKE_LOGITS, F_FAKE)
    assert {k: v.item() for k, v in losses.items()} == pytest.approx(EXPECTED_GENERATOR_LOSSES[name])


@pytest.mark.parametrize("name", EXPECTED_DISCRIMINATOR_LOSS)
def test_discriminator_losses_are_the_references(name):
    loss = model(name).discriminator_loss(REAL_LOGITS, FAKE_LOGITS, F_REAL, F_FAKE)
    assert loss.item() == pytest.approx(EXPECTED_DISCRIMINATOR_LOSS[name])


def test_fanogan_encoder_loss_is_image_mse_plus_kappa_feature_mse():
    fanogan = model("fanogan", "model.kappa=2.0")
    stub_networks(fanogan, critic=True)
    assert fanogan.izi_f_loss(X).item() == pytest.approx(L2 + 2.0 * F_L2)


def stub_networks(module, critic: bool = False) -> None:
    """Replace the networks by fixed answers: G gives X_FAKE, D gives F_REAL for X and F_FAKE otherwise."""
    for name in ("generator", "discriminator", "critic", "encoder"):
        if hasattr(module, name):
            delattr(module, name)
    module.generator = lambda inputs: (X_FAKE, Z, Z_HAT) if type(module).__name__ == "GANomaly" else X_FAKE
    module.encoder = lambda x: Z
    d = lambda inputs: (REAL_LOGITS, F_REAL if inputs is X else F_FAKE)  # noqa: E731
    if critic:
        module.critic = d
    else:
        module.discriminator = d


EXPECTED_SCORES = {
    "fned": 0.9 * L1_SUM + 0.1 * F_NORM,  # lambda * ||x - x_fake||_1 + (1 - lambda) * ||f - f_fake||_2
    "skip_ganomaly": 0.9 * L2 + 0.1 * F_L2,  # means of squares, the reference's
    "ganomaly": ENC_L2,  # mean (z - z_hat)^2
    "fanogan": L2 + 1.0 * F_L2,  # image MSE + kappa * feature MSE
}


@pytest.mark.parametrize("name", EXPECTED_SCORES)
def test_scores_are_the_references(name):
    detector = model(name)
    stub_networks(detector, critic=name == "fanogan")
    detection = detector(X)
    scores, x_fake = detection.scores, detection.x_fake
    assert x_fake is X_FAKE
    assert scores.shape == (1,) and scores.item() == pytest.approx(EXPECTED_SCORES[name])


def test_fned_score_with_means_rescales_both_terms():
    detector = model("fned", "model.score_reduction=mean")
    stub_networks(detector)
    assert detector(X)[0].item() == pytest.approx(0.9 * L1 + 0.1 * math.sqrt(F_L2))


# Which features each latent term reads, at the paper widths and 32x32 colour, and their size.
def test_skip_ganomaly_features_are_the_100_d_vector_and_the_classifier_reads_them():
    d = instantiate(
        compose_config(
            "data=synthetic", "data.image_size=32", "data.channels=3", "model=skip_ganomaly"
        ).model.discriminator
    )
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    logits, features = d.eval()(x)
    assert features.shape == (2, 100)
    pyramid = d.features(x)  # the DCGAN pyramid ends at 4x4 with width * 4 channels...
    assert pyramid.shape == (2, 256, 4, 4)
    # ...then a 4x4 conv, no activation
    torch.testing.assert_close(features, torch.nn.functional.conv2d(pyramid, d.head.weight).flatten(1))
    centre = d.classifier.weight[0, :, 1, 1]  # a 3x3 conv, padding 1, on a 1x1 map: only its centre tap
    torch.testing.assert_close(logits, features @ centre)


@pytest.mark.parametrize("name,size", [("fned", 32), ("ganomaly", 32), ("fned", 64)])
def test_dcgan_discriminator_features_are_its_4x4_pyramid(name, size):
    d = instantiate(
        compose_config(
            "data=synthetic", f"data.image_size={size}", "data.channels=3", f"model={name}"
        ).model.discriminator
    )
    x = torch.rand(2, 3, size, size)
    logits, features = d.eval()(x)
    channels = 64 * size // 8  # width doubling from size/2 down to 4x4
    assert features.shape == (2, channels * 16) and logits.shape == (2,)
    # The pyramid written out with functional ops from the layers' weights: 4x4 stride-2 convs, BatchNorm
    # (eval: running statistics) after all but the first, LeakyReLU 0.2 after each, down to 4x4.
    convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    norms = [None] + [m for m in d.features if isinstance(m, torch.nn.BatchNorm2d)]
    h = x
    for conv, norm in zip(convs, norms, strict=True):
        h = F.conv2d(h, conv.weight, stride=2, padding=1)
        if norm is not None:
            h = (h - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
            h = h * norm.weight[:, None, None] + norm.bias[:, None, None]
        h = F.leaky_relu(h, 0.2)
    assert h.shape == (2, channels, 4, 4) and len(convs) == int(math.log2(size)) - 2
    torch.testing.assert_close(features, h.flatten(1))
    torch.testing.assert_close(logits, (h * d.head.weight).flatten(1).sum(1))  # the head: one 4x4 conv to a logit


@pytest.mark.parametrize("size,blocks", [(32, 3), (64, 4), (128, 5)])
def test_fanogan_critic_features_are_the_last_residual_block(size, blocks):
    cfg = compose_config("data=synthetic", f"data.image_size={size}", "data.channels=1", "model=fanogan").model
    critic, generator, encoder = (instantiate(cfg[k]) for k in ("critic", "generator", "encoder"))
    assert len(critic.blocks) == len(generator.blocks) == len(encoder.blocks) == blocks
    assert [b.conv2.out_channels for b in critic.blocks][-1] == 512 and critic.output.in_features == 512 * 16
    x = torch.rand(2, 1, size, size)
    values, features = critic(x)
    torch.testing.assert_close(features, critic.blocks(critic.input(x)).flatten(1))
    assert features.shape == (2, 512 * 16) and values.shape == (2,)
    assert all(
        isinstance(m, torch.nn.GroupNorm) and m.num_groups == 1
        for m in (critic.blocks[0].norm1, critic.blocks[-1].norm2)
    )
    assert isinstance(encoder.blocks[0].norm1, torch.nn.BatchNorm2d)
    z = encoder(x)
    assert z.shape == (2, 128) and generator(z).shape == x.shape
