"""Reading the checkpoints that train writes: plain data only, and the classes that have moved since."""

import pickle
from pathlib import Path

import torch

from fned_lightning.errors import InputError

MOVED = {"fned_lightning.models.fned.AnomalyGAN": "fned_lightning.models.fned.FNED"}  # FNED's class before its own


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's plain data (`torch.load(weights_only=True)`): one that cannot be read so is refused,
    never loaded with pickle's full powers, which run whatever code a file holds."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        other_objects = isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error)
        kind = "holds objects other than plain data" if other_objects else "is damaged, or is no checkpoint"
        raise InputError(
            f"cannot read {path} as a checkpoint: it {kind}; pass the checkpoints/last.ckpt that a "
            f"fned_lightning train run wrote"
        ) from None
    if not isinstance(checkpoint, dict):
        raise InputError(
            f"{path} is not a fned_lightning checkpoint; pass the checkpoints/last.ckpt that a train run wrote"
        )
    return checkpoint
