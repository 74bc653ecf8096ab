"""The GPU path, sound by construction and checked on the CPU: what would make a GPU wait, draw the same
noise on every DDP rank, coarsen the maps or mis-scale a gradient penalty (issue 37). tests/test_gpu.py runs
the same code on a GPU where there is one."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.strategies import DDPStrategy
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fned_lightning.data.synthetic import SyntheticParts
from fned_lightning.errors import InputError
from fned_lightning.seeding import epoch_seed
from fned_lightning.simulated_anomalies import simulate_anomalies
from fned_lightning.train import fit
from tests.conftest import TINY_MODELS, compose_config, quiet_trainer, tiny_parts


def test_the_progress_bar_reads_the_losses_every_50_batches_by_default():
    """Each refresh reads the logged losses from the device: on a GPU, a wait."""
    cfg = compose_config("anomaly_class=horse")
    bar = instantiate(cfg.callbacks.progress_bar)
    assert isinstance(bar, TQDMProgressBar) and bar.refresh_rate == 50 == cfg.trainer.log_every_n_steps


class DevicesTouched(TorchDispatchMode):
    """The devices of every tensor an operation reads or makes."""

    def __init__(self):
        super().__init__()
        self.devices: dict[str, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten((args, kwargs, out))[0]:
            if isinstance(tensor, torch.Tensor):
                self.devices.setdefault(tensor.device.type, str(func))
        return out


def test_simulated_anomalies_are_drawn_on_the_images_device_alone():
    """On the meta device nothing can be read: a draw on the host, an index built there and copied over,
    or a value read back (each a wait on a GPU) would show up as a CPU tensor, or fail."""
    images = torch.zeros(6, 3, 64, 64, device="meta")
    with DevicesTouched() as touched:
        damaged, masks = simulate_anomalies(images)
    assert set(touched.devices) == {"meta"}, touched.devices
    assert damaged.shape == images.shape and masks.shape == (6, 1, 64, 64)


def test_each_ddp_rank_draws_its_own_noise_and_rank_0_the_single_process_draws():
    seeds = {epoch_seed(7, 3, rank) for rank in range(8)}
    assert len(seeds) == 8 and epoch_seed(7, 3, 0) == epoch_seed(7, 3)


def test_fanogan_refuses_fp16_in_one_line():
    from types import SimpleNamespace

    model = instantiate(compose_config("data=synthetic", "data.image_size=16", *TINY_MODELS["fanogan"]).model)
    for precision in ("16-mixed", "16-true"):
        model.trainer = SimpleNamespace(precision=precision, max_epochs=2)
        with pytest.raises(InputError, match=f"trainer.precision={precision}.*bf16-mixed or 32-true"):
            model.on_fit_start()


def test_data_held_on_the_device_refuses_loader_workers():
    with pytest.raises(InputError, match="data.on_device=true .* data.num_workers=2 .* give data.num_workers=0"):
        SyntheticParts(on_device=True, num_workers=2)


def test_the_normalisation_is_fitted_on_the_final_weights_when_validation_skips_epochs(tmp_path):
    """check_val_every_n_epoch=2 over 3 epochs: the last validation saw epoch 2's weights; the test must not,
    and last.ckpt (what predict and export read) holds the final weights with their own fits."""
    L.seed_everything(0)
    cfg = compose_config("data=synthetic", "data.image_size=16", *TINY_MODELS["fned"])
    model = instantiate(cfg.model)
    data = tiny_parts()
    checkpoint = instantiate(cfg.callbacks.checkpoint, dirpath=str(tmp_path))
    trainer = quiet_trainer(max_epochs=3, check_val_every_n_epoch=2, callbacks=[checkpoint], enable_checkpointing=True)
    fit(trainer, model, data, None)
    assert model.fitted_at_step == trainer.global_step
    fitted = {name: getattr(model, name).clone() for name in ("score_min", "score_max", "score_threshold")}
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 2
    for name, value in fitted.items():
        assert torch.equal(saved["state_dict"][name], value), name
    trainer.validate(model, datamodule=data, verbose=False)  # what a validation of the final weights fits
    for name, value in fitted.items():
        assert torch.equal(getattr(model, name), value), name


class RankRecorder(L.Callback):
    """Makes only rank 0's D collapse, and keeps what each rank drew, its D's weights and how often it
    restarted D in a file."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_start(self, trainer, pl_module):
        pl_module.hparams.d_collapse_loss = 1e9 if trainer.global_rank == 0 else -1.0
        self.restarts, restart = 0, pl_module.reinitialise_discriminator

        def counted_restart(batch_idx):
            self.restarts += 1
            restart(batch_idx)

        pl_module.reinitialise_discriminator = counted_restart

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:  # after the epoch's seeding: what this rank's noise starts with
            self.noise = torch.rand(4)

    def on_train_end(self, trainer, pl_module):
        # its parameters: BatchNorm's running statistics move on each rank's own batches, as DDP has it
        weights = {name: p.detach() for name, p in pl_module.discriminator.named_parameters()}
        state = {"noise": self.noise, "discriminator": weights, "restarts": self.restarts}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def test_two_gloo_ranks_draw_their_own_noise_and_restart_d_together(tmp_path):
    """DDP on two CPU processes (gloo): a collapse seen on one rank restarts D on both, with the same
    weights (else the copies drift apart); each rank's noise is its own."""
    L.seed_everything(0)
    # Checked every batch: rank 0 clears its flag before DDP copies buffers to rank 1, so rank 1 learns of
    # the collapse only through the all-gather.
    model = instantiate(
        compose_config(
            "data=synthetic", "data.image_size=16", *TINY_MODELS["fned"], "model.d_collapse_check_interval=1"
        ).model
    )
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(start_method="fork", process_group_backend="gloo", find_unused_parameters=True),
        max_epochs=1,
        limit_val_batches=0,
        callbacks=[RankRecorder(tmp_path)],
    )
    trainer.fit(model, datamodule=tiny_parts())
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert not torch.equal(ranks[0]["noise"], ranks[1]["noise"])
    assert ranks[0]["restarts"] == ranks[1]["restarts"] > 0  # rank 1's D, which never collapsed, restarted too
    for name, weight in ranks[0]["discriminator"].items():
        assert torch.equal(weight, ranks[1]["discriminator"][name]), name
