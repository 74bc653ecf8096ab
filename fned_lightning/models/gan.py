"""The GAN training step that FNED, GANomaly and Skip-GANomaly share (paper section 1): G reconstructs
normal images, D tells x from x_fake, and the two alternate every batch (manual optimization), with
Adam, the per-epoch learning-rate schedule and the anchors' rule that restarts a collapsed D. Each
model's file gives its losses and its score."""

import functools
import itertools
import logging

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.ops import sigmoid_focal_loss

from fned_lightning.defects import check_corruption, corrupt
from fned_lightning.errors import InputError, check_number
from fned_lightning.models.detector import check_network_sizes, check_optimiser
from fned_lightning.models.reconstruction import ReconstructionDetector
from fned_lightning.networks.dcgan import dcgan_init
from fned_lightning.seeding import epoch_seed
from fned_lightning.simulated_anomalies import SOURCES, check_sources, simulate_anomalies

log = logging.getLogger(__name__)

HEAD_LOSS_WEIGHTS = {"ssim": 1.0, "seg": 1.0}  # DRAEM's: SSIM and focal loss beside the reconstruction's own


def constant_then_linear_decay(epoch: int, total_epochs: int, decay_epochs: int) -> float:
    """The "lambda" schedule: factor 1, then a linear ramp towards 0 over the last `decay_epochs`. pix2pix's
    rule, which never reaches 0: the last epoch runs at 1 / (decay_epochs + 1) of the rate (lr/9 at 15 epochs)."""
    into_decay = epoch + 1 - (total_epochs - decay_epochs)
    return 1.0 - max(0, into_decay) / (decay_epochs + 1)


def real_fake_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE(D(x), 1) + BCE(D(x_fake), 0): D's side of the adversarial loss (sigmoid inside, for stability)."""
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


class AnomalyGAN(ReconstructionDetector):
    """A generator and a discriminator trained in alternation. G and D are built from their configs
    here, so a checkpoint alone rebuilds the model. Subclasses give `generator_losses`,
    `discriminator_loss` and `score`, and `reconstruct` where G returns more than x_fake.
    `lr_decay_fraction=0` keeps the learning rate constant (the baselines' references).
    `train_corruption` (noise or patches, of `corruption_strength`; defects.corrupt) feeds G a damaged
    image in training and asks for the clean one: a remedy for G copying its input. Tests are untouched.

    `head` (a network config: networks.segmentation.SegmentationUNet) adds DRAEM's recipe: in training G
    reconstructs images with simulated anomalies (simulated_anomalies, from `anomaly_sources`) and must
    give the clean image (its own terms, plus SSIM), while the head, reading concat(input, x_fake), learns
    to segment the anomaly (focal loss against its mask); G's adversarial and latent terms stay on. The
    head's output is then the anomaly map, everywhere maps are used."""

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
        intensity: str = "none",
        map_sigma: float = 4.0,
        image_score: str = "paper",
        train_corruption: str = "none",
        corruption_strength: float = 0.0,
        head: dict | None = None,
        anomaly_sources: tuple[str, ...] = SOURCES,
    ):
        super().__init__(threshold, protocol, false_positive_rate, intensity, map_sigma, image_score)
        check_corruption(train_corruption, corruption_strength)
        self.anomaly_sources = check_sources(anomaly_sources)
        if head is not None and train_corruption != "none":
            raise InputError(
                f"model.head trains on simulated anomalies, which take the place of model.train_corruption="
                f"{train_corruption}: give model.train_corruption=none, or leave out model.head"
            )
        check_optimiser({"model.lr": lr}, betas)
        check_network_sizes({"generator": generator, "discriminator": discriminator, "head": head})
        for name, weight in (loss_weights or {}).items():
            check_number(f"model.loss_weights.{name}", weight, 0)
        check_number("model.lr_decay_fraction", lr_decay_fraction, 0, 1)
        check_number("model.score_weight", score_weight, 0, 1)
        check_number("model.d_collapse_loss", d_collapse_loss)
        check_number("model.d_collapse_check_interval", d_collapse_check_interval, 1, integer=True)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.loss_weights = loss_weights or {"adv": 1.0, "con": 20.0, "lat": 1.0}
        self.generator = instantiate(generator)
        self.discriminator = instantiate(discriminator)
        self.head = instantiate(head) if head is not None else None
        if self.head is not None:
            self.loss_weights = HEAD_LOSS_WEIGHTS | self.loss_weights
        self.register_buffer("d_collapsed", torch.tensor(False), persistent=False)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.d_collapsed.zero_()  # decided within an epoch: nothing pending across a checkpoint (resumable)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """x_fake, and whatever else the generator yields that a loss needs."""
        return self.generator(x), {}

    def generator_losses(self, x, x_fake, extras, real_features, fake_logits, fake_features) -> dict[str, torch.Tensor]:
        """Each model's own: its generator terms by name (weighted by `loss_weights`)."""
        raise NotImplementedError(f"{type(self).__name__} must define generator_losses")

    def discriminator_loss(self, real_logits, fake_logits, real_features, fake_features) -> torch.Tensor:
        """Each model's own: D's loss."""
        raise NotImplementedError(f"{type(self).__name__} must define discriminator_loss")

    def training_step(self, batch, batch_idx: int) -> None:
        x = self.match_intensity(batch[0])
        opt_g, opt_d = self.optimizers()
        if self.head is not None:
            x_in, anomaly = simulate_anomalies(x, self.anomaly_sources)
        else:
            x_in = corrupt(x, self.hparams.train_corruption, self.hparams.corruption_strength)
        x_fake, extras = self.reconstruct(x_in)
        real_logits, real_features = self.discriminator(x)  # serves both steps: D is unchanged until its own

        with self.toggled_optimizer(opt_g):  # D frozen; the head, in G's optimiser, learns with G
            fake_logits, fake_features = self.discriminator(x_fake)
            losses = self.generator_losses(x, x_fake, extras, real_features.detach(), fake_logits, fake_features)
            if self.head is not None:
                losses |= self.head_losses(x, x_in, x_fake, anomaly)
            loss_g = sum(self.loss_weights[name] * loss for name, loss in losses.items())
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()

        # D(x_fake) once more, though D has not changed: one forward serving both steps needs each
        # backward limited to one network (backward(inputs=...)), which DDP's reducer rejects (tried:
        # "parameters that were not used in producing the loss"). It costs one D forward a batch,
        # 0.035 GFLOP an image at 32x32: 1% of an FNED step, 6% of GANomaly's (make bench FLOPs).
        with self.toggled_optimizer(opt_d):  # G frozen: x_fake is detached
            fake_logits, fake_features = self.discriminator(x_fake.detach())
            loss_d = self.discriminator_loss(real_logits, fake_logits, real_features, fake_features)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()

        collapsed = loss_d.detach() < self.hparams.d_collapse_loss
        self.d_collapsed |= collapsed
        # Reading the flag on the host waits for the device, so it is read every few batches only.
        if (batch_idx + 1) % self.hparams.d_collapse_check_interval == 0 and self.collapsed_on_any_rank():
            # D won outright and G gets no gradient from it: restart D (the anchors' rule)
            self.reinitialise_discriminator(batch_idx)
            self.d_collapsed.zero_()
            log.info(
                "discriminator collapsed (loss_d < %g) by batch %d: re-initialised",
                self.hparams.d_collapse_loss,
                batch_idx,
            )
        self.log_dict({f"train/loss_{name}": loss for name, loss in losses.items()})
        self.log_dict({"train/loss_g": loss_g, "train/loss_d": loss_d, "train/d_collapsed": collapsed.float()})
        self.log_dict({"loss_g": loss_g, "loss_d": loss_d}, prog_bar=True, logger=False)

    def head_losses(self, x, x_in, x_fake, anomaly) -> dict[str, torch.Tensor]:
        """DRAEM's terms: 1 - SSIM of the reconstruction against the clean image (images in [-1, 1]: data
        range 2), and the focal loss (gamma 2, no class weighting, as DRAEM's) of the head's logits
        against the simulated anomaly's mask. The focal loss reaches G through x_fake, as in DRAEM."""
        ssim = structural_similarity_index_measure(x_fake.float(), x.float(), data_range=2.0)
        logits = self.head(x_in, x_fake)
        return {
            "ssim": 1 - ssim,
            "seg": sigmoid_focal_loss(logits.float(), anomaly, alpha=-1, gamma=2, reduction="mean"),
        }

    def anomaly_maps(self, seen: torch.Tensor, x_fake: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return super().anomaly_maps(seen, x_fake, residuals)
        return self.head(seen, x_fake)[:, 0].float().sigmoid()  # the head's defect probability per pixel

    def map_description(self) -> str:
        if self.head is None:
            return super().map_description()
        return "the segmentation head's defect probability per pixel, reading the image and its reconstruction"

    def collapsed_on_any_rank(self) -> bool:
        """Under DDP every rank must restart D together, or their copies drift apart (DDP averages
        gradients and broadcasts buffers, never parameters): the decision is taken over all ranks."""
        return bool(self.all_gather(self.d_collapsed).any())

    def reinitialise_discriminator(self, batch_idx: int) -> None:
        """DCGAN's initialisation, drawn from the run's seed, the epoch and the batch alone: the same
        weights on every rank, and on a resumed run, whatever else each rank has drawn."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(epoch_seed(self.run_seed, self.current_epoch) + batch_idx + 1)
            self.discriminator.apply(dcgan_init)

    def configure_optimizers(self):
        hp = self.hparams
        trained_with_g = itertools.chain(
            self.generator.parameters(), self.head.parameters() if self.head is not None else ()
        )
        opt_g = torch.optim.Adam(trained_with_g, lr=hp.lr, betas=tuple(hp.betas), fused=True)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=tuple(hp.betas), fused=True)
        total = max(self.trainer.max_epochs or 1, 1)
        schedule = functools.partial(
            constant_then_linear_decay, total_epochs=total, decay_epochs=round(total * hp.lr_decay_fraction)
        )
        return [opt_g, opt_d], [LambdaLR(opt_g, schedule), LambdaLR(opt_d, schedule)]
