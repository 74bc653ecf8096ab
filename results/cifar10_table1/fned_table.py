"""FNED's ten Table 1 rows in one table: this sweep's classes and the first sweep's horse and airplane.

    .venv/bin/python results/cifar10_table1/fned_table.py   # writes fned_table.md and fned_table.csv here

Per class: the honest AUROC (eval(), last epoch), the paper's protocol in the anchors' batches (epoch chosen
on test labels, as the paper's protocol chooses it, and the last epoch, chosen on nothing: the two apart say
how much of the gap is the batching and how much the choice), the paper's number, and the honest AUPRC; a
class not yet finished is a row saying so.
This sweep's runs (commit 7f7fb11, protocol=both) logged the anchors' number themselves. Horse and airplane
ran at 99bb309, whose paper test mixed the labels in its batches; their anchors' number is the one
`../cifar10_paper_budget/paper_batches.py` recomputed from every epoch's kept weights (`paper_batches.json`),
the best of the 15 epochs, which is what protocol=both at 7f7fb11 selects. Where each row ran, and how long it
took, comes from `machines.csv` (written by hand from the sessions log as each run is kept).
"""

import csv
import json
import math
from pathlib import Path
from statistics import mean

from fned_lightning.data.cifar10 import CIFAR10_CLASSES
from fned_lightning.report import PAPER

HERE = Path(__file__).resolve().parent
FIRST_SWEEP = HERE.parent / "cifar10_paper_budget"
PAPER_FNED = dict(zip(CIFAR10_CLASSES, PAPER["auroc"]["FNED"][:10], strict=True))  # the 11th is the average
PAPER_FNED_AVERAGE = PAPER["auroc"]["FNED"][-1]


def this_sweep() -> dict[str, dict]:
    rows = {}
    for metrics_file in sorted(HERE.glob("*_fned_*_seed0/metrics.json")):
        m = json.loads(metrics_file.read_text())
        assert m["paper_test_batches"] == "anchors" and m["epochs"] == 15, metrics_file
        with open(metrics_file.parent / "epochs.csv") as f:
            per_epoch = {
                int(row["epoch"]): float(row["paper/test_auroc"])
                for row in csv.DictReader(f)
                if row["paper/test_auroc"]
            }
        assert sorted(per_epoch) == list(range(m["epochs"])), metrics_file  # the paper's test ran after every epoch
        # the log's per-epoch number is the one the run chose from: it cannot come from another column or epoch
        assert math.isclose(per_epoch[m["paper_tested_epoch"]], m["paper_auroc"], abs_tol=1e-6), metrics_file
        assert max(per_epoch.values()) == per_epoch[m["paper_tested_epoch"]], metrics_file
        rows[m["anomaly_class"]] = {
            "honest": m["auroc"],
            "anchors": m["paper_auroc"],
            "anchors_epoch": m["paper_tested_epoch"],
            "anchors_last": per_epoch[m["epochs"] - 1],
            "auprc": m["auprc"],
            "run": f"{metrics_file.parent.name} (7f7fb11)",
        }
    return rows


def first_sweep() -> dict[str, dict]:
    recomputed = json.loads((FIRST_SWEEP / "paper_batches.json").read_text())
    rows = {}
    for run in ("4_fned_horse_seed0", "5_fned_airplane_seed0"):
        m = json.loads((FIRST_SWEEP / run / "metrics.json").read_text())
        per_epoch = recomputed[run]["per_epoch"]
        assert len(per_epoch) == m["epochs"] == 15, run  # every epoch's weights scored: the best is the paper's choice
        best_epoch = max(per_epoch, key=lambda epoch: per_epoch[epoch]["anchors"])
        rows[m["anomaly_class"]] = {
            "honest": m["auroc"],
            "anchors": per_epoch[best_epoch]["anchors"],
            "anchors_epoch": int(best_epoch),
            "anchors_last": per_epoch[str(m["epochs"] - 1)]["anchors"],
            "auprc": m["auprc"],
            "run": f"../cifar10_paper_budget/{run} (99bb309; anchors' from paper_batches.json)",
        }
    return rows


def main(out: Path = HERE) -> None:
    measured = first_sweep() | this_sweep()
    header = [
        "class",
        "honest AUROC",
        "anchors' batches AUROC (epoch)",
        "anchors' batches, last epoch",
        "the paper's AUROC",
        "honest AUPRC",
        "run",
    ]
    rows = []
    for name in CIFAR10_CLASSES:
        row = measured.get(name)
        if row is None:
            rows.append(
                [name, "missing", "missing", "missing", f"{PAPER_FNED[name]:.3f}", "missing", "not finished yet"]
            )
            continue
        anchors = f"{row['anchors']:.3f} ({row['anchors_epoch']})"
        rows.append(
            [
                name,
                f"{row['honest']:.3f}",
                anchors,
                f"{row['anchors_last']:.3f}",
                f"{PAPER_FNED[name]:.3f}",
                f"{row['auprc']:.3f}",
                row["run"],
            ]
        )
    done = [name for name in CIFAR10_CLASSES if name in measured]
    averages = {
        key: mean([measured[name][key] for name in done]) for key in ("honest", "anchors", "anchors_last", "auprc")
    }
    paper_same_classes = mean([PAPER_FNED[name] for name in done])
    rows.append(
        [
            f"average of the {len(done)} measured",
            f"{averages['honest']:.3f}",
            f"{averages['anchors']:.3f}",
            f"{averages['anchors_last']:.3f}",
            f"{paper_same_classes:.3f} (ten: {PAPER_FNED_AVERAGE:.3f})",
            f"{averages['auprc']:.3f}",
            ", ".join(done),
        ]
    )
    with open(out / "fned_table.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    lines = [
        f"# FNED, Table 1: {len(done)} of 10 classes at the paper's budget (generated by fned_table.py)",
        "",
        "Honest: eval(), the last epoch. Anchors' batches: the paper's protocol as its anchors' code ran it",
        "(unshuffled test, one label per batch, BatchNorm in train mode), the epoch chosen on test labels as the",
        "paper's protocol chooses it; beside it the same batches at the last epoch, chosen on nothing.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    with open(HERE / "machines.csv", newline="") as f:
        machines = {row["class"]: row for row in csv.DictReader(f)}
    lines += ["| class | machine | wall time |", "|---|---|---|"]
    unrecorded = {"machine": "not recorded in machines.csv", "wall time": "not recorded in machines.csv"}
    for name in done:
        machine = machines.get(name, unrecorded)
        lines.append(f"| {name} | {machine['machine']} | {machine['wall time']} |")
    lines.append("")
    (out / "fned_table.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
