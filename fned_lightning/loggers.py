"""Loggers: Lightning's, less what makes them noisy, and keeping a resumed run's earlier epochs."""

import csv
import hashlib
import logging
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


def hide_lightning_tips() -> None:
    """Lightning advertises its cloud logger on every run: not a message our users need."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger, without the `anonymous=None` it always hands to `wandb.init`: W&B
    deprecated that setting and warns about it on every run."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger, which deletes the metrics.csv it finds; a resumed run keeps the rows of the
    epochs its checkpoint holds (`keep_epochs_before`), so the file reads as an uninterrupted run's. (An
    epoch's own row is logged just after its checkpoint: a kill in those milliseconds loses that row.)"""

    def keep_epochs_before(self, epochs: int) -> None:
        path = Path(self.log_dir) / "metrics.csv"
        if not path.is_file():
            return
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            kept = [row for row in reader if row.get("epoch") and int(float(row["epoch"])) < epochs]
        writer = self.experiment  # Lightning's writer removes the old file here
        writer.metrics = kept + writer.metrics
        writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))


def run_id(output_dir: str) -> str:
    """A W&B run id from the run folder: the same folder (a resumed or requeued run) resumes the same W&B run."""
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]
