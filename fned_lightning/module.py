"""LightningModules. `AnomalyDetector` holds what every model shares: validation fits the score
normalisation, test computes the metrics. `AnomalyGAN` is FNED's alternating G/D training step,
which GANomaly and Skip-GANomaly reuse with their own losses and scores; `FAnoGAN` trains a
WGAN-GP and then an encoder, in one run."""

import functools
import logging

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.optim.lr_scheduler import LambdaLR

from fned_lightning.errors import InputError
from fned_lightning.networks.dcgan import dcgan_init
from fned_lightning.scoring import anomaly_score, evaluate, min_max_normalise

log = logging.getLogger(__name__)
PROTOCOLS = ("honest", "paper")


def constant_then_linear_decay(epoch: int, total_epochs: int, decay_epochs: int) -> float:
    """The "lambda" schedule: factor 1, then a linear ramp towards 0 over the last `decay_epochs`."""
    into_decay = epoch + 1 - (total_epochs - decay_epochs)
    return 1.0 - max(0, into_decay) / (decay_epochs + 1)


class AnomalyDetector(L.LightningModule):
    """Evaluation shared by every model; subclasses give `forward(x) -> (scores, x_fake)` and training.

    After each validation run, on the normal validation split, it fits and keeps in the checkpoint
    `score_min` / `score_max` (the min-max normalisation, so a deployed model normalises one image
    at a time) and `score_threshold`, the raw score that a `false_positive_rate` share of normal
    validation images exceed (the calibrated threshold, beside the paper's fixed `threshold` on
    normalised scores). protocol="paper" tests with BatchNorm in training mode, as the anchors did.
    """

    def __init__(self, threshold: float = 0.2, protocol: str = "honest", false_positive_rate: float = 0.05):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        if not 0 < false_positive_rate < 1:
            raise InputError(f"model.false_positive_rate must be in (0, 1), got {false_positive_rate}")
        self.threshold, self.protocol, self.false_positive_rate = threshold, protocol, false_positive_rate
        self.register_buffer("score_min", torch.tensor(float("nan")))
        self.register_buffer("score_max", torch.tensor(float("nan")))
        self.register_buffer("score_threshold", torch.tensor(float("nan")))
        self._val_scores: list[torch.Tensor] = []
        self._test_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.test_results: dict | None = None

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores mapped with the (min, max) fitted on normal validation images."""
        return min_max_normalise(scores, self.score_min.item(), self.score_max.item())

    def on_train_epoch_end(self) -> None:
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()  # per epoch, by hand: manual optimization leaves schedulers to us
        self.log("train/lr", self.optimizers()[0].param_groups[0]["lr"])

    def validation_step(self, batch, batch_idx: int) -> None:
        self._val_scores.append(self(batch[0])[0])

    def on_validation_epoch_end(self) -> None:
        scores = self.all_gather(torch.cat(self._val_scores)).flatten()
        self._val_scores.clear()
        self.score_min.fill_(scores.min())
        self.score_max.fill_(scores.max())
        self.score_threshold.fill_(torch.quantile(scores.float(), 1 - self.false_positive_rate))
        self.log_dict({"val/score_mean": scores.mean(), "val/score_min": scores.min(), "val/score_max": scores.max(),
                       "val/score_threshold": self.score_threshold}, rank_zero_only=True)  # gathered: the same on every rank

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What `predict` and `export` need besides the weights: the class, and the images it expects."""
        datamodule = self.trainer.datamodule
        if datamodule is None:  # fitted on bare dataloaders: nothing known about the images
            return
        checkpoint["fned_lightning"] = {
            "model_target": f"{type(self).__module__}.{type(self).__qualname__}",
            "image_size": datamodule.image_size,
            "channels": datamodule.channels,
        }

    def on_test_epoch_start(self) -> None:
        if self.protocol == "paper":
            self.train()  # the anchors' evaluation: BatchNorm on batch statistics

    def test_step(self, batch, batch_idx: int) -> None:
        x, labels, index = batch
        self._test_batches.append((self(x)[0], labels, index))

    def on_test_epoch_end(self) -> None:
        scores, labels, index = (self.all_gather(torch.cat(parts)).flatten() for parts in zip(*self._test_batches))
        self._test_batches.clear()
        # Under DDP the sampler pads the last batches with repeats: score each test image once.
        unique, inverse = torch.unique(index, return_inverse=True)
        first = torch.full_like(unique, len(index)).scatter_reduce(0, inverse, torch.arange(len(index), device=index.device), "amin")
        scores, labels, index = scores[first], labels[first], index[first]
        fitted = self.protocol == "honest" and not torch.isnan(self.score_min)
        metrics = evaluate(
            scores, labels, self.threshold,
            fitted_range=(self.score_min.item(), self.score_max.item()) if fitted else None,
            calibrated_threshold=self.score_threshold.item() if fitted else None,
        )
        self.log_dict({f"test/{k}": v for k, v in metrics.items() if isinstance(v, float)}, rank_zero_only=True)
        self.test_results = {"metrics": metrics, "scores": scores.cpu(), "labels": labels.cpu(), "index": index.cpu()}


class AnomalyGAN(AnomalyDetector):
    """FNED (paper section 1): G reconstructs normal images, D tells x_real from x_fake; D and G
    alternate every batch. G and D are built from their configs here, so a checkpoint alone
    rebuilds the model. Subclasses change `reconstruct`, `generator_losses` and `forward`."""

    def __init__(
        self,
        generator: dict,
        discriminator: dict,
        loss_weights: dict[str, float] | None = None,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        lr_decay_fraction: float = 0.5,
        score_weight: float = 0.9,
        score_reduction: str = "sum",
        threshold: float = 0.2,
        d_collapse_loss: float = 1e-5,
        d_collapse_check_interval: int = 10,
        protocol: str = "honest",
        false_positive_rate: float = 0.05,
    ):
        super().__init__(threshold, protocol, false_positive_rate)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.loss_weights = loss_weights or {"adv": 1.0, "con": 20.0, "lat": 1.0}
        self.generator = instantiate(generator)
        self.discriminator = instantiate(discriminator)
        self.register_buffer("d_collapsed", torch.tensor(False), persistent=False)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """x_fake, and whatever else the generator yields that a loss needs."""
        return self.generator(x), {}

    def generator_losses(self, x, x_fake, extras, real_features, fake_logits, fake_features) -> dict[str, torch.Tensor]:
        """FNED's terms: adversarial (non-saturating BCE), contextual and latent smooth-L1."""
        return {
            "adv": F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits)),
            "con": F.smooth_l1_loss(x_fake, x),
            "lat": F.smooth_l1_loss(fake_features, real_features),
        }

    def training_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        opt_g, opt_d = self.optimizers()
        x_fake, extras = self.reconstruct(x)
        real_logits, real_features = self.discriminator(x)  # serves both steps: D is unchanged until its own

        with self.toggled_optimizer(opt_g):  # D frozen
            fake_logits, fake_features = self.discriminator(x_fake)
            losses = self.generator_losses(x, x_fake, extras, real_features.detach(), fake_logits, fake_features)
            loss_g = sum(self.loss_weights[name] * loss for name, loss in losses.items())
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()

        # D(x_fake) once more, though D has not changed: one forward serving both steps needs each
        # backward limited to one network (backward(inputs=...)), which DDP's reducer rejects (tried:
        # "parameters that were not used in producing the loss"). It costs one D forward a batch,
        # 0.035 GFLOP an image at 32x32: 1% of an FNED step, 6% of GANomaly's (make bench FLOPs).
        with self.toggled_optimizer(opt_d):  # G frozen: x_fake is detached
            fake_logits, _ = self.discriminator(x_fake.detach())
            loss_d = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
                F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()

        collapsed = loss_d.detach() < self.hparams.d_collapse_loss
        self.d_collapsed |= collapsed
        # Reading the flag on the host waits for the device, so it is read every few batches only.
        if (batch_idx + 1) % self.hparams.d_collapse_check_interval == 0 and self.d_collapsed.item():
            # D won outright and G gets no gradient from it: restart D (the anchors' rule)
            self.discriminator.apply(dcgan_init)
            self.d_collapsed.zero_()
            log.info("discriminator collapsed (loss_d < %g) by batch %d: re-initialised", self.hparams.d_collapse_loss, batch_idx)
        self.log_dict({f"train/loss_{name}": loss for name, loss in losses.items()})
        self.log_dict({"train/loss_g": loss_g, "train/loss_d": loss_d, "train/d_collapsed": collapsed.float()})
        self.log_dict({"loss_g": loss_g, "loss_d": loss_d}, prog_bar=True, logger=False)

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=tuple(hp.betas), fused=True)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=tuple(hp.betas), fused=True)
        total = max(self.trainer.max_epochs or 1, 1)
        schedule = functools.partial(
            constant_then_linear_decay, total_epochs=total, decay_epochs=round(total * hp.lr_decay_fraction)
        )
        return [opt_g, opt_d], [LambdaLR(opt_g, schedule), LambdaLR(opt_d, schedule)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw anomaly scores A(x) and reconstructions x_fake, for images in [-1, 1]."""
        x_fake = self.reconstruct(x)[0]
        _, features = self.discriminator(x)
        _, fake_features = self.discriminator(x_fake)
        scores = anomaly_score(x, x_fake, features, fake_features, self.hparams.score_weight, self.hparams.score_reduction)
        return scores, x_fake


class SkipGANomaly(AnomalyGAN):
    """Skip-GANomaly (Akcay et al. 2019): U-Net G; adversarial BCE, contextual L1, latent L2 on D's
    features (weights 1 / 50 / 1); score 0.9 * mean squared residual + 0.1 * mean squared feature gap."""

    def generator_losses(self, x, x_fake, extras, real_features, fake_logits, fake_features):
        return {
            "adv": F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits)),
            "con": F.l1_loss(x_fake, x),
            "lat": F.mse_loss(fake_features, real_features),
        }

    def forward(self, x):
        x_fake = self.generator(x)
        _, features = self.discriminator(x)
        _, fake_features = self.discriminator(x_fake)
        weight = self.hparams.score_weight
        residual = (x.float() - x_fake.float()).pow(2).flatten(1).mean(1)  # float32: see scoring.anomaly_score
        feature_gap = (features.float() - fake_features.float()).pow(2).mean(1)
        return weight * residual + (1 - weight) * feature_gap, x_fake


class GANomaly(AnomalyGAN):
    """GANomaly (Akcay et al. 2018): encoder-decoder-encoder G; adversarial feature matching on D,
    contextual L1, encoder L2 on z vs z_hat (weights 1 / 50 / 1); score mean (z - z_hat)^2."""

    def reconstruct(self, x):
        x_fake, z, z_hat = self.generator(x)
        return x_fake, {"z": z, "z_hat": z_hat}

    def generator_losses(self, x, x_fake, extras, real_features, fake_logits, fake_features):
        return {
            "adv": F.mse_loss(fake_features, real_features),
            "con": F.l1_loss(x_fake, x),
            "enc": F.mse_loss(extras["z_hat"], extras["z"]),
        }

    def forward(self, x):
        x_fake, z, z_hat = self.generator(x)
        return (z.float() - z_hat.float()).pow(2).mean(1), x_fake


class FAnoGAN(AnomalyDetector):
    """f-AnoGAN (Schlegl et al. 2019) in one run: a WGAN-GP (`critic_steps` critic updates per
    generator update, gradient penalty `gp_weight`) for the first epochs, then the izi_f encoder
    (image MSE + kappa * critic-feature MSE) with G and D frozen for the last `encoder_fraction`."""

    def __init__(
        self,
        generator: dict,
        critic: dict,
        encoder: dict,
        latent: int = 100,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        critic_steps: int = 5,
        gp_weight: float = 10.0,
        kappa: float = 1.0,
        encoder_fraction: float = 0.5,
        threshold: float = 0.2,
        protocol: str = "honest",
        false_positive_rate: float = 0.05,
    ):
        super().__init__(threshold, protocol, false_positive_rate)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = instantiate(generator)
        self.critic = instantiate(critic)
        self.encoder = instantiate(encoder)

    @property
    def gan_epochs(self) -> int:
        total = self.trainer.max_epochs
        return total - max(1, round(total * self.hparams.encoder_fraction))

    def on_fit_start(self) -> None:
        if (self.trainer.max_epochs or 0) < 2:
            raise InputError("model=fanogan trains a GAN and then an encoder: it needs trainer.max_epochs >= 2")

    def training_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        opt_g, opt_d, opt_e = self.optimizers()
        if self.current_epoch < self.gan_epochs:
            self.wgan_gp_step(x, batch_idx, opt_g, opt_d)
        else:
            with self.toggled_optimizer(opt_e):  # G and D frozen
                loss = self.izi_f_loss(x)
                opt_e.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                opt_e.step()
            self.log("train/loss_izi_f", loss, prog_bar=True)

    def wgan_gp_step(self, x, batch_idx, opt_g, opt_d) -> None:
        z = torch.randn(len(x), self.hparams.latent, 1, 1, device=x.device)
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
        adam = functools.partial(torch.optim.Adam, lr=self.hparams.lr, betas=tuple(self.hparams.betas), fused=True)
        return adam(self.generator.parameters()), adam(self.critic.parameters()), adam(self.encoder.parameters())

    def forward(self, x):
        x_fake = self.generator(self.encoder(x))
        _, features = self.critic(x)
        _, fake_features = self.critic(x_fake)
        residual = (x.float() - x_fake.float()).pow(2).flatten(1).mean(1)
        return residual + self.hparams.kappa * (features.float() - fake_features.float()).pow(2).mean(1), x_fake
