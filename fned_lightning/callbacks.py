"""Callbacks: throughput measurement, and the options that change speed, not results."""

import logging
import time

import lightning as L
import torch

from fned_lightning.errors import InputError
from fned_lightning.networks.layers import to_channels_last

log = logging.getLogger(__name__)


def sync(device: torch.device) -> None:
    """Wait for the device: a clock read after queued GPU work would time the queueing, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput(L.Callback):
    """Images per second from the first batch to the last (data, steps and logging included, the
    validation after a training epoch not). Logs `perf/train_images_per_s` (the last epoch) and
    `perf/test_images_per_s`. It waits for the device at the start and the end of each loop only."""

    def __init__(self):
        self._start = self._end = 0.0
        self._images = 0

    def _begin(self, trainer, pl_module):
        sync(pl_module.device)
        self._start, self._images = time.perf_counter(), 0

    def _stop(self, pl_module):
        sync(pl_module.device)
        self._end = time.perf_counter()

    def _rate(self) -> float:
        return self._images / max(self._end - self._start, 1e-9)

    on_train_epoch_start = on_test_epoch_start = _begin

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._images += len(batch[0])
        if batch_idx + 1 >= trainer.num_training_batches:  # the last: the clock stops before validation starts
            self._stop(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._images += len(batch[0])

    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.log("perf/train_images_per_s", self._rate())

    def on_test_epoch_end(self, trainer, pl_module):
        self._stop(pl_module)
        pl_module.log("perf/test_images_per_s", self._rate())


class Speedups(L.Callback):
    """Options that change speed, not results: channels_last weights (the layout tensor cores want,
    and faster with oneDNN on CPU too), `torch.compile` of each network (in place, so checkpoints
    keep their keys), cuDNN's autotuner (`cudnn_benchmark`: the shapes stay fixed) and TF32 for
    float32 matrix products (`matmul_precision="high"`). A model's `not_compiled` names the networks
    that cannot be compiled (f-AnoGAN's critic: its gradient penalty needs a double backward)."""

    def __init__(
        self,
        channels_last: bool = False,
        compile: bool = False,
        cudnn_benchmark: bool = False,
        matmul_precision: str | None = None,
    ):
        if matmul_precision not in (None, "highest", "high", "medium"):
            raise InputError(
                f"callbacks.speedups.matmul_precision={matmul_precision}; choose highest, high or medium (or null)"
            )
        self.channels_last, self.compile = channels_last, compile
        self.cudnn_benchmark, self.matmul_precision = cudnn_benchmark, matmul_precision
        self._done = False

    def setup(self, trainer, pl_module, stage):
        if self._done:  # setup runs for fit and for every test: compile once
            return
        self._done = True
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if self.matmul_precision:
            torch.set_float32_matmul_precision(self.matmul_precision)
        if self.channels_last:
            to_channels_last(pl_module)
        if self.compile:
            left_out = getattr(pl_module, "not_compiled", ())
            for name, network in pl_module.named_children():
                if name in left_out:
                    log.info("callbacks.speedups.compile: %s is left uncompiled (%s)", name, type(pl_module).__name__)
                    continue
                network.compile()
