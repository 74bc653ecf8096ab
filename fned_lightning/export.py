"""`python -m fned_lightning.export ckpt_path=... format=onnx|pt2`

Writes a model that maps a batch of images, float N x C x S x S in [0, 1], to
(score: N, anomaly_map: N x S x S): the score normalised with the validation-fitted range, the map
the model's own (a reconstruction model's smoothed residual |x - x_fake|, a feature model's smoothed
patch distances, a segmentation head's defect probability), as training and `predict` compute it. A JSON file
beside it gives the image size, channels, both decision thresholds on that score and the pixel threshold on the map.
"""

import json
import logging
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from fned_lightning.errors import InputError, exit_on_input_error, run_hydra_cli
from fned_lightning.predict import decision_rule, load_detector

log = logging.getLogger(__name__)
FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}  # pt2: torch.export's program (TorchScript is deprecated)


class ScoreAndMap(nn.Module):
    """images in [0, 1] -> (normalised anomaly score, anomaly map)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.register_buffer("low", model.score_min.clone())
        self.register_buffer("span", (model.score_max - model.score_min).clamp_min(1e-12))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images * 2 - 1
        detection = self.model(x)
        return (detection.scores - self.low) / self.span, detection.maps


def write(wrapper: ScoreAndMap, example: torch.Tensor, output: Path, format: str, opset: int) -> None:
    """`wrapper` as an ONNX graph or a torch.export program, for any batch size."""
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter (dynamo=False), which tests/test_predict.py checks against onnxruntime
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        # PatchCore's gather of each image's worst patch: its indices are never negative, the case this warns of
        warnings.filterwarnings("ignore", message=".*advanced indexing in opset")
        # the maps' reflect padding exports as reversed slices, which ONNX leaves unfolded: harmless
        warnings.filterwarnings("ignore", message=".*Only steps=1 can be constant folded")
        # shapes read as numbers (the maps' kernel radius, GroupNorm's batch check): right, as an export has one
        # image size, and the batch axis is declared dynamic above
        warnings.filterwarnings(
            "ignore", category=torch.jit.TracerWarning, message=".*Converting a tensor to a Python (integer|boolean)"
        )
        if format == "onnx":
            torch.onnx.export(
                wrapper,
                (example,),
                str(output),
                input_names=["images"],
                output_names=["score", "anomaly_map"],
                dynamic_axes={"images": {0: "batch"}, "score": {0: "batch"}, "anomaly_map": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        else:
            batch = torch.export.Dim("batch", min=1)
            torch.export.save(torch.export.export(wrapper, (example,), dynamic_shapes=({0: batch},)), str(output))


def export(cfg: DictConfig) -> Path:
    if cfg.format not in FORMATS:
        raise InputError(f"unknown format={cfg.format}; choose one of: {', '.join(FORMATS)}")
    model, info = load_detector(cfg.ckpt_path)
    low, span = model.score_min.item(), max(model.score_max.item() - model.score_min.item(), 1e-12)  # as ScoreAndMap
    decision_rule(model, "calibrated")  # refuses a checkpoint without a fitted normalisation
    # on the normalised score: the paper's is defined there (exactly 0.2, not 0.2 through a round trip)
    thresholds = {"calibrated": (model.score_threshold.item() - low) / span, "paper": model.threshold}
    wrapper = ScoreAndMap(model).eval()
    example = torch.rand(2, info["channels"], info["image_size"], info["image_size"])
    ckpt = Path(cfg.ckpt_path).expanduser()
    output = Path(cfg.output).expanduser() if cfg.output else ckpt.with_name(ckpt.stem + FORMATS[cfg.format])
    existed = output.exists()
    try:  # writable? torch's exporters would fail deep inside, with long traces
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "ab"):
            pass
    except OSError as error:
        blocked = next((parent for parent in output.parents if parent.is_file()), None)
        why = f"{blocked} is a file" if blocked else error.strerror
        raise InputError(f"cannot write to output={output} ({why}); choose a folder you can write to") from None
    if not existed:
        output.unlink()
    write(wrapper, example, output, cfg.format, cfg.opset)
    sidecar = {
        "input": f"float images in [0, 1], N x {info['channels']} x {info['image_size']} x {info['image_size']}",
        "outputs": {
            "score": "anomaly score, min-max normalised with the normal validation range",
            "anomaly_map": model.map_description(),
        },
        "image_size": info["image_size"],
        "channels": info["channels"],
        "model": info["model_target"].rsplit(".", 1)[-1],
        "thresholds": thresholds,
        # on anomaly_map: exceeded by false_positive_rate of normal pixels
        "pixel_threshold": model.pixel_threshold.item(),
        "false_positive_rate": model.false_positive_rate,
    }
    output.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info("wrote %s (and %s)", output, output.with_suffix(".json").name)
    return output


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@exit_on_input_error
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    run_hydra_cli(main, "export")
