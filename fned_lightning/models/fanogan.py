"""f-AnoGAN (Schlegl et al. 2019), as its reference code (`tSchlegl/f-AnoGAN`: `wgangp_64x64.py`,
`z_encoding_izif.py`) trains and scores it, in one run."""

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from fned_lightning.errors import InputError, check_number
from fned_lightning.models.detector import check_network_sizes, check_optimiser
from fned_lightning.models.reconstruction import ReconstructionDetector


def check_precision(precision: str) -> None:
    """fp16 is refused: the gradient penalty differentiates the critic's input gradient, which fp16's loss
    scaling (16-mixed) does not reach and which underflows in fp16 without it (16-true). bf16 has float32's
    range and needs no scaling."""
    if precision in ("16-mixed", "16-true"):
        raise InputError(
            f"model=fanogan cannot train with trainer.precision={precision}: its gradient penalty's input "
            f"gradients would underflow in fp16; give trainer.precision=bf16-mixed or 32-true"
        )


class FAnoGAN(ReconstructionDetector):
    """A WGAN-GP (`critic_steps` critic updates per generator update, gradient penalty `gp_weight`,
    Adam) for the first epochs, then the izi_f encoder (image MSE + kappa * critic-feature MSE,
    RMSprop) for the last `encoder_fraction`, with G and the critic frozen and in eval() mode.
    Score: the same two terms, per image."""

    display_name = "f-AnoGAN"
    # callbacks.Speedups: its gradient penalty needs a double backward, which torch.compile lacks
    not_compiled = ("critic",)

    def __init__(
        self,
        generator: dict,
        critic: dict,
        encoder: dict,
        latent: int = 128,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        encoder_lr: float = 5e-5,
        critic_steps: int = 5,
        gp_weight: float = 10.0,
        kappa: float = 1.0,
        encoder_fraction: float = 0.5,
        threshold: float = 0.2,
        protocol: str = "honest",
        false_positive_rate: float = 0.05,
        intensity: str = "none",
        map_sigma: float = 4.0,
        image_score: str = "paper",
    ):
        super().__init__(threshold, protocol, false_positive_rate, intensity, map_sigma, image_score)
        check_optimiser({"model.lr": lr, "model.encoder_lr": encoder_lr}, betas)
        check_network_sizes({"generator": generator, "critic": critic, "encoder": encoder})
        check_number("model.latent", latent, 1, integer=True)
        check_number("model.critic_steps", critic_steps, 1, integer=True)
        check_number("model.gp_weight", gp_weight, 0)
        check_number("model.kappa", kappa, 0)
        check_number("model.encoder_fraction", encoder_fraction, 0, 1, above_low=True, below_high=True)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = instantiate(generator)
        self.critic = instantiate(critic)
        self.encoder = instantiate(encoder)

    @property
    def gan_epochs(self) -> int:
        total = self.trainer.max_epochs
        return total - max(1, round(total * self.hparams.encoder_fraction))

    fit_epochs = 2

    def check_epochs(self, max_epochs: int) -> None:
        if (max_epochs or 0) < self.fit_epochs:
            raise InputError("model=fanogan trains a GAN and then an encoder: it needs trainer.max_epochs >= 2")

    def on_fit_start(self) -> None:
        self.check_epochs(self.trainer.max_epochs)
        check_precision(self.trainer.precision)
        super().on_fit_start()

    def training_step(self, batch, batch_idx: int) -> None:
        x = self.match_intensity(batch[0])
        opt_g, opt_d, opt_e = self.optimizers()
        if self.current_epoch < self.gan_epochs:
            self.wgan_gp_step(x, batch_idx, opt_g, opt_d)
            return
        # Frozen means eval() too: in training mode G's BatchNorm would move its running statistics
        # (and normalise with batch statistics). Lightning puts the whole module back in training mode
        # after each validation, so this is checked at every step (a flag read, no device work).
        if self.generator.training or self.critic.training:
            self.generator.eval()
            self.critic.eval()
        with self.toggled_optimizer(opt_e):  # G and critic frozen
            loss = self.izi_f_loss(x)
            opt_e.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_e.step()
        self.log("train/loss_izi_f", loss, prog_bar=True)

    def wgan_gp_step(self, x, batch_idx, opt_g, opt_d) -> None:
        z = torch.randn(len(x), self.hparams.latent, device=x.device)
        with self.toggled_optimizer(opt_d):
            fake = self.generator(z).detach()
            mix = torch.rand(len(x), 1, 1, 1, device=x.device)
            between = (mix * x + (1 - mix) * fake).requires_grad_(True)
            gradient = torch.autograd.grad(self.critic(between)[0].sum(), between, create_graph=True)[0]
            penalty = (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()
            loss_d = self.critic(fake)[0].mean() - self.critic(x)[0].mean() + self.hparams.gp_weight * penalty
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()
        self.log_dict({"train/loss_d": loss_d, "train/gradient_penalty": penalty})
        if (batch_idx + 1) % self.hparams.critic_steps == 0:
            with self.toggled_optimizer(opt_g):
                loss_g = -self.critic(self.generator(z))[0].mean()
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(loss_g)
                opt_g.step()
            self.log("train/loss_g", loss_g, prog_bar=True)

    def izi_f_loss(self, x: torch.Tensor) -> torch.Tensor:
        x_fake = self.generator(self.encoder(x))
        _, features = self.critic(x)
        _, fake_features = self.critic(x_fake)
        return F.mse_loss(x_fake, x) + self.hparams.kappa * F.mse_loss(fake_features, features)

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=tuple(hp.betas), fused=True)
        opt_d = torch.optim.Adam(self.critic.parameters(), lr=hp.lr, betas=tuple(hp.betas), fused=True)
        # TensorFlow's RMSPropOptimizer defaults (decay 0.9, epsilon 1e-10), which the reference uses
        opt_e = torch.optim.RMSprop(self.encoder.parameters(), lr=hp.encoder_lr, alpha=0.9, eps=1e-10)
        return opt_g, opt_d, opt_e

    def score(self, x):
        x_fake = self.generator(self.encoder(x))
        _, features = self.critic(x)
        _, fake_features = self.critic(x_fake)
        residual = (x.float() - x_fake.float()).pow(2).flatten(1).mean(1)
        return residual + self.hparams.kappa * (features.float() - fake_features.float()).pow(2).mean(1), x_fake
