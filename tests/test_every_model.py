"""Every model config in conf/model/, as a new one joins: it fits, is tested, keeps what it learnt in its
checkpoint, and exports to ONNX equal to itself, on tiny synthetic parts (docs/adding_a_model.md)."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from fned_lightning.data.synthetic import SyntheticParts
from fned_lightning.export import ScoreAndMap, write
from fned_lightning.predict import load_detector
from tests.conftest import MODELS, TINY_MODELS, compose_config


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """name -> (model after fit and test, its checkpoint): each model fitted once for the tests below."""
    done = {}

    def fit(name: str):
        if name not in done:
            folder = tmp_path_factory.mktemp(name)
            L.seed_everything(0)
            model = instantiate(compose_config("data=synthetic", "data.image_size=32", *TINY_MODELS[name]).model)
            data = SyntheticParts(
                n_train=32,
                n_test_normal=6,
                n_test_abnormal=6,
                image_size=32,
                channels=1,
                batch_size=8,
                val_fraction=0.25,
            )
            trainer = L.Trainer(
                max_epochs=model.fit_epochs,
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                default_root_dir=folder,
            )
            trainer.fit(model, datamodule=data)
            trainer.test(model, datamodule=data, verbose=False)
            trainer.save_checkpoint(folder / "last.ckpt")
            done[name] = model, folder / "last.ckpt"
        return done[name]

    return fit


@pytest.mark.parametrize("name", MODELS)
def test_every_model_fits_and_is_tested_with_fitted_thresholds(name, fitted):
    model, _ = fitted(name)
    metrics = model.test_results["metrics"]
    assert 0 <= metrics["auroc"] <= 1 and metrics["normalisation"] == "val_minmax"
    assert metrics["pixel_auroc"] is not None  # synthetic parts have masks: maps are compared with them
    for fitted_value in (model.score_min, model.score_max, model.score_threshold, model.pixel_threshold):
        assert torch.isfinite(fitted_value)


@pytest.mark.parametrize("name", MODELS)
def test_every_models_checkpoint_rebuilds_it_with_the_same_scores_and_maps(name, fitted):
    model, checkpoint = fitted(name)
    loaded, info = load_detector(checkpoint)
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        before, after = model.eval()(images), loaded(images)
    assert info["image_size"] == 32 and info["channels"] == 1
    assert torch.equal(before.scores, after.scores) and torch.equal(before.maps, after.maps)
    assert torch.equal(loaded.score_threshold, model.score_threshold)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_exports_to_onnx_equal_to_itself(name, fitted, tmp_path):
    import onnxruntime

    model, _ = fitted(name)
    assert model.map_description()  # the exported model's notes say what its map is
    wrapper = ScoreAndMap(model.eval()).eval()
    write(wrapper, torch.rand(2, 1, 32, 32), tmp_path / "model.onnx", "onnx", opset=17)
    images = torch.rand(3, 1, 32, 32)  # another batch size than the example's
    with torch.no_grad():
        expected = wrapper(images)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    actual = [torch.from_numpy(a) for a in session.run(None, {"images": images.numpy()})]
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_every_models_maps_and_scores_stay_float32_under_bf16_autocast(name, fitted):
    """precision=bf16-mixed runs the networks in bf16; the maps and scores computed from their outputs stay
    float32: a reconstruction model's map under autocast is, to the bit, the float32 smoothing of its residual."""
    from fned_lightning.scoring import residual_map, smooth

    model, _ = fitted(name)
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detection = model.eval()(images)
    assert detection.maps.dtype == detection.scores.dtype == torch.float32
    assert torch.isfinite(detection.maps).all() and torch.isfinite(detection.scores).all()
    if detection.x_fake is not None and getattr(model, "head", None) is None:
        in_float32 = smooth(residual_map(model.match_intensity(images), detection.x_fake), model.map_sigma)
        assert torch.equal(detection.maps, in_float32)
