"""PaDiM (Defard, Setkov, Loesch, Audigier, ICPR 2021, arXiv 2011.08785): a Gaussian of the normal
features at each patch position; a test patch's Mahalanobis distance to its position's Gaussian is its
anomaly, the image's score the maximum of the smoothed map."""

import os

import torch

from fned_lightning.errors import InputError, check_number
from fned_lightning.models.features import FeatureDetector
from fned_lightning.networks.backbones import LITE0


class PaDiM(FeatureDetector):
    """Per position p: mean mu_p and covariance Sigma_p + `covariance_shrinkage` I of the concatenated
    features (of a seeded random subset of `n_features` channels, the paper's d; null: all of them); the
    map is sqrt((f - mu_p)^T Sigma_p^-1 (f - mu_p)). Fitted in float64 sums over the training images."""

    FITTED = ("mean", "inverse_covariance", "channels_kept")

    def __init__(
        self,
        backbone: str = LITE0,
        strides: tuple[int, ...] = (8, 16),
        neighbourhood: int = 1,
        n_features: int | None = None,
        covariance_shrinkage: float = 0.01,
        feature_seed: int = 0,
        **evaluation,
    ):
        super().__init__(backbone, strides, neighbourhood, **evaluation)
        self.save_hyperparameters(ignore=["backbone_weights"])  # how it was built, not what it is
        check_number("model.covariance_shrinkage", covariance_shrinkage, 0, above_low=True)
        available = sum(self.backbone.channels)
        if n_features is not None:
            check_number("model.n_features", n_features, 1, integer=True)
            if n_features > available:
                raise InputError(
                    f"model.n_features={n_features}: the chosen stages of {backbone} have {available} "
                    f"channels; give at most that many, or null for all"
                )
        generator = torch.Generator().manual_seed(feature_seed)
        kept = (
            torch.randperm(available, generator=generator)[:n_features].sort().values
            if n_features
            else torch.arange(available)
        )
        self.register_buffer("channels_kept", kept)
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("inverse_covariance", torch.empty(0))
        self.sums = None  # float64 sum, sum of outer products and count, while fitting (not kept)

    def patches(self, features: torch.Tensor) -> torch.Tensor:
        """N x P x d: each position's kept channels."""
        return features[:, self.channels_kept].flatten(2).transpose(1, 2)

    def accumulate(self, features: torch.Tensor) -> None:
        f = self.patches(features).double()
        if self.sums is None:
            self.check_memory(*f.shape[1:], f.device)
            self.sums = [torch.zeros_like(f[0]), f.new_zeros(f.shape[1], f.shape[2], f.shape[2]), 0]
        self.sums[0] += f.sum(0)
        self.sums[1] += torch.einsum("npc,npd->pcd", f, f)
        self.sums[2] += len(f)

    def check_memory(self, positions: int, channels: int, device: torch.device) -> None:
        """One line, before the fit, where its covariances would not fit: a position's is channels^2, held as
        float64 sums, a float64 batch update and, at the end, a float32 inverse (20 bytes an entry)."""
        needed = 20 * positions * channels**2
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if needed > free:
            raise InputError(
                f"model=padim needs about {needed / 2**30:.1f} GiB for the covariances of {positions} "
                f"positions x {channels} features ({free / 2**30:.1f} GiB free on {device.type}): give "
                f"model.n_features={int((free / 20 / positions) ** 0.5)} or fewer (the paper keeps 550 of "
                f"wide_resnet50_2's), or a smaller data.image_size"
            )

    def finish_fit(self) -> None:
        total, outer, n = self.sums
        self.sums = None
        if n < 2:
            raise InputError(f"PaDiM needs at least 2 training images to fit a covariance, got {n}")
        mean = total / n
        covariance = (outer - n * mean[:, :, None] * mean[:, None, :]) / (n - 1)
        covariance += self.hparams.covariance_shrinkage * torch.eye(mean.shape[1], dtype=mean.dtype, device=mean.device)
        self.mean = mean.float()
        # symmetric positive definite (the shrinkage sees to it): Cholesky's inverse, exact to float64 and
        # clear of the LU route, whose batched pivots came back unset on CPU after an earlier run in the process
        self.inverse_covariance = torch.cholesky_inverse(torch.linalg.cholesky(covariance)).float()

    def distances(self, features: torch.Tensor):
        height, width = features.shape[-2:]
        difference = self.patches(features) - self.mean
        squared = torch.einsum("npc,pcd,npd->np", difference, self.inverse_covariance, difference)
        return squared.clamp_min(0).sqrt().view(-1, height, width), None  # the image score: the smoothed map's maximum
