"""Does bf16-mixed measure what float32 measures? FNED bird in bf16 (run_bf16_check.sh) against float32 bird.

    .venv/bin/python results/cifar10_table1/bf16_check.py   # writes bf16_check.md here

The yardstick is the spread float32 already has between machines: bird's run on family 25 model 1 (lost after
epoch 12, `lost_runs/`) against the same command on family 26 model 2 (`1_fned_bird_seed0/`), in the
anchors'-batches AUROC after each epoch. bf16 (family 26 model 2, `bf16_check/0_fned_bird_seed0/`) passes if its
differences from float32 on the same machine are no larger, per epoch (median and largest), and its honest AUROC
is within the largest of the machines' differences (README.md, "The check", states this rule before the run).
While the bf16 run is training, its `epochs_so_far.csv` is compared as far as it goes.
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


def per_epoch(log: Path, column: str) -> dict[int, float]:
    if not log.exists():  # the bf16 run before its first epoch is kept
        return {}
    with log.open() as f:
        return {int(row["epoch"]): float(row[column]) for row in csv.DictReader(f) if row.get(column)}


def spread(a: dict[int, float], b: dict[int, float]) -> tuple[list[int], float, float]:
    epochs = sorted(a.keys() & b.keys())
    differences = [abs(a[e] - b[e]) for e in epochs]
    return epochs, median(differences), max(differences)


def main() -> None:
    finished = (BF16 / "metrics.json").exists()
    bf16_log = BF16 / ("epochs.csv" if finished else "epochs_so_far.csv")
    float32 = per_epoch(FLOAT32 / "epochs.csv", "paper/test_auroc")
    other_machine = per_epoch(OTHER_MACHINE, "paper/test_auroc")
    bf16 = per_epoch(bf16_log, "paper/test_auroc")
    rates = {
        name: per_epoch(log, "perf/train_images_per_s")
        for name, log in (("float32", FLOAT32 / "epochs.csv"), ("bf16", bf16_log))
    }

    rows = []
    for epoch in sorted(float32.keys() | bf16.keys()):
        cells = [other_machine.get(epoch), float32.get(epoch), bf16.get(epoch)]
        machines = abs(cells[0] - cells[1]) if None not in cells[:2] else None
        precision = abs(cells[2] - cells[1]) if None not in cells[1:] else None
        rates_cells = [rates["float32"].get(epoch), rates["bf16"].get(epoch)]
        rows.append(
            [str(epoch)]
            + ["" if v is None else f"{v:.3f}" for v in [*cells, machines, precision]]
            + ["" if v is None else f"{v:.1f}" for v in rates_cells]
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

    machine_epochs, machine_median, machine_max = spread(other_machine, float32)
    lines = [
        "# bf16-mixed against float32: FNED bird, seed 0, the paper's budget, commit 7f7fb11",
        "",
        "Written by `bf16_check.py` from `1_fned_bird_seed0/epochs.csv` (float32), `lost_runs/` (float32 on another",
        f"machine) and `bf16_check/0_fned_bird_seed0/{bf16_log.name}` (bf16). Anchors'-batches AUROC after each epoch:",
        "",
        table,
        "",
        f"- Machines' spread (float32, epochs {machine_epochs[0]}-{machine_epochs[-1]}): median {machine_median:.4f}, "
        f"largest {machine_max:.4f}.",
    ]
    if not bf16:
        lines.append("- bf16: no epoch scored yet.")
    else:
        bf16_epochs, bf16_median, bf16_max = spread(bf16, float32)
        within = bf16_median <= machine_median and bf16_max <= machine_max
        judged = (
            f"{'within' if within else 'outside'} the machines' spread" if finished else "judged when the run finishes"
        )
        lines.append(
            f"- bf16's difference from float32 (epochs {bf16_epochs[0]}-{bf16_epochs[-1]}): median {bf16_median:.4f}, "
            f"largest {bf16_max:.4f} ({judged})."
        )
        speedups = [
            rates["bf16"][e] / rates["float32"][e] for e in sorted(rates["bf16"].keys() & rates["float32"].keys())
        ]
        lines.append(
            f"- Training images/s, bf16 over float32 on the same epochs: median {median(speedups):.2f}x "
            f"({min(speedups):.2f}-{max(speedups):.2f}x; {len(speedups)} epochs, each beside whatever else ran)."
        )
        if finished:
            honest32 = json.loads((FLOAT32 / "metrics.json").read_text())
            honest16 = json.loads((BF16 / "metrics.json").read_text())
            honest_difference = abs(honest16["auroc"] - honest32["auroc"])
            passed = within and honest_difference <= machine_max
            lines += [
                f"- Honest AUROC (eval(), last epoch): float32 {honest32['auroc']:.4f}, bf16 {honest16['auroc']:.4f}, "
                f"difference {honest_difference:.4f} (allowed: {machine_max:.4f}).",
                f"- Anchors' batches, best epoch: float32 {honest32['paper_auroc']:.4f} (epoch "
                f"{honest32['paper_tested_epoch']}), bf16 {honest16['paper_auroc']:.4f} (epoch {honest16['paper_tested_epoch']}).",
                f"- Verdict: bf16 {'passes' if passed else 'fails'} the rule stated before the run.",
            ]
        else:
            lines.append("- The bf16 run has not finished: no honest AUROC and no verdict yet.")
    (HERE / "bf16_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
