"""Skip-GANomaly (Akcay et al. 2019), as its reference code (`samet-akcay/skip-ganomaly`,
`lib/models/skipganomaly.py`) trains and scores it."""

import torch
import torch.nn.functional as F

from fned_lightning.models.gan import AnomalyGAN, real_fake_bce


class SkipGANomaly(AnomalyGAN):
    """U-Net G; D's features f(x) are its 100-d vector. G: adversarial BCE, contextual L1, latent L2 on
    f (weights 1 / 50 / 1); D: BCE(real) + BCE(fake) + w_lat * latent L2, as the reference's
    `backward_d` adds `err_g_lat`. Score 0.9 * mean squared residual + 0.1 * mean squared gap of f."""

    display_name = "Skip-GANomaly"

    def generator_losses(self, x, x_fake, extras, real_features, fake_logits, fake_features):
        return {
            "adv": F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits)),
            "con": F.l1_loss(x_fake, x),
            "lat": F.mse_loss(fake_features, real_features),
        }

    def discriminator_loss(self, real_logits, fake_logits, real_features, fake_features):
        return real_fake_bce(real_logits, fake_logits) + self.loss_weights["lat"] * F.mse_loss(
            fake_features, real_features
        )

    def score(self, x):
        x_fake = self.generator(x)
        _, features = self.discriminator(x)
        _, fake_features = self.discriminator(x_fake)
        weight = self.hparams.score_weight
        residual = (x.float() - x_fake.float()).pow(2).flatten(1).mean(1)  # float32: see scoring.anomaly_score
        feature_gap = (features.float() - fake_features.float()).pow(2).mean(1)
        return weight * residual + (1 - weight) * feature_gap, x_fake
