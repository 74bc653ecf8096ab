"""Loggers: Lightning's, less what makes them noisy."""

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger, without the `anonymous=None` it always hands to `wandb.init`: W&B
    deprecated that setting and warns about it on every run."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
