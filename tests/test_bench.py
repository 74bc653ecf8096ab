import json

from fned_lightning import bench


def test_bench_writes_every_model_and_the_data_path(tmp_path, capsys):
    out = tmp_path / "results.json"
    bench.main(["--out", str(out), "--batch-size", "4", "--image-size", "16", "--repeats", "1", "--warmup", "1"])
    results = json.loads(out.read_text())
    assert set(results["models"]) == set(bench.MODELS)
    assert results["channels_last"] is True  # what training uses by default
    for r in results["models"].values():
        assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0 and r["yardstick_gflop_per_s"] > 0
        assert r["train_gflop_per_image"] > r["infer_gflop_per_image"] > 0  # a step is forwards and backwards
        assert r["train_fraction_of_yardstick"] == r["train_gflop_per_s"] / r["yardstick_gflop_per_s"]
    assert results["data_path"]["images_per_s"] > 0
    assert "| fned |" in capsys.readouterr().out
