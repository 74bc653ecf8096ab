"""`python -m fned_lightning.train anomaly_class=horse`: fit on normal images, test, write the results.

Writes into the Hydra run directory: metrics.json, scores.csv, config.yaml (resolved) and
checkpoints/last.ckpt, plus the loggers' files (CSV, W&B offline run).
"""

import csv
import json
import logging
import math
import shutil
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fned_lightning.callbacks import PaperProtocol
from fned_lightning.data.base import to_model_range
from fned_lightning.errors import InputError, check_options, input_error_in
from fned_lightning.figures import anomaly_map_grid, reconstruction_grid, roc_and_pr_curves, score_histogram
from fned_lightning.loggers import hide_lightning_tips
from fned_lightning.models.detector import PROTOCOLS
from fned_lightning.scoring import min_max_normalise

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning on newer torch: noise
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")  # we log per epoch; short epochs are fine
hide_lightning_tips()


def data_name(anomaly_class: str | None, root: str | None, source: str) -> str:
    """What a run's folder and W&B name call its data: the CIFAR-10 class, else the data folder's name
    (mvtec_screw), else the source (synthetic)."""
    return str(anomaly_class or (Path(str(root)).name if root else source))


OmegaConf.register_new_resolver("data_name", data_name, replace=True)


def train(cfg: DictConfig) -> dict:
    if cfg.protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol={cfg.protocol}; choose one of: {', '.join(PROTOCOLS)}")
    output_dir = Path(cfg.output_dir)
    if (output_dir / "metrics.json").exists():  # a rerun (or Slurm requeue) of a finished run: results stay as written
        log.info("this run has finished already; its results are in %s", output_dir)
        return json.loads((output_dir / "metrics.json").read_text())
    ckpt_path = resume_from(cfg)
    for group in ("data", "model", "trainer"):
        check_options(cfg[group], group)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # read the data first: bad paths and images fail before any model is built
    model = instantiate(cfg.model)
    loggers = [instantiate(logger) for logger in (cfg.get("logger") or {}).values()]
    callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values()]
    paper = PaperProtocol() if cfg.protocol in ("paper", "both") else None
    callbacks += [paper] if paper else []
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the whole run, not just the model
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        speed = throughput(trainer)
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics = run_summary(cfg, trainer, datamodule) | model.test_results["metrics"] | speed | throughput(trainer)
        metrics |= model.val_results  # data.synthetic_val_defects: the painted validation defects, last epoch
        metrics["tested_epoch"] = paper.best_epoch if cfg.protocol == "paper" else trainer.current_epoch - 1  # 0-based
        if cfg.protocol == "both":
            metrics |= paper.test_best_epoch(trainer, model, datamodule)
        if trainer.is_global_zero:
            write_results(output_dir, cfg, metrics, model, datamodule)
            figures = write_figures(output_dir, metrics, model, datamodule)
            for logger in loggers:
                for figure in figures if hasattr(logger, "log_image") else ():  # one key each: they differ in size
                    logger.log_image(f"figures/{figure.stem}", images=[str(figure)])
        return metrics
    finally:
        if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
            import wandb

            wandb.finish()  # each multirun job is its own W&B run


def resume_from(cfg: DictConfig) -> str | None:
    """`ckpt_path` if given, else this run folder's own last checkpoint: a killed run rerun with the
    same command and run folder (always so for a multirun job) carries on where it stopped."""
    if cfg.ckpt_path is not None:
        if not Path(cfg.ckpt_path).is_file():
            raise InputError(f"no checkpoint at ckpt_path={cfg.ckpt_path}; give a run's checkpoints/last.ckpt")
        return str(cfg.ckpt_path)
    last = Path(cfg.output_dir, "checkpoints", "last.ckpt")
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    return None


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
        "train_images_per_epoch": int(trainer.num_training_batches) * datamodule.batch_size * trainer.world_size,
        "image_size": datamodule.image_size,
        **datamodule.split_sizes(),
    }


def throughput(trainer: L.Trainer) -> dict[str, float]:
    """The Throughput callback's figures of the loop that just ran (fit or test)."""
    return {k.removeprefix("perf/"): v.item() for k, v in trainer.callback_metrics.items() if k.startswith("perf/")}


def write_results(output_dir: Path, cfg: DictConfig, metrics: dict, model, datamodule) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics |= {"threshold": model.threshold, "false_positive_rate": model.false_positive_rate,
                "score_min": model.score_min.item(), "score_max": model.score_max.item(),
                "score_threshold": model.score_threshold.item()}
    undefined = {k: None for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)}  # strict JSON: null
    (output_dir / "metrics.json").write_text(json.dumps(metrics | undefined, indent=2) + "\n")
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    results = model.test_results
    scores, labels = results["scores"], results["labels"]
    test_minmax = min_max_normalise(scores, scores.min().item(), scores.max().item())
    fitted = metrics["normalisation"] == "val_minmax"
    normalised = model.normalise(scores) if fitted else None
    paper_decision = (normalised if fitted else test_minmax) > model.threshold
    calibrated_decision = scores > model.score_threshold.item() if fitted else None
    with open(output_dir / "scores.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["name", "label", "score", "score_val_minmax", "score_test_minmax", "abnormal_at_threshold",
                         "abnormal_calibrated"])
        for i, index in enumerate(results["index"].tolist()):
            writer.writerow([
                datamodule.test_names[index], int(labels[i]), f"{scores[i].item():.6g}",
                f"{normalised[i].item():.6g}" if fitted else "", f"{test_minmax[i].item():.6g}",
                int(paper_decision[i]), int(calibrated_decision[i]) if fitted else "",
            ])
    shown = {k: metrics[k] for k in ("protocol", "model", "anomaly_class", "auroc", "auprc", "f1", "precision", "recall")}
    log.info("results in %s: %s", output_dir, json.dumps(shown))


def write_figures(output_dir: Path, metrics: dict, model, datamodule, per_class: int = 8) -> list[Path]:
    """Score histogram, ROC/PR curves, reconstructions and anomaly maps (beside the ground truth, where
    the data has it) of test images, as PNG in figures/."""
    results, folder = model.test_results, output_dir / "figures"
    title = f"{metrics['model']} {metrics['anomaly_class'] or metrics['data']} (protocol={metrics['protocol']})"
    paths = [
        score_histogram(results["scores"], results["labels"], folder / "score_histogram.png", title, model.threshold),
        roc_and_pr_curves(results["scores"], results["labels"], folder / "roc_pr.png", title),
    ]
    test = datamodule.test_set
    picks = [(test.labels == label).nonzero().flatten() for label in (0, 1)]
    count = min(per_class, *(len(p) for p in picks if len(p)))
    model.train(model.protocol == "paper")  # as it was tested
    chosen = torch.cat([p[:count] for p in picks if len(p)])
    with torch.inference_mode():
        x = to_model_range(test.images[chosen].to(model.device))
        detection = model(x)
    x, x_fake, maps = x.cpu(), detection.x_fake.cpu(), detection.maps.cpu()
    names = [name for name, pick in zip(("normal", "defect"), picks) if len(pick)]
    groups = {name: (x[i * count : (i + 1) * count], x_fake[i * count : (i + 1) * count]) for i, name in enumerate(names)}
    paths.append(reconstruction_grid(groups, folder / "reconstructions.png", title))
    masks = test.masks[chosen].cpu() if test.masks is not None else None
    paths.append(anomaly_map_grid(x, masks, maps, test.labels[chosen].cpu(), model.pixel_threshold.item(),
                                  folder / "anomaly_maps.png", title))
    return [p for p in paths if p is not None]


HYDRA_OWN = {".hydra", "train.log"}  # what Hydra writes into a run folder before the run starts


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    output_dir = Path(cfg.output_dir)
    made_for_this_run = {p.name for p in output_dir.iterdir()} <= HYDRA_OWN
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        train(cfg)
    except Exception as error:
        user_error = input_error_in(error)
        if user_error is None or multirun:
            (output_dir / "failed.txt").write_text(f"{type(error).__name__}: {error}\n")  # for the report
        if user_error is None:
            raise
        log.error("%s", user_error)
        if multirun:
            raise user_error from None  # marks this job failed; the sweep's other jobs still run
        if made_for_this_run:  # a mistyped command: leave no run folder for the report to count
            remove_run_folder(output_dir)
        sys.exit(2)


def remove_run_folder(output_dir: Path) -> None:
    """The folder Hydra made for a run that never started, and its parents that are left empty."""
    logging.shutdown()  # close train.log before its folder goes
    shutil.rmtree(output_dir, ignore_errors=True)
    for parent in output_dir.resolve().parents:
        if parent == Path.cwd() or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()


if __name__ == "__main__":
    main()
