"""What every model shares: validation fits the score normalisation, test computes the metrics."""

import lightning as L
import torch

from fned_lightning.data import INTENSITIES, epoch_seed, image_moments, match_intensity
from fned_lightning.errors import InputError
from fned_lightning.scoring import evaluate, min_max_normalise

PROTOCOLS = ("honest", "paper", "both")  # both: the honest evaluation and the paper's, from one training run


class AnomalyDetector(L.LightningModule):
    """Evaluation shared by every model; subclasses give `score(x) -> (scores, x_fake)` and training.

    After each validation run, on the normal validation split, it fits and keeps in the checkpoint
    `score_min` / `score_max` (the min-max normalisation, so a deployed model normalises one image
    at a time) and `score_threshold`, the raw score that a `false_positive_rate` share of normal
    validation images exceed (the calibrated threshold, beside the paper's fixed `threshold` on
    normalised scores). protocol="paper" tests with BatchNorm in training mode, as the anchors did.

    intensity="per_image" (data.intensity) maps each image's mean and standard deviation to those of
    the normal training images (`intensity_mean` / `intensity_std`, fitted when training starts and
    kept in the checkpoint) before the networks see it, in training and in `forward`, so validation,
    test, predict and the exported model all see the same: a lighting drift is not an anomaly.
    """

    def __init__(self, threshold: float = 0.2, protocol: str = "honest", false_positive_rate: float = 0.05,
                 intensity: str = "none"):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        if not 0 < false_positive_rate < 1:
            raise InputError(f"model.false_positive_rate must be in (0, 1), got {false_positive_rate}")
        if intensity not in INTENSITIES:
            raise InputError(f"unknown intensity {intensity!r}; choose one of: {', '.join(INTENSITIES)}")
        self.threshold, self.protocol, self.false_positive_rate = threshold, protocol, false_positive_rate
        self.intensity = intensity
        self.register_buffer("intensity_mean", torch.tensor(float("nan")))
        self.register_buffer("intensity_std", torch.tensor(float("nan")))
        self.register_buffer("score_min", torch.tensor(float("nan")))
        self.register_buffer("score_max", torch.tensor(float("nan")))
        self.register_buffer("score_threshold", torch.tensor(float("nan")))
        self._val_scores: list[torch.Tensor] = []
        self._test_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.test_results: dict | None = None

    def on_fit_start(self) -> None:
        self.run_seed = torch.initial_seed()  # the run's seed: train.py seeds before it builds anything
        if self.intensity == "per_image" and torch.isnan(self.intensity_std):  # not when resuming: kept in the checkpoint
            mean, std = self.trainer.datamodule.intensity_reference()
            self.intensity_mean.fill_(mean)
            self.intensity_std.fill_(std)

    def on_train_epoch_start(self) -> None:
        # Every epoch's random draws (its shuffle, noise, latent samples, D re-initialisations) come from
        # the run's seed and the epoch alone, so a run resumed from a checkpoint draws what an
        # uninterrupted one does. (The training order has its own generator: data.EpochShuffle.)
        torch.manual_seed(epoch_seed(self.run_seed, self.current_epoch))

    def match_intensity(self, x: torch.Tensor) -> torch.Tensor:
        """x as the networks see it: with intensity="per_image", each image's mean and standard deviation
        mapped to the normal training images' (clamped to [-1, 1], the Tanh range); else unchanged."""
        return x if self.intensity == "none" else match_intensity(x, self.intensity_mean, self.intensity_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw anomaly scores and reconstructions of images in [-1, 1]. The reconstruction is returned
        in the image's own intensity, so residual maps and figures compare like with like."""
        scores, x_fake = self.score(self.match_intensity(x))
        if self.intensity == "per_image":
            mean, std = image_moments(x)
            x_fake = (x_fake - self.intensity_mean) * (std.clamp_min(1e-3) / self.intensity_std) + mean
        return scores, x_fake

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each model's own: raw scores and reconstructions of images as the networks see them."""
        raise NotImplementedError(f"{type(self).__name__} must define score(x)")

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
        fitted = self.protocol != "paper" and not torch.isnan(self.score_min)
        metrics = evaluate(
            scores, labels, self.threshold,
            fitted_range=(self.score_min.item(), self.score_max.item()) if fitted else None,
            calibrated_threshold=self.score_threshold.item() if fitted else None,
        )
        prefix = "test_paper/" if self.protocol == "paper" else "test/"  # never the same keys for both evaluations
        self.log_dict({prefix + k: v for k, v in metrics.items() if isinstance(v, float)}, rank_zero_only=True)
        self.test_results = {"metrics": metrics, "scores": scores.cpu(), "labels": labels.cpu(), "index": index.cpu()}
