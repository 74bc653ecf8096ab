import math

import pytest
import torch

from fned_lightning.scoring import (
    MASK_UNKNOWN,
    anomaly_score,
    aupro,
    connected_regions,
    detection_metrics,
    evaluate,
    min_max_normalise,
    pixel_metrics,
    ranking_metrics,
    residual_map,
    shift_check,
    smooth,
    upper_quantile,
)


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
    torch.testing.assert_close(
        min_max_normalise(torch.tensor([1.0, 3.0, 5.0]), 1.0, 3.0), torch.tensor([0.0, 1.0, 2.0])
    )


def two_defect_images():
    masks = torch.zeros(2, 8, 8, dtype=torch.int8)
    masks[0, 1:3, 1:3] = 1  # a 2x2 defect
    masks[1, 4:8, 2:7] = 1  # a 4x5 defect
    return masks


def test_a_perfect_map_scores_one_and_an_inverted_map_zero():
    masks = two_defect_images()
    perfect = pixel_metrics(masks.float(), masks, pixel_threshold=0.5)
    assert perfect["pixel_auroc"] == pytest.approx(1.0) and perfect["pixel_aupro"] == pytest.approx(1.0)
    assert perfect["pixel_f1"] == pytest.approx(1.0)
    inverted = pixel_metrics(1 - masks.float(), masks, pixel_threshold=0.5)
    assert inverted["pixel_auroc"] == pytest.approx(0.0) and inverted["pixel_aupro"] == pytest.approx(0.0)


def test_aupro_averages_over_regions_not_pixels():
    # One row: region A (1 pixel), a normal pixel, region B (3 pixels), a normal pixel.
    masks = torch.tensor([[[1, 0, 1, 1, 1, 0]]])
    maps = torch.tensor([[[0.9, 0.5, 0.8, 0.3, 0.2, 0.1]]])
    # Thresholds high to low: A found (PRO 1/2), B's first pixel (PRO 1/2 + 1/6) with no false positive
    # yet; then the normal 0.5 (FPR 1/2). Up to FPR 0.3, PRO stays 2/3: area 0.2, normalised 2/3.
    # Counting pixels instead of regions would give 2/4 there.
    assert aupro(maps, masks) == pytest.approx(2 / 3)
    # Up to FPR 1: 1/2 * 2/3 + 1/2 * 1 (the rest of B found at FPR 1/2) = 5/6.
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(5 / 6)


def test_regions_are_8_connected_and_numbered_across_images():
    masks = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 1], [1, 0, 0]]])
    regions = connected_regions(masks)
    assert regions[0, 0, 0] == regions[0, 1, 1] != 0  # diagonal neighbours: one region
    assert len({regions[1, 0, 2].item(), regions[1, 2, 0].item(), regions[0, 0, 0].item()}) == 3
    assert regions.max() == 3 and (regions[masks == 0] == 0).all()


def test_images_without_a_known_mask_are_left_out_of_the_pixel_metrics():
    masks = two_defect_images()
    unknown = torch.full((1, 8, 8), MASK_UNKNOWN, dtype=torch.int8)
    maps = torch.cat([masks.float(), torch.rand(1, 8, 8)])
    metrics = pixel_metrics(maps, torch.cat([masks, unknown]), pixel_threshold=0.5)
    assert metrics["n_pixel_scored_images"] == 2 and metrics["pixel_aupro"] == pytest.approx(1.0)


def test_anomaly_map_is_the_channel_mean_residual_smoothed():
    x = torch.zeros(1, 3, 16, 16)
    x_fake = torch.zeros(1, 3, 16, 16)
    x_fake[0, :, 8, 8] = 0.9  # one bright pixel
    x_fake[0, 0, 4, 4] = 0.3  # in one channel only: the map is the channel mean
    raw = smooth(residual_map(x, x_fake), sigma=0)
    assert raw[0, 8, 8] == pytest.approx(0.9) and raw[0, 4, 4] == pytest.approx(0.1) and raw.sum() == pytest.approx(1.0)
    x_fake[0, 0, 4, 4] = 0
    maps = smooth(residual_map(x, x_fake), sigma=1)  # radius 4: the border is not reached
    # the separable Gaussian, written out: 0.9 * g(dy) * g(dx), g(t) = exp(-t^2 / 2) / sum over |t| <= 4
    g = [math.exp(-t * t / 2) for t in range(5)]
    total = g[0] + 2 * sum(g[1:])
    for dy, dx in ((0, 0), (0, 1), (2, 3), (4, 4)):
        assert maps[0, 8 + dy, 8 + dx].item() == pytest.approx(0.9 * g[dy] * g[dx] / total**2, rel=1e-5)
    assert maps.shape == (1, 16, 16) and maps.sum() == pytest.approx(0.9)  # spread, not lost
    assert maps[0, 8, 13] == 0 and maps[0, 3, 8] == 0  # truncated at 4 sigma


def test_upper_quantile_is_exceeded_by_the_given_share():
    values = torch.arange(1000.0).view(10, 10, 10)
    assert (values > upper_quantile(values, 0.05)).float().mean() == pytest.approx(0.05)


def test_shift_check_flags_normal_test_images_that_score_unlike_validation_either_way():
    def check(scores):
        return shift_check(
            torch.tensor(scores),
            calibrated_threshold=2.0,
            validation_range=(0.5, 2.5),
            n_validation=99,
            false_positive_rate=0.05,
        )

    matched = check([1.0] * 94 + [3.0] * 5 + [0.4])  # 5% above the threshold, as promised; 6% outside the range
    assert matched["normal_test_over_threshold"] == pytest.approx(0.05) and not matched["normal_test_shifted"]
    above = check([1.0] * 60 + [3.0] * 40)  # 40% above the threshold, all of them above every validation score
    assert above["normal_test_shifted"] and above["normal_test_above_val_max"] == pytest.approx(0.4)
    below = check([1.0] * 60 + [0.4] * 40)  # darker parts: 40% below every validation score, none over the threshold
    assert below["normal_test_shifted"] and below["normal_test_below_val_min"] == pytest.approx(0.4)
    assert below["normal_test_over_threshold"] == 0
    few = shift_check(torch.tensor([1.0] * 8 + [3.0] * 2), 2.0, (0.5, 3.5), 99, 0.05)  # 2 of 10: chance, so few
    assert not few["normal_test_shifted"]
