"""GANomaly (Akcay et al. 2018), as its reference code (`samet-akcay/ganomaly`, `lib/model.py`) trains
and scores it."""

import torch.nn.functional as F

from fned_lightning.models.gan import AnomalyGAN, real_fake_bce


class GANomaly(AnomalyGAN):
    """Encoder-decoder-encoder G. G: adversarial feature matching (L2 between D's features of x and
    x_fake), contextual L1, encoder L2 on z vs z_hat (weights 1 / 50 / 1); D: (BCE(real) + BCE(fake)) / 2,
    re-initialised below 1e-5. Score mean (z - z_hat)^2."""

    def reconstruct(self, x):
        x_fake, z, z_hat = self.generator(x)
        return x_fake, {"z": z, "z_hat": z_hat}

    def generator_losses(self, x, x_fake, extras, real_features, fake_logits, fake_features):
        return {
            "adv": F.mse_loss(fake_features, real_features),
            "con": F.l1_loss(x_fake, x),
            "enc": F.mse_loss(extras["z_hat"], extras["z"]),
        }

    def discriminator_loss(self, real_logits, fake_logits, real_features, fake_features):
        return real_fake_bce(real_logits, fake_logits) / 2

    def score(self, x):
        x_fake, z, z_hat = self.generator(x)
        return (z.float() - z_hat.float()).pow(2).mean(1), x_fake
