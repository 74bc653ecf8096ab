"""What a run writes, and where: its folder named by its data, its config.yaml as it ran."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml

from fned_lightning.train import write_results
from tests.conftest import compose_config


@pytest.mark.parametrize(
    ("overrides", "folder"),
    [
        (["data=folder", "data.root=/data/mvtec_screw/", "model=ganomaly"], "outputs/ganomaly/mvtec_screw/"),
        (["anomaly_class=horse"], "outputs/fned/horse/"),
        (["data=synthetic"], "outputs/fned/synthetic/"),
    ],
)
def test_a_single_run_folder_is_named_by_its_data_as_a_sweeps_are(overrides, folder):
    import fned_lightning.train  # noqa: F401  (registers the data_name resolver, as running it does)

    run_dir = compose_config(*overrides, return_hydra=True).hydra.run.dir
    assert run_dir.startswith(folder) and len(run_dir) == len(folder) + len("2025-01-01_10-00-00")


def fake_tested(n: int = 4):
    """A model and a data module as write_results reads them after a test."""
    scores, labels = torch.linspace(0.1, 0.9, n), torch.tensor([0, 1] * (n // 2))
    model = SimpleNamespace(
        threshold=0.2,
        false_positive_rate=0.05,
        score_min=torch.tensor(0.0),
        score_max=torch.tensor(1.0),
        score_threshold=torch.tensor(0.5),
        test_results={"scores": scores, "labels": labels, "index": torch.arange(n)},
        normalise=lambda s: s,
    )
    return model, SimpleNamespace(test_names=[f"test/x/{i}.png" for i in range(n)])


def test_config_yaml_records_the_precision_the_trainer_ran_not_the_one_asked_for(tmp_path):
    cfg = compose_config("data=synthetic", "logger=csv", "trainer.precision=16-mixed", f"output_dir={tmp_path}")
    trainer = L.Trainer(
        accelerator="cpu", precision="16-mixed", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    assert trainer.precision == "bf16-mixed"  # Lightning's fallback on CPU
    model, datamodule = fake_tested()
    metrics = {k: None for k in ("protocol", "model", "anomaly_class", "auroc", "auprc", "f1", "precision", "recall")}
    write_results(tmp_path, cfg, metrics | {"normalisation": "val_minmax"}, model, datamodule, trainer.precision)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["trainer"]["precision"] == "bf16-mixed" and written["output_dir"] == str(tmp_path)  # resolved
    assert cfg.trainer.precision == "16-mixed"  # the run's own config is left as it was
