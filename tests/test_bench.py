import json

import pytest
import torch

from fned_lightning import bench


def test_make_bench_times_every_model_config_once_in_its_kind():
    from tests.conftest import MODELS

    pretrained, from_scratch = bench.models_of_kind("yes"), bench.models_of_kind("no")
    assert sorted(pretrained + from_scratch) == MODELS  # make bench's two lines: a new model joins one of them
    assert {"padim", "patchcore"} <= set(pretrained) and {"fned", "fanogan"} <= set(from_scratch)


def test_bench_writes_the_models_asked_for_and_the_data_path(tmp_path, capsys):
    out = tmp_path / "results.json"
    # one model of each family: a trained GAN and a fitted feature model
    bench.main(
        [
            "--out",
            str(out),
            "--models",
            "fned",
            "padim",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--repeats",
            "1",
            "--warmup",
            "1",
        ]
    )
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"fned", "padim"}
    assert results["channels_last"] is True  # what training uses by default
    for r in results["models"].values():
        assert r["fit_images_per_s"] > 0 and r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
        assert r["yardstick_gflop_per_s"] > 0 and 0 < r["train_fraction_of_yardstick"] < 10
    fned, padim = results["models"]["fned"], results["models"]["padim"]
    assert fned["train_gflop_per_image"] > fned["infer_gflop_per_image"] > 0  # a step is forwards and backwards
    # features, no backward
    assert padim["train_gflop_per_image"] == pytest.approx(padim["infer_gflop_per_image"], rel=0.5)
    assert results["data_path"]["images_per_s"] > 0
    assert "| fned |" in capsys.readouterr().out


def test_flop_counts_are_those_worked_out_by_hand():
    # a 3x3 conv, 8 -> 16 channels, on 2 x 8 x 10 x 10: 2 FLOPs (multiply, add) per weight per output pixel
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    with bench.FlopCount() as forward:
        y = conv(x)
    assert forward.total == 2 * (2 * 16 * 10 * 10) * (8 * 3 * 3)
    with bench.FlopCount() as backward:  # the gradients of the input and of the weights: two more of the same size
        y.sum().backward()
    assert backward.total == 2 * forward.total
    # the yardstick: forward + backward of a 128 -> 128 3x3 conv on 64 x 128 x 32 x 32
    assert bench.ConvYardstick.FLOPS == 3 * 2 * (64 * 128 * 32 * 32) * (128 * 3 * 3)
