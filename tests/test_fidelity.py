"""docs/fidelity.md's table against the configs: every row that names a config key states the
value that `conf/` gives it (composed with that section's `model=`)."""

import re

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import REPO, compose_config


def table_rows() -> list[tuple[str, str, str, str]]:
    """(model, setting, config key, the last `value` of the ours column) for every row that names a key."""
    rows, model = [], None
    for line in (REPO / "docs" / "fidelity.md").read_text().splitlines():
        if line.startswith("## "):
            model = re.search(r"`model=(\w+)`", line).group(1)
        elif line.startswith("|") and not line.startswith(("| setting", "|---")):
            setting, _, ours, config, _ = (cell.strip() for cell in line.strip("|").split("|"))
            if config:
                key = config.strip("`")
                value = re.findall(r"`([^`]*)`", ours)[-1]  # the last: class names come first
                rows.append((model, setting, key, value))
    return rows


ROWS = table_rows()


def test_the_table_covers_the_papers_models_and_names_config_keys():
    documented = {"fned", "ganomaly", "skip_ganomaly", "fanogan", "padim", "patchcore"}  # a model from a paper joins
    assert {model for model, *_ in ROWS} >= documented
    assert len(ROWS) >= 40


@pytest.mark.parametrize("model,setting,key,stated", ROWS, ids=[f"{m}:{s}" for m, s, *_ in ROWS])
def test_the_stated_value_is_the_configs(model, setting, key, stated):
    cfg = compose_config(f"model={model}", "anomaly_class=horse")
    actual = OmegaConf.to_container(
        OmegaConf.create({"v": OmegaConf.select(cfg, key, throw_on_missing=True)}), resolve=True
    )["v"]
    assert actual == yaml.safe_load(stated), f"docs/fidelity.md says {key}={stated} for {model}, conf/ gives {actual}"
