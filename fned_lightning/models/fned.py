"""FNED (paper section 1): the fully-nested encoder-decoder generator against a DCGAN discriminator,
its losses (section 1.3) and its anomaly score (section 1.2); the alternating training step is `gan.AnomalyGAN`."""

import torch
import torch.nn.functional as F

from fned_lightning.models.gan import AnomalyGAN, real_fake_bce
from fned_lightning.scoring import anomaly_score


class FNED(AnomalyGAN):
    """G: adversarial, contextual and latent terms (weights 1 / 20 / 1); D: BCE(real) + BCE(fake).
    Score A(x) = 0.9 ||x - x_fake||_1 + 0.1 ||f(x) - f(x_fake)||_2 (`score_weight`, `score_reduction`)."""

    def generator_losses(self, x, x_fake, extras, real_features, fake_logits, fake_features) -> dict[str, torch.Tensor]:
        """FNED's terms: adversarial (non-saturating BCE), contextual and latent smooth-L1."""
        return {
            "adv": F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits)),
            "con": F.smooth_l1_loss(x_fake, x),
            "lat": F.smooth_l1_loss(fake_features, real_features),
        }

    def discriminator_loss(self, real_logits, fake_logits, real_features, fake_features) -> torch.Tensor:
        """D maximises L_adv = log D(x) + log(1 - D(x_fake)), i.e. minimises the two BCE terms."""
        return real_fake_bce(real_logits, fake_logits)

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw anomaly scores A(x) and reconstructions x_fake, for images in [-1, 1]."""
        x_fake = self.reconstruct(x)[0]
        _, features = self.discriminator(x)
        _, fake_features = self.discriminator(x_fake)
        scores = anomaly_score(
            x, x_fake, features, fake_features, self.hparams.score_weight, self.hparams.score_reduction
        )
        return scores, x_fake
