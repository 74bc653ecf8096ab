"""The CUDA paths, on a machine with a GPU (`pytest -m gpu`; scripts/gpu_check.sh runs them): the data
resident on the device with masks, bf16 autocast, torch.compile, and predict / export from a checkpoint
trained on the GPU. Skipped where there is no GPU."""

import json

import pytest
import torch

from tests.conftest import TINY_MODELS, run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PARTS = ["data=synthetic", "data.n_train=256", "data.n_test_normal=32", "data.n_test_abnormal=32", "data.batch_size=32"]


def gpu_run(tmp_path, *overrides, model="fned"):
    done = run_cli(
        *TINY_MODELS[model],
        "logger=csv",
        *PARTS,
        "experiment=gpu",
        "data.eval_batch_size=64",
        *overrides,
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    return run, json.loads((run / "metrics.json").read_text())


def test_masks_on_the_device_bf16_and_both_protocols(tmp_path):
    run, metrics = gpu_run(tmp_path, "data.synthetic_val_defects=true", "protocol=both", "trainer.max_epochs=2")
    config = (run / "config.yaml").read_text()
    assert "precision: bf16-mixed" in config and "on_device: true" in config
    for key in ("pixel_auroc", "defect_residual_ratio", "paper_auroc", "val_pixel_auroc"):
        assert metrics[key] is not None, key
    assert (run / "figures" / "anomaly_maps.png").is_file()  # its masks are indexed where they live


@pytest.mark.parametrize("name", ["fned", "fanogan"])  # f-AnoGAN: its critic's double backward stays uncompiled
def test_compiled_training_runs_and_compiles_once(tmp_path, name):
    _, metrics = gpu_run(
        tmp_path, "callbacks.speedups.compile=true", "trainer.max_epochs=2", "protocol=both", model=name
    )
    assert metrics["epochs"] == 2 and metrics["train_images_per_s"] > 0


def test_predict_and_export_from_a_gpu_trained_checkpoint(tmp_path):
    run, _ = gpu_run(tmp_path, "trainer.max_epochs=1")
    checkpoint = run / "checkpoints" / "last.ckpt"
    images = tmp_path / "images"
    images.mkdir()
    from torchvision.io import write_png

    from fned_lightning.data.synthetic import draw_parts

    drawn, _ = draw_parts(4, 32, 1, torch.Generator().manual_seed(0))
    for i, image in enumerate(drawn):
        write_png(image, str(images / f"{i}.png"))
    for device in ("cuda", "cpu"):
        done = run_cli(
            f"ckpt_path={checkpoint}",
            f"input={images}",
            f"output={tmp_path / device}",
            f"device={device}",
            tmp_path=tmp_path,
            module="fned_lightning.predict",
        )
        assert done.returncode == 0, done.stderr[-3000:]
    cuda, cpu = ((tmp_path / d / "predictions.csv").read_text().splitlines() for d in ("cuda", "cpu"))
    assert len(cuda) == len(cpu) == 5
    done = run_cli(
        f"ckpt_path={checkpoint}",
        "format=onnx",
        f"output={tmp_path / 'model.onnx'}",
        tmp_path=tmp_path,
        module="fned_lightning.export",
    )
    assert done.returncode == 0, done.stderr[-3000:]
