"""data.intensity=per_image: each image's mean and spread matched to the normal training images',
fitted when training starts, kept in the checkpoint, and the same in every path that scores."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from fned_lightning.data.base import to_model_range
from fned_lightning.export import export
from fned_lightning.models.intensity import image_moments
from fned_lightning.predict import load_detector, predict
from tests.conftest import TINY, TINY_MODELS, compose_config, run_cli
from tests.test_predict import compose_config_named, predict_config


def per_image_model(mean: float = -0.2, std: float = 0.3):
    model = instantiate(
        compose_config("data=synthetic", "data.image_size=16", "data.intensity=per_image", *TINY_MODELS["fned"]).model
    )
    model.intensity_mean.fill_(mean)
    model.intensity_std.fill_(std)
    return model.eval()


def test_every_image_is_mapped_to_the_training_images_mean_and_spread():
    x = torch.rand(4, 1, 16, 16) * 0.5 - 0.6 + torch.arange(4.0).view(4, 1, 1, 1) * 0.2  # four brightnesses
    mean, std = image_moments(per_image_model().match_intensity(x))
    torch.testing.assert_close(mean.flatten(), torch.full((4,), -0.2))
    torch.testing.assert_close(std.flatten(), torch.full((4,), 0.3))


def test_a_brightness_and_contrast_shift_does_not_change_the_score():
    model = per_image_model()
    x = torch.rand(3, 1, 16, 16) * 0.6 - 0.3
    shifted = 0.7 * x + 0.25  # darker contrast, brighter: still inside [-1, 1]
    with torch.inference_mode():
        detection, shifted_detection = model(x), model(shifted)
        scores, x_fake = detection.scores, detection.x_fake
        shifted_scores, shifted_fake = shifted_detection.scores, shifted_detection.x_fake
    torch.testing.assert_close(shifted_scores, scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shifted_fake, 0.7 * x_fake + 0.25, rtol=1e-4, atol=1e-4)  # in each image's own intensity


def test_without_it_the_same_shift_changes_the_score():
    model = instantiate(compose_config("data=synthetic", "data.image_size=16", *TINY_MODELS["fned"]).model).eval()
    x = torch.rand(3, 1, 16, 16) * 0.6 - 0.3
    with torch.inference_mode():
        assert not torch.allclose(model(0.7 * x + 0.25)[0], model(x)[0], rtol=1e-3)


def test_unknown_intensity_is_refused_with_the_choices(tmp_path):
    done = run_cli(*TINY, "data=synthetic", "data.intensity=global", tmp_path=tmp_path)
    assert (
        done.returncode == 2
        and "unknown data.intensity=global; choose one of: none, per_image" in done.stdout + done.stderr
    )


def folder(root) -> list[str]:
    return ["data=folder", f"data.root={root}", "data.channels=1", "data.image_size=16", "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, parts_folder):
    """A tiny FNED trained with data.intensity=per_image on the parts folder."""
    tmp_path = tmp_path_factory.mktemp("intensity")
    done = run_cli(
        *TINY,
        *folder(parts_folder),
        "data.batch_size=4",
        "data.intensity=per_image",
        "trainer.max_epochs=2",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "run"


def test_the_reference_is_fitted_on_the_training_images_and_kept_in_the_checkpoint(trained, parts_folder):
    data = instantiate(compose_config(*folder(parts_folder)).data)
    data.setup("fit")
    mean, std = image_moments(to_model_range(data.train_set.images))
    model, _ = load_detector(trained / "checkpoints" / "last.ckpt")
    assert model.intensity == "per_image"
    assert model.intensity_mean.item() == pytest.approx(mean.mean().item(), abs=1e-5)
    assert model.intensity_std.item() == pytest.approx(std.mean().item(), abs=1e-5)


def test_the_same_image_gets_the_same_score_in_test_predict_and_onnx(trained, parts_folder, tmp_path):
    import onnxruntime

    ckpt = trained / "checkpoints" / "last.ckpt"
    with open(trained / "scores.csv") as file:
        tested = {row["name"]: float(row["score"]) for row in csv.DictReader(file)}  # names: test/<folder>/<file>
    predict(predict_config(ckpt, parts_folder / "test", tmp_path / "out"))
    with open(tmp_path / "out" / "predictions.csv") as file:
        predicted = {
            str(Path(row["path"]).relative_to(parts_folder)): float(row["score"]) for row in csv.DictReader(file)
        }
    assert sorted(predicted) == sorted(tested) and len(tested) == 9
    for name, score in tested.items():
        assert predicted[name] == pytest.approx(score, rel=1e-4, abs=1e-5), name

    model, _ = load_detector(ckpt)
    data = instantiate(compose_config(*folder(parts_folder)).data)
    data.setup("test")
    onnx = onnxruntime.InferenceSession(
        str(export(compose_config_named("export", f"ckpt_path={ckpt}", f"output={tmp_path / 'm.onnx'}"))),
        providers=["CPUExecutionProvider"],
    )
    normalised, _ = onnx.run(None, {"images": (data.test_set.images.float() / 255).numpy()})
    expected = model.normalise(torch.tensor([tested[name] for name in data.test_names]))
    np.testing.assert_allclose(normalised, expected.numpy(), rtol=1e-4, atol=1e-4)
