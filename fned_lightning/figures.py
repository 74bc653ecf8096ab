"""Per-run figures: score histograms (paper Fig. 6), reconstructions (Fig. 7), ROC and PR curves,
and anomaly maps beside the ground truth."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import torch
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

from fned_lightning.scoring import min_max_normalise, ranking_metrics


def score_histogram(
    scores: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    title: str,
    threshold: float | None = None,
    fitted_range: tuple[float, float] | None = None,
    abnormal: str = "abnormal",
) -> Path:
    """The test scores of normal and abnormal images, normalised as the evaluation that decided on them
    normalised them: with `fitted_range`, the min-max fitted on normal validation images (the honest one;
    scores may leave [0, 1]), else the min-max over the test set itself (the paper's). `threshold`, on
    that scale, is drawn; the x axis and the title say which normalisation it is."""
    if fitted_range is not None:
        normalised = min_max_normalise(scores, *fitted_range)
        scale, short = "min-max fitted on normal validation images", "validation-fitted min-max (honest)"
    else:
        normalised = min_max_normalise(scores, scores.min().item(), scores.max().item())
        scale, short = "min-max over the test set itself (the paper's)", "the test set's own min-max (the paper's)"
    finite = normalised[torch.isfinite(normalised)]
    low = min(0.0, finite.min().item()) if len(finite) else 0.0
    high = max(1.0, finite.max().item()) if len(finite) else 1.0
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = torch.linspace(low, high, 41).tolist()
    ax.hist(normalised[labels == 0].tolist(), bins=bins, alpha=0.6, label="normal", color="tab:blue")
    ax.hist(normalised[labels == 1].tolist(), bins=bins, alpha=0.6, label=abnormal, color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set(xlabel=f"anomaly score, {scale}", ylabel="images")
    ax.set_title(f"{title}\nscores normalised by {short}", fontsize=9)
    ax.legend()
    return _save(fig, path)


def roc_and_pr_curves(scores: torch.Tensor, labels: torch.Tensor, path: Path, title: str) -> Path | None:
    if labels.min() == labels.max():
        return None  # one class only: no curve to draw
    ranks = min_max_normalise(scores, scores.min().item(), scores.max().item())
    fpr, tpr, _ = binary_roc(ranks, labels)
    precision, recall, _ = binary_precision_recall_curve(ranks, labels)
    metrics = ranking_metrics(scores, labels)
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(9, 4))
    roc.plot(fpr.tolist(), tpr.tolist())
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (AUROC {metrics['auroc']:.3f})")
    pr.plot(recall.tolist(), precision.tolist())
    pr.axhline(labels.float().mean().item(), color="grey", linestyle=":")
    pr.set(xlabel="recall", ylabel="precision", title=f"precision-recall (AUPRC {metrics['auprc']:.3f})")
    fig.suptitle(title)
    return _save(fig, path)


def reconstruction_grid(groups: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, title: str) -> Path:
    """Per group (e.g. "normal", "defect" or "anomaly: horse"), a row of inputs over a row of their
    reconstructions; [-1, 1]."""
    rows = [
        (f"{name}\ninput" if kind == 0 else "reconstruction", part)
        for name, pair in groups.items()
        for kind, part in enumerate(pair)
    ]
    columns = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(1.1 * columns + 0.8, 1.15 * len(rows) + 0.4), squeeze=False, layout="constrained"
    )
    for i, (label, images) in enumerate(rows):
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(images):
                picture = (images[j].float().cpu() * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).squeeze(-1)
                ax.imshow(picture.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.set_axis_off()
        axes[i, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"{title}: test images and their reconstructions", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def anomaly_map_grid(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    maps: torch.Tensor,
    titles: list[str],
    pixel_threshold: float,
    path: Path,
    title: str,
) -> Path:
    """A column per test image, titled by `titles` (its class or defect folder): the image ([-1, 1], in
    colour where it has three channels), its ground-truth mask (where the data has masks; grey where
    unknown) and its anomaly map, all maps on one colour scale (their min to max), the pixel threshold
    outlined in white."""
    rows = ["image", "ground truth", "anomaly map"] if masks is not None else ["image", "anomaly map"]
    columns = len(images)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(1.1 * columns + 1, 1.2 * len(rows) + 0.5), squeeze=False, layout="constrained"
    )
    low, high = maps.min().item(), maps.max().item()
    for j in range(columns):
        shown = [(images[j].float() * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).squeeze(-1)]  # H x W x 3, or H x W grey
        if masks is not None:
            shown.append(torch.where(masks[j] < 0, 0.5, masks[j].float()))  # unknown (MASK_UNKNOWN) drawn mid-grey
        for i, picture in enumerate(shown):
            axes[i, j].imshow(picture.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        heat = axes[-1, j].imshow(
            maps[j].numpy(), cmap="jet", vmin=low, vmax=max(high, low + 1e-12), interpolation="nearest"
        )
        if math.isfinite(pixel_threshold) and (maps[j] > pixel_threshold).any():
            axes[-1, j].contour(
                (maps[j] > pixel_threshold).float().numpy(), levels=[0.5], colors="white", linewidths=0.8
            )
        axes[0, j].set_title(titles[j], fontsize=8)
    for i, name in enumerate(rows):
        axes[i, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(heat, ax=axes[-1, :].tolist(), fraction=0.02, pad=0.01, label="map")
    fig.suptitle(f"{title}: anomaly maps (white: above the pixel threshold)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
