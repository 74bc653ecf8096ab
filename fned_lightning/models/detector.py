"""What every model shares, whatever it is and however it learns: the evaluation. Validation fits the
score normalisation and the thresholds (kept in the checkpoint, for predict and export), test computes
the image and pixel metrics and checks for a shift, under the protocol of `fned_lightning.protocols`.
A model family gives `detect` (scores and maps; models.reconstruction, models.features) and its training."""

import inspect
import logging
from typing import NamedTuple

import lightning as L
import torch

from fned_lightning.errors import InputError, check_number
from fned_lightning.models.intensity import INTENSITIES, image_moments, match_intensity
from fned_lightning.protocols import check_protocol
from fned_lightning.scoring import (
    defect_residual_ratio,
    evaluate,
    filtered_max,
    min_max_normalise,
    pixel_metrics,
    ranking_metrics,
    shift_check,
    upper_quantile,
)
from fned_lightning.seeding import epoch_seed

log = logging.getLogger(__name__)

IMAGE_SCORES = ("paper", "map_max", "map_filtered_max")  # the paper's (each model's own), the map's maximum, DRAEM's


class Detection(NamedTuple):
    """What a detector gives for a batch of images."""

    scores: torch.Tensor  # N: the image score chosen by `image_score`
    maps: torch.Tensor  # N x H x W: the anomaly map, at the input's resolution
    # N x C x H x W: reconstructions, in the image's own intensity (None: no reconstruction)
    x_fake: torch.Tensor | None
    paper_scores: torch.Tensor  # N: the model's own score (its paper's), whichever `image_score` is chosen
    # N x H x W: the raw residual |x - x_fake|, before smoothing (the shortcut diagnostic's)
    residuals: torch.Tensor | None


def check_optimiser(lr_options: dict[str, float], betas) -> None:
    """Learning rates > 0 and Adam's betas, two numbers in [0, 1), each named as the config names it."""
    for option, lr in lr_options.items():
        check_number(option, lr, 0, above_low=True)
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
        raise InputError(f"model.betas must be two numbers in [0, 1), e.g. [0.5, 0.999], got {betas!r}")
    for beta in betas:
        check_number("each of model.betas", beta, 0, 1, below_high=True)


NETWORK_SIZES = ("width", "latent", "out_features", "depth")  # a network's sizes: whole numbers >= 1


def check_network_sizes(networks: dict[str, dict | None]) -> None:
    """Each network config's sizes, named as the config names them (`model.generator.width`), before any
    network is built: a width of 0 would otherwise fail deep inside a convolution."""
    for name, config in networks.items():
        for key in NETWORK_SIZES:
            if config is not None and key in config:
                check_number(f"model.{name}.{key}", config[key], 1, integer=True)


def each_image_once(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each image index: under DDP the sampler pads the last
    batches with repeats, and gathered results must count every image once."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(len(index), device=index.device)
    return torch.full_like(unique, len(index)).scatter_reduce(0, inverse, positions, "amin")


class Scored(NamedTuple):
    """A split's results by name, batch by batch and then gathered: per image, then per pixel."""

    scores: torch.Tensor  # N: the image score chosen by `image_score`
    paper_scores: torch.Tensor  # N: the paper's score
    map_scores: torch.Tensor  # N: the anomaly map's maximum
    labels: torch.Tensor  # N: 0 normal, 1 abnormal
    index: torch.Tensor  # N: each image's position in its split (its mask, its name)
    maps: torch.Tensor  # N x H x W, or empty where nothing compares or fits on pixels
    residuals: torch.Tensor  # N x H x W, or empty where no mask is known


PER_PIXEL = ("maps", "residuals")


def scored(
    detection: Detection, labels: torch.Tensor, index: torch.Tensor, keep_maps: bool, keep_residuals: bool
) -> Scored:
    none = slice(0)  # kept only where they are used: the maps are the largest part
    residuals = detection.residuals if detection.residuals is not None else detection.maps[none]
    return Scored(
        detection.scores,
        detection.paper_scores,
        detection.maps.flatten(1).amax(1),
        labels,
        index,
        detection.maps[slice(None) if keep_maps else none],
        residuals[slice(None) if keep_residuals else none],
    )


def residual_ratio(residuals: torch.Tensor, masks: torch.Tensor) -> float | None:
    """scoring.defect_residual_ratio, or None for a model that reconstructs nothing."""
    return defect_residual_ratio(residuals, masks) if len(residuals) else None


def by_image_score(paper_scores: torch.Tensor, map_scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """AUROC and AUPRC by each image score (`*_score_paper`, `*_score_map_max`), compared on the same weights."""
    return {
        f"{metric}_score_{name}": value
        for name, scores in (("paper", paper_scores), ("map_max", map_scores))
        for metric, value in ranking_metrics(scores, labels).items()
    }


class AnomalyDetector(L.LightningModule):
    """Evaluation shared by every model; subclasses give `detect(x)`, `map_description()` and training.

    After each validation run, on the normal validation split, it fits and keeps in the checkpoint
    `score_min` / `score_max` (the min-max normalisation, so a deployed model normalises one image
    at a time) and `score_threshold`, the raw score that a `false_positive_rate` share of normal
    validation images exceed (the calibrated threshold, beside the paper's fixed `threshold` on
    normalised scores). protocol="paper" tests with BatchNorm in training mode, as the anchors did.

    intensity="per_image" (data.intensity) maps each image's mean and standard deviation to those of
    the normal training images (`intensity_mean` / `intensity_std`, fitted when training starts and
    kept in the checkpoint) before the networks see it, in training and in `forward`, so validation,
    test, predict and the exported model all see the same: a lighting drift is not an anomaly.

    Every `forward` also gives anomaly maps (a reconstruction model's smoothed residual, a feature model's
    distance map: each family's `detect`). `image_score` chooses the image score: the model's own (`paper`, default),
    the map's maximum, or the maximum of the mean-filtered map (DRAEM's); the first two are reported at test. Validation
    also fits `pixel_threshold`, the map value that `false_positive_rate` of normal pixels exceed.
    """

    def __init__(
        self,
        threshold: float = 0.2,
        protocol: str = "honest",
        false_positive_rate: float = 0.05,
        intensity: str = "none",
        map_sigma: float = 4.0,
        image_score: str = "paper",
    ):
        super().__init__()
        check_protocol(protocol)
        check_number("model.threshold", threshold, 0, 1)
        check_number("model.false_positive_rate", false_positive_rate, 0, 1, above_low=True, below_high=True)
        if intensity not in INTENSITIES:
            raise InputError(f"unknown intensity {intensity!r}; choose one of: {', '.join(INTENSITIES)}")
        if image_score not in IMAGE_SCORES:
            raise InputError(f"unknown model.image_score={image_score}; choose one of: {', '.join(IMAGE_SCORES)}")
        check_number("model.map_sigma", map_sigma, 0)  # pixels; 0: the raw residual
        self.threshold, self.protocol, self.false_positive_rate = threshold, protocol, false_positive_rate
        self.intensity, self.map_sigma, self.image_score = intensity, map_sigma, image_score
        self.register_buffer("intensity_mean", torch.tensor(float("nan")))
        self.register_buffer("intensity_std", torch.tensor(float("nan")))
        self.register_buffer("score_min", torch.tensor(float("nan")))
        self.register_buffer("score_max", torch.tensor(float("nan")))
        self.register_buffer("score_threshold", torch.tensor(float("nan")))
        self.register_buffer("pixel_threshold", torch.tensor(float("nan")))
        self._val_batches: list[Scored] = []
        self._test_batches: list[Scored] = []
        self.test_results: dict | None = None
        # data.synthetic_val_defects, data.val_defects: the last validation's defect metrics
        self.val_results: dict = {}
        self.fitted_at_step: int | None = None  # the training step whose weights the validation fits are of

    display_name: str | None = None  # in reports; None: the class's name
    pretrained = False  # whether it sees through a network trained on other images (ImageNet), marked † in reports
    fit_epochs = 1  # the fewest epochs a fit takes (f-AnoGAN: two, its GAN's and its encoder's)
    drop_ragged_batch = True  # training skips a ragged last batch: 1-2 images upset the BatchNorm being trained

    def check_epochs(self, max_epochs: int) -> None:
        """A model that cannot train for `max_epochs` says so before anything runs (f-AnoGAN: two phases; a
        feature model: one pass)."""

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None:  # an example input: the model summary counts FLOPs with it
            self.example_input_array = torch.zeros(1, datamodule.channels, datamodule.image_size, datamodule.image_size)

    def on_fit_start(self) -> None:
        self.run_seed = torch.initial_seed()  # the run's seed: train.py seeds before it builds anything
        # not when resuming: kept in the checkpoint
        if self.intensity == "per_image" and torch.isnan(self.intensity_std):
            mean, std = self.trainer.datamodule.intensity_reference()
            self.intensity_mean.fill_(mean)
            self.intensity_std.fill_(std)

    def on_train_epoch_start(self) -> None:
        # Every epoch's random draws (its shuffle, noise, latent samples, D re-initialisations) come from
        # the run's seed and the epoch alone, so a run resumed from a checkpoint draws what an
        # uninterrupted one does. (The training order has its own generator: data.EpochShuffle.) Each DDP
        # rank draws its own: the same noise on every rank would train on one rank's draws N times over.
        torch.manual_seed(epoch_seed(self.run_seed, self.current_epoch, self.global_rank))

    def match_intensity(self, x: torch.Tensor) -> torch.Tensor:
        """x as the networks see it: with intensity="per_image", each image's mean and standard deviation
        mapped to the normal training images' (clamped to [-1, 1], the Tanh range); else unchanged."""
        return x if self.intensity == "none" else match_intensity(x, self.intensity_mean, self.intensity_std)

    def forward(self, x: torch.Tensor) -> Detection:
        """Raw anomaly scores and anomaly maps (and reconstructions, for a model that makes them) of images
        in [-1, 1]. The model sees each image intensity-matched (`match_intensity`); a reconstruction is
        returned in the image's own intensity, for figures."""
        seen = self.match_intensity(x)
        paper_scores, maps, x_fake, residuals = self.detect(seen)
        if x_fake is not None and self.intensity == "per_image":
            mean, std = image_moments(x)
            x_fake = (x_fake - self.intensity_mean) * (std.clamp_min(1e-3) / self.intensity_std) + mean
        if self.image_score == "paper":
            scores = paper_scores
        else:
            scores = maps.flatten(1).amax(1) if self.image_score == "map_max" else filtered_max(maps)
        return Detection(scores, maps, x_fake, paper_scores, residuals)

    def detect(self, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Each model family's own: (its own image scores, anomaly maps N x H x W, reconstructions or None,
        raw residuals |x - x_fake| or None) of images as the model sees them."""
        raise NotImplementedError(f"{type(self).__name__} must define detect(x)")

    @classmethod
    def rebuilt(cls, hyper_parameters: dict, state_dict: dict) -> "AnomalyDetector":
        """The model a checkpoint holds: built from its hyperparameters, then given its weights and fits."""
        model = cls(**hyper_parameters)
        model.load_state_dict(state_dict)
        return model

    def map_description(self) -> str:
        """What the anomaly map is, for the exported model's notes."""
        raise NotImplementedError(f"{type(self).__name__} must define map_description()")

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores mapped with the (min, max) fitted on normal validation images."""
        return min_max_normalise(scores, self.score_min.item(), self.score_max.item())

    def on_train_epoch_end(self) -> None:
        # Lightning's stand-in for no optimiser has no groups
        optimizers = [o for o in self.trainer.optimizers if o.param_groups]
        if optimizers:  # a model fitted without an optimiser (models.features) has no rate
            self.log("train/lr", optimizers[0].param_groups[0]["lr"])  # the rate this epoch used
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()  # per epoch, by hand: manual optimization leaves schedulers to us

    def validation_step(self, batch, batch_idx: int) -> None:
        x, labels, index = batch
        masked = self.masks_of("val_set") is not None  # painted or real defects with masks: residuals kept to compare
        self._val_batches.append(scored(self(x), labels, index, keep_maps=True, keep_residuals=masked))

    def gather(self, batches: list[Scored]) -> Scored:
        """One split's batches joined, gathered across ranks (ranks x N x ... -> N x ...), each image once."""
        joined = {
            name: self.all_gather(torch.cat([getattr(batch, name) for batch in batches])) for name in Scored._fields
        }
        batches.clear()
        flat = {name: part.flatten(0, -3) if name in PER_PIXEL else part.flatten() for name, part in joined.items()}
        once = each_image_once(flat["index"])
        return Scored(**{name: part[once] if len(part) else part for name, part in flat.items()})

    def on_validation_epoch_end(self) -> None:
        val = self.gather(self._val_batches)
        scores, labels, maps = val.scores, val.labels, val.maps
        normal = labels == 0  # only normal images fit the normalisation and the thresholds
        if (~normal).any():
            self.val_results = self.validation_defect_metrics(val)
            self.log_dict(
                {k.replace("val_", "val/", 1): float(v) for k, v in self.val_results.items() if v is not None},
                rank_zero_only=True,
            )
        scores, maps = scores[normal], maps[normal]
        self.fitted_at_step = self.global_step
        self.score_min.fill_(scores.min())
        self.score_max.fill_(scores.max())
        self.score_threshold.fill_(torch.quantile(scores.float(), 1 - self.false_positive_rate))
        self.pixel_threshold.fill_(upper_quantile(maps, self.false_positive_rate))
        # gathered: the same on every rank
        self.log_dict(
            {
                "val/score_mean": scores.mean(),
                "val/score_min": scores.min(),
                "val/score_max": scores.max(),
                "val/score_threshold": self.score_threshold,
                "val/pixel_threshold": self.pixel_threshold,
            },
            rank_zero_only=True,
        )

    def validation_defect_metrics(self, val: Scored) -> dict[str, float]:
        """How well the model finds the validation split's defects, every epoch: those painted on its normal
        images (data.synthetic_val_defects: `val_*`, with no real test label) and the real ones moved there
        from the test set (data.val_defects: `val_real_*`), each part scored apart."""
        val_set, index = self.trainer.datamodule.val_set, val.index.to(self.trainer.datamodule.val_set.labels.device)
        masks = val_set.masks[index] if val_set.masks is not None else None
        from_test = val_set.from_test[index].to(val.labels.device)
        results = {}
        for prefix, part in (("val_", ~from_test), ("val_real_", from_test)):
            labels = val.labels[part]
            if not (labels == 1).any():
                continue
            subset = Scored(*(field[part] if len(field) else field for field in val))
            metrics = by_image_score(subset.paper_scores, subset.map_scores, labels)
            metrics |= ranking_metrics(subset.scores, labels)  # the chosen image score's
            part_masks = masks[part.to(masks.device)] if masks is not None else None
            if part_masks is not None and (part_masks == 1).any():
                metrics |= {k: v for k, v in pixel_metrics(subset.maps, part_masks, None).items() if k != "pixel_f1"}
                metrics["defect_residual_ratio"] = residual_ratio(subset.residuals, part_masks)
            results |= {prefix + k: v for k, v in metrics.items()}
        return results

    def masks_of(self, split: str) -> torch.Tensor | None:
        """A split's ground-truth masks (data.InMemoryImages), where its data has them: the test set's
        from ground_truth folders or data=synthetic, the validation set's from data.synthetic_val_defects."""
        return getattr(getattr(self.trainer.datamodule, split, None), "masks", None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What `predict` and `export` need besides the weights: the class, and the images it expects. The
        loggers write out what they hold, so the log has every epoch the checkpoint has (a resumed run
        carries on from both)."""
        for logger in self.trainer.loggers:
            logger.save()
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

    def check_shift(self, normal_scores: torch.Tensor) -> dict:
        """Warn when the normal test images score unlike the normal validation images (scoring.shift_check)."""
        val_set = getattr(self.trainer.datamodule, "val_set", None)
        check = shift_check(
            normal_scores.float().cpu(),
            self.score_threshold.item(),
            (self.score_min.item(), self.score_max.item()),
            int((val_set.labels == 0).sum()) if val_set else 0,
            self.false_positive_rate,
        )
        if check["normal_test_shifted"]:
            log.warning(
                "the normal test images score unlike the normal validation images: %.0f%% of these %d exceed the "
                "calibrated threshold (which %.0f%% of validation images exceed), %.0f%% score below and %.0f%% above "
                "every validation image. They differ from the training images (lighting, camera, a different part?), "
                "and decisions on them cannot be trusted, whatever the AUROC. %s normal images taken under the test "
                "conditions (docs/lighting_and_shift.md).",
                100 * check["normal_test_over_threshold"],
                len(normal_scores),
                100 * self.false_positive_rate,
                100 * check["normal_test_below_val_min"],
                100 * check["normal_test_above_val_max"],
                "Try data.intensity=per_image, or train on" if self.intensity == "none" else "Train on",
            )
        return check

    def test_step(self, batch, batch_idx: int) -> None:
        x, labels, index = batch
        masked = self.masks_of("test_set") is not None  # maps kept only to compare with the masks
        self._test_batches.append(scored(self(x), labels, index, keep_maps=masked, keep_residuals=masked))

    def on_test_epoch_end(self) -> None:
        test = self.gather(self._test_batches)
        scores, labels = test.scores, test.labels
        fitted = self.protocol != "paper" and not torch.isnan(self.score_min)
        metrics = evaluate(
            scores,
            labels,
            self.threshold,
            fitted_range=(self.score_min.item(), self.score_max.item()) if fitted else None,
            calibrated_threshold=self.score_threshold.item() if fitted else None,
        )
        if fitted:
            metrics |= self.check_shift(scores[labels == 0])
        metrics["image_score"] = self.image_score
        metrics |= by_image_score(test.paper_scores, test.map_scores, labels)
        masks = self.masks_of("test_set")
        if masks is None:
            metrics |= {"pixel_auroc": None, "pixel_aupro": None, "pixel_f1": None, "defect_residual_ratio": None}
        else:
            pixel_threshold = self.pixel_threshold.item() if fitted and not torch.isnan(self.pixel_threshold) else None
            masks = masks[test.index.to(masks.device)]
            metrics |= pixel_metrics(test.maps, masks, pixel_threshold)
            metrics["defect_residual_ratio"] = residual_ratio(test.residuals, masks)
        prefix = "test_paper/" if self.protocol == "paper" else "test/"  # never the same keys for both evaluations
        self.log_dict({prefix + k: v for k, v in metrics.items() if isinstance(v, float)}, rank_zero_only=True)
        self.test_results = {
            "metrics": metrics,
            "scores": scores.cpu(),
            "labels": labels.cpu(),
            "index": test.index.cpu(),
            "maps": test.maps.cpu() if masks is not None else None,
        }


# How a model is evaluated, which every model shares (conf/evaluation.yaml gives them their values): may change
# between a run and its resumption, and is not part of what names a setting in the report.
EVALUATION_OPTIONS = frozenset(inspect.signature(AnomalyDetector.__init__).parameters) - {"self"}
