"""`python -m fned_lightning.train anomaly_class=horse`: fit on normal images, test, write the results.

Writes into the Hydra run directory: metrics.json, scores.csv, config.yaml (resolved) and
checkpoints/last.ckpt, plus the loggers' files (CSV, W&B offline run).
"""

import csv
import json
import logging
import math
import shutil
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fned_lightning.checkpoints import MOVED, read_checkpoint
from fned_lightning.data.base import to_model_range
from fned_lightning.errors import (
    InputError,
    check_accelerator,
    check_number,
    check_options,
    fail,
    input_error_in,
    run_hydra_cli,
)
from fned_lightning.figures import anomaly_map_grid, reconstruction_grid, roc_and_pr_curves, score_histogram
from fned_lightning.loggers import hide_lightning_tips, run_id
from fned_lightning.models.detector import EVALUATION_OPTIONS, AnomalyDetector
from fned_lightning.protocols import PaperProtocol, check_protocol
from fned_lightning.scoring import min_max_normalise

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning on newer torch: noise
# we log per epoch; short epochs are fine
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
# PaDiM, PatchCore: fitted, not trained
warnings.filterwarnings("ignore", message=r".*this fit will run with no optimizer")
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # their frozen backbone, by design
hide_lightning_tips()


def data_name(anomaly_class: str | None, root: str | None, source: str) -> str:
    """What a run's folder and W&B name call its data: the CIFAR-10 class, else the data folder's name
    (mvtec_screw), else the source (synthetic)."""
    return str(anomaly_class or (Path(str(root)).name if root else source))


OmegaConf.register_new_resolver("data_name", data_name, replace=True)
OmegaConf.register_new_resolver("wandb_run_id", run_id, replace=True)


def train(cfg: DictConfig) -> dict:
    check_protocol(cfg.protocol)
    output_dir = Path(cfg.output_dir)
    if (output_dir / "metrics.json").exists():  # a rerun (or Slurm requeue) of a finished run: results stay as written
        log.info("this run has finished already; its results are in %s", output_dir)
        return json.loads((output_dir / "metrics.json").read_text())
    check_number("seed", cfg.seed, 0, 2**32 - 1, integer=True)
    if cfg.get("threads") is not None:
        check_number("threads", cfg.threads, 1, integer=True)
        torch.set_num_threads(cfg.threads)
    # Lightning's -1 (no end) has no schedule to follow
    check_number("trainer.max_epochs", cfg.trainer.max_epochs, 1, integer=True)
    for group in ("data", "model", "trainer"):
        check_options(cfg[group], group)
    check_accelerator(cfg.trainer.accelerator)
    ckpt_path, epochs_done = resume_from(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # read the data first: bad paths and images fail before any model is built
    check_validation_split(datamodule, cfg.trainer.get("limit_val_batches"))
    model = instantiate(cfg.model)
    model.check_epochs(cfg.trainer.max_epochs)
    loggers = [instantiate(logger) for logger in (cfg.get("logger") or {}).values()]
    if ckpt_path is not None:  # a resumed run: its log goes on from the epochs the checkpoint holds
        for logger in loggers:
            if hasattr(logger, "keep_epochs_before"):
                logger.keep_epochs_before(epochs_done)
    callbacks = [
        instantiate(callback)
        for name, callback in (cfg.get("callbacks") or {}).items()
        if callback is not None  # callbacks.<name>=null leaves one out
        and not (name == "progress_bar" and cfg.trainer.get("enable_progress_bar") is False)  # Lightning refuses both
    ]
    paper = PaperProtocol() if cfg.protocol in ("paper", "both") else None
    callbacks += [paper] if paper else []
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the whole run, not just the model
    try:
        speed = fit(trainer, model, datamodule, ckpt_path)
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics = run_summary(cfg, trainer, datamodule) | model.test_results["metrics"] | speed | throughput(trainer)
        metrics |= model.val_results  # the painted and real validation defects (val_*, val_real_*), last epoch
        metrics["tested_epoch"] = paper.best_epoch if cfg.protocol == "paper" else trainer.current_epoch - 1  # 0-based
        if cfg.protocol == "both":
            metrics |= paper.test_best_epoch(trainer, model, datamodule)
        if trainer.is_global_zero:
            write_results(output_dir, cfg, metrics, model, datamodule, precision=trainer.precision)
            figures = write_figures(output_dir, metrics, model, datamodule)
            for logger in loggers:
                for figure in figures if hasattr(logger, "log_image") else ():  # one key each: they differ in size
                    logger.log_image(f"figures/{figure.stem}", images=[str(figure)])
        return metrics
    finally:
        if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
            import wandb

            wandb.finish()  # each multirun job is its own W&B run


def check_validation_split(datamodule, limit_val_batches) -> None:
    """The honest evaluation fits its normalisation and thresholds on normal validation images: a run with
    none (data.val_fraction=0, or too few training images) would train and leave a checkpoint nothing can
    score with, so it is refused before training."""
    if limit_val_batches == 0:
        raise InputError(
            "trainer.limit_val_batches=0 skips the validation that fits the score's normalisation and thresholds, "
            "which the test and predict use: give a positive trainer.limit_val_batches (or leave it out)"
        )
    sizes = datamodule.split_sizes()
    if sizes["n_val"] == 0 or sizes["n_train"] == 0:
        total = sizes["n_val"] + sizes["n_train"]
        raise InputError(
            f"data.val_fraction={datamodule.val_fraction} of {total} normal training image(s) leaves "
            f"{sizes['n_val']} to validate and {sizes['n_train']} to train on; both need at least one (the "
            f"validation images fit the score's normalisation and thresholds): give more training images, or a "
            f"data.val_fraction such as 0.05 that holds out at least one"
        )


def fit(trainer: L.Trainer, model: AnomalyDetector, datamodule, ckpt_path: str | None) -> dict[str, float]:
    """Train (or fit), and return the training throughput. The normalisation and thresholds the test uses are
    fitted at validation: when the last validation ran on an older epoch's weights (trainer.check_val_every_n_epoch
    > 1), it runs once more, on the final weights."""
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    speed = throughput(trainer)  # before a validation: it resets the logged metrics
    # (protocol=paper has loaded its selected epoch's weights by now, and tests with test-set min-max)
    if model.fitted_at_step != trainer.global_step and model.protocol != "paper":
        log.info("validating the final weights: the normalisation and thresholds are fitted on them")
        trainer.validate(model, datamodule=datamodule, verbose=False)
        saved = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if saved and trainer.is_global_zero:  # last.ckpt links to it: predict and export read these fits
            checkpoint = torch.load(saved, weights_only=True)  # the last epoch's, all else as Lightning saved it
            checkpoint["state_dict"] = model.state_dict()
            torch.save(checkpoint, saved)
    return speed


def resume_from(cfg: DictConfig) -> tuple[str | None, int]:
    """(`ckpt_path` if given, else this run folder's own last checkpoint, the epochs it holds): a killed
    run rerun with the same command and run folder (always so for a multirun job) carries on where it
    stopped. (None, 0) for a run that starts afresh."""
    if cfg.ckpt_path is not None:
        if not Path(cfg.ckpt_path).is_file():
            raise InputError(f"no checkpoint at ckpt_path={cfg.ckpt_path}; give a run's checkpoints/last.ckpt")
        return str(cfg.ckpt_path), check_resumable(Path(cfg.ckpt_path), cfg)
    last = Path(cfg.output_dir, "checkpoints", "last.ckpt")
    if not last.is_file():
        return None, 0
    log.info("resuming from %s", last)
    return str(last), check_resumable(last, cfg)


def list_or_value(value):
    # a checkpoint may hold a tuple where the config has a list
    return list(value) if isinstance(value, (list, tuple)) else value


def check_resumable(ckpt_path: Path, cfg: DictConfig) -> int:
    """The epochs a checkpoint holds, if this run can go on from it (the same model, image size, channels
    and networks); else what differs, named."""
    checkpoint = read_checkpoint(ckpt_path)
    info, saved = checkpoint.get("fned_lightning") or {}, checkpoint.get("hyper_parameters") or {}
    model = OmegaConf.to_container(cfg.model, resolve=True)
    differences = []
    saved_target = MOVED.get(info.get("model_target"), info.get("model_target", cfg.model._target_))
    if saved_target != cfg.model._target_:
        saved = {}  # another model: its networks' settings say nothing more
        differences.append(
            f"the model ({saved_target.rsplit('.', 1)[-1]} there, {cfg.model._target_.rsplit('.', 1)[-1]} here)"
        )
    for key in ("image_size", "channels"):
        if key in info and info[key] != cfg.data[key]:
            differences.append(f"data.{key} ({info[key]} there, {cfg.data[key]} here)")
    # how it is tested may change; what it learnt may not (intensity matching also shapes what it trains on)
    evaluation = EVALUATION_OPTIONS - {"intensity"}
    for key, config in model.items():
        if isinstance(config, dict) and "_target_" in config and isinstance(saved.get(key), dict):
            # each network's settings (widths, latent sizes, levels)
            for inner in sorted(set(config) | set(saved[key])):
                if inner not in ("image_size", "channels") and config.get(inner) != saved[key].get(inner):
                    differences.append(f"model.{key}.{inner} ({saved[key].get(inner)} there, {config.get(inner)} here)")
        elif (
            not key.startswith("_")
            and key not in evaluation
            and key in saved
            and not isinstance(config, dict)
            and list_or_value(config) != list_or_value(saved[key])
        ):  # its own settings (backbone, rates, ...)
            differences.append(f"model.{key} ({saved[key]} there, {config} here)")
    if differences:
        raise InputError(
            f"cannot resume from {ckpt_path}: it was trained with other settings: {'; '.join(differences)}. "
            f"Resume with the settings it was trained with, or start a new run folder (hydra.run.dir=...)"
        )
    return checkpoint["epoch"] + 1  # saved at the end of that (0-based) epoch


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
        # a ragged last batch, where kept, is not whole
        "train_images_per_epoch": min(
            int(trainer.num_training_batches) * datamodule.batch_size * trainer.world_size, len(datamodule.train_set)
        ),
        "image_size": datamodule.image_size,
        **datamodule.split_sizes(),
        # out of the test set
        **({"val_real_names": datamodule.val_names} if getattr(datamodule, "val_defects", 0) else {}),
        **({"paper_test_batches": datamodule.paper_test_batches} if cfg.protocol != "honest" else {}),
    }


def throughput(trainer: L.Trainer) -> dict[str, float]:
    """The Throughput callback's figures of the loop that just ran (fit or test)."""
    return {k.removeprefix("perf/"): v.item() for k, v in trainer.callback_metrics.items() if k.startswith("perf/")}


def write_results(
    output_dir: Path, cfg: DictConfig, metrics: dict, model, datamodule, precision: str | None = None
) -> None:
    """metrics.json, config.yaml (resolved; `trainer.precision` as `precision`, what the trainer ran: Lightning
    runs 16-mixed as bf16-mixed on CPU) and scores.csv."""
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics |= {
        "threshold": model.threshold,
        "false_positive_rate": model.false_positive_rate,
        "score_min": model.score_min.item(),
        "score_max": model.score_max.item(),
        "score_threshold": model.score_threshold.item(),
    }
    undefined = {k: None for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)}  # strict JSON: null
    (output_dir / "metrics.json").write_text(json.dumps(metrics | undefined, indent=2) + "\n")
    config = OmegaConf.to_container(cfg, resolve=True)
    requested = config.get("trainer", {}).get("precision")
    if precision is not None and str(precision) != str(requested):
        log.info(
            "trainer.precision=%s ran as %s (Lightning's choice): config.yaml records the latter", requested, precision
        )
        config["trainer"]["precision"] = str(precision)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    results = model.test_results
    scores, labels = results["scores"], results["labels"]
    test_minmax = min_max_normalise(scores, scores.min().item(), scores.max().item())
    fitted = metrics["normalisation"] == "val_minmax"
    normalised = model.normalise(scores) if fitted else None
    paper_decision = (normalised if fitted else test_minmax) > model.threshold
    calibrated_decision = scores > model.score_threshold.item() if fitted else None
    with open(output_dir / "scores.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "name",
                "label",
                "score",
                "score_val_minmax",
                "score_test_minmax",
                "abnormal_at_threshold",
                "abnormal_calibrated",
            ]
        )
        for i, index in enumerate(results["index"].tolist()):
            writer.writerow(
                [
                    datamodule.test_names[index],
                    int(labels[i]),
                    f"{scores[i].item():.6g}",
                    f"{normalised[i].item():.6g}" if fitted else "",
                    f"{test_minmax[i].item():.6g}",
                    int(paper_decision[i]),
                    int(calibrated_decision[i]) if fitted else "",
                ]
            )
    shown = {
        k: metrics[k] for k in ("protocol", "model", "anomaly_class", "auroc", "auprc", "f1", "precision", "recall")
    }
    log.info("results in %s: %s", output_dir, json.dumps(shown))


def write_figures(output_dir: Path, metrics: dict, model, datamodule, per_class: int = 8) -> list[Path]:
    """Score histogram, ROC/PR curves, reconstructions and anomaly maps (beside the ground truth, where
    the data has it) of test images, as PNG in figures/."""
    results, folder = model.test_results, output_dir / "figures"
    title = f"{metrics['model']} {metrics['anomaly_class'] or metrics['data']} (protocol={metrics['protocol']})"
    # what the abnormal test images are: CIFAR-10's held-out class, else defects (folders', painted ones)
    abnormal = f"anomaly: {metrics['anomaly_class']}" if metrics.get("anomaly_class") else "defect"
    fitted = metrics["normalisation"] == "val_minmax"  # the honest evaluation's: as it decided on the scores
    histogram = score_histogram(
        results["scores"],
        results["labels"],
        folder / "score_histogram.png",
        title,
        model.threshold,
        fitted_range=(model.score_min.item(), model.score_max.item()) if fitted else None,
        abnormal=abnormal,
    )
    paths = [histogram, roc_and_pr_curves(results["scores"], results["labels"], folder / "roc_pr.png", title)]
    test = datamodule.test_set
    picks = [(test.labels == label).nonzero().flatten() for label in (0, 1)]
    count = min(per_class, *(len(p) for p in picks if len(p)))
    model.train(model.protocol == "paper")  # as it was tested
    chosen = torch.cat([p[:count] for p in picks if len(p)])
    with torch.inference_mode():
        x = to_model_range(test.images[chosen].to(model.device))
        detection = model(x)
    x, maps = x.cpu(), detection.maps.cpu()
    if detection.x_fake is not None:  # a model that reconstructs
        x_fake = detection.x_fake.cpu()
        names = [name for name, pick in zip(("normal", abnormal), picks, strict=True) if len(pick)]
        groups = {
            name: (x[i * count : (i + 1) * count], x_fake[i * count : (i + 1) * count]) for i, name in enumerate(names)
        }
        paths.append(reconstruction_grid(groups, folder / "reconstructions.png", title))
    masks = test.masks[chosen].cpu() if test.masks is not None else None
    titles = [
        column_title(datamodule.test_names[i], int(label))
        for i, label in zip(chosen.tolist(), test.labels[chosen].tolist(), strict=True)
    ]
    paths.append(
        anomaly_map_grid(x, masks, maps, titles, model.pixel_threshold.item(), folder / "anomaly_maps.png", title)
    )
    return [p for p in paths if p is not None]


def column_title(name: str, label: int) -> str:
    """A test image's class or defect, from its name (test/cat/0001.jpg, test/scratch/003.png,
    synthetic/defect/0007); its label where the name holds neither."""
    folder = Path(name).parent.name
    return folder if folder and folder not in ("train", "test") else ("anomaly" if label else "normal")


HYDRA_OWN = {".hydra", "train.log"}  # what Hydra writes into a run folder before the run starts


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    output_dir = Path(cfg.output_dir)
    made_for_this_run = {p.name for p in output_dir.iterdir()} <= HYDRA_OWN
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    (output_dir / "failed.txt").unlink(missing_ok=True)  # an earlier attempt's: this one decides now
    try:
        train(cfg)
    except Exception as error:
        user_error = input_error_in(error)
        if user_error is None or multirun:
            (output_dir / "failed.txt").write_text(f"{type(error).__name__}: {error}\n")  # for the report
        if user_error is None:
            raise
        if multirun:
            raise user_error from None  # marks this job failed; the sweep's other jobs still run
        if made_for_this_run:  # a mistyped command: leave no run folder for the report to count
            remove_run_folder(output_dir)
        fail(str(user_error))


def remove_run_folder(output_dir: Path) -> None:
    """The folder Hydra made for a run that never started, and its parents that are left empty."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):  # train.log: closed and let go before its folder goes
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(
                output_dir.resolve()
            ):
                handler.close()
                logger.removeHandler(handler)
    shutil.rmtree(output_dir, ignore_errors=True)
    for parent in output_dir.resolve().parents:
        if parent == Path.cwd() or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()


if __name__ == "__main__":
    run_hydra_cli(main, "train")
