"""Both protocols and the learning-rate schedules, observed during real training: which weights are
tested, whether test data is read during fit, and the learning rate each epoch actually used."""

import json
import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from fned_lightning.data.synthetic import SyntheticParts
from fned_lightning.protocols import PaperProtocol
from tests.conftest import TINY, TINY_MODELS, compose_config, quiet_trainer, run_cli, tiny_parts


class GuardedParts(SyntheticParts):
    """Synthetic parts whose test data raises when anything touches it while the trainer fits."""

    def fitting(self) -> bool:
        return self.trainer is not None and self.trainer.state.fn == "fit"

    @property
    def test_set(self):
        if self.fitting():
            raise AssertionError("the test set was read during fit")
        return self._test_set

    @test_set.setter
    def test_set(self, value):
        self._test_set = value

    def test_dataloader(self):
        if self.fitting():
            raise AssertionError("the test data were loaded during fit")
        return super().test_dataloader()

    def paper_test_dataloader(self):
        if self.fitting():
            raise AssertionError("the test data were loaded during fit")
        return super().paper_test_dataloader()


class WeightsPerEpoch(L.Callback):
    """The weights at the end of each training epoch, and the weights the test pass starts with."""

    def __init__(self):
        self.epochs: list[dict[str, torch.Tensor]] = []
        self.tested: dict[str, torch.Tensor] | None = None

    @staticmethod
    def copy(module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(self.copy(pl_module))

    def on_test_start(self, trainer, pl_module):
        self.tested = self.copy(pl_module)


def same(a: dict, b: dict) -> bool:
    """Every tensor equal to the bit (NaN in both places counts as equal: unfitted buffers)."""
    return all(torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=0, equal_nan=True) for k in a)


def fit_and_test(*callbacks, protocol: str = "honest", epochs: int = 3):
    L.seed_everything(0)
    model = instantiate(
        compose_config("data=synthetic", "data.image_size=16", f"protocol={protocol}", *TINY_MODELS["fned"]).model
    )
    data = tiny_parts(GuardedParts)
    data.setup("fit")  # split before fit, as train() does (the split counts the test labels for its log line)
    trainer = quiet_trainer(max_epochs=epochs, limit_train_batches=2, callbacks=list(callbacks))
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    return model


def test_honest_protocol_never_reads_test_data_during_fit_and_tests_the_last_epoch():
    weights = WeightsPerEpoch()
    model = fit_and_test(weights)
    assert model.test_results["metrics"]["n_scored"] == 16  # the test did read it, after fit
    assert len(weights.epochs) == 3 and not same(weights.epochs[1], weights.epochs[2])
    assert same(weights.tested, weights.epochs[-1])


def test_the_guard_catches_the_paper_protocol_reading_test_data_during_fit():
    with pytest.raises(AssertionError, match="loaded during fit"):
        fit_and_test(PaperProtocol(), protocol="paper")


class ScriptedPaperProtocol(PaperProtocol):
    """The paper's selection with test AUROCs given in advance: the best is epoch 1 of 0, 1, 2."""

    AUROCS = [0.6, 0.9, 0.7]

    def test_auroc(self, trainer, pl_module) -> tuple[float, float]:
        return self.AUROCS[trainer.current_epoch], math.nan


def test_paper_protocol_tests_the_weights_of_the_best_epoch_not_the_last(monkeypatch):
    weights, paper = WeightsPerEpoch(), ScriptedPaperProtocol()
    monkeypatch.setattr(GuardedParts, "fitting", lambda self: False)  # the paper's protocol reads test data by design
    fit_and_test(paper, weights, protocol="paper")  # the selection runs before the snapshot in each epoch's end
    assert paper.best_epoch == 1 and paper.best_auroc == 0.9
    assert not same(weights.epochs[1], weights.epochs[2])
    assert same(weights.tested, weights.epochs[1])


@pytest.mark.parametrize(
    ("precision", "data"), [("32-true", "synthetic"), ("bf16-mixed", "synthetic"), ("32-true", "cifar10")]
)
def test_paper_protocol_run_is_labelled_and_reports_the_best_logged_epoch_and_its_auroc(
    tmp_path, precision, data, cifar_folder
):
    """bf16: the per-epoch passes run in the trainer's precision too; CIFAR-10: both test in the anchors'
    label-ordered batches (BatchNorm in training mode would score mixed batches differently)."""
    data_args = (
        ["data=synthetic", "data.n_train=48", "data.n_test_normal=8", "data.n_test_abnormal=8", "data.batch_size=16"]
        if data == "synthetic"
        else [
            f"data.root={cifar_folder}",
            "anomaly_class=horse",
            "data.cache_dir=null",
            "data.batch_size=4",
            "data.val_fraction=0.2",
        ]
    )
    done = run_cli(
        *TINY, *data_args, "trainer.max_epochs=3", "protocol=paper", f"trainer.precision={precision}", tmp_path=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"] == "paper" and metrics["normalisation"] == "test_minmax"
    assert metrics["paper_test_batches"] == "anchors"
    assert metrics["f1"] == metrics["f1_test_minmax"]
    lines = (run / "csv" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    column, epoch_column = header.index("paper/test_auroc"), header.index("epoch")
    logged = {
        int(row[epoch_column]): float(row[column]) for row in (line.split(",") for line in lines[1:]) if row[column]
    }
    assert sorted(logged) == [0, 1, 2]
    best = max(logged, key=lambda epoch: (logged[epoch], -epoch))  # the first of equals, as the selection keeps it
    assert metrics["tested_epoch"] == best
    assert metrics["auroc"] == pytest.approx(logged[best], abs=1e-6)  # the same weights, the same train-mode pass
    warnings = (run / "train.log").read_text().count("ordered by the test labels")
    assert warnings == (1 if data == "cifar10" else 0)  # said once a run, where the order uses the labels


def test_the_papers_label_ordered_test_batches_are_warned_of_where_they_are_used(caplog, cifar_folder, parts_folder):
    from types import SimpleNamespace

    from fned_lightning.data.cifar10 import CIFAR10OneClass
    from fned_lightning.data.folder import ImageFolderAnomaly

    def warned(datamodule) -> bool:
        caplog.clear()
        PaperProtocol().on_fit_start(SimpleNamespace(datamodule=datamodule), None)
        return "ordered by the test labels" in caplog.text and "data.paper_test_batches=mixed" in caplog.text

    assert warned(CIFAR10OneClass(root=str(cifar_folder), anomaly_class="horse"))
    assert not warned(CIFAR10OneClass(root=str(cifar_folder), anomaly_class="horse", paper_test_batches="mixed"))
    assert not warned(ImageFolderAnomaly(root=str(parts_folder)))  # its test set is shuffled, as the anchors' was
    assert not warned(tiny_parts())


class LearningRates(L.Callback):
    """The learning rate of every optimiser at the first batch of each epoch, as the step uses it, and
    the `train/lr` each epoch logged (read once the epoch's own hooks have all run)."""

    def __init__(self):
        self.per_epoch: list[list[float]] = []
        self.logged: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.per_epoch.append([opt.param_groups[0]["lr"] for opt in trainer.optimizers])

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.logged.append(trainer.callback_metrics["train/lr"].item())

    def on_train_end(self, trainer, pl_module):
        self.logged.append(trainer.callback_metrics["train/lr"].item())


@pytest.mark.parametrize(
    "name,expected",
    [
        # FNED: constant, then linear decay over the last half (4 epochs: factors 1, 1, 2/3, 1/3)
        ("fned", [[2e-4, 2e-4]] * 2 + [[2e-4 * 2 / 3] * 2, [2e-4 / 3] * 2]),
        ("ganomaly", [[2e-4, 2e-4]] * 4),  # constant: the references never step a scheduler
        ("skip_ganomaly", [[2e-4, 2e-4]] * 4),
        ("fanogan", [[1e-4, 1e-4, 5e-5]] * 4),  # G and critic Adam, encoder RMSprop
    ],
)
def test_learning_rate_used_in_each_epoch(name, expected):
    rates = LearningRates()
    L.seed_everything(0)
    model = instantiate(compose_config("data=synthetic", "data.image_size=16", *TINY_MODELS[name]).model)
    data = tiny_parts()
    quiet_trainer(max_epochs=4, limit_train_batches=1, limit_val_batches=0, callbacks=[rates]).fit(
        model, datamodule=data
    )
    assert len(rates.per_epoch) == 4
    for used, wanted in zip(rates.per_epoch, expected, strict=True):
        assert used == pytest.approx(wanted, rel=1e-9)
    assert rates.logged == pytest.approx([used[0] for used in rates.per_epoch], rel=1e-6)  # logged: the rate used
    if name == "fanogan":
        assert [type(opt).__name__ for opt in model.trainer.optimizers] == ["Adam", "Adam", "RMSprop"]
        assert math.isclose(model.trainer.optimizers[2].param_groups[0]["alpha"], 0.9)


def test_both_protocols_from_one_run_match_an_honest_run_and_a_paper_run(tmp_path):
    """The paper's test passes after each epoch leave BatchNorm's statistics, every other buffer and
    the random generators as they were: the honest half of a both run is the honest run, and its
    paper half is the paper run (same seed, same command otherwise)."""
    synthetic = [
        "data=synthetic",
        "data.n_train=48",
        "data.n_test_normal=8",
        "data.n_test_abnormal=8",
        "data.batch_size=16",
    ]
    metrics = {}
    for protocol in ("honest", "paper", "both"):
        (tmp_path / protocol).mkdir()
        done = run_cli(
            *TINY, *synthetic, "trainer.max_epochs=3", f"protocol={protocol}", "seed=3", tmp_path=tmp_path / protocol
        )
        assert done.returncode == 0, done.stderr[-3000:]
        metrics[protocol] = json.loads((tmp_path / protocol / "run" / "metrics.json").read_text())
    both = metrics["both"]
    assert (
        both["protocol"] == "both"
        and both["normalisation"] == "val_minmax"
        and both["paper_normalisation"] == "test_minmax"
    )
    for name in ("auroc", "auprc", "f1", "f1_calibrated", "score_min", "score_max", "score_threshold", "tested_epoch"):
        assert both[name] == metrics["honest"][name], name
    for name in ("auroc", "auprc", "f1", "precision", "recall", "tested_epoch"):
        assert both[f"paper_{name}"] == metrics["paper"][name], name
    assert both["tested_epoch"] == 2


def test_speedups_compile_each_network_once_and_leave_out_what_cannot_be_compiled(monkeypatch):
    from fned_lightning.callbacks import Speedups

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    for name, left_out in (("fned", set()), ("fanogan", {"critic"})):
        compiled.clear()
        model = instantiate(compose_config("data=synthetic", "data.image_size=16", *TINY_MODELS[name]).model)
        speedups = Speedups(compile=True)
        for stage in ("fit", "test", "test"):  # protocol=both tests twice
            speedups.setup(None, model, stage)
        expected = [network for child, network in model.named_children() if child not in left_out]
        assert compiled == expected


def test_paper_batches_rescores_a_run_and_refuses_one_it_does_not_reproduce(tmp_path, cifar_folder):
    """scripts/paper_batches.py: the epoch the run's paper protocol selected, rescored in the batching the
    run tested with, gives the run's own paper_auroc; the run's batching is read from its per-epoch log, the
    other one scored; a run still going is scored from its newest checkpoint, and a second call scores only
    what is new; a run whose logged number it cannot reproduce is refused."""
    import csv
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO

    done = run_cli(
        *TINY,
        f"data.root={cifar_folder}",
        "anomaly_class=horse",
        "data.cache_dir=null",
        "data.batch_size=4",
        "data.val_fraction=0.2",
        "trainer.max_epochs=2",
        "protocol=both",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run, out = tmp_path / "run", tmp_path / "results"
    out.mkdir()
    script = [sys.executable, str(REPO / "scripts" / "paper_batches.py"), str(tmp_path), str(out)]

    metrics_file = run / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    log = run / "csv" / "metrics.csv"
    with open(log) as file:
        rows = list(csv.DictReader(file))
    other_epoch = str(1 - metrics["paper_tested_epoch"])
    for row in rows:  # a mark in the log: the epoch not selected must come from the log, not from a rescoring
        if row["epoch"] == other_epoch and row["paper/test_auroc"]:
            row["paper/test_auroc"] = "0.123"
    with open(log, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.move(metrics_file, tmp_path / "metrics.json")  # as the run was before its final test: unfinished
    going = subprocess.run(script, capture_output=True, text=True, cwd=REPO)
    assert going.returncode == 0, going.stderr[-3000:]
    result = json.loads((out / "paper_batches.json").read_text())["run"]
    assert not result["finished"] and result["honest_auroc"] is None
    assert "not finished (epochs 0-1)" in (out / "paper_batches.md").read_text()

    shutil.move(tmp_path / "metrics.json", metrics_file)
    rescored = subprocess.run(script, capture_output=True, text=True, cwd=REPO)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    # scored before: only the check ran
    assert not [line for line in rescored.stdout.splitlines() if line.startswith("run epoch")]
    result = json.loads((out / "paper_batches.json").read_text())["run"]
    assert metrics["paper_test_batches"] == result["logged_batching"] == "anchors"
    assert (result["finished"], result["honest_auroc"]) == (True, metrics["auroc"])
    assert (result["selected_epoch"], result["last_epoch"]) == (metrics["paper_tested_epoch"], 1)
    assert result["per_epoch"][str(result["selected_epoch"])]["anchors"] == pytest.approx(
        metrics["paper_auroc"], abs=1e-4
    )
    assert result["per_epoch"][other_epoch]["anchors"] == 0.123
    assert all(0.0 <= v["mixed"] <= 1.0 for v in result["per_epoch"].values())
    assert "| FNED | horse |" in (out / "paper_batches.md").read_text()

    metrics["paper_auroc"] += 0.01  # a run that logged another number than its weights give
    metrics_file.write_text(json.dumps(metrics))
    (out / "paper_batches.json").unlink()
    refused = subprocess.run(script, capture_output=True, text=True, cwd=REPO)
    assert refused.returncode != 0 and "but the run's paper test gave" in refused.stderr
