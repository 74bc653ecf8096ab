import math

import pytest
import torch

from fned_lightning.scoring import anomaly_score, detection_metrics, evaluate, min_max_normalise, ranking_metrics


def test_anomaly_score_matches_hand_computed_norms():
    x = torch.zeros(2, 1, 2, 2)
    x_fake = torch.tensor([[0.5, -0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    features = torch.zeros(2, 3)
    fake_features = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    # image 0: R = 0.5+0.5+0+1 = 2, L = sqrt(9+16) = 5; image 1: R = 0, L = 2
    scores = anomaly_score(x, x_fake, features, fake_features, weight=0.9)
    torch.testing.assert_close(scores, torch.tensor([0.9 * 2 + 0.1 * 5, 0.1 * 2]))
    means = anomaly_score(x, x_fake, features, fake_features, weight=0.9, reduction="mean")
    torch.testing.assert_close(means, torch.tensor([0.9 * 0.5 + 0.1 * math.sqrt(25 / 3), 0.1 * math.sqrt(4 / 3)]))


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="sum"):
        anomaly_score(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), reduction="max")


def test_ranking_metrics_on_raw_scores_far_outside_unit_range():
    # Raw scores are in the hundreds: the ranking must survive (no sigmoid squashing them all to 1).
    scores = torch.tensor([400.0, 410.0, 420.0, 430.0])
    labels = torch.tensor([0, 1, 0, 1])
    metrics = ranking_metrics(scores, labels)
    assert metrics["auroc"] == pytest.approx(0.75)  # 3 of the 4 (abnormal, normal) pairs ordered right
    assert metrics["auprc"] == pytest.approx((1 + 2 / 3) / 2)  # precision 1 at recall 1/2, 2/3 at recall 1


def test_ranking_metrics_of_a_one_class_set_are_nan_with_a_warning():
    with pytest.warns(UserWarning, match="only one class"):
        metrics = ranking_metrics(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
    assert math.isnan(metrics["auroc"]) and math.isnan(metrics["auprc"])


def test_detection_counts_scores_above_threshold_as_abnormal():
    normalised = torch.tensor([0.1, 0.2, 0.3, 0.9, 1.5])
    labels = torch.tensor([0, 0, 1, 0, 1])
    metrics = detection_metrics(normalised, labels, threshold=0.2)  # 0.2 itself is normal
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(1.0)
    assert metrics["f1"] == pytest.approx(0.8)


def test_evaluate_reports_both_normalisations():
    scores = torch.tensor([10.0, 11.0, 12.0, 20.0, 30.0])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # Validation range (10, 12): the normal test images map to 0, 0.5, 1 and so 0.5, 1 are flagged.
    metrics = evaluate(scores, labels, threshold=0.2, fitted_range=(10.0, 12.0))
    assert metrics["normalisation"] == "val_minmax"
    assert metrics["precision_val_minmax"] == pytest.approx(0.5)
    assert metrics["precision"] == metrics["precision_val_minmax"]
    # Test-set min-max: (s - 10) / 20 -> 0, 0.05, 0.1, 0.5, 1: perfect at 0.2.
    assert metrics["f1_test_minmax"] == pytest.approx(1.0)
    assert metrics["auroc"] == pytest.approx(1.0)
    unfitted = evaluate(scores, labels, threshold=0.2, fitted_range=None)
    assert unfitted["normalisation"] == "test_minmax" and unfitted["f1_val_minmax"] is None


def test_min_max_normalise():
    torch.testing.assert_close(min_max_normalise(torch.tensor([1.0, 3.0, 5.0]), 1.0, 3.0), torch.tensor([0.0, 1.0, 2.0]))
