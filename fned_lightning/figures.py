"""Per-run figures: score histograms (paper Fig. 6), reconstructions (Fig. 7), ROC and PR curves."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import torch
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc
from torchvision.utils import save_image

from fned_lightning.scoring import min_max_normalise


def score_histogram(scores: torch.Tensor, labels: torch.Tensor, path: Path, title: str, threshold: float | None = None) -> Path:
    normalised = min_max_normalise(scores, scores.min().item(), scores.max().item())
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = torch.linspace(0, 1, 41).tolist()
    ax.hist(normalised[labels == 0].tolist(), bins=bins, alpha=0.6, label="normal", color="tab:blue")
    ax.hist(normalised[labels == 1].tolist(), bins=bins, alpha=0.6, label="abnormal", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set(xlabel="anomaly score (test-set min-max)", ylabel="images", title=title)
    ax.legend()
    return _save(fig, path)


def roc_and_pr_curves(scores: torch.Tensor, labels: torch.Tensor, path: Path, title: str) -> Path | None:
    if labels.min() == labels.max():
        return None  # one class only: no curve to draw
    ranks = min_max_normalise(scores, scores.min().item(), scores.max().item())
    fpr, tpr, _ = binary_roc(ranks, labels)
    precision, recall, _ = binary_precision_recall_curve(ranks, labels)
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(9, 4))
    roc.plot(fpr.tolist(), tpr.tolist())
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr.plot(recall.tolist(), precision.tolist())
    pr.axhline(labels.float().mean().item(), color="grey", linestyle=":")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall")
    fig.suptitle(title)
    return _save(fig, path)


def reconstruction_grid(groups: list[tuple[torch.Tensor, torch.Tensor]], path: Path) -> Path:
    """One row of inputs and one row of their reconstructions per group (e.g. normal, abnormal); [-1, 1]."""
    rows = torch.cat([part for images, reconstructions in groups for part in (images, reconstructions)])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(rows.float().cpu() * 0.5 + 0.5, path, nrow=len(groups[0][0]), padding=1)
    return path


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
