"""The anomaly score (paper section 1.2), its normalisation, anomaly maps, and the metrics (anomalous =
positive): image-level, and pixel-level where ground-truth masks exist."""

import math
import warnings

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_recall,
)

MASK_UNKNOWN = -1  # a mask value: this defect image has no ground truth; left out of the pixel metrics


def anomaly_score(
    x: torch.Tensor,
    x_fake: torch.Tensor,
    features: torch.Tensor,
    features_fake: torch.Tensor,
    weight: float = 0.9,
    reduction: str = "sum",
) -> torch.Tensor:
    """A = weight * ||x - x_fake||_1 + (1 - weight) * ||f(x) - f(x_fake)||_2, one value per image.

    reduction="sum" is the paper's norms; "mean" divides the L1 term by the pixel count and
    takes the L2 term as an RMS, which rebalances the two terms (and so can change ranking).
    """
    # float32 sums: under bf16 autocast a sum of 3,072 pixels would keep only ~3 significant digits
    residual = (x.float() - x_fake.float()).abs().flatten(1)
    feature_gap = (features.float() - features_fake.float()).pow(2).flatten(1)
    if reduction == "sum":
        reconstruction, latent = residual.sum(1), feature_gap.sum(1).sqrt()
    elif reduction == "mean":
        reconstruction, latent = residual.mean(1), feature_gap.mean(1).sqrt()
    else:
        raise ValueError(f"score reduction must be 'sum' (the paper's) or 'mean', got {reduction!r}")
    return weight * reconstruction + (1 - weight) * latent


def min_max_normalise(scores: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """A' = (A - low) / (high - low) (paper eq. 6); scores outside the fitted range leave [0, 1]."""
    return (scores - low) / max(high - low, 1e-12)


def ranking_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Threshold-free AUROC and AUPRC (average precision); NaN when the set has only one class."""
    if labels.min() == labels.max():
        warnings.warn("the evaluated set holds only one class: AUROC and AUPRC are undefined (NaN)", stacklevel=2)
        return {"auroc": math.nan, "auprc": math.nan}
    # torchmetrics reads float predictions outside [0, 1] as logits and squashes them with a
    # sigmoid, which flattens raw scores in the hundreds; min-max scaling keeps the ranking intact.
    ranks = min_max_normalise(scores, scores.min().item(), scores.max().item())
    return {
        "auroc": binary_auroc(ranks, labels).item(),
        "auprc": binary_average_precision(ranks, labels).item(),
    }


def detection_metrics(normalised: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """F1, precision and recall of the decision `normalised > threshold`."""
    # Hard 0/1 decisions: torchmetrics would sigmoid float scores outside [0, 1], and calls `>=` positive.
    decisions = (normalised > threshold).long()
    return {
        "f1": binary_f1_score(decisions, labels).item(),
        "precision": binary_precision(decisions, labels).item(),
        "recall": binary_recall(decisions, labels).item(),
    }


def evaluate(
    scores: torch.Tensor,
    labels: torch.Tensor,
    threshold: float,
    fitted_range: tuple[float, float] | None,
    calibrated_threshold: float | None = None,
) -> dict[str, float | None]:
    """All test metrics: AUROC/AUPRC, and F1/P/R at `threshold` under both normalisations.

    `fitted_range` is (min, max) of the scores of normal validation images (the honest,
    deployable normalisation); the paper's min-max over the test set itself is always reported
    too, under `*_test_minmax`. The unsuffixed f1/precision/recall are the validation-fitted
    ones when a range was fitted. `calibrated_threshold`, a raw score fitted on normal
    validation images, adds `*_calibrated`.
    """
    scores, labels = scores.float().cpu(), labels.long().cpu()
    metrics: dict[str, float | None] = {"n_scored": len(scores), "n_scored_abnormal": int(labels.sum())}
    metrics |= ranking_metrics(scores, labels)
    test_minmax = detection_metrics(
        min_max_normalise(scores, scores.min().item(), scores.max().item()), labels, threshold
    )
    metrics |= {f"{name}_test_minmax": value for name, value in test_minmax.items()}
    if fitted_range is None:
        metrics |= {f"{name}_val_minmax": None for name in test_minmax}
        metrics |= {"normalisation": "test_minmax", **test_minmax}
    else:
        val_minmax = detection_metrics(min_max_normalise(scores, *fitted_range), labels, threshold)
        metrics |= {f"{name}_val_minmax": value for name, value in val_minmax.items()}
        metrics |= {"normalisation": "val_minmax", **val_minmax}
    if calibrated_threshold is not None:
        calibrated = detection_metrics(scores, labels, calibrated_threshold)
        metrics |= {f"{name}_calibrated": value for name, value in calibrated.items()}
    return metrics


def shift_check(
    normal_scores: torch.Tensor,
    calibrated_threshold: float,
    validation_range: tuple[float, float],
    n_validation: int,
    false_positive_rate: float,
) -> dict[str, float | bool]:
    """Do normal test images score like the normal validation images? About `false_positive_rate` of
    them should exceed the calibrated threshold, and about 2 / (n_validation + 1) fall outside the
    validation images' (min, max). `normal_test_shifted` when either share is well beyond that (over
    twice it, and over three binomial standard deviations above it), as when lighting, the camera or
    the part changed between the training and the test images: scores can move either way."""
    n = len(normal_scores)

    def beyond(share: float, expected: float) -> bool:
        return share > max(2 * expected, expected + 3 * math.sqrt(expected * (1 - expected) / max(n, 1)))

    def share(mask: torch.Tensor) -> float:
        return mask.float().mean().item() if n else math.nan

    over, below, above = (
        share(normal_scores > calibrated_threshold),
        share(normal_scores < validation_range[0]),
        share(normal_scores > validation_range[1]),
    )
    shifted = bool(n) and (beyond(over, false_positive_rate) or beyond(below + above, min(2 / (n_validation + 1), 0.5)))
    return {
        "normal_test_over_threshold": over,
        "normal_test_over_threshold_expected": false_positive_rate,
        "normal_test_below_val_min": below,
        "normal_test_above_val_max": above,
        "normal_test_shifted": shifted,
    }


def residual_map(x: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    """N x H x W: the raw residual |x - x_fake| averaged over channels."""
    return (x.float() - x_fake.float()).abs().mean(1)


def smooth(residual: torch.Tensor, sigma: float) -> torch.Tensor:
    """N x H x W maps smoothed with a Gaussian of `sigma` pixels (truncated at 4 sigma, reflected at the
    borders): the anomaly map of a residual map. 0: unchanged. In float32 whatever the training precision:
    under autocast the convolutions would run in bf16 and coarsen every map and pixel metric."""
    if torch.is_autocast_enabled(residual.device.type):  # checked, not entered always: exports stay plain
        with torch.autocast(residual.device.type, enabled=False):
            return smooth(residual.float(), sigma)
    residual = residual[:, None]
    if sigma > 0:  # separable, with a kernel of fixed size: exports to ONNX as two plain convolutions
        height, width = residual.shape[-2:]
        radius = min(math.ceil(4 * sigma), int(height) - 1, int(width) - 1)  # reflect padding needs radius < size
        taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=residual.device)
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        residual = F.pad(residual, (radius, radius, radius, radius), mode="reflect")
        residual = F.conv2d(F.conv2d(residual, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return residual[:, 0]


def filtered_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map's maximum after a mean filter 21/256 of the image wide (DRAEM's image score: 21 px at 256 px),
    odd, at least 1 px: one hot pixel does not make an anomaly, a patch of them does."""
    width = max(round(21 * int(maps.shape[-1]) / 256) // 2 * 2 + 1, 1)  # int: a number while exporting too
    return F.avg_pool2d(maps[:, None].float(), width, stride=1, padding=width // 2).flatten(1).amax(1)


def defect_residual_ratio(residuals: torch.Tensor, masks: torch.Tensor) -> float:
    """The identity-shortcut diagnostic: the mean raw residual on defect pixels divided by the mean raw
    residual on the normal pixels of the same images (those whose known mask holds a defect). A
    generator that copies its input, defects included, scores about 1 (a perfect copy exactly 1: each
    mean gets 1e-6 added); one that reconstructs the normal part scores well above 1. NaN when no image
    has a known defect."""
    masks = masks.to(residuals.device)
    with_defect = (masks != MASK_UNKNOWN).flatten(1).all(1) & (masks == 1).flatten(1).any(1)
    if not with_defect.any():
        return math.nan
    residuals, defect = residuals[with_defect].double(), masks[with_defect] == 1
    return ((residuals[defect].mean() + 1e-6) / (residuals[~defect].mean() + 1e-6)).item()


def upper_quantile(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """The value that a `fraction` share of `values` exceed (any size: torch.quantile stops at 2**24)."""
    flat = values.flatten().float()
    k = min(max(math.ceil((1 - fraction) * len(flat)), 1), len(flat))
    return flat.kthvalue(k).values


def connected_regions(masks: torch.Tensor) -> torch.Tensor:
    """N x H x W boolean masks -> region ids, 0 for background and 1..K for each 8-connected defect
    region (as MVTec AD's evaluation labels them), numbered across all images."""
    masks = masks.bool()
    ids = torch.arange(1, masks.numel() + 1, dtype=torch.float64).view(masks.shape) * masks
    ids = ids.unsqueeze(1)
    keep = masks.unsqueeze(1)
    while True:  # each pass spreads the largest id one pixel further within its region
        spread = F.max_pool2d(ids, 3, stride=1, padding=1) * keep
        if torch.equal(spread, ids):
            break
        ids = spread
    return (
        torch.unique(ids[:, 0].long(), return_inverse=True)[1]
        if masks.any()
        else torch.zeros(masks.shape, dtype=torch.long)
    )


def aupro(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> float:
    """The area under the per-region-overlap curve up to `fpr_limit` false-positive rate, divided by
    `fpr_limit` (MVTec AD; Bergmann et al.): at each threshold, PRO is the mean over every connected
    defect region of the share of its pixels above the threshold, so a small defect counts as much
    as a large one; the false-positive rate is over all defect-free pixels. NaN without both kinds."""
    regions = connected_regions(masks).flatten()
    n_regions, normal = int(regions.max()), regions == 0
    if n_regions == 0 or normal.all():
        return math.nan
    sizes = torch.bincount(regions, minlength=n_regions + 1).double()
    # PRO(t) = sum over region pixels above t of 1 / (K * |region|): one cumulative sum in score order
    weight = torch.where(normal, 0.0, 1.0 / (n_regions * sizes[regions]))
    scores, order = maps.flatten().double().sort(descending=True)
    fpr = normal[order].double().cumsum(0) / normal.sum()
    pro = weight[order].cumsum(0)
    last_of_ties = torch.cat([scores[1:] != scores[:-1], torch.tensor([True])])  # a threshold takes ties together
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fpr[last_of_ties]])
    pro = torch.cat([torch.zeros(1, dtype=torch.float64), pro[last_of_ties]])
    end = int(torch.searchsorted(fpr, torch.tensor(fpr_limit, dtype=torch.float64), right=True))  # fpr[end-1] <= limit
    if end < len(fpr):  # interpolate the curve at the limit
        share = (fpr_limit - fpr[end - 1]) / (fpr[end] - fpr[end - 1])
        fpr = torch.cat([fpr[:end], fpr.new_tensor([fpr_limit])])
        pro = torch.cat([pro[:end], (pro[end - 1] + share * (pro[end] - pro[end - 1])).view(1)])
    return (torch.trapezoid(pro, fpr) / fpr_limit).item()


def pixel_metrics(maps: torch.Tensor, masks: torch.Tensor, pixel_threshold: float | None) -> dict[str, float | None]:
    """Pixel AUROC, AUPRO (up to 30% FPR) and, given a threshold fitted on normal validation images'
    maps, pixel F1, over the images whose masks are known (`MASK_UNKNOWN` ones are left out)."""
    known = (masks != MASK_UNKNOWN).flatten(1).all(1)
    maps, masks = maps[known].float().cpu(), masks[known].long().cpu()
    metrics: dict[str, float | None] = {
        "n_pixel_scored_images": int(known.sum()),
        "pixel_auroc": math.nan,
        "pixel_aupro": math.nan,
        "pixel_f1": None,
    }
    if masks.numel() == 0 or masks.min() == masks.max():
        warnings.warn(
            "no image with both defect and normal pixels among the masks: pixel metrics undefined", stacklevel=2
        )
        return metrics
    flat_maps, flat_masks = maps.flatten(), masks.flatten()
    ranks = min_max_normalise(flat_maps, flat_maps.min().item(), flat_maps.max().item())  # no sigmoid on raw values
    metrics["pixel_auroc"] = binary_auroc(ranks, flat_masks).item()
    metrics["pixel_aupro"] = aupro(maps, masks)
    if pixel_threshold is not None:
        metrics["pixel_f1"] = binary_f1_score((flat_maps > pixel_threshold).long(), flat_masks).item()
    return metrics
