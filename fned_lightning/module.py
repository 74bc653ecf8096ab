"""The LightningModule: alternating generator / discriminator steps (manual optimization) and scoring."""

import functools
import logging

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.optim.lr_scheduler import LambdaLR

from fned_lightning.networks.dcgan import dcgan_init
from fned_lightning.scoring import anomaly_score, evaluate, min_max_normalise

log = logging.getLogger(__name__)


def constant_then_linear_decay(epoch: int, total_epochs: int, decay_epochs: int) -> float:
    """The "lambda" schedule: factor 1, then a linear ramp towards 0 over the last `decay_epochs`."""
    into_decay = epoch + 1 - (total_epochs - decay_epochs)
    return 1.0 - max(0, into_decay) / (decay_epochs + 1)


class AnomalyGAN(L.LightningModule):
    """FNED (paper section 1): G reconstructs normal images, D tells x_real from x_fake.

    G and D are built from their Hydra configs here, so a checkpoint alone rebuilds the model.
    `score_min` / `score_max` are fitted on the normal validation split after each validation
    run and saved in the checkpoint: a deployed model normalises one image at a time.
    """

    def __init__(
        self,
        generator: DictConfig,
        discriminator: DictConfig,
        w_adv: float = 1.0,
        w_con: float = 20.0,
        w_lat: float = 1.0,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        lr_decay_fraction: float = 0.5,
        score_weight: float = 0.9,
        score_reduction: str = "sum",
        threshold: float = 0.2,
        d_collapse_loss: float = 1e-5,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = instantiate(generator)
        self.discriminator = instantiate(discriminator)
        self.register_buffer("score_min", torch.tensor(float("nan")))
        self.register_buffer("score_max", torch.tensor(float("nan")))
        self._val_scores: list[torch.Tensor] = []
        self._test_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.test_results: dict | None = None

    def training_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        opt_g, opt_d = self.optimizers()
        hp = self.hparams
        x_fake = self.generator(x)
        real_logits, real_features = self.discriminator(x)  # reused by both steps: D is unchanged until its own step

        with self.toggled_optimizer(opt_g):  # D frozen
            fake_logits, fake_features = self.discriminator(x_fake)
            loss_adv = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
            loss_con = F.smooth_l1_loss(x_fake, x)
            loss_lat = F.smooth_l1_loss(fake_features, real_features.detach())
            loss_g = hp.w_adv * loss_adv + hp.w_con * loss_con + hp.w_lat * loss_lat
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()

        with self.toggled_optimizer(opt_d):  # G frozen: x_fake is detached
            fake_logits, _ = self.discriminator(x_fake.detach())
            loss_d = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
                F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()

        collapsed = loss_d.detach() < hp.d_collapse_loss
        if collapsed:  # D wins outright and G gets no gradient: restart D (the anchors' rule)
            self.discriminator.apply(dcgan_init)
            log.info("discriminator collapsed (loss_d < %g) at step %d: re-initialised", hp.d_collapse_loss, self.global_step)
        self.log_dict(
            {"train/loss_g": loss_g, "train/loss_d": loss_d, "train/loss_adv": loss_adv,
             "train/loss_con": loss_con, "train/loss_lat": loss_lat, "train/d_reinit": collapsed.float()},
            prog_bar=False,
        )
        self.log_dict({"loss_g": loss_g, "loss_d": loss_d}, prog_bar=True, logger=False)

    def on_train_epoch_end(self) -> None:
        for scheduler in self.lr_schedulers():
            scheduler.step()  # per epoch, by hand: manual optimization leaves schedulers to us

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        total = max(self.trainer.max_epochs or 1, 1)
        schedule = functools.partial(
            constant_then_linear_decay, total_epochs=total, decay_epochs=round(total * hp.lr_decay_fraction)
        )
        return [opt_g, opt_d], [LambdaLR(opt_g, schedule), LambdaLR(opt_d, schedule)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw anomaly scores A(x) and reconstructions x_fake for images in [-1, 1]."""
        x_fake = self.generator(x)
        _, features = self.discriminator(x)
        _, fake_features = self.discriminator(x_fake)
        scores = anomaly_score(x, x_fake, features, fake_features, self.hparams.score_weight, self.hparams.score_reduction)
        return scores, x_fake

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores mapped with the (min, max) fitted on normal validation images."""
        return min_max_normalise(scores, self.score_min.item(), self.score_max.item())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._val_scores.append(self(batch[0])[0])

    def on_validation_epoch_end(self) -> None:
        scores = self.all_gather(torch.cat(self._val_scores)).flatten()
        self._val_scores.clear()
        self.score_min.fill_(scores.min())
        self.score_max.fill_(scores.max())
        self.log_dict({"val/score_mean": scores.mean(), "val/score_min": scores.min(), "val/score_max": scores.max()})

    def test_step(self, batch, batch_idx: int) -> None:
        x, labels, index = batch
        self._test_batches.append((self(x)[0], labels, index))

    def on_test_epoch_end(self) -> None:
        scores, labels, index = (self.all_gather(torch.cat(parts)).flatten() for parts in zip(*self._test_batches))
        self._test_batches.clear()
        fitted = None if torch.isnan(self.score_min) else (self.score_min.item(), self.score_max.item())
        metrics = evaluate(scores, labels, self.hparams.threshold, fitted)
        self.log_dict({f"test/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        self.test_results = {"metrics": metrics, "scores": scores.cpu(), "labels": labels.cpu(), "index": index.cpu()}
