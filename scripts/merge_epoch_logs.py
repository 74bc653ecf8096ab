"""One per-epoch log for a run whose CSV log was cut by a resume. The sweep of commit 99bb309
(results/cifar10_paper_budget) runs a CSV logger that deletes a resumed run's csv/metrics.csv, so its
launch script keeps a copy (csv/metrics.before_resume.<time>.csv) before each resume. This writes all the
epochs: each epoch's rows from the newest log that has that epoch.

    python scripts/merge_epoch_logs.py RUN_DIR OUT_CSV
"""

import csv
import sys
from pathlib import Path


def epoch_rows(run: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """Each epoch's rows from the newest of the run's logs that has that epoch, and every column name."""
    logs = sorted(Path(run, "csv").glob("metrics.before_resume.*.csv")) + [Path(run, "csv", "metrics.csv")]
    rows_by_epoch: dict[str, list[dict]] = {}
    fields: list[str] = []
    for log in (log for log in logs if log.exists()):  # oldest first: a later log's epochs replace an earlier one's
        with open(log) as file:
            reader = csv.DictReader(file)
            fields += [name for name in reader.fieldnames or [] if name not in fields]
            rows = list(reader)
        for epoch in {row["epoch"] for row in rows}:
            rows_by_epoch[epoch] = [row for row in rows if row["epoch"] == epoch]
    return rows_by_epoch, fields


def main(run: str, out: str) -> None:
    rows_by_epoch, fields = epoch_rows(Path(run))
    with open(out, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for epoch in sorted(rows_by_epoch, key=int):
            writer.writerows(rows_by_epoch[epoch])


if __name__ == "__main__":
    main(*sys.argv[1:])
