"""`python -m fned_lightning.predict ckpt_path=... input=<image, folder or glob> output=<dir>`

Scores new images one at a time with a trained checkpoint: no test set to min-max over. The
normalisation and thresholds come from the checkpoint (fitted on normal validation images), so
an image gets the same score and decision alone or in any batch. Writes predictions.csv (path,
score, normalised score, decision), predictions.json (the rule used, counts, speed), and per
image, at the input's own resolution: overlays/*.png (the anomaly map in colour over the image,
with its colour scale and the pixel threshold marked) and masks/*.png (white where the map exceeds
the pixel threshold fitted on normal validation images). Unreadable files are skipped with a
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

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import DictConfig
from rich.progress import track
from torchvision.io import write_png
from torchvision.transforms.v2.functional import resize

from fned_lightning.checkpoints import MOVED, read_checkpoint
from fned_lightning.data.base import to_model_range
from fned_lightning.data.images import IMAGE_SUFFIXES, READABLE, read_image, suffixes_of
from fned_lightning.errors import InputError, exit_on_input_error, run_hydra_cli
from fned_lightning.networks.layers import to_channels_last

log = logging.getLogger(__name__)
DECISIONS = ("calibrated", "paper")


def load_detector(ckpt_path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, {"model_target", "image_size", "channels"}) from a train run's checkpoint."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}; pass the checkpoints/last.ckpt that a train run wrote")
    model, info = rebuild_detector(read_checkpoint(path), path)
    return model.to(device).eval(), info


def rebuild_detector(checkpoint: dict, path: Path):
    """(model, info) from a checkpoint already read (`read_checkpoint`); path names it in the messages."""
    info = checkpoint.get("fned_lightning")
    if info is None:
        raise InputError(
            f"{path} is not a fned_lightning checkpoint; pass the checkpoints/last.ckpt that a train run wrote"
        )
    info["model_target"] = MOVED.get(info["model_target"], info["model_target"])
    try:
        model = get_class(info["model_target"]).rebuilt(checkpoint["hyper_parameters"], checkpoint["state_dict"])
    except (ImportError, TypeError, RuntimeError) as error:  # a class moved, an argument or a layer changed
        raise InputError(
            f"{path} holds a {info['model_target']} that this version of fned_lightning cannot rebuild "
            f"(the model changed since; retrain it): {str(error).splitlines()[0]}"
        ) from error
    return model, info


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
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning(
            "skipped %d files that are not images (%s; readable: %s)", len(others), suffixes_of(others), READABLE
        )
    if not images and files:
        raise InputError(f"no images at input={spec}: found only {suffixes_of(files)} files; readable: {READABLE}")
    if not images:
        raise InputError(f"no images found at input={spec}: give an image file, a folder of images or a glob pattern")
    return images


def decision_rule(model, decision: str) -> tuple[float, str]:
    """The raw-score threshold of the chosen rule, and a description for the outputs."""
    if decision not in DECISIONS:
        raise InputError(f"unknown decision={decision}; choose one of: {', '.join(DECISIONS)}")
    if torch.isnan(model.score_min) or torch.isnan(model.score_threshold):
        raise InputError(
            "this checkpoint has no fitted normalisation (it was trained with data.val_fraction=0); "
            "retrain with a validation split, e.g. data.val_fraction=0.1"
        )
    low, high = model.score_min.item(), model.score_max.item()
    if decision == "calibrated":
        return (
            model.score_threshold.item(),
            f"raw score > {model.score_threshold.item():.6g} "
            f"(exceeded by {model.false_positive_rate:.1%} of normal validation images)",
        )
    raw = low + model.threshold * (high - low)
    return raw, f"normalised score > {model.threshold} (raw score > {raw:.6g})"


OVERLAY_SIDE = 320  # pixels: a small input is drawn larger (each of its pixels a block), so the scale's labels fit


def write_overlay(
    image: torch.Tensor, anomaly_map: torch.Tensor, scale: float, pixel_threshold: float, path: Path
) -> None:
    """The input (uint8 CxHxW, in grey) with its anomaly map (HxW, the same size) in the jet colours over
    it, pixel for pixel, and a colour scale beside it on which the pixel threshold is marked. An input
    under OVERLAY_SIDE pixels a side is drawn an integer number of times larger, so a person can read it."""
    height, width = anomaly_map.shape
    zoom = max(1, math.ceil(OVERLAY_SIDE / min(height, width)))
    shown_height, shown_width = height * zoom, width * zoom
    grey = image.float().mean(0, keepdim=True).permute(1, 2, 0).div(255).numpy()
    heat = matplotlib.colormaps["jet"]((anomaly_map / scale).clamp(0, 1).numpy())[..., :3]
    bar, dpi = max(shown_width // 4, 120), 100  # the scale's strip, in pixels: room for its labels
    font = max(7, min(11, shown_height // 30))
    fig = plt.figure(figsize=((shown_width + bar) / dpi, shown_height / dpi), dpi=dpi)
    image_axes = fig.add_axes((0, 0, shown_width / (shown_width + bar), 1))
    image_axes.imshow(0.55 * grey + 0.45 * heat, interpolation="nearest", aspect="auto")
    image_axes.set_axis_off()
    scale_axes = fig.add_axes(
        ((shown_width + 0.1 * bar) / (shown_width + bar), 0.05, 0.15 * bar / (shown_width + bar), 0.9)
    )
    colours = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, scale), cmap="jet")
    colour_bar = fig.colorbar(colours, cax=scale_axes)
    colour_bar.ax.axhline(min(pixel_threshold, scale), color="white", linewidth=2)
    colour_bar.ax.tick_params(labelsize=font)
    colour_bar.set_label("anomaly map (line: threshold)", fontsize=font)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def prepare_output(output: Path, overlays: bool) -> None:
    try:
        for folder in ("overlays", "masks") if overlays else ():
            (output / folder).mkdir(parents=True, exist_ok=True)
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise InputError(
            f"cannot write to output={output} ({error.strerror}); choose a folder you can write to"
        ) from error


def predict(cfg: DictConfig) -> dict:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    model, info = load_detector(cfg.ckpt_path, device)
    model = to_channels_last(model)  # NHWC: faster on CPU and GPU alike (make bench)
    size, channels = info["image_size"], info["channels"]
    if cfg.image_size is not None and cfg.image_size != size:
        raise InputError(
            f"the checkpoint was trained on {size}x{size} images, not image_size={cfg.image_size}; "
            f"drop image_size (inputs are resized to {size}) or use a checkpoint trained at that size"
        )
    threshold, rule = decision_rule(model, cfg.decision)
    paths = find_images(cfg.input)
    output = Path(cfg.output).expanduser()
    prepare_output(output, cfg.overlays)
    names = output_names(paths)
    pixel_threshold = model.pixel_threshold.item()
    map_scale = cfg.map_scale or 2 * pixel_threshold  # the threshold mid-scale, unless given

    rows, all_scores, skipped, scored, seconds, started = [], [], 0, 0, 0.0, time.perf_counter()
    batches = [paths[i : i + cfg.batch_size] for i in range(0, len(paths), cfg.batch_size)]
    for batch in track(batches, description=f"scoring {len(paths)} images"):
        images, originals, readable = [], [], []
        for path in batch:
            try:
                image = read_image(path, channels)
            except InputError as error:
                log.warning("%s: skipped", error)
                rows.append([str(path), "", "", f"unreadable: {error}"])
                skipped += 1
                continue
            images.append(image if image.shape[-2:] == (size, size) else resize(image, [size, size], antialias=True))
            originals.append(image)
            readable.append(path)
        if not images:
            continue
        start = time.perf_counter()
        x = to_model_range(torch.stack(images).to(device))
        with torch.inference_mode():
            detection = model(x)
        scores, maps = detection.scores.float().cpu(), detection.maps.float().cpu()
        all_scores.append(scores)
        seconds += time.perf_counter() - start
        scored += len(images)
        normalised = model.normalise(scores).cpu()
        for i, path in enumerate(readable):
            abnormal = scores[i].item() > threshold
            rows.append(
                [
                    str(path),
                    f"{scores[i].item():.6g}",
                    f"{normalised[i].item():.6g}",
                    "abnormal" if abnormal else "normal",
                ]
            )
            if cfg.overlays:  # at the input's own resolution: the map resized to it
                own_size = originals[i].shape[-2:]
                anomaly_map = F.interpolate(maps[i][None, None], size=own_size, mode="bilinear", align_corners=False)[
                    0, 0
                ]
                write_overlay(originals[i], anomaly_map, map_scale, pixel_threshold, output / "overlays" / names[path])
                mask = (anomaly_map > pixel_threshold).to(torch.uint8).mul(255)[None]
                write_png(mask, str(output / "masks" / names[path]))

    with open(output / "predictions.csv", "w", newline="") as file:
        csv.writer(file).writerows([["path", "score", "normalised_score", "decision"], *rows])
    abnormal = sum(row[3] == "abnormal" for row in rows)
    scores_seen = torch.cat(all_scores) if all_scores else torch.empty(0)
    below = (scores_seen < model.score_min.item()).float().mean().item() if len(scores_seen) else 0.0
    above = (scores_seen > model.score_max.item()).float().mean().item() if len(scores_seen) else 0.0
    if (
        below + above > 0.5
    ):  # most of the folder outside what normal parts scored: not the conditions it was trained for
        log.warning(
            "%.0f%% of these images score below and %.0f%% above every normal validation image: they differ "
            "from the training images as a whole (lighting, camera, a different part?), not only where a defect "
            "is. Decisions on them cannot be trusted; see docs/lighting_and_shift.md (data.intensity="
            "per_image, or train on normal images taken under these conditions).",
            100 * below,
            100 * above,
        )
    summary = {
        "ckpt_path": str(cfg.ckpt_path),
        "model": info["model_target"].rsplit(".", 1)[-1],
        "image_size": size,
        "decision": cfg.decision,
        "rule": rule,
        "n_images": len(paths),
        "n_scored": scored,
        "n_abnormal": abnormal,
        "n_skipped": skipped,
        "device": str(device),
        "pixel_threshold": pixel_threshold,
        "map_scale": map_scale,
        "share_below_validation_range": below,
        "share_above_validation_range": above,
        "images_per_s": scored / (time.perf_counter() - started),  # reading, scoring, overlays and masks
        "model_images_per_s": scored / seconds if seconds else math.nan,  # the networks alone
    }
    (output / "predictions.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "%d images scored (%d abnormal, %d skipped) at %.1f images/s; decision: %s; results in %s",
        scored,
        abnormal,
        skipped,
        summary["images_per_s"],
        rule,
        output,
    )
    return summary


def output_names(paths: list[Path]) -> dict[Path, str]:
    """<path below the inputs' common folder, / as __>.png: one file per input image, so images of
    the same name in different folders do not overwrite each other."""
    root = Path(os.path.commonpath([p.parent.resolve() for p in paths]))
    return {p: "__".join(p.resolve().relative_to(root).with_suffix("").parts) + ".png" for p in paths}


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_input_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    run_hydra_cli(main, "predict")
