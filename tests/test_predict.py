"""Scoring new images with a trained checkpoint, exporting it, and the inputs users get wrong."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fned_lightning.data.base import to_model_range
from fned_lightning.data.synthetic import draw_parts
from fned_lightning.errors import InputError
from fned_lightning.export import ScoreAndMap, export, write
from fned_lightning.predict import Tally, load_detector, predict, read_batch
from fned_lightning.scoring import residual_map, smooth
from tests.conftest import TINY, run_cli


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny FNED trained for 2 epochs on synthetic 16x16 grey parts."""
    tmp_path = tmp_path_factory.mktemp("trained")
    done = run_cli(
        *TINY,
        "data=synthetic",
        "data.image_size=16",
        "data.n_train=64",
        "data.n_test_normal=8",
        "data.n_test_abnormal=8",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def parts(tmp_path_factory):
    """Images as they come: grey, RGBA, 16-bit, palette, of mixed sizes, in subfolders, plus junk."""
    root = tmp_path_factory.mktemp("new_parts")
    images = draw_parts(6, 48, 1, torch.Generator().manual_seed(1), defective=True)[0][:, 0].numpy()
    (root / "line1").mkdir()
    Image.fromarray(images[0]).save(root / "line1" / "grey.png")
    Image.fromarray(images[1]).convert("RGBA").save(root / "line1" / "rgba.png")
    Image.fromarray(images[2].astype(np.uint16) * 257).save(root / "line1" / "sixteen_bit.png")
    Image.fromarray(images[3]).convert("P").save(root / "palette.png")
    Image.fromarray(images[4]).resize((40, 24)).save(root / "small.jpg")
    (root / "truncated.png").write_bytes((root / "palette.png").read_bytes()[:40])
    (root / "notes.txt").write_text("not an image")
    return root


def predict_config(checkpoint, input, output, *overrides):
    return compose_config_named("predict", f"ckpt_path={checkpoint}", f"input={input}", f"output={output}", *overrides)


def compose_config_named(name, *overrides):
    from hydra import compose, initialize_config_dir

    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def read_rows(output):
    with open(output / "predictions.csv") as file:
        return {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(file)}


def test_predict_scores_every_readable_image_and_skips_the_rest(checkpoint, parts, tmp_path):
    summary = predict(predict_config(checkpoint, parts, tmp_path / "out", "batch_size=2"))
    rows = read_rows(tmp_path / "out")
    readable = {"grey.png", "rgba.png", "sixteen_bit.png", "palette.png", "small.jpg"}
    assert set(rows) == readable | {"truncated.png"}
    assert all(rows[name]["decision"] in ("normal", "abnormal") for name in readable)
    assert rows["truncated.png"]["decision"].startswith("unreadable: cannot read image")
    assert (summary["n_scored"], summary["n_skipped"], summary["decision"]) == (5, 1, "calibrated")
    expected = {"line1__grey.png", "line1__rgba.png", "line1__sixteen_bit.png", "palette.png", "small.png"}
    for folder in ("overlays", "masks"):
        assert {p.name for p in (tmp_path / "out" / folder).glob("*.png")} == expected
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["n_abnormal"] == summary["n_abnormal"]


def test_an_image_gets_the_same_score_alone_or_in_a_batch(checkpoint, parts, tmp_path):
    predict(predict_config(checkpoint, parts, tmp_path / "batch", "batch_size=8", "overlays=false"))
    predict(predict_config(checkpoint, parts / "line1" / "rgba.png", tmp_path / "alone", "overlays=false"))
    batch, alone = read_rows(tmp_path / "batch")["rgba.png"], read_rows(tmp_path / "alone")["rgba.png"]
    assert float(alone["score"]) == pytest.approx(float(batch["score"]), rel=1e-5)
    assert alone["decision"] == batch["decision"]


def test_both_decision_rules_use_the_thresholds_in_the_checkpoint(checkpoint, parts, tmp_path):
    model, _ = load_detector(checkpoint)
    for decision in ("calibrated", "paper"):
        predict(predict_config(checkpoint, parts, tmp_path / decision, f"decision={decision}", "overlays=false"))
        for row in read_rows(tmp_path / decision).values():
            if row["score"]:
                score, normalised = float(row["score"]), float(row["normalised_score"])
                expected = (
                    score > model.score_threshold.item() if decision == "calibrated" else normalised > model.threshold
                )
                assert (row["decision"] == "abnormal") == expected


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["image_size=32"], "trained on 16x16 images, not image_size=32"),
        (["decision=strict"], "choose one of: calibrated, paper"),
        (["input=/nonexistent/*.png"], "no images found at input=/nonexistent/*.png"),
    ],
)
def test_predict_mistakes_get_one_clear_message(checkpoint, parts, tmp_path, overrides, message):
    done = run_cli(
        f"ckpt_path={checkpoint}",
        f"input={parts}",
        f"output={tmp_path / 'out'}",
        *overrides,
        tmp_path=tmp_path,
        module="fned_lightning.predict",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2 and message in output and "Traceback" not in output, output[-2000:]


def test_a_file_that_is_no_checkpoint_of_ours_is_refused(tmp_path, parts):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="not a fned_lightning checkpoint"):
        predict(predict_config(tmp_path / "other.ckpt", parts, tmp_path / "out"))


def test_a_checkpoint_of_an_older_version_is_refused_with_the_fix(checkpoint, tmp_path):
    old = torch.load(checkpoint, weights_only=True)
    old["fned_lightning"]["model_target"] = "fned_lightning.module.AnomalyGAN"  # where the class lived before
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(InputError, match="cannot rebuild .* retrain it"):
        load_detector(tmp_path / "old.ckpt")


def test_an_fned_checkpoint_from_before_the_class_had_its_name_still_loads(checkpoint, tmp_path):
    old = torch.load(checkpoint, weights_only=True)
    old["fned_lightning"]["model_target"] = "fned_lightning.models.fned.AnomalyGAN"
    torch.save(old, tmp_path / "old.ckpt")
    model, info = load_detector(tmp_path / "old.ckpt")
    assert type(model).__name__ == "FNED" and info["model_target"] == "fned_lightning.models.fned.FNED"


def test_an_output_folder_that_cannot_be_written_is_named(checkpoint, parts, tmp_path):
    (tmp_path / "file").write_text("a file where a folder should go")
    with pytest.raises(InputError, match=f"cannot write to output={tmp_path / 'file' / 'out'}"):
        predict(predict_config(checkpoint, parts, tmp_path / "file" / "out"))


def test_onnx_export_matches_pytorch(checkpoint, tmp_path):
    import onnxruntime

    path = export(compose_config_named("export", f"ckpt_path={checkpoint}", f"output={tmp_path / 'model.onnx'}"))
    model, _ = load_detector(checkpoint)
    images = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        expected_score, expected_map = ScoreAndMap(model).eval()(images)
        x = images * 2 - 1
        smoothed = smooth(residual_map(x, model(x).x_fake), model.map_sigma)  # the map the export must return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, onnx_map = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(score, expected_score.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(onnx_map, expected_map.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(onnx_map, smoothed.numpy(), rtol=1e-4, atol=1e-4)
    assert model.map_sigma == 4 and not torch.allclose(smoothed, (x - model(x).x_fake).abs().mean(1))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["image_size"] == 16 and set(sidecar["thresholds"]) == {"calibrated", "paper"}
    assert sidecar["pixel_threshold"] == pytest.approx(model.pixel_threshold.item())


def test_pt2_export_matches_pytorch(checkpoint, tmp_path):
    path = export(
        compose_config_named("export", f"ckpt_path={checkpoint}", "format=pt2", f"output={tmp_path / 'model.pt2'}")
    )
    model, _ = load_detector(checkpoint)
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        expected = ScoreAndMap(model).eval()(images)
        actual = torch.export.load(str(path)).module()(images)
    torch.testing.assert_close(actual, expected)


# FNED: the tests above; every model to ONNX: test_every_model.py
@pytest.mark.parametrize("name", ["ganomaly", "fned_head"])
@pytest.mark.parametrize("format", ["onnx", "pt2"])
def test_other_models_and_the_head_export_and_match_pytorch(name, format, tmp_path):
    import onnxruntime
    from hydra.utils import instantiate

    from tests.conftest import TINY_MODELS, compose_config
    from tests.test_head import HEAD

    overrides = [*HEAD, *TINY_MODELS["fned"]] if name == "fned_head" else TINY_MODELS[name]  # the head's map, its score
    model = instantiate(compose_config("data=synthetic", "data.image_size=16", *overrides).model)
    model.score_min.fill_(1.0), model.score_max.fill_(3.0)
    wrapper = ScoreAndMap(model).eval()
    output = tmp_path / f"model.{format}"
    write(wrapper, torch.rand(2, 1, 16, 16), output, format, opset=17)
    images = torch.rand(3, 1, 16, 16)  # another batch size than the example's
    with torch.no_grad():
        expected = wrapper(images)
    if format == "onnx":
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        actual = [torch.from_numpy(a) for a in session.run(None, {"images": images.numpy()})]
    else:
        actual = torch.export.load(str(output)).module()(images)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_overlays_and_masks_are_at_each_inputs_own_resolution(checkpoint, parts, tmp_path):
    predict(predict_config(checkpoint, parts, tmp_path / "out"))
    model, _ = load_detector(checkpoint)
    rows = read_rows(tmp_path / "out")
    for name, own_size in (("small", (40, 24)), ("palette", (48, 48))):
        mask = Image.open(tmp_path / "out" / "masks" / f"{name}.png")
        assert mask.size == own_size and set(np.unique(np.asarray(mask))) <= {0, 255}
        overlay = Image.open(tmp_path / "out" / "overlays" / f"{name}.png")
        zoom = -(-320 // min(own_size))  # drawn a whole number of times larger, to a readable size
        caption = overlay.size[1] - own_size[1] * zoom  # a strip above the image: its file, score and decision
        assert 30 < caption < 120 and overlay.size[0] > own_size[0] * zoom + 100  # the image and its scale
        row = rows[f"{name}.{'jpg' if name == 'small' else 'png'}"]
        file, decision, rule = overlay.text["Title"].splitlines()
        assert file == row["path"].rsplit("/", 1)[-1] and rule.startswith("rule: raw score > ")
        assert (
            decision
            == f"{row['decision']}: score {float(row['score']):.4g} (normalised {float(row['normalised_score']):.3g})"
        )
    title = Image.open(tmp_path / "out" / "overlays" / "line1__grey.png").text["Title"]
    assert title.startswith("line1/grey.png\n")  # its path below the inputs' folder, as its file's name says
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["pixel_threshold"] == pytest.approx(model.pixel_threshold.item())


def test_each_mask_is_its_own_map_above_the_checkpoints_pixel_threshold(checkpoint, parts, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    part = np.asarray(Image.open(parts / "line1" / "grey.png"))[:, :40]
    Image.fromarray(part).save(inputs / "part.png")
    patched = part.copy()
    patched[:24, :20] = 255  # a white patch, as no part has: its map is above the threshold at least inside it
    Image.fromarray(patched).save(inputs / "patched.png")
    predict(predict_config(checkpoint, inputs, tmp_path / "out", "device=cpu"))  # as the maps below (no TF32)
    model, info = load_detector(checkpoint)
    names = ("part", "patched")
    resized, originals, _ = read_batch([inputs / f"{name}.png" for name in names], info["image_size"], 1, Tally())
    with torch.no_grad():
        maps = model(to_model_range(torch.stack(resized))).maps
    masks = {}
    for name, image, anomaly_map in zip(names, originals, maps, strict=True):
        own = F.interpolate(anomaly_map[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        mask = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / "masks" / f"{name}.png")).copy())
        clear = (own - model.pixel_threshold).abs() > 1e-4  # a pixel at the threshold may fall either way
        assert mask.shape == own.shape == (48, 40) and clear.float().mean() > 0.99
        assert torch.equal(mask[clear] == 255, (own > model.pixel_threshold)[clear]), name
        masks[name] = mask == 255
    # not a check of black (or white) masks only: the patch is white in its mask, not all of the part is
    assert masks["patched"][:12, :10].all() and not masks["patched"].all()


def test_predict_and_export_write_no_log_file_and_their_help_lists_only_their_options(checkpoint, parts, tmp_path):
    done = run_cli(
        f"ckpt_path={checkpoint}",
        f"input={parts}",
        f"output={tmp_path / 'out'}",
        "overlays=false",
        tmp_path=tmp_path,
        module="fned_lightning.predict",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli(
        f"ckpt_path={checkpoint}",
        f"output={tmp_path / 'model.onnx'}",
        tmp_path=tmp_path,
        module="fned_lightning.export",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(tmp_path.rglob("*.log"))
    assert json.loads((tmp_path / "model.json").read_text())["thresholds"]["paper"] == 0.2  # not 0.19999999999999987
    for module, option in (("fned_lightning.predict", "overlays: true"), ("fned_lightning.export", "opset: 17")):
        shown = run_cli("--help", tmp_path=tmp_path, module=module).stdout
        assert option in shown and "Config groups" not in shown and "model/" not in shown, shown


def test_predict_warns_when_a_folder_scores_outside_the_validation_range(checkpoint, tmp_path, caplog):
    images, _ = draw_parts(4, 16, 1, torch.Generator().manual_seed(5))
    (tmp_path / "inverted").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(255 - image[0].numpy()).save(tmp_path / "inverted" / f"{i}.png")  # another kind of part
    summary = predict(predict_config(checkpoint, tmp_path / "inverted", tmp_path / "out", "overlays=false"))
    assert summary["share_above_validation_range"] > 0.5
    assert "above every normal validation image" in caplog.text


def test_predict_on_a_folder_of_unreadable_types_names_them(checkpoint, tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "0001.raw").write_bytes(b"\0" * 16)
    (tmp_path / "raw" / "0002.dng").write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match=r"found only \.dng, \.raw files; readable: \.png, \.jpg, \.bmp"):
        predict(predict_config(checkpoint, tmp_path / "raw", tmp_path / "out"))
