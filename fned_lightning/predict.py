"""`python -m fned_lightning.predict ckpt_path=... input=<image, folder or glob> output=<dir>`

Scores new images one at a time with a trained checkpoint: no test set to min-max over. The
normalisation and thresholds come from the checkpoint (fitted on normal validation images), so
an image gets the same score and decision alone or in any batch. Writes predictions.csv (path,
score, normalised score, decision), predictions.json (the rule used, counts, speed), and per
image, at the input's own resolution: overlays/*.png (the anomaly map in colour over the image,
with its colour scale and the pixel threshold marked, under a caption naming the file, its score and
the decision) and masks/*.png (white where the map exceeds
the pixel threshold fitted on normal validation images). Unreadable files are skipped with a
warning, and listed in predictions.csv with the reason.
"""

import csv
import glob
import json
import logging
import math
import os
import textwrap
import time
from dataclasses import dataclass, field
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
from fned_lightning.models.detector import AnomalyDetector
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
    image: torch.Tensor, anomaly_map: torch.Tensor, scale: float, pixel_threshold: float, path: Path, caption: str = ""
) -> None:
    """The input (uint8 CxHxW, in grey) with its anomaly map (HxW, the same size) in the jet colours over
    it, pixel for pixel, and a colour scale beside it on which the pixel threshold is marked; above them a
    strip with `caption` (its lines, wrapped to fit: the file, its score and the decision), also kept as the
    PNG's Title.
    An input under OVERLAY_SIDE pixels a side is drawn an integer number of times larger, so a person can
    read it."""
    height, width = anomaly_map.shape
    zoom = max(1, math.ceil(OVERLAY_SIDE / min(height, width)))
    shown_height, shown_width = height * zoom, width * zoom
    grey = image.float().mean(0, keepdim=True).permute(1, 2, 0).div(255).numpy()
    heat = matplotlib.colormaps["jet"]((anomaly_map / scale).clamp(0, 1).numpy())[..., :3]
    bar, dpi = max(shown_width // 4, 120), 100  # the scale's strip, in pixels: room for its labels
    font = max(7, min(11, shown_height // 30))
    full_width = shown_width + bar
    fitting = max(10, int(full_width / (0.62 * font * dpi / 72)))  # characters a caption line holds at this font
    lines = [part for line in caption.splitlines() for part in textwrap.wrap(line, fitting) or [""]]
    strip = math.ceil(len(lines) * 1.35 * font * dpi / 72) + 8 if lines else 0  # pixels of caption above the image
    full_height = shown_height + strip
    fig = plt.figure(figsize=(full_width / dpi, full_height / dpi), dpi=dpi)
    image_axes = fig.add_axes((0, 0, shown_width / full_width, shown_height / full_height))
    image_axes.imshow(0.55 * grey + 0.45 * heat, interpolation="nearest", aspect="auto")
    image_axes.set_axis_off()
    scale_axes = fig.add_axes(
        (
            (shown_width + 0.1 * bar) / full_width,
            0.05 * shown_height / full_height,
            0.15 * bar / full_width,
            0.9 * shown_height / full_height,
        )
    )
    colours = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, scale), cmap="jet")
    colour_bar = fig.colorbar(colours, cax=scale_axes)
    colour_bar.ax.axhline(min(pixel_threshold, scale), color="white", linewidth=2)
    colour_bar.ax.tick_params(labelsize=font)
    colour_bar.set_label("anomaly map (line: threshold)", fontsize=font)
    if lines:
        fig.text(4 / full_width, 1 - 4 / full_height, "\n".join(lines), fontsize=font, va="top", linespacing=1.2)
    fig.savefig(path, dpi=dpi, metadata={"Title": caption} if caption else None)
    plt.close(fig)


def overlay_caption(name: str, score: float, normalised: float, abnormal: bool, rule: str) -> str:
    """An overlay's caption: the input file, the decision with its score, and the rule that decided."""
    return f"{name}\n{decision_of(abnormal)}: score {score:.4g} (normalised {normalised:.3g})\nrule: {rule}"


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


@dataclass
class Run:
    """What a predict run scores with and writes to: read once from the config and the checkpoint."""

    model: AnomalyDetector
    info: dict
    device: torch.device
    threshold: float  # the raw score above which an image is abnormal
    rule: str  # that rule, in words
    output: Path
    overlays: bool
    pixel_threshold: float
    map_scale: float
    names: dict[Path, str]  # each input's file name under overlays/ and masks/
    labels: dict[Path, str]  # each input's name on its overlay: its path below the inputs' common folder


@dataclass
class Tally:
    """What scoring found so far: the table's rows, every score, and the counts and time behind the summary."""

    rows: list[list[str]] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    skipped: int = 0
    scored: int = 0
    seconds: float = 0.0  # in the networks alone


def predict(cfg: DictConfig) -> dict:
    """Score the inputs batch by batch, writing each image's overlay and mask as it goes, then the table
    and the summary (returned)."""
    paths, run = open_run(cfg)
    tally, started = Tally(), time.perf_counter()
    batches = [paths[i : i + cfg.batch_size] for i in range(0, len(paths), cfg.batch_size)]
    for batch in track(batches, description=f"scoring {len(paths)} images"):
        images, originals, readable = read_batch(batch, run.info["image_size"], run.info["channels"], tally)
        if images:
            write_batch(run, tally, readable, originals, *score_batch(run, images, tally))
    return write_table_and_summary(cfg, run, paths, tally, started)


def open_run(cfg: DictConfig) -> tuple[list[Path], Run]:
    """The input images, and the model from the checkpoint, its decision rule and the output folder, checked."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    model, info = load_detector(cfg.ckpt_path, device)
    model = to_channels_last(model)  # NHWC: faster on CPU and GPU alike (make bench)
    size = info["image_size"]
    if cfg.image_size is not None and cfg.image_size != size:
        raise InputError(
            f"the checkpoint was trained on {size}x{size} images, not image_size={cfg.image_size}; "
            f"drop image_size (inputs are resized to {size}) or use a checkpoint trained at that size"
        )
    threshold, rule = decision_rule(model, cfg.decision)
    paths = find_images(cfg.input)
    output = Path(cfg.output).expanduser()
    prepare_output(output, cfg.overlays)
    pixel_threshold = model.pixel_threshold.item()
    map_scale = cfg.map_scale or 2 * pixel_threshold  # the threshold mid-scale, unless given
    names = output_names(paths)
    labels = {path: str(below) for path, below in below_common_folder(paths).items()}
    run = Run(model, info, device, threshold, rule, output, cfg.overlays, pixel_threshold, map_scale, names, labels)
    return paths, run


def read_batch(
    batch: list[Path], size: int, channels: int, tally: Tally
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[Path]]:
    """(each readable image at the model's size, as read, its path); an unreadable one is warned of and
    its row, with the reason, goes into the table."""
    images, originals, readable = [], [], []
    for path in batch:
        try:
            image = read_image(path, channels)
        except InputError as error:
            log.warning("%s: skipped", error)
            tally.rows.append([str(path), "", "", f"unreadable: {error}"])
            tally.skipped += 1
            continue
        images.append(image if image.shape[-2:] == (size, size) else resize(image, [size, size], antialias=True))
        originals.append(image)
        readable.append(path)
    return images, originals, readable


def score_batch(run: Run, images: list[torch.Tensor], tally: Tally) -> tuple[torch.Tensor, ...]:
    """(raw scores, normalised scores, anomaly maps) of a batch, on the CPU; the networks' time counted."""
    start = time.perf_counter()
    x = to_model_range(torch.stack(images).to(run.device))
    with torch.inference_mode():
        detection = run.model(x)
    scores, maps = detection.scores.float().cpu(), detection.maps.float().cpu()
    tally.scores.append(scores)
    tally.seconds += time.perf_counter() - start
    tally.scored += len(images)
    return scores, run.model.normalise(scores).cpu(), maps


def write_batch(
    run: Run,
    tally: Tally,
    readable: list[Path],
    originals: list[torch.Tensor],
    scores: torch.Tensor,
    normalised: torch.Tensor,
    maps: torch.Tensor,
) -> None:
    """Each scored image's row in the table and, where asked, its overlay and mask."""
    for i, path in enumerate(readable):
        score, level = scores[i].item(), normalised[i].item()
        abnormal = score > run.threshold
        tally.rows.append([str(path), f"{score:.6g}", f"{level:.6g}", decision_of(abnormal)])
        if run.overlays:
            caption = overlay_caption(run.labels[path], score, level, abnormal, run.rule)
            write_overlay_and_mask(run, originals[i], maps[i], path, caption)


def decision_of(abnormal: bool) -> str:
    return "abnormal" if abnormal else "normal"


def write_overlay_and_mask(run: Run, image: torch.Tensor, anomaly_map: torch.Tensor, path: Path, caption: str) -> None:
    """overlays/ and masks/ of one image, at its own resolution: its map resized to it."""
    own_size = image.shape[-2:]
    resized = F.interpolate(anomaly_map[None, None], size=own_size, mode="bilinear", align_corners=False)[0, 0]
    write_overlay(
        image, resized, run.map_scale, run.pixel_threshold, run.output / "overlays" / run.names[path], caption
    )
    mask = (resized > run.pixel_threshold).to(torch.uint8).mul(255)[None]
    write_png(mask, str(run.output / "masks" / run.names[path]))


def write_table_and_summary(cfg: DictConfig, run: Run, paths: list[Path], tally: Tally, started: float) -> dict:
    """predictions.csv and predictions.json (returned), with a warning where the images as a whole score
    outside what normal validation images scored."""
    with open(run.output / "predictions.csv", "w", newline="") as file:
        csv.writer(file).writerows([["path", "score", "normalised_score", "decision"], *tally.rows])
    abnormal = sum(row[3] == "abnormal" for row in tally.rows)
    below, above = outside_validation_range(run.model, tally.scores)
    summary = {
        "ckpt_path": str(cfg.ckpt_path),
        "model": run.info["model_target"].rsplit(".", 1)[-1],
        "image_size": run.info["image_size"],
        "decision": cfg.decision,
        "rule": run.rule,
        "n_images": len(paths),
        "n_scored": tally.scored,
        "n_abnormal": abnormal,
        "n_skipped": tally.skipped,
        "device": str(run.device),
        "pixel_threshold": run.pixel_threshold,
        "map_scale": run.map_scale,
        "share_below_validation_range": below,
        "share_above_validation_range": above,
        "images_per_s": tally.scored / (time.perf_counter() - started),  # reading, scoring, overlays and masks
        "model_images_per_s": tally.scored / tally.seconds if tally.seconds else math.nan,  # the networks alone
    }
    (run.output / "predictions.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "%d images scored (%d abnormal, %d skipped) at %.1f images/s; decision: %s; results in %s",
        tally.scored,
        abnormal,
        tally.skipped,
        summary["images_per_s"],
        run.rule,
        run.output,
    )
    return summary


def outside_validation_range(model, batches: list[torch.Tensor]) -> tuple[float, float]:
    """The shares of the scores below and above every normal validation image's; a warning where they add
    up to most: not the conditions the model was trained for."""
    scores = torch.cat(batches) if batches else torch.empty(0)
    below = (scores < model.score_min.item()).float().mean().item() if len(scores) else 0.0
    above = (scores > model.score_max.item()).float().mean().item() if len(scores) else 0.0
    if below + above > 0.5:
        log.warning(
            "%.0f%% of these images score below and %.0f%% above every normal validation image: they differ "
            "from the training images as a whole (lighting, camera, a different part?), not only where a defect "
            "is. Decisions on them cannot be trusted; see docs/lighting_and_shift.md (data.intensity="
            "per_image, or train on normal images taken under these conditions).",
            100 * below,
            100 * above,
        )
    return below, above


def output_names(paths: list[Path]) -> dict[Path, str]:
    """<path below the inputs' common folder, / as __>.png: one file per input image, so images of
    the same name in different folders do not overwrite each other."""
    return {p: "__".join(below.with_suffix("").parts) + ".png" for p, below in below_common_folder(paths).items()}


def below_common_folder(paths: list[Path]) -> dict[Path, Path]:
    """Each path below the inputs' common folder (its file name alone, for a single input)."""
    root = Path(os.path.commonpath([p.parent.resolve() for p in paths]))
    return {p: p.resolve().relative_to(root) for p in paths}


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_input_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    run_hydra_cli(main, "predict")
