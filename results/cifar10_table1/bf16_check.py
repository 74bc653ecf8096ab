"""Does bf16-mixed measure what float32 measures? FNED bird in bf16 (run_bf16_check.sh) against float32 bird.

    .venv/bin/python results/cifar10_table1/bf16_check.py   # writes bf16_check.md here

The yardstick is the spread float32 already has between machines: bird's run on family 25 model 1 (lost after
epoch 12, `lost_runs/`) against the same command on family 26 model 2 (`1_fned_bird_seed0/`), in the
anchors'-batches AUROC after each of epochs 0-12. bf16 (family 26 model 2, `bf16_check/0_fned_bird_seed0/`)
passes if, over the same epochs, the median and the largest of its per-epoch differences from float32 on the same
machine are no larger than the machines' (rounded to 4 places, as README.md states the rule), and its honest
AUROC is within the machines' largest difference of float32's. The rule was written down before the run.
While the bf16 run is training, its `epochs_so_far.csv` is compared as far as it goes, without a verdict.
"""

import csv
import json
from pathlib import Path
from statistics import median

from fned_lightning.report import markdown

HERE = Path(__file__).resolve().parent
FLOAT32 = HERE / "1_fned_bird_seed0"
OTHER_MACHINE = HERE / "lost_runs" / "fned_bird_seed0_epochs0-12_family25_model1.csv"
BF16 = HERE / "bf16_check" / "0_fned_bird_seed0"
AUROC, RATE = "paper/test_auroc", "perf/train_images_per_s"


def per_epoch(log: Path) -> tuple[dict[int, float], dict[int, float]]:
    """(anchors'-batches AUROC, training images/s) by epoch, from one Lightning CSV log."""
    with log.open() as f:
        rows = list(csv.DictReader(f))
    return tuple({int(r["epoch"]): float(r[column]) for r in rows if r.get(column)} for column in (AUROC, RATE))


def differences(a: dict[int, float], b: dict[int, float], epochs: list[int]) -> list[float]:
    return [abs(a[e] - b[e]) for e in epochs]


def cell(value: float | None, places: int = 3) -> str:
    return "" if value is None else f"{value:.{places}f}"


def main() -> None:
    finished = (BF16 / "metrics.json").exists()
    bf16_log = BF16 / ("epochs.csv" if finished else "epochs_so_far.csv")
    float32, float32_rate = per_epoch(FLOAT32 / "epochs.csv")
    other_machine, _ = per_epoch(OTHER_MACHINE)
    bf16, bf16_rate = per_epoch(bf16_log) if bf16_log.exists() or finished else ({}, {})  # a finished run has its log

    rows = []
    for epoch in sorted(float32.keys() | bf16.keys()):
        f25, f32, b16 = other_machine.get(epoch), float32.get(epoch), bf16.get(epoch)
        machines = abs(f25 - f32) if f25 is not None and f32 is not None else None
        precision = abs(b16 - f32) if b16 is not None and f32 is not None else None
        rows.append(
            [str(epoch), *map(cell, (f25, f32, b16, machines, precision))]
            + [cell(float32_rate.get(epoch), 1), cell(bf16_rate.get(epoch), 1)]
        )
    table = markdown(
        [
            "epoch",
            "float32, family 25 model 1",
            "float32, family 26 model 2",
            "bf16, family 26 model 2",
            "machines' difference",
            "bf16's difference",
            "float32 images/s",
            "bf16 images/s",
        ],
        rows,
    )

    rule_epochs = sorted(other_machine.keys() & float32.keys())
    machine_differences = differences(other_machine, float32, rule_epochs)
    machine_median, machine_max = round(median(machine_differences), 4), round(max(machine_differences), 4)
    lines = [
        "# bf16-mixed against float32: FNED bird, seed 0, the paper's budget, commit 7f7fb11",
        "",
        "Written by `bf16_check.py` from `1_fned_bird_seed0/epochs.csv` (float32), `lost_runs/` (float32 on another",
        f"machine) and `bf16_check/0_fned_bird_seed0/{bf16_log.name}` (bf16). Anchors'-batches AUROC after each epoch:",
        "",
        table,
        "",
        f"- Machines' spread (float32, epochs {rule_epochs[0]}-{rule_epochs[-1]}): median {machine_median:.4f}, "
        f"largest {machine_max:.4f}.",
    ]
    compared = [e for e in rule_epochs if e in bf16]
    if not compared:
        lines.append("- bf16: no epoch scored yet.")
    else:
        bf16_differences = differences(bf16, float32, compared)
        lines.append(
            f"- bf16's difference from float32 (epochs {compared[0]}-{compared[-1]}): median "
            f"{median(bf16_differences):.4f}, largest {max(bf16_differences):.4f}."
        )
        lines.append(
            f"- Training images/s, median over each run's epochs: float32 {median(float32_rate.values()):.1f} "
            f"({len(float32_rate)} epochs), bf16 {median(bf16_rate.values()):.1f} ({len(bf16_rate)} epochs): "
            f"{median(bf16_rate.values()) / median(float32_rate.values()):.2f}x."
        )
    if finished and compared == rule_epochs:
        honest32 = json.loads((FLOAT32 / "metrics.json").read_text())
        honest16 = json.loads((BF16 / "metrics.json").read_text())
        honest_difference = abs(honest16["auroc"] - honest32["auroc"])
        passed = (
            round(median(bf16_differences), 4) <= machine_median
            and round(max(bf16_differences), 4) <= machine_max
            and round(honest_difference, 4) <= machine_max
        )
        lines += [
            f"- Honest AUROC (eval(), last epoch): float32 {honest32['auroc']:.4f}, bf16 {honest16['auroc']:.4f}, "
            f"difference {honest_difference:.4f} (allowed: {machine_max:.4f}).",
            f"- Anchors' batches, best epoch: float32 {honest32['paper_auroc']:.4f} (epoch "
            f"{honest32['paper_tested_epoch']}), bf16 {honest16['paper_auroc']:.4f} "
            f"(epoch {honest16['paper_tested_epoch']}).",
            f"- Verdict: bf16 {'passes' if passed else 'fails'} the rule stated before the run.",
        ]
    else:
        lines.append("- The bf16 run has not finished: no honest AUROC and no verdict.")
    (HERE / "bf16_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
