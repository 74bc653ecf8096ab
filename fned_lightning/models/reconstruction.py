"""Models that score an image by how well they reconstruct it (the GANs of the paper's tables): the anomaly
map is the residual |x - x_fake| of the image as the model sees it, averaged over channels and smoothed."""

import torch

from fned_lightning.models.detector import AnomalyDetector
from fned_lightning.scoring import residual_map, smooth


class ReconstructionDetector(AnomalyDetector):
    """Subclasses give `score(x) -> (scores, x_fake)` and their training."""

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each model's own: raw scores and reconstructions of images as the networks see them."""
        raise NotImplementedError(f"{type(self).__name__} must define score(x)")

    def detect(self, seen: torch.Tensor):
        scores, x_fake = self.score(seen)
        residuals = residual_map(seen, x_fake)
        return scores, self.anomaly_maps(seen, x_fake, residuals), x_fake, residuals

    def anomaly_maps(self, seen: torch.Tensor, x_fake: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
        """N x H x W: the residual smoothed with a Gaussian of `map_sigma` pixels (a model with a
        segmentation head gives the head's instead)."""
        return smooth(residuals, self.map_sigma)

    def map_description(self) -> str:
        return (
            f"|x - x_fake| of the images in [-1, 1], averaged over channels, smoothed with a Gaussian of sigma "
            f"{self.map_sigma} pixels"
        )
