"""The pretrained-feature models (PaDiM, PatchCore) and their frozen backbones, on data made here."""

import json
import urllib.error

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from fned_lightning.data.synthetic import SyntheticParts
from fned_lightning.errors import InputError, input_error_in
from fned_lightning.models import patchcore
from fned_lightning.models.padim import PaDiM
from fned_lightning.models.patchcore import PatchCore, greedy_coreset
from fned_lightning.networks.backbones import PretrainedFeatures, lite0_keys, lite0_weights
from tests.conftest import compose_config, models_of, run_cli

FEATURE_MODELS = models_of("features")


def flat_images(n: int, size: int, seed: int, level: float = 0.0) -> torch.Tensor:
    """Grey images in [-1, 1]: a flat level with a little noise."""
    noise = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return (level + 0.02 * noise).clamp(-1, 1)


def fitted(name: str, images: torch.Tensor, *overrides: str):
    """A feature model of config `name`, fitted on `images` as training does: batch by batch, then finished."""
    model = instantiate(compose_config("data=synthetic", *overrides, f"model={name}").model)
    model.run_seed = 0
    with torch.no_grad():
        for batch in images.split(8):
            model.accumulate(model.features(batch))
    model.finish_fit()
    return model.eval()


def test_the_wheels_weights_load_into_timms_lite0_under_its_names():
    import timm

    weights = lite0_weights()
    timm_model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = lite0_keys(weights, [len(stage) for stage in timm_model.blocks])
    assert set(mapped) == set(timm_model.state_dict())  # every key, none left over
    assert all(mapped[k].shape == v.shape for k, v in timm_model.state_dict().items())
    features = PretrainedFeatures("efficientnet_lite0", (8, 16))
    torch.testing.assert_close(
        features.network.state_dict()["conv_stem.weight"], weights["_conv_stem.weight"], rtol=0, atol=0
    )
    # after stages of 1, 2, 2 blocks: the 7th
    torch.testing.assert_close(
        features.network.state_dict()["blocks.3.1.conv_pwl.weight"],
        weights["_blocks.6._project_conv.weight"],
        rtol=0,
        atol=0,
    )
    assert features.channels == [40, 112]


def test_the_backbone_stays_frozen_and_in_eval_mode_whatever_it_is_told():
    features = PretrainedFeatures()
    statistics = {k: v.clone() for k, v in features.state_dict().items()}
    features.train()
    assert not features.training and not any(m.training for m in features.modules())
    assert not any(p.requires_grad for p in features.parameters())
    with torch.no_grad():
        features(torch.rand(4, 3, 32, 32) * 2 - 1)
    assert all(torch.equal(v, statistics[k]) for k, v in features.state_dict().items())  # BatchNorm did not move


def test_grey_images_are_read_as_three_equal_channels_normalised_as_lite0_was_trained():
    features = PretrainedFeatures()
    seen = []
    features.network.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    grey = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        from_grey, from_colour = features(grey), features(grey.expand(-1, 3, -1, -1))
    assert all(torch.equal(a, b) for a, b in zip(from_grey, from_colour, strict=True))
    pixels = (grey + 1) / 2 * 255  # what the image's pixels were, 0-255
    torch.testing.assert_close(seen[0], ((pixels - 127) / 128).expand(-1, 3, -1, -1))


def test_a_torchvision_backbone_offline_names_the_file_its_folder_and_the_offline_option(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InputError) as error:
        PretrainedFeatures("resnet18")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "model.backbone=efficientnet_lite0" in message and "\n" not in message


def test_a_fitted_model_is_rebuilt_from_its_checkpoint_offline_with_no_weights_to_fetch(tmp_path, monkeypatch):
    # resnet18 without its ImageNet weights stands in for one fitted online; offline, its checkpoint still loads
    model = PaDiM(backbone="resnet18", backbone_weights=False)
    with torch.no_grad():
        model.accumulate(model.features(flat_images(4, 32, seed=0)))
    model.finish_fit()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache, and no network
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("offline"))
    )
    assert "backbone_weights" not in model.hparams  # how it was built is not part of what it is
    rebuilt = PaDiM.rebuilt(dict(model.hparams), model.state_dict())
    images = flat_images(2, 32, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images).maps, model.eval()(images).maps, rtol=0, atol=0)


def test_padim_distance_is_the_mahalanobis_distance_of_a_hand_worked_2d_case():
    model = PaDiM()
    model.channels_kept = torch.arange(2)
    model.mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])  # two positions
    covariances = torch.tensor([[[2.0, 0.0], [0.0, 0.5]], [[2.0, 1.0], [1.0, 2.0]]])
    model.inverse_covariance = torch.linalg.inv(covariances)
    features = torch.tensor([[[3.0, 1.0], [3.0, 1.0]]]).view(1, 2, 1, 2)  # position 0: (3, 3); position 1: (1, 1)
    distances, scores = model.distances(features)
    # (2, 1) against diag(2, 0.5): 4/2 + 1/0.5 = 4 -> 2; (1, 1) against [[2, 1], [1, 2]]: (2 - 1 - 1 + 2) / 3 = 2/3
    torch.testing.assert_close(distances.flatten(), torch.tensor([2.0, (2 / 3) ** 0.5]))
    assert scores is None  # PaDiM's image score: the smoothed map's maximum


def test_padim_fits_each_positions_mean_and_sample_covariance_plus_shrinkage():
    model = PaDiM(covariance_shrinkage=0.01)
    model.channels_kept = torch.arange(3)
    features = torch.randn(20, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    for batch in features.split(7):  # batches of any size: sums, then one fit
        model.accumulate(batch)
    model.finish_fit()
    at_position = features[:, :, 1, 0]  # position 2 in row-major order
    torch.testing.assert_close(model.mean[2], at_position.mean(0))
    expected = torch.cov(at_position.T.double()) + 0.01 * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(model.inverse_covariance[2], torch.linalg.inv(expected).float(), rtol=1e-4, atol=1e-5)


def test_padim_refuses_in_one_line_a_fit_whose_covariances_would_not_fit_in_memory(monkeypatch):
    model = PaDiM()
    features = model.features(flat_images(2, 64, seed=0))  # 64 positions x 152 features: 30 MB of covariances
    monkeypatch.setattr("os.sysconf", lambda name: {"SC_AVPHYS_PAGES": 2500, "SC_PAGE_SIZE": 4096}[name])  # 10 MB free
    with pytest.raises(InputError) as error:
        model.accumulate(features)
    # sqrt(10.24e6 / 20 / 64) = 89.4
    assert "model.n_features=89 or fewer" in str(error.value) and "\n" not in str(error.value)
    monkeypatch.undo()
    model.accumulate(features)  # with the machine's memory, it fits


@pytest.mark.parametrize("seed", range(6))
def test_the_coreset_takes_the_point_farthest_from_those_chosen_each_time(seed):
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [5.0, 5.0], [-3.0, 0.0]])
    chosen = greedy_coreset(points, 4, projection_dim=2, generator=torch.Generator().manual_seed(seed)).tolist()
    for step in range(1, 4):  # by hand: the farthest from its nearest chosen point
        nearest = torch.cdist(points, points[chosen[:step]]).min(1).values
        assert chosen[step] == nearest.argmax().item()
    assert len(set(chosen)) == 4


def test_the_coreset_is_chosen_on_the_random_projection_when_the_features_are_wider():
    points = torch.randn(40, 64, generator=torch.Generator().manual_seed(0))
    chosen = greedy_coreset(points, 6, projection_dim=8, generator=torch.Generator().manual_seed(1)).tolist()
    generator = torch.Generator().manual_seed(1)  # the same draws, by hand: the projection, then the first point
    projected = points @ (torch.randn(64, 8, generator=generator) / 8**0.5)
    assert chosen[0] == int(torch.randint(40, (1,), generator=generator))
    for step in range(1, 6):  # farthest on the projection (Johnson-Lindenstrauss), not on the 64-d features
        nearest = torch.cdist(projected, projected[chosen[:step]]).min(1).values
        assert chosen[step] == nearest.argmax().item()


def test_patchcore_scores_a_patch_by_its_nearest_bank_feature_and_reweights_the_image_score():
    model = PatchCore(reweight_neighbours=2)
    model.memory_bank = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0]])
    features = torch.tensor([[3.0, 0.0], [0.0, 0.5]]).T.reshape(1, 2, 1, 2)  # two patches: (3, 0) and (0, 0.5)
    distances, score = model.distances(features)
    torch.testing.assert_close(distances.flatten(), torch.tensor([3.0, 0.5]))
    # m_test = (3, 0), m* = (0, 0); its 2 nearest in the bank: (0, 0) and (0, 1), at 3 and sqrt(10) from m_test
    weight = 1 - torch.exp(torch.tensor(3.0)) / (torch.exp(torch.tensor(3.0)) + torch.exp(torch.tensor(10.0).sqrt()))
    torch.testing.assert_close(score, weight[None] * 3.0)


def test_patchcore_finds_the_k_nearest_block_by_block_as_all_at_once(monkeypatch):
    monkeypatch.setattr(patchcore, "BANK_CHUNK", 7)  # blocks of 7 bank rows and 5 queries: ragged both ways
    monkeypatch.setattr(patchcore, "QUERY_CHUNK", 5)
    generator = torch.Generator().manual_seed(0)
    model = PatchCore()
    model.memory_bank = torch.randn(30, 4, generator=generator)
    queries = torch.randn(12, 4, generator=generator)
    squared, index = model.nearest(queries, 3)
    expected = torch.cdist(queries, model.memory_bank).pow(2).topk(3, 1, largest=False)
    assert torch.equal(index, expected.indices)
    torch.testing.assert_close(squared, expected.values, rtol=1e-5, atol=1e-5)


def test_distances_are_taken_in_full_float32_whatever_the_run_set(monkeypatch):
    model = fitted("padim", flat_images(4, 32, seed=0))
    distances, seen = model.distances, []

    def recording(features):
        seen.append((torch.get_float32_matmul_precision(), torch.is_autocast_enabled("cpu"), features.dtype))
        return distances(features)

    monkeypatch.setattr(model, "distances", recording)
    torch.set_float32_matmul_precision("medium")  # as experiment=gpu's TF32, and bf16 autocast around it
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(flat_images(2, 32, seed=1))
        after = torch.get_float32_matmul_precision()
    finally:
        torch.set_float32_matmul_precision("highest")
    assert seen == [("highest", False, torch.float32)] and after == "medium"  # and the run's setting restored


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_the_anomaly_map_finds_a_square_pasted_on_a_flat_image(name):
    model = fitted(name, flat_images(16, 64, seed=0))
    test = flat_images(3, 64, seed=1)
    test[2, :, 36:52, 12:28] = 0.9  # a bright square on the third
    with torch.no_grad():
        detection = model(test)
    assert detection.scores[2] > 1.5 * detection.scores[:2].max()
    row, column = divmod(detection.maps[2].argmax().item(), 64)
    assert 32 <= row < 56 and 8 <= column < 32  # within the square's reach (its patches are 8 px apart)
    assert detection.x_fake is None and detection.residuals is None  # nothing reconstructed


@pytest.mark.parametrize("name", FEATURE_MODELS)
@pytest.mark.parametrize("bad", ["trainer.max_epochs=2", "protocol=paper"])
def test_what_does_not_apply_to_a_model_fitted_in_one_pass_is_refused(name, bad):
    cfg = compose_config("data=synthetic", f"model={name}", bad)
    with pytest.raises(Exception) as error:  # Hydra's instantiate wraps what the model raises
        instantiate(cfg.model).check_epochs(cfg.trainer.max_epochs)
    assert "does not apply" in str(input_error_in(error.value))


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_a_trainer_built_by_hand_is_refused_epochs_that_do_not_apply(name):
    model = instantiate(compose_config("data=synthetic", f"model={name}").model)
    data = SyntheticParts(n_train=8, n_test_normal=2, n_test_abnormal=2, image_size=32, channels=1, batch_size=8)
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
    )
    with pytest.raises(InputError, match="trainer.max_epochs=2 does not apply"):
        trainer.fit(model, datamodule=data)


def test_padim_runs_from_the_command_line_like_every_model(tmp_path):
    done = run_cli(
        "model=padim",
        "data=synthetic",
        "data.n_train=32",
        "data.n_test_normal=8",
        "data.n_test_abnormal=8",
        "data.batch_size=16",
        "data.synthetic_val_defects=true",
        "logger=csv",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "padim" and metrics["epochs"] == 1 and 0 <= metrics["auroc"] <= 1
    # the ragged batch is read too
    assert metrics["n_train"] % 16 and metrics["train_images_per_epoch"] == metrics["n_train"]
    # masks, and no reconstruction
    assert metrics["pixel_auroc"] is not None and metrics["defect_residual_ratio"] is None
    assert metrics["val_auroc"] is not None  # the painted validation defects
    assert {p.name for p in (run / "figures").iterdir()} == {"score_histogram.png", "roc_pr.png", "anomaly_maps.png"}
    done = run_cli(
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"input={tmp_path}",
        f"output={tmp_path / 'out'}",
        tmp_path=tmp_path,
        module="fned_lightning.predict",
    )
    assert done.returncode == 0, done.stderr[-3000:]
