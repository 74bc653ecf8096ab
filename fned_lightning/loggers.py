"""Loggers: Lightning's, less what makes them noisy."""

import logging

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


def hide_lightning_tips() -> None:
    """Lightning advertises its cloud logger on every run: not a message our users need."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger, without the `anonymous=None` it always hands to `wandb.init`: W&B
    deprecated that setting and warns about it on every run."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
