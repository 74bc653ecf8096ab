"""A run's figures say what they show: the abnormal images by what they are, the scores as the evaluation
that decided on them normalised them."""

import pytest
import torch
from hydra.utils import instantiate

import fned_lightning.figures as figures
import fned_lightning.train as train_module
from tests.conftest import TINY_MODELS, compose_config

DATA = {
    "cifar10": lambda cifar, parts: [f"data.root={cifar}", "data.cache_dir=null", "anomaly_class=horse"],
    "folder": lambda cifar, parts: ["data=folder", f"data.root={parts}", "data.image_size=32", "data.channels=1"],
}


@pytest.mark.parametrize(
    ("data", "protocol", "abnormal"), [("cifar10", "honest", "anomaly: horse"), ("folder", "paper", "defect")]
)
def test_figures_name_the_abnormal_images_and_show_the_scores_as_the_evaluation_used_them(
    tmp_path, monkeypatch, cifar_folder, parts_folder, data, protocol, abnormal
):
    cfg = compose_config(*DATA[data](cifar_folder, parts_folder), f"protocol={protocol}", *TINY_MODELS["fned"])
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    datamodule.setup("fit")
    labels = datamodule.test_set.labels
    model.score_min.fill_(0.0), model.score_max.fill_(1.0)  # fitted on validation: the test scores lie far above
    model.test_results = {"scores": 2.0 + labels.float() + 0.1 * torch.rand(len(labels)), "labels": labels}
    fitted = protocol == "honest"
    metrics = {
        "model": "fned",
        "data": data,
        "anomaly_class": "horse" if data == "cifar10" else None,
        "protocol": protocol,
        "normalisation": "val_minmax" if fitted else "test_minmax",
    }
    histograms, groups = [], []
    save = figures._save

    def saved(fig, path):
        if path.name == "score_histogram.png":
            ax = fig.axes[0]
            legend = [text.get_text() for text in ax.get_legend().get_texts()]
            histograms.append((ax.get_xlabel(), ax.get_title(), ax.get_xlim(), legend))
        return save(fig, path)

    def grid(shown, path, title):
        groups.append(list(shown))
        return path

    monkeypatch.setattr(figures, "_save", saved)
    monkeypatch.setattr(train_module, "reconstruction_grid", grid)
    paths = train_module.write_figures(tmp_path, metrics, model, datamodule, per_class=2)
    assert (tmp_path / "figures" / "score_histogram.png") in paths
    assert groups == [["normal", abnormal]]  # CIFAR-10's abnormal images are a class, not defects
    ((xlabel, title, (low, high), legend),) = histograms
    assert abnormal in legend
    if fitted:  # honest: the validation-fitted normalisation, under which the scores here lie in [2, 3.1]
        assert (
            "fitted on normal validation images" in xlabel
            and "validation-fitted min-max (honest)" in title
            and high >= 3
        )
    else:  # paper: its min-max over the test set, which maps the test scores onto [0, 1]
        assert "over the test set" in xlabel and "the test set's own min-max (the paper's)" in title and high <= 1.1
