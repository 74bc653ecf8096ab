"""`python -m fned_lightning.train anomaly_class=horse`: fit on normal images, test, write the results.

Writes into the Hydra run directory: metrics.json, scores.csv, config.yaml (resolved) and
checkpoints/last.ckpt, plus the loggers' files (CSV, W&B offline run).
"""

import csv
import json
import logging
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fned_lightning.errors import InputError

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning on newer torch: noise


def train(cfg: DictConfig) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # read the data first: bad paths and images fail before any model is built
    model = instantiate(cfg.model)
    loggers = [instantiate(logger) for logger in (cfg.get("logger") or {}).values()]
    callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values()]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the whole run, not just the model
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        speed = throughput(trainer)
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics = run_summary(cfg, trainer, datamodule) | model.test_results["metrics"] | speed | throughput(trainer)
        if trainer.is_global_zero:
            write_results(Path(cfg.output_dir), cfg, metrics, model, datamodule)
        return metrics
    finally:
        if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
            import wandb

            wandb.finish()  # each multirun job is its own W&B run


def run_summary(cfg: DictConfig, trainer: L.Trainer, datamodule) -> dict:
    choices = HydraConfig.get().runtime.choices
    return {
        "protocol": cfg.protocol,
        "model": choices.get("model"),
        "data": choices.get("data"),
        "data_root": str(datamodule.root) if datamodule.root else None,
        "anomaly_class": getattr(datamodule, "anomaly_class", None),
        "seed": cfg.seed,
        "epochs": trainer.current_epoch,
        "image_size": datamodule.image_size,
        **datamodule.split_sizes(),
    }


def throughput(trainer: L.Trainer) -> dict[str, float]:
    """The Throughput callback's figures of the loop that just ran (fit or test)."""
    return {k.removeprefix("perf/"): v.item() for k, v in trainer.callback_metrics.items() if k.startswith("perf/")}


def write_results(output_dir: Path, cfg: DictConfig, metrics: dict, model, datamodule) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics |= {"threshold": model.hparams.threshold, "score_min": model.score_min.item(), "score_max": model.score_max.item()}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    results = model.test_results
    scores, labels = results["scores"], results["labels"]
    normalised = model.normalise(scores) if metrics["normalisation"] == "val_minmax" else None
    test_minmax = (scores - scores.min()) / (scores.max() - scores.min()).clamp_min(1e-12)
    with open(output_dir / "scores.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["name", "label", "score", "score_val_minmax", "score_test_minmax", "decision"])
        decisions = (normalised if normalised is not None else test_minmax) > model.hparams.threshold
        for i, index in enumerate(results["index"].tolist()):
            writer.writerow([
                datamodule.test_names[index], int(labels[i]), f"{scores[i].item():.6g}",
                "" if normalised is None else f"{normalised[i].item():.6g}", f"{test_minmax[i].item():.6g}",
                "abnormal" if decisions[i] else "normal",
            ])
    shown = {k: metrics[k] for k in ("protocol", "model", "anomaly_class", "auroc", "auprc", "f1", "precision", "recall")}
    log.info("results in %s: %s", output_dir, json.dumps(shown))


def input_error_in(error: BaseException) -> InputError | None:
    """The user mistake behind an error, also when Hydra's instantiate wrapped it."""
    while error is not None:
        if isinstance(error, InputError):
            return error
        error = error.__cause__
    return None


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except Exception as error:
        user_error = input_error_in(error)
        if user_error is None:
            raise
        log.error("%s", user_error)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise user_error from None  # marks this job failed; the sweep's other jobs still run
        sys.exit(2)


if __name__ == "__main__":
    main()
