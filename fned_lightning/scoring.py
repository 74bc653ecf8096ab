"""The anomaly score (paper section 1.2), its normalisation, and the metrics (anomalous = positive)."""

import math
import warnings

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_recall,
)


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
    test_minmax = detection_metrics(min_max_normalise(scores, scores.min().item(), scores.max().item()), labels, threshold)
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
