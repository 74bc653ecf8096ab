"""The evidence committed under results/: every report table there is what `report` regenerates
from the runs' metrics.json beside it (so a table cannot drift from its runs)."""

import pytest

from fned_lightning.report import report
from tests.conftest import REPO

REPORTS = sorted((REPO / "results").rglob("report/tables.md"))


def test_there_is_committed_evidence():
    assert REPORTS, "no results/*/report/tables.md: scripts/keep_results.sh writes them"


@pytest.mark.parametrize("tables", REPORTS, ids=[str(p.relative_to(REPO)) for p in REPORTS])
def test_committed_tables_are_what_report_regenerates(tables, tmp_path):
    runs = tables.parent.parent
    assert report([runs], tmp_path, wandb_mode="off") == tables.read_text()
    for committed in tables.parent.glob("*.csv"):
        assert (tmp_path / committed.name).read_text() == committed.read_text(), committed.name
