import lightning as L
import pytest
import torch
from torch.overrides import TorchFunctionMode

from fned_lightning.errors import InputError
from fned_lightning.models import gan as gan_module
from fned_lightning.models.fned import FNED
from fned_lightning.models.gan import constant_then_linear_decay
from fned_lightning.networks.dcgan import dcgan_init
from tests.conftest import quiet_trainer, tiny_parts


def tiny_model(**hparams) -> FNED:
    return FNED(
        generator={"_target_": "fned_lightning.networks.fned.FNEDGenerator", "channels": 1, "width": 4},
        discriminator={
            "_target_": "fned_lightning.networks.dcgan.DCGANDiscriminator",
            "image_size": 16,
            "channels": 1,
            "width": 8,
        },
        **hparams,
    )


def fit(model: FNED, **trainer_args) -> L.Trainer:
    trainer = quiet_trainer(**trainer_args)
    trainer.fit(model, datamodule=tiny_parts())
    return trainer


def test_one_step_updates_both_networks_and_the_losses_add_up():
    L.seed_everything(0)
    model = tiny_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = fit(model, max_steps=1, limit_val_batches=0)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("generator.") for name in changed)
    assert any(name.startswith("discriminator.") for name in changed)
    m = trainer.callback_metrics
    expected = 1.0 * m["train/loss_adv"] + 20.0 * m["train/loss_con"] + 1.0 * m["train/loss_lat"]
    torch.testing.assert_close(m["train/loss_g"], expected)
    assert m["train/d_collapsed"] == 0


@pytest.mark.parametrize(
    "collapse_loss,interval,batches,reinit",
    [(1e9, 1, 1, True), (1e9, 3, 2, False), (1e9, 3, 3, True), (1e-5, 1, 2, False)],  # 1e9: every step collapses
)
def test_discriminator_is_reinitialised_when_its_loss_collapsed_at_the_next_check(
    monkeypatch, collapse_loss, interval, batches, reinit
):
    reinitialised = []
    monkeypatch.setattr(gan_module, "dcgan_init", lambda layer: reinitialised.append(layer) or dcgan_init(layer))
    L.seed_everything(0)
    model = tiny_model(d_collapse_loss=collapse_loss, d_collapse_check_interval=interval)
    trainer = fit(model, max_epochs=1, limit_train_batches=batches, limit_val_batches=0)
    assert trainer.callback_metrics["train/d_collapsed"] == float(collapse_loss > 1)
    assert (model.discriminator.features[0] in reinitialised) == reinit
    assert not any(layer in reinitialised for layer in model.generator.modules())
    assert bool(model.d_collapsed) == (collapse_loss > 1 and not reinit)  # pending until the next check


class DrawsBeforeEachStep(L.Callback):
    """Draws from the global generator: a rank (or a resumed run) whose other draws differ."""

    def __init__(self, draws: int):
        self.draws = draws

    def on_train_batch_start(self, *_):
        torch.rand(self.draws)


def discriminator_after_two_batches(monkeypatch, draws: int, other_rank_collapsed: bool) -> dict:
    L.seed_everything(0)
    model = tiny_model(d_collapse_loss=-1.0, d_collapse_check_interval=2)  # never collapses on this rank
    if other_rank_collapsed:  # what all_gather brings back from a 2-rank run where the other rank's D collapsed
        monkeypatch.setattr(model, "all_gather", lambda flag: torch.stack([flag, torch.ones_like(flag)]))
    fit(model, max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[DrawsBeforeEachStep(draws)])
    return {k: v.clone() for k, v in model.discriminator.state_dict().items()}


def test_a_collapse_on_another_rank_restarts_this_ranks_discriminator_with_the_same_weights(monkeypatch):
    restarted = [discriminator_after_two_batches(monkeypatch, draws, other_rank_collapsed=True) for draws in (1, 7)]
    kept = discriminator_after_two_batches(monkeypatch, 1, other_rank_collapsed=False)
    assert not torch.equal(restarted[0]["features.0.weight"], kept["features.0.weight"])  # restarted at the check
    for name, value in restarted[0].items():  # the same weights whatever else the rank drew
        assert torch.equal(value, restarted[1][name]), name


def test_schedule_is_constant_then_linear_decay():
    factors = [constant_then_linear_decay(e, total_epochs=15, decay_epochs=8) for e in range(15)]
    assert factors[:7] == [1.0] * 7
    assert factors[7:] == pytest.approx([1 - k / 9 for k in range(1, 9)])


class LearningRates(L.Callback):
    """The rate each optimiser trains each epoch with, read at the epoch's first batch."""

    def __init__(self):
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.rates.append([opt.param_groups[0]["lr"] for opt in pl_module.optimizers()])


def test_schedulers_step_once_per_epoch_and_validation_fits_the_normalisation():
    L.seed_everything(0)
    model = tiny_model(lr_decay_fraction=0.5)
    rates = LearningRates()
    fit(model, max_epochs=4, callbacks=[rates])
    assert [s.last_epoch for s in model.lr_schedulers()] == [4, 4]
    # 4 epochs, the last half decaying: 2 at the full rate, then a ramp of 2 steps of 1/3 towards 0
    expected = [2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3]
    assert rates.rates == [pytest.approx([rate, rate]) for rate in expected]
    assert torch.isfinite(model.score_min) and model.score_max > model.score_min


def test_eval_mode_scores_do_not_depend_on_the_batch():
    model = tiny_model().eval()
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    with torch.inference_mode():
        together = model(x)[0]
        alone = torch.cat([model(x[i : i + 1])[0] for i in range(6)])
    torch.testing.assert_close(together, alone)


def test_the_map_max_image_score_is_each_maps_maximum_and_the_papers_score_is_kept():
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    torch.manual_seed(0)
    paper = tiny_model().eval()
    torch.manual_seed(0)
    map_max = tiny_model(image_score="map_max").eval()
    with torch.inference_mode():
        by_paper, by_map = paper(x), map_max(x)
    assert by_map.maps.shape == (4, 16, 16)
    torch.testing.assert_close(by_map.scores, by_map.maps.flatten(1).amax(1))
    torch.testing.assert_close(by_map.paper_scores, by_paper.scores)  # same weights: the paper's score, unchanged
    torch.testing.assert_close(by_paper.maps, by_map.maps)


@pytest.mark.parametrize(
    "hparams,message",
    [
        ({"image_score": "mean"}, "choose one of: paper, map_max"),
        ({"map_sigma": -1}, "model.map_sigma must be a number >= 0, got -1"),
    ],
)
def test_bad_map_settings_are_refused(hparams, message):
    with pytest.raises(InputError, match=message):
        tiny_model(**hparams)


def test_test_metrics_hold_both_image_scores_and_the_pixel_metrics():
    model = tiny_model()
    trainer = fit(model, max_epochs=1, limit_train_batches=2)
    trainer.test(model, datamodule=trainer.datamodule, verbose=False)
    metrics = model.test_results["metrics"]
    assert metrics["image_score"] == "paper" and metrics["auroc"] == metrics["auroc_score_paper"]
    for key in ("auroc_score_map_max", "auprc_score_map_max", "pixel_auroc", "pixel_aupro", "pixel_f1"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["n_pixel_scored_images"] == 16 and model.pixel_threshold.isfinite()


def test_a_test_set_whose_normal_images_differ_from_training_is_flagged(caplog):
    L.seed_everything(0)
    model = tiny_model()
    trainer = fit(model, max_epochs=1, limit_train_batches=2)
    test = trainer.datamodule.test_set
    test.images = 255 - test.images  # every test image inverted: the normal ones no longer look like training
    trainer.test(model, datamodule=trainer.datamodule, verbose=False)
    metrics = model.test_results["metrics"]
    assert metrics["normal_test_shifted"] and metrics["normal_test_over_threshold"] > 0.5
    assert "normal test images score unlike the normal validation images" in caplog.text
    assert "data.intensity=per_image" in caplog.text
    caplog.clear()
    model.intensity = "per_image"  # already matched: the hint must not suggest it again
    model.check_shift(torch.full((8,), 1e9))
    assert "score unlike" in caplog.text and "data.intensity=per_image" not in caplog.text


def fit_config_model(name: str, **trainer_args):
    from hydra.utils import instantiate

    from tests.conftest import TINY_MODELS, compose_config

    cfg = compose_config("data=synthetic", "data.image_size=16", *TINY_MODELS[name])
    L.seed_everything(0)
    model = instantiate(cfg.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = fit(model, **trainer_args)
    return model, trainer, changed_networks(model, before)


def changed_networks(model, before: dict) -> set[str]:
    return {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("name", ["fned", "ganomaly", "skip_ganomaly"])
def test_every_gan_config_trains_both_networks_and_scores_images(name):
    model, trainer, changed = fit_config_model(name, max_steps=2, limit_val_batches=0)
    assert changed == {"generator", "discriminator"}
    m = trainer.callback_metrics
    terms = {
        k.removeprefix("train/loss_"): v
        for k, v in m.items()
        if k.startswith("train/loss_") and k[-2:] not in ("_g", "_d")
    }
    assert set(terms) == set(model.loss_weights)
    torch.testing.assert_close(m["train/loss_g"], sum(model.loss_weights[k] * v for k, v in terms.items()))
    detection = model.eval()(torch.rand(3, 1, 16, 16) * 2 - 1)
    scores, x_fake = detection.scores, detection.x_fake
    assert scores.shape == (3,) and x_fake.shape == (3, 1, 16, 16) and torch.isfinite(scores).all()


class SnapshotAfterFirstEpoch(L.Callback):
    """Parameters and buffers after epoch 0, and the networks' modes at every later training batch."""

    def __init__(self):
        self.modes: set[tuple[str, bool]] = set()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.state = {n: t.detach().clone() for n, t in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, *_):
        if trainer.current_epoch > 0:
            self.modes |= {(name, network.training) for name, network in pl_module.named_children()}


def test_fanogan_trains_the_gan_then_only_the_encoder_with_the_rest_frozen_in_eval_mode():
    snapshot = SnapshotAfterFirstEpoch()
    model, _, changed = fit_config_model("fanogan", max_epochs=2, callbacks=[snapshot])  # validation in between
    assert model.gan_epochs == 1
    assert changed == {"generator", "critic", "encoder"}
    networks = {n: t for n, t in model.state_dict().items() if "." in n}  # not the fitted score_* buffers
    moved = {n.split(".")[0] for n, t in networks.items() if not torch.equal(t, snapshot.state[n])}
    assert moved == {"encoder"}  # epoch 2: no parameter and no BatchNorm statistic of G or the critic moves
    assert any(n.startswith("generator.") and n.endswith("running_mean") for n in snapshot.state)
    assert snapshot.modes == {("generator", False), ("critic", False), ("encoder", True)}


def test_fanogan_refuses_a_single_epoch():
    with pytest.raises(InputError, match="max_epochs >= 2"):
        fit_config_model("fanogan", max_epochs=1)


class HostWaits(TorchFunctionMode):
    """Records the tensor calls that make the host wait for the device (harmless on a CPU, where
    this test runs; each one drains the queue of a GPU)."""

    WAITS = {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__bool__,
        torch.Tensor.__float__,
        torch.Tensor.__int__,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
    }

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.WAITS:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["fned", "ganomaly", "skip_ganomaly", "fanogan", "fned_head"])
def test_training_steps_do_not_wait_for_the_device(name):
    from hydra.utils import instantiate

    from tests.conftest import TINY_MODELS, compose_config
    from tests.test_head import HEAD  # the simulated anomalies are drawn every step too

    overrides = [*HEAD, *TINY_MODELS["fned"]] if name == "fned_head" else TINY_MODELS[name]
    cfg = compose_config("data=synthetic", "data.image_size=16", *overrides)
    model = instantiate(cfg.model)
    waits = HostWaits()
    training_step = model.training_step

    def watched(batch, batch_idx):
        with waits:
            return training_step(batch, batch_idx)

    model.training_step = watched
    fit(model, max_epochs=2, limit_val_batches=0)  # 4 batches an epoch; the collapse check comes every 10
    assert waits.calls == []
