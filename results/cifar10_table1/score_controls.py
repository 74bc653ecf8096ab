"""What does the honest score measure on CIFAR-10: novelty, or which class an image is? Three controls.

    .venv/bin/python results/cifar10_table1/score_controls.py /root/sweep/data/cifar10   # writes score_controls.md

From every run kept at the paper's budget (this sweep and `../cifar10_paper_budget/`), the honest scores of the
images each run tested (`scores.csv`: eval(), the last epoch):

1. Class ranks: each class's median score, ranked 1 (looks most normal) to 10 within each run. A score that
   measured novelty would rank the held-out class 10th in its own run, wherever it ranks elsewhere.
2. Held out or trained on: for two runs of one model that held out classes h and h2, the AUROC of h's 1,000 test
   images against the test images of the other eight classes, once scored by the run that held h out and once by
   the run that trained on h as normal. The same images on both sides: the difference is what novelty adds.
3. Complexity alone, no training: the mean absolute difference between neighbouring pixels (RGB in [0, 1]) of the
   same JPEG files, as a score on Table 1's split (the held-out class's 6,000 images against the other nine
   classes' 9,000 test images), and its Spearman correlation with each run's score.
"""

import csv
import json
import sys
from itertools import combinations, permutations
from pathlib import Path
from statistics import mean, median

import torch
from torchmetrics.functional import spearman_corrcoef
from torchvision.io import decode_image, read_file

from fned_lightning.data.cifar10 import CIFAR10_CLASSES
from fned_lightning.errors import fail
from fned_lightning.report import PAPER, display_name, markdown
from fned_lightning.scoring import ranking_metrics

HERE = Path(__file__).resolve().parent
RUN_FOLDERS = sorted(HERE.glob("*_seed0")) + sorted((HERE.parent / "cifar10_paper_budget").glob("*_seed0"))
MODELS = ("fned", "ganomaly", "skip_ganomaly")  # the models run at the paper's budget, in the tables' order


def class_of(name: str) -> str:
    return name.split("/")[1]  # scores.csv names an image split/class/file.jpg


def auroc(scores: dict[str, float], names: list[str], abnormal_class: str) -> float:
    labels = torch.tensor([int(class_of(name) == abnormal_class) for name in names])
    return ranking_metrics(torch.tensor([scores[name] for name in names]), labels)["auroc"]


def complexity(path: Path) -> float:
    image = decode_image(read_file(str(path))).float() / 255
    horizontal = (image[:, :, 1:] - image[:, :, :-1]).abs().mean()
    vertical = (image[:, 1:, :] - image[:, :-1, :]).abs().mean()
    return float(horizontal + vertical) / 2


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation, tied values sharing their mean rank (scores and complexities do tie)."""
    return float(spearman_corrcoef(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))


def class_ranks(runs: dict) -> list[str]:
    header, cells, orders = ["image's class"], {name: [name] for name in CIFAR10_CLASSES}, []
    for (model, held_out), (scores, _) in runs.items():
        header.append(f"{display_name(model)}, {held_out} held out")
        medians = {c: median(s for n, s in scores.items() if class_of(n) == c) for c in CIFAR10_CLASSES}
        rank = {c: i + 1 for i, c in enumerate(sorted(CIFAR10_CLASSES, key=medians.get))}
        orders.append([float(rank[c]) for c in CIFAR10_CLASSES])
        for c in CIFAR10_CLASSES:
            cell = f"{rank[c]} ({medians[c]:.3g})"
            cells[c].append(f"**{cell}**" if c == held_out else cell)
    honest_row = ["honest AUROC", *(f"{honest:.3f}" for _, honest in runs.values())]
    pairs = [spearman(a, b) for a, b in combinations(orders, 2)]
    return [
        "## 1. Each class's median score, ranked within its run",
        "",
        "1 = the lowest median score (looks most normal), 10 = the highest; in brackets the median itself (each model",
        "scores on its own scale). Bold: the class held out in that run (its 6,000 images; every other class: its",
        "1,000 normal test images).",
        "",
        markdown(header, [*cells.values(), honest_row]),
        "",
        f"Spearman correlation of the ten classes' order between two runs, over all {len(pairs)} pairs: mean"
        f" {mean(pairs):.2f}, lowest {min(pairs):.2f} (1: the same order).",
        "",
    ]


def held_out_or_trained_on(runs: dict) -> list[str]:
    rows, differences = [], {model: [] for model in MODELS}
    for (model, held_out), (model_b, other) in permutations(runs, 2):
        if model != model_b:
            continue
        scores, scores_trained_on = runs[(model, held_out)][0], runs[(model, other)][0]
        names = [n for n in scores if n.startswith("test/") and class_of(n) != other]  # h's test images + 8 classes
        novel, seen = auroc(scores, names, held_out), auroc(scores_trained_on, names, held_out)
        differences[model].append(novel - seen)
        rows.append([display_name(model), held_out, f"{novel:.3f}", other, f"{seen:.3f}", f"{novel - seen:+.3f}"])
    summary = [
        f"{display_name(m)}: median {median(d):+.3f} over {len(d)} pairs ({min(d):+.3f} to {max(d):+.3f})"
        for m, d in differences.items()
        if d
    ]
    return [
        "## 2. The same images, held out or trained on",
        "",
        "AUROC of class h's 1,000 test images against the test images of the eight classes other than h and h2:",
        "scored by the run that held h out, and by the run of the same model that held h2 out (h was normal",
        "training data there). Novelty adds the difference.",
        "",
        markdown(
            ["model", "class h", "AUROC, h held out", "run holding out h2", "AUROC, h trained on", "novelty adds"], rows
        ),
        "",
        "What novelty adds, per model: " + "; ".join(summary) + ".",
        "",
    ]


def complexity_alone(runs: dict, root: Path) -> list[str]:
    complexities = {
        f"{split}/{c}/{path.name}": complexity(path)
        for split in ("train", "test")
        for c in CIFAR10_CLASSES
        for path in sorted((root / split / c).glob("*.jpg"))
    }
    rows = []
    for i, held_out in enumerate(CIFAR10_CLASSES):
        names = [n for n in complexities if class_of(n) == held_out or n.startswith("test/")]
        measured = [f"{runs[(m, held_out)][1]:.3f}" if (m, held_out) in runs else "—" for m in MODELS]
        paper = PAPER["auroc"]["FNED"][i]
        rows.append([held_out, f"{auroc(complexities, names, held_out):.3f}", *measured, f"{paper:.3f}"])
    correlations = []
    for (model, held_out), (scores, honest_auroc) in runs.items():
        names = list(scores)
        rho = spearman([scores[n] for n in names], [complexities[n] for n in names])
        correlations.append([display_name(model), held_out, f"{rho:.2f}", f"{honest_auroc:.3f}"])
    return [
        "## 3. Image complexity alone, no training",
        "",
        "AUROC on Table 1's split (the held-out class's 6,000 images against the other nine classes' 9,000 test",
        "images) of the mean absolute difference between neighbouring pixels; beside it, the honest AUROC of each",
        "model run at the paper's budget (— where not run yet), and FNED's number in the paper.",
        "",
        markdown(["held-out class", "complexity alone", *map(display_name, MODELS), "FNED, the paper"], rows),
        "",
        "Spearman correlation between each run's score and the complexity of the images it scored:",
        "",
        markdown(["model", "held out", "Spearman", "honest AUROC"], correlations),
        "",
    ]


def main(root: Path) -> None:
    if not all((root / split / c).is_dir() for split in ("train", "test") for c in CIFAR10_CLASSES):
        fail(f"expected CIFAR-10 as train/<class>/*.jpg and test/<class>/*.jpg under {root}")
    torch.set_num_threads(1)  # beside a sweep: one core is plenty
    runs, kept = {}, [run for run in RUN_FOLDERS if (run / "scores.csv").exists()]
    for run in kept:
        metrics = json.loads((run / "metrics.json").read_text())
        with open(run / "scores.csv", newline="") as f:
            scores = {row["name"]: float(row["score"]) for row in csv.DictReader(f)}
        assert abs(auroc(scores, list(scores), metrics["anomaly_class"]) - metrics["auroc"]) < 1e-4, run  # same score
        key = (metrics["model"], metrics["anomaly_class"])
        assert key not in runs, f"two runs of {key}: keep one"
        runs[key] = (scores, metrics["auroc"])
    lines = [
        "# What the honest score measures on CIFAR-10 (generated by score_controls.py)",
        "",
        "Runs: " + ", ".join(f"`{run.parent.name}/{run.name}`" for run in kept),
        "",
        *class_ranks(runs),
        *held_out_or_trained_on(runs),
        *complexity_alone(runs, root),
    ]
    (HERE / "score_controls.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: score_controls.py CIFAR10_IMAGE_FOLDER (train/<class>/*.jpg, test/<class>/*.jpg)")
    main(Path(sys.argv[1]))
