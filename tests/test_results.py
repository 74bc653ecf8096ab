"""The evidence committed under results/: every report table, the FNED Table 1 and each epoch_curves.md there
is what its script regenerates from the runs kept beside it (so a table cannot drift from its runs)."""

import csv
import runpy
import shutil
import subprocess
import sys

import pytest

from fned_lightning.report import report
from tests.conftest import REPO

REPORTS = sorted((REPO / "results").rglob("report/tables.md"))
CURVES = sorted((REPO / "results").glob("*/epoch_curves.md"))


def test_there_is_committed_evidence():
    assert REPORTS, "no results/*/report/tables.md: scripts/keep_results.sh writes them"


@pytest.mark.parametrize("tables", REPORTS, ids=[str(p.relative_to(REPO)) for p in REPORTS])
def test_committed_tables_are_what_report_regenerates(tables, tmp_path):
    runs = tables.parent.parent
    assert report([runs], tmp_path, wandb_mode="off") == tables.read_text()
    for committed in tables.parent.glob("*.csv"):
        assert (tmp_path / committed.name).read_text() == committed.read_text(), committed.name


def test_a_log_cut_by_a_resume_is_kept_whole(tmp_path):
    """scripts/merge_epoch_logs.py: the copy taken before a resume gives the epochs the resumed log lacks;
    an epoch both have comes from the newer one."""
    logs = tmp_path / "csv"
    logs.mkdir()
    (logs / "metrics.before_resume.20261201T140344.csv").write_text(
        "epoch,step,train/loss_g\n0,1,0.9\n1,2,0.8\n2,3,0.7\n"
    )
    (logs / "metrics.csv").write_text("epoch,step,paper/test_auroc\n2,3,0.55\n3,4,0.6\n")
    out = tmp_path / "epochs.csv"
    subprocess.run([sys.executable, str(REPO / "scripts" / "merge_epoch_logs.py"), str(tmp_path), str(out)], check=True)
    rows = list(csv.DictReader(out.open()))
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3"]
    assert rows[0]["train/loss_g"] == "0.9" and rows[2] == {
        "epoch": "2",
        "step": "3",
        "train/loss_g": "",
        "paper/test_auroc": "0.55",
    }


def test_epoch_curves_tabulate_each_kept_run(tmp_path):
    """scripts/epoch_curves.py: one row per kept run, its per-epoch values in their epochs' columns."""
    run = tmp_path / "0_fned_cat_seed0"
    run.mkdir()
    (run / "epochs.csv").write_text("epoch,step,paper/test_auroc\n0,10,0.61\n1,20,0.875\n")
    # a nested setting as published (conf/model/fned.yaml's generator) names no variant
    (run / "config.yaml").write_text(
        "seed: 0\ndata:\n  image_size: 32\nmodel:\n  generator:\n    width: 32\n    skip_levels: 0\n"
    )
    (run / "metrics.json").write_text('{"model": "fned", "anomaly_class": "cat"}')
    subprocess.run([sys.executable, str(REPO / "scripts" / "epoch_curves.py"), str(tmp_path)], check=True)
    table = (tmp_path / "epoch_curves.md").read_text()
    assert "| FNED, cat, 32 px, seed 0 | 0.610 | 0.875 |" in table
    assert (tmp_path / "epoch_curves.png").stat().st_size > 0


def test_fned_table_is_what_its_script_regenerates(tmp_path):
    """results/cifar10_table1/fned_table.md and .csv come from the kept runs beside them, not from a hand edit."""
    folder = REPO / "results" / "cifar10_table1"
    runpy.run_path(str(folder / "fned_table.py"))["main"](tmp_path)
    for name in ("fned_table.md", "fned_table.csv"):
        assert (tmp_path / name).read_text() == (folder / name).read_text(), name


@pytest.mark.parametrize("committed", CURVES, ids=[str(p.relative_to(REPO)) for p in CURVES])
def test_committed_epoch_curves_are_what_the_script_regenerates(committed, tmp_path):
    """Each results folder's epoch_curves.md is scripts/epoch_curves.py's output on the runs kept beside it."""
    folder = committed.parent
    for log in folder.rglob("epochs.csv"):
        for name in ("epochs.csv", "config.yaml", "metrics.json"):
            copy = tmp_path / (log.parent / name).relative_to(folder)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(log.parent / name, copy)
    runpy.run_path(str(REPO / "scripts" / "epoch_curves.py"))["main"](str(tmp_path))
    assert (tmp_path / "epoch_curves.md").read_text() == committed.read_text()
