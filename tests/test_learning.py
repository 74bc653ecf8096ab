"""Training learns: on one fixed batch of synthetic parts, every reconstruction model's error falls."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from fned_lightning.data.base import to_model_range
from fned_lightning.data.synthetic import SyntheticParts
from tests.conftest import TINY_MODELS, compose_config, models_of

EPOCHS, BATCHES = 2, 30  # f-AnoGAN: its GAN's epoch, then its encoder's


class SameBatch:
    """The one batch, `BATCHES` times an epoch."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self) -> int:
        return BATCHES

    def __iter__(self):
        return iter([self.batch] * BATCHES)


def reconstruction_error(model, x: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return (model(x).x_fake - x).abs().mean().item()


@pytest.mark.parametrize("name", models_of("reconstruction"))
def test_the_reconstruction_error_on_a_fixed_batch_falls_with_training(name):
    L.seed_everything(0)
    data = SyntheticParts(n_train=16, n_test_normal=4, n_test_abnormal=4, image_size=16, channels=1, val_fraction=0.0)
    # a few dozen steps at tiny widths
    faster = ["model.lr=2e-3"] + (["model.encoder_lr=2e-3"] if name == "fanogan" else [])
    cfg = compose_config("data=synthetic", "data.image_size=16", "data.channels=1", *TINY_MODELS[name], *faster)
    model = instantiate(cfg.model)
    data.setup("fit")
    x = to_model_range(data.train_set.images)  # the one batch every step trains on
    before = reconstruction_error(model, x)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=SameBatch((x, torch.zeros(len(x), dtype=torch.long), torch.arange(len(x)))))
    after = reconstruction_error(model, x)
    assert after < 0.8 * before, (before, after)
