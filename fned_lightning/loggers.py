"""Loggers: Lightning's, less what makes them noisy, and keeping a resumed run's earlier epochs."""

import csv
import hashlib
import logging
import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from fned_lightning.errors import InputError


def hide_lightning_tips() -> None:
    """Lightning advertises its cloud logger on every run: not a message our users need."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger, without the `anonymous=None` it always hands to `wandb.init`: W&B
    deprecated that setting and warns about it on every run. Logging live (offline=false) is checked
    first: with no API key W&B would ask for one, and with no network it would wait, before any training."""

    def __init__(self, **kwargs):
        if not kwargs.get("offline", False) and os.environ.get("WANDB_MODE") not in ("offline", "disabled", "dryrun"):
            check_wandb_online()
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


def check_wandb_online(timeout_s: float = 5.0) -> None:
    """An API key (WANDB_API_KEY, or `wandb login`'s entry in ~/.netrc) and W&B's server within reach."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    later = "or leave W&B offline (the default) and upload later with wandb sync <run>/wandb/offline-run-*"
    if not os.environ.get("WANDB_API_KEY"):
        try:
            key = netrc.netrc(os.environ.get("NETRC")).authenticators(host)  # where W&B itself looks
        except (OSError, netrc.NetrcParseError):
            key = None
        if key is None:
            raise InputError(
                f"logger.wandb.offline=false logs live to W&B, but there is no W&B API key here: run wandb login "
                f"(or set WANDB_API_KEY), {later}"
            )
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return  # W&B goes through the proxy, which a direct connection would not
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise InputError(
            f"logger.wandb.offline=false logs live to W&B, but {host}:{port} cannot be reached ({error}): "
            f"check the network, {later}"
        ) from None


def run_id(output_dir: str) -> str:
    """A W&B run id from the run folder: the same folder (a resumed or requeued run) resumes the same W&B run."""
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]
