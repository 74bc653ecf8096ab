"""Callbacks: throughput measurement, and the paper protocol's test-label model selection."""

import itertools
import logging
import math
import time

import lightning as L
import torch

from fned_lightning.data.base import batches_read, to_model_range
from fned_lightning.errors import InputError
from fned_lightning.networks.layers import to_channels_last
from fned_lightning.scoring import defect_residual_ratio, ranking_metrics

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


class PaperProtocol(L.Callback):
    """The anchors' evaluation (protocol=paper, and the paper's half of protocol=both): after every
    epoch, score the test set with BatchNorm in training mode and keep the weights of the epoch with
    the best *test* AUROC; those are then tested, with test-set min-max. Picking the model with test
    labels makes these numbers optimistic by construction, which is why every output says so.

    Each pass leaves the run as it found it: BatchNorm's running statistics (and every other buffer)
    and the random number generators are restored, so the honest evaluation of a protocol=both run
    is the one an honest run would give."""

    def __init__(self):
        self.best_auroc, self.best_epoch, self.best_state = -math.inf, None, None

    def on_train_epoch_end(self, trainer, pl_module):
        auroc, ratio = self.test_auroc(trainer, pl_module)
        pl_module.log("paper/test_auroc", auroc)
        if not math.isnan(ratio):  # where the test set has masks: the shortcut diagnostic, epoch by epoch
            pl_module.log("paper/test_defect_residual_ratio", ratio)
        if auroc > self.best_auroc:
            self.best_auroc, self.best_epoch = auroc, trainer.current_epoch
            self.best_state = state_copy(pl_module, "cpu")

    def state_dict(self) -> dict:  # in the checkpoint, so a resumed run keeps the selection so far
        return {"best_auroc": self.best_auroc, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_auroc, self.best_epoch, self.best_state = (
            state_dict["best_auroc"], state_dict["best_epoch"], state_dict["best_state"])

    def on_fit_end(self, trainer, pl_module):
        if pl_module.protocol == "paper" and self.best_state is not None:
            pl_module.load_state_dict(self.best_state)
            log.info("protocol=paper: testing epoch %d, the one with the best test AUROC (%.4f)", self.best_epoch, self.best_auroc)

    def test_best_epoch(self, trainer, pl_module, datamodule) -> dict:
        """protocol=both, after the honest test: the paper's test of the selected epoch's weights, its
        metrics prefixed `paper_`; the model is left with its last epoch's weights, as it was."""
        last = state_copy(pl_module)
        honest_results = pl_module.test_results
        selected = (self.best_state, self.best_epoch) if self.best_state else (last, trainer.current_epoch - 1)  # no AUROC defined
        pl_module.protocol = "paper"
        try:
            pl_module.load_state_dict(selected[0])
            trainer.test(pl_module, datamodule=datamodule, verbose=False)
            metrics = pl_module.test_results["metrics"] | {"tested_epoch": selected[1]}
        finally:
            pl_module.protocol = "both"
            pl_module.load_state_dict(last)
            pl_module.test_results = honest_results
        log.info("protocol=both: the paper's evaluation tested epoch %d (best test AUROC %.4f)", selected[1], self.best_auroc)
        return {f"paper_{name}": value for name, value in metrics.items()}

    @torch.inference_mode()
    def test_auroc(self, trainer, pl_module) -> tuple[float, float]:
        """The test AUROC, and the defect residual ratio (NaN without masks), scored as the paper scored."""
        was_training, buffers = pl_module.training, {k: v.clone() for k, v in pl_module.named_buffers()}
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        # in the trainer's precision (bf16 autocast under bf16-mixed), as the final paper test scores
        with torch.random.fork_rng(devices=devices), trainer.precision_plugin.forward_context():
            # (fork_rng: a DataLoader draws a seed from the global generator)
            pl_module.train()  # BatchNorm on batch statistics, as the anchors evaluated
            loader = trainer.datamodule.paper_test_dataloader()  # the anchors' batches (BatchNorm reads each batch)
            n_batches = batches_read(trainer.limit_test_batches, len(loader))
            # no progress bar of its own (Lightning's is live): say what the pause is
            log.info("the paper's protocol: scoring %d test batches after epoch %d", n_batches, trainer.current_epoch)
            masks = pl_module.masks_of("test_set")
            scores, labels, residuals, indices = [], [], [], []
            for images, batch_labels, index in itertools.islice(loader, n_batches):
                detection = pl_module(to_model_range(images.to(pl_module.device)))
                scores.append(detection.scores.cpu())
                labels.append(batch_labels.cpu())
                if masks is not None:
                    residuals.append(detection.residuals.cpu())
                    indices.append(index.cpu())
        for name, buffer in pl_module.named_buffers():
            buffer.copy_(buffers[name])  # training mode moved BatchNorm's running statistics: put them back
        pl_module.train(was_training)
        auroc = ranking_metrics(torch.cat(scores), torch.cat(labels))["auroc"]
        ratio = defect_residual_ratio(torch.cat(residuals), masks[torch.cat(indices).to(masks.device)].cpu()) if residuals else math.nan
        return -math.inf if math.isnan(auroc) else auroc, ratio


def state_copy(module, device=None) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(device or v.device, copy=True) for k, v in module.state_dict().items()}


class Speedups(L.Callback):
    """Options that change speed, not results: channels_last weights (the layout tensor cores want,
    and faster with oneDNN on CPU too), `torch.compile` of each network (in place, so checkpoints
    keep their keys), cuDNN's autotuner (`cudnn_benchmark`: the shapes stay fixed) and TF32 for
    float32 matrix products (`matmul_precision="high"`). A model's `not_compiled` names the networks
    that cannot be compiled (f-AnoGAN's critic: its gradient penalty needs a double backward)."""

    def __init__(self, channels_last: bool = False, compile: bool = False, cudnn_benchmark: bool = False,
                 matmul_precision: str | None = None):
        if matmul_precision not in (None, "highest", "high", "medium"):
            raise InputError(f"callbacks.speedups.matmul_precision={matmul_precision}; choose highest, high or medium (or null)")
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
