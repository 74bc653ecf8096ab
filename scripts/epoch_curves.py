"""Per-epoch curves of kept runs (scripts/keep_results.sh copies each run's CSV log as epochs.csv): the
shortcut diagnostic on painted validation defects, their AUROC, the AUROC of real validation defects
(data.val_defects), and the test AUROC that the paper's
protocol scores after every epoch (BatchNorm in training mode; protocol=both picks its paper epoch from these,
on test labels, as the paper does; the honest protocol never reads them).

    python scripts/epoch_curves.py results/shortcut_screw    # writes epoch_curves.md and .png there
"""

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fned_lightning.report import display_name, model_variant  # noqa: E402

CURVES = {
    "val/defect_residual_ratio": "painted validation defects: residual defect / normal",
    "val/auroc_score_paper": "painted validation defects: AUROC (paper's score)",
    "val/real_auroc": "real validation defects (data.val_defects): AUROC (its image score)",
    "paper/test_auroc": "test AUROC after each epoch (paper's protocol)",
    "paper/test_defect_residual_ratio": "test defects, where masks exist: residual defect / normal (paper's protocol)",
}


def curves(run: Path) -> dict[str, dict[int, float]]:
    values: dict[str, dict[int, float]] = defaultdict(dict)
    with open(run / "epochs.csv") as file:
        for row in csv.DictReader(file):
            for key in CURVES:
                if row.get(key):
                    values[key][int(row["epoch"])] = float(row[key])
    return values


def main(folder: str) -> None:
    root = Path(folder)
    runs = {}
    for log in sorted(root.rglob("epochs.csv")):
        config = OmegaConf.load(log.parent / "config.yaml")
        metrics = json.loads((log.parent / "metrics.json").read_text())
        name, anomaly_class = metrics["model"], metrics.get("anomaly_class")
        variant = model_variant(name, OmegaConf.to_container(config.model))
        label = (
            f"{display_name(name)}{f' ({variant})' if variant else ''}{f', {anomaly_class}' if anomaly_class else ''}, "
            f"{config.data.image_size} px, seed {config.seed}"
        )
        runs[label] = curves(log.parent)
    lines = []
    for key, title in CURVES.items():
        shown = {label: values[key] for label, values in runs.items() if values.get(key)}
        if not shown:
            continue
        epochs = sorted({e for values in shown.values() for e in values})
        lines += [f"### {title}", "", "| run | " + " | ".join(map(str, epochs)) + " |", "|---|" + "---|" * len(epochs)]
        lines += [
            f"| {label} | " + " | ".join(f"{values[e]:.3f}" if e in values else "" for e in epochs) + " |"
            for label, values in shown.items()
        ]
        lines.append("")
    (root / "epoch_curves.md").write_text("\n".join(lines))
    measured = [key for key in CURVES if any(values.get(key) for values in runs.values())]  # e.g. no test masks
    fig, axes = plt.subplots(1, len(measured), figsize=(5 * len(measured), 4), squeeze=False)
    for ax, key in zip(axes[0], measured, strict=True):
        for label, values in runs.items():
            if values.get(key):
                ax.plot(list(values[key]), list(values[key].values()), marker=".", label=label)
        ax.set(title=CURVES[key], xlabel="epoch")
        ax.title.set_fontsize(9)
        # the reference line: a generator that copies its input (ratios), or chance (AUROC on the test set)
        reference = 1 if key.endswith("ratio") else 0.5 if key in ("paper/test_auroc", "val/real_auroc") else None
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle=":")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "epoch_curves.png", dpi=100)
    print((root / "epoch_curves.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1])
