"""The evaluation protocols, in one place: what they are, how the paper's batches its test, and the
paper's per-epoch test-label selection. Every model is evaluated by models.detector.AnomalyDetector
under one of them:

- `honest` (the default): eval() mode, the last epoch's weights, the normalisation and thresholds fitted on
  normal validation images; no choice made with test labels.
- `paper`: the anchors' (the GANomaly family's code): BatchNorm in training mode at test, the test set in
  their batches (`data.paper_test_batches`), the epoch with the best *test* AUROC (`PaperProtocol`), test-set
  min-max. Optimistic by construction, and labelled so in every output.
- `both`: the two from one training run (the paper's as `paper_*` keys).

A model for which the paper's protocol means nothing (one fitted in one pass, with no BatchNorm of its own
to put in training mode) refuses it when it is built.
"""

import itertools
import logging
import math

import lightning as L
import torch

from fned_lightning.errors import InputError
from fned_lightning.scoring import defect_residual_ratio, ranking_metrics

log = logging.getLogger(__name__)

PROTOCOLS = ("honest", "paper", "both")
# the anchors' batches (training batch size, CIFAR-10 sorted by label); mixed: as the honest test's
PAPER_TEST_BATCHES = ("anchors", "mixed")


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol={protocol}; choose one of: {', '.join(PROTOCOLS)}")


def batches_read(limit: int | float, n_batches: int) -> int:
    """How many of a test loader's `n_batches` batches Lightning reads under `trainer.limit_test_batches`."""
    return min(n_batches, limit if isinstance(limit, int) else math.ceil(limit * n_batches))


def anchors_order(labels: torch.Tensor, n_read: int) -> torch.Tensor:
    """The test set's order in the anchors' unshuffled loader over normal-then-anomaly folders: the normal
    images first, then the anomalies, within the `n_read` images a limited test reads (all, by default) so
    that a limited test still holds both labels. A stable sort: each label keeps its (seeded) order."""
    order = torch.arange(len(labels))
    read, read_labels = order[:n_read], labels[:n_read].cpu()
    return torch.cat([read[read_labels == 0], read[read_labels != 0], order[n_read:]])


def warn_if_sorted_by_test_labels(datamodule) -> bool:
    """Where the paper's test batches order the test set by its labels (the anchors' CIFAR-10 loader: normal
    images first, then the anomalies), say so, once per run: True if it did."""
    if not (datamodule.ANCHORS_SORT_TEST_BY_LABEL and datamodule.paper_test_batches == "anchors"):
        return False
    log.warning(
        "protocol=paper: its test batches are ordered by the test labels (normal images first, then the anomalies, "
        "as the anchors' loader), which a deployed model never has; data.paper_test_batches=mixed turns this off"
    )
    return True


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

    def on_fit_start(self, trainer, pl_module):
        warn_if_sorted_by_test_labels(trainer.datamodule)

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
            state_dict["best_auroc"],
            state_dict["best_epoch"],
            state_dict["best_state"],
        )

    def on_fit_end(self, trainer, pl_module):
        if pl_module.protocol == "paper" and self.best_state is not None:
            pl_module.load_state_dict(self.best_state)
            log.info(
                "protocol=paper: testing epoch %d, the one with the best test AUROC (%.4f)",
                self.best_epoch,
                self.best_auroc,
            )

    def test_best_epoch(self, trainer, pl_module, datamodule) -> dict:
        """protocol=both, after the honest test: the paper's test of the selected epoch's weights, its
        metrics prefixed `paper_`; the model is left with its last epoch's weights, as it was."""
        last = state_copy(pl_module)
        honest_results = pl_module.test_results
        # no AUROC defined
        selected = (self.best_state, self.best_epoch) if self.best_state else (last, trainer.current_epoch - 1)
        pl_module.protocol = "paper"
        try:
            pl_module.load_state_dict(selected[0])
            trainer.test(pl_module, datamodule=datamodule, verbose=False)
            metrics = pl_module.test_results["metrics"] | {"tested_epoch": selected[1]}
        finally:
            pl_module.protocol = "both"
            pl_module.load_state_dict(last)
            pl_module.test_results = honest_results
        log.info(
            "protocol=both: the paper's evaluation tested epoch %d (best test AUROC %.4f)", selected[1], self.best_auroc
        )
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
            for batch in itertools.islice(loader, n_batches):
                # to the device and [-1, 1], as Lightning brings a batch
                images, batch_labels, index = trainer.datamodule.on_after_batch_transfer(
                    tuple(part.to(pl_module.device) for part in batch), 0
                )
                detection = pl_module(images)
                scores.append(detection.scores.cpu())
                labels.append(batch_labels.cpu())
                if masks is not None and detection.residuals is not None:
                    residuals.append(detection.residuals.cpu())
                    indices.append(index.cpu())
        for name, buffer in pl_module.named_buffers():
            buffer.copy_(buffers[name])  # training mode moved BatchNorm's running statistics: put them back
        pl_module.train(was_training)
        auroc = ranking_metrics(torch.cat(scores), torch.cat(labels))["auroc"]
        ratio = (
            defect_residual_ratio(torch.cat(residuals), masks[torch.cat(indices).to(masks.device)].cpu())
            if residuals
            else math.nan
        )
        return -math.inf if math.isnan(auroc) else auroc, ratio


def state_copy(module, device=None) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(device or v.device, copy=True) for k, v in module.state_dict().items()}
