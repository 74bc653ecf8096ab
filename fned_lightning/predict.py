"""`python -m fned_lightning.predict ckpt_path=... input=<image, folder or glob> output=<dir>`

Scores new images one at a time with a trained checkpoint: no test set to min-max over. The
normalisation and thresholds come from the checkpoint (fitted on normal validation images), so
an image gets the same score and decision alone or in any batch. Writes predictions.csv (path,
score, normalised score, decision), predictions.json (the rule used, counts, speed) and
heatmaps/*.png (the residual |x - x_fake| over the input). Unreadable files are skipped with a
warning, and listed in predictions.csv with the reason.
"""

import csv
import glob
import json
import logging
import math
import os
import time
from pathlib import Path

import hydra
import matplotlib
import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from rich.progress import track
from torchvision.io import write_png
from torchvision.transforms.v2.functional import resize

from fned_lightning.data import IMAGE_SUFFIXES, read_image, to_model_range
from fned_lightning.errors import InputError, exit_on_input_error
from fned_lightning.networks.layers import to_channels_last

log = logging.getLogger(__name__)
DECISIONS = ("calibrated", "paper")


def load_detector(ckpt_path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, {"model_target", "image_size", "channels"}) from a train run's checkpoint."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}; pass the checkpoints/last.ckpt that a train run wrote")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"cannot read checkpoint {path}: {error}") from error
    info = checkpoint.get("fned_lightning") if isinstance(checkpoint, dict) else None
    if info is None:
        raise InputError(f"{path} is not a fned_lightning checkpoint; pass the checkpoints/last.ckpt that a train run wrote")
    try:
        model = get_class(info["model_target"])(**checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"])
    except (ImportError, TypeError, RuntimeError) as error:  # a class moved, an argument or a layer changed
        raise InputError(f"{path} holds a {info['model_target']} that this version of fned_lightning cannot rebuild "
                         f"(the model changed since; retrain it): {str(error).splitlines()[0]}") from error
    return model.to(device).eval(), info


def find_images(spec: str) -> list[Path]:
    """Image files named by a path, a folder (recursively) or a glob pattern, sorted."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(images) < len(files):
        log.warning("skipped %d files that are not images (%s)", len(files) - len(images), ", ".join(sorted(IMAGE_SUFFIXES)))
    if not images:
        raise InputError(f"no images found at input={spec}: give an image file, a folder of images or a glob pattern")
    return images


def decision_rule(model, decision: str) -> tuple[float, str]:
    """The raw-score threshold of the chosen rule, and a description for the outputs."""
    if decision not in DECISIONS:
        raise InputError(f"unknown decision={decision}; choose one of: {', '.join(DECISIONS)}")
    if torch.isnan(model.score_min) or torch.isnan(model.score_threshold):
        raise InputError("this checkpoint has no fitted normalisation (it was trained with data.val_fraction=0); "
                         "retrain with a validation split, e.g. data.val_fraction=0.1")
    low, high = model.score_min.item(), model.score_max.item()
    if decision == "calibrated":
        return model.score_threshold.item(), f"raw score > {model.score_threshold.item():.6g} " \
            f"(exceeded by {model.false_positive_rate:.1%} of normal validation images)"
    raw = low + model.threshold * (high - low)
    return raw, f"normalised score > {model.threshold} (raw score > {raw:.6g})"


def heatmap_overlay(image: torch.Tensor, residual: torch.Tensor, scale: float) -> torch.Tensor:
    """uint8 3xHxW: the input in grey with the residual in the jet colormap over it."""
    grey = image.float().mean(0) / 255
    heat = torch.from_numpy(matplotlib.colormaps["jet"]((residual / scale).clamp(0, 1).numpy())[..., :3]).permute(2, 0, 1)
    return ((0.5 * grey + 0.5 * heat.float()) * 255).round().clamp(0, 255).to(torch.uint8)


def prepare_output(output: Path, heatmaps: bool) -> None:
    try:
        (output / "heatmaps" if heatmaps else output).mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise InputError(f"cannot write to output={output} ({error.strerror}); choose a folder you can write to") from error


def predict(cfg: DictConfig) -> dict:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    model, info = load_detector(cfg.ckpt_path, device)
    model = to_channels_last(model)  # NHWC: faster on CPU and GPU alike (make bench)
    size, channels = info["image_size"], info["channels"]
    if cfg.image_size is not None and cfg.image_size != size:
        raise InputError(f"the checkpoint was trained on {size}x{size} images, not image_size={cfg.image_size}; "
                         f"drop image_size (inputs are resized to {size}) or use a checkpoint trained at that size")
    threshold, rule = decision_rule(model, cfg.decision)
    paths = find_images(cfg.input)
    output = Path(cfg.output).expanduser()
    prepare_output(output, cfg.heatmaps)
    heatmaps = heatmap_names(output, paths)

    rows, skipped, scored, seconds, started = [], 0, 0, 0.0, time.perf_counter()
    batches = [paths[i : i + cfg.batch_size] for i in range(0, len(paths), cfg.batch_size)]
    for batch in track(batches, description=f"scoring {len(paths)} images"):
        images, readable = [], []
        for path in batch:
            try:
                image = read_image(path, channels)
            except InputError as error:
                log.warning("%s: skipped", error)
                rows.append([str(path), "", "", f"unreadable: {error}"])
                skipped += 1
                continue
            images.append(image if image.shape[-2:] == (size, size) else resize(image, [size, size], antialias=True))
            readable.append(path)
        if not images:
            continue
        start = time.perf_counter()
        uint8 = torch.stack(images)
        x = to_model_range(uint8.to(device))
        with torch.inference_mode():
            scores, x_fake = model(x)
            residual = (x - x_fake).abs().mean(1).cpu()
        scores = scores.float().cpu()
        seconds += time.perf_counter() - start
        scored += len(images)
        normalised = model.normalise(scores).cpu()
        for i, path in enumerate(readable):
            abnormal = scores[i].item() > threshold
            rows.append([str(path), f"{scores[i].item():.6g}", f"{normalised[i].item():.6g}", "abnormal" if abnormal else "normal"])
            if cfg.heatmaps:
                write_png(heatmap_overlay(uint8[i], residual[i], cfg.heatmap_scale), str(heatmaps[path]))

    with open(output / "predictions.csv", "w", newline="") as file:
        csv.writer(file).writerows([["path", "score", "normalised_score", "decision"], *rows])
    abnormal = sum(row[3] == "abnormal" for row in rows)
    summary = {
        "ckpt_path": str(cfg.ckpt_path), "model": info["model_target"].rsplit(".", 1)[-1], "image_size": size,
        "decision": cfg.decision, "rule": rule, "n_images": len(paths), "n_scored": scored, "n_abnormal": abnormal,
        "n_skipped": skipped, "device": str(device),
        "images_per_s": scored / (time.perf_counter() - started),  # reading, scoring and heatmaps
        "model_images_per_s": scored / seconds if seconds else math.nan,  # the networks alone
    }
    (output / "predictions.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("%d images scored (%d abnormal, %d skipped) at %.1f images/s; decision: %s; results in %s",
             scored, abnormal, skipped, summary["images_per_s"], rule, output)
    return summary


def heatmap_names(output: Path, paths: list[Path]) -> dict[Path, Path]:
    """heatmaps/<path below the inputs' common folder, / as __>.png: one file per input image, so
    images of the same name in different folders do not overwrite each other."""
    root = Path(os.path.commonpath([p.parent.resolve() for p in paths]))
    return {p: output / "heatmaps" / ("__".join(p.resolve().relative_to(root).with_suffix("").parts) + ".png") for p in paths}


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_input_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
