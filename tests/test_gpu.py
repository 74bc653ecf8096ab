"""The CUDA paths (`pytest -m gpu`; scripts/gpu_check.sh runs them). Each test says what it proves on a
GPU: every tensor a model gives is on the device, its scores finite and its maps float32 under bf16
autocast; each training step calls every optimiser it means to, once; a training step never makes the host
wait for the device; the data resident on the device with masks, torch.compile, and predict / export from a
checkpoint trained there. The in-process checks also run on the CPU (the suite runs them there too, so the
first GPU run tests code that has run); the CUDA ones are skipped where there is no GPU."""

import json

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from fned_lightning.data.synthetic import SyntheticParts
from tests.conftest import MODELS, TINY_MODELS, compose_config, models_of, quiet_trainer, run_cli

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])]
GANS = [name for name in models_of("reconstruction") if name != "fanogan"]


def fitted_on(device: str, name: str, **trainer_settings):
    """A tiny model of `name` fitted on tiny synthetic parts on `device` in bf16-mixed (the GPU setting)."""
    L.seed_everything(0)
    model = instantiate(compose_config("data=synthetic", "data.image_size=32", *TINY_MODELS[name]).model)
    data = SyntheticParts(
        n_train=32, n_test_normal=4, n_test_abnormal=4, image_size=32, channels=1, batch_size=8, val_fraction=0.25
    )
    settings = {"max_epochs": model.fit_epochs, **trainer_settings}
    trainer = quiet_trainer(accelerator=device, devices=1, precision="bf16-mixed", **settings)
    trainer.fit(model, datamodule=data)
    return model, trainer


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODELS)
def test_every_output_is_on_the_device_with_finite_scores_and_float32_maps(name, device):
    model, _ = fitted_on(device, name)
    images = torch.rand(4, 1, 32, 32, device=device) * 2 - 1
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        detection = model.eval()(images)
    for field, value in detection._asdict().items():
        assert value is None or value.device.type == device, field
    assert detection.maps.dtype == detection.scores.dtype == torch.float32
    assert detection.maps.shape == (4, 32, 32) and detection.scores.shape == (4,)
    assert torch.isfinite(detection.scores).all() and torch.isfinite(detection.maps).all()
    fitted = (model.score_min, model.score_max, model.score_threshold, model.pixel_threshold)
    assert all(value.device.type == device and torch.isfinite(value) for value in fitted)


class StepCounts(L.Callback):
    """How often each optimiser stepped, by epoch (the optimisers Lightning holds, counted where they step)."""

    def __init__(self):
        self.counts: dict[int, list[int]] = {}

    def on_train_start(self, trainer, pl_module):
        for k, optimiser in enumerate(trainer.optimizers):
            step = optimiser.step

            def counted(*args, _step=step, _k=k, **kwargs):
                self.counts.setdefault(trainer.current_epoch, [0] * len(trainer.optimizers))[_k] += 1
                return _step(*args, **kwargs)

            optimiser.step = counted


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [*GANS, "fanogan"])
def test_each_training_step_steps_each_of_its_optimisers_once(name, device):
    """G and D once a batch; f-AnoGAN: the critic every batch and G every critic_steps-th, then the
    encoder alone (its second phase)."""
    counts = StepCounts()
    model, trainer = fitted_on(device, name, limit_val_batches=0, callbacks=[counts])
    batches = trainer.num_training_batches  # 3 of 8 images
    if name == "fanogan":
        every = model.hparams.critic_steps
        assert counts.counts == {0: [batches // every, batches, 0], 1: [0, 0, batches]}  # (G, critic, encoder)
    else:
        assert counts.counts == {0: [batches, batches]}  # (G, D)


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("name", [*GANS, "fanogan", "fned_head"])
def test_a_training_step_never_waits_for_the_gpu(name):
    """CUDA's sync debug mode raises at any operation that makes the host wait (a value read back, a
    pageable copy to the device, an index computed on the host) inside the training step."""
    from tests.test_head import HEAD

    overrides = [*HEAD, *TINY_MODELS["fned"]] if name == "fned_head" else TINY_MODELS[name]
    cfg = compose_config("data=synthetic", "data.image_size=32", *overrides)
    model = instantiate(cfg.model)
    training_step = model.training_step

    def watched(batch, batch_idx):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return training_step(batch, batch_idx)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    model.training_step = watched
    size = cfg.data.image_size
    data = SyntheticParts(
        n_train=40, n_test_normal=4, n_test_abnormal=4, image_size=size, channels=1, batch_size=8, on_device=True
    )
    trainer = quiet_trainer(
        accelerator="cuda", devices=1, precision="bf16-mixed", max_epochs=model.fit_epochs, limit_val_batches=0
    )
    trainer.fit(model, datamodule=data)  # 4 batches an epoch: the collapse check (every 10) does not come


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


@CUDA
@pytest.mark.gpu
def test_masks_on_the_device_bf16_and_both_protocols(tmp_path):
    run, metrics = gpu_run(tmp_path, "data.synthetic_val_defects=true", "protocol=both", "trainer.max_epochs=2")
    config = (run / "config.yaml").read_text()
    assert "precision: bf16-mixed" in config and "on_device: true" in config
    for key in ("pixel_auroc", "defect_residual_ratio", "paper_auroc", "val_pixel_auroc"):
        assert metrics[key] is not None, key
    assert (run / "figures" / "anomaly_maps.png").is_file()  # its masks are indexed where they live


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["fned", "fanogan"])  # f-AnoGAN: its critic's double backward stays uncompiled
def test_compiled_networks_train_and_test_under_both_protocols(tmp_path, name):
    """torch.compile'd networks (in place: the checkpoint keeps its keys) through training, the paper's
    per-epoch test passes and both final tests, with finite results."""
    run, metrics = gpu_run(
        tmp_path, "callbacks.speedups.compile=true", "trainer.max_epochs=2", "protocol=both", model=name
    )
    assert metrics["epochs"] == 2 and metrics["train_images_per_s"] > 0
    assert 0 <= metrics["auroc"] <= 1 and 0 <= metrics["paper_auroc"] <= 1
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)


@CUDA
@pytest.mark.gpu
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
    import csv

    cuda, cpu = (list(csv.DictReader(open(tmp_path / d / "predictions.csv"))) for d in ("cuda", "cpu"))
    assert len(cuda) == len(cpu) == 4
    # the same checkpoint scores alike on either device (cuDNN may use TF32 for convolutions: 1e-2)
    torch.testing.assert_close(
        torch.tensor([float(row["score"]) for row in cuda]),
        torch.tensor([float(row["score"]) for row in cpu]),
        rtol=1e-2,
        atol=1e-4,
    )
    done = run_cli(
        f"ckpt_path={checkpoint}",
        "format=onnx",
        f"output={tmp_path / 'model.onnx'}",
        tmp_path=tmp_path,
        module="fned_lightning.export",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "model.onnx").stat().st_size > 0 and (tmp_path / "model.json").is_file()
