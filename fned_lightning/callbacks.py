"""Throughput: images per second of training and testing, whole loop included (data, steps, logging)."""

import time

import lightning as L


class Throughput(L.Callback):
    """Logs `perf/train_images_per_s` (the last epoch) and `perf/test_images_per_s`."""

    def __init__(self):
        self._start, self._images = 0.0, 0

    def _begin(self, *_):
        self._start, self._images = time.perf_counter(), 0

    def _count(self, trainer, pl_module, outputs, batch, *_):
        self._images += len(batch[0])

    def _rate(self) -> float:
        return self._images / max(time.perf_counter() - self._start, 1e-9)

    on_train_epoch_start = on_test_epoch_start = _begin
    on_train_batch_end = on_test_batch_end = _count

    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.log("perf/train_images_per_s", self._rate())

    def on_test_epoch_end(self, trainer, pl_module):
        pl_module.log("perf/test_images_per_s", self._rate())
