"""Control: does a generator reconstruct what it never saw as well as what it was trained on? For the three
horse runs' last-epoch weights (in `eval()` mode, as the honest test scores), the mean absolute error per
pixel (images in [-1, 1]) between an image and its reconstruction, for normal test images, horse test
images, and images of uniform noise that look like nothing in CIFAR-10. A generator that copies its input
reconstructs all three about equally well; one that has learned the normal images does far worse on noise.

    python results/cifar10_paper_budget/copy_control.py SWEEP_DIR /path/to/cifar10   # from the repository root
"""

import sys
from pathlib import Path

import torch
from hydra.utils import instantiate

sys.path.insert(0, "scripts")
from paper_batches import run_config  # noqa: E402

from fned_lightning.checkpoints import read_checkpoint  # noqa: E402
from fned_lightning.data.base import to_model_range  # noqa: E402
from fned_lightning.predict import rebuild_detector  # noqa: E402

PER_KIND = 512
sweep, cifar10_root = Path(sys.argv[1]), sys.argv[2]
here = Path(__file__).parent


def test_images(config) -> dict[str, torch.Tensor]:
    """The first PER_KIND normal and PER_KIND anomalous images of the honest test's order, and as many noise images."""
    data = instantiate(config.data)
    data.setup("test")
    kept = {0: [], 1: []}
    for images, labels, _ in data.test_dataloader():
        for label in kept:
            kept[label].append(images[labels == label])
        if all(sum(len(t) for t in kept[label]) >= PER_KIND for label in kept):
            break
    normal, anomalous = (to_model_range(torch.cat(kept[label])[:PER_KIND]) for label in (0, 1))
    noise = torch.rand(normal.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return {"normal": normal, config.anomaly_class: anomalous, "uniform noise": noise}


@torch.inference_mode()
def mean_abs_error(model, images: torch.Tensor) -> float:
    return float(torch.cat([(x - model.reconstruct(x)[0]).abs().mean(dim=(1, 2, 3)) for x in images.split(128)]).mean())


RUNS = ["0_ganomaly_horse_seed0", "2_skip_ganomaly_horse_seed0", "4_fned_horse_seed0"]
images = test_images(run_config(here / RUNS[0] / "config.yaml", cifar10_root))  # the same images for the three runs
kinds = list(images)
print(f"| run (last epoch, eval()) | {' | '.join(kinds)} | {kinds[1]} / normal |")
print("|---|" + "---|" * (len(kinds) + 1))
for run in RUNS:
    checkpoint_path = sweep / run / "checkpoints" / "last.ckpt"
    model, _ = rebuild_detector(read_checkpoint(checkpoint_path), checkpoint_path)
    model.eval()
    errors = [mean_abs_error(model, batch) for batch in images.values()]
    print(
        f"| {run} | " + " | ".join(f"{error:.4f}" for error in errors) + f" | {errors[1] / errors[0]:.3f} |", flush=True
    )
