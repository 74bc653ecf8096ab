"""Beside the paper-budget sweep (commit 99bb309, which keeps only each run's newest checkpoint): copy the
weights of every epoch's checkpoint as it appears, so that the anchors' test (label-ordered batches) can be
scored for every epoch afterwards. Weights and buffers only (no optimiser state). Run in the background;
given again, it goes on (epochs already copied are skipped)."""

import time
from pathlib import Path

import torch

sweep = Path("/root/sweep/multirun/cifar10_paper_budget")
while True:
    for ckpt in sweep.glob("*/checkpoints/epoch=*.ckpt"):
        out = ckpt.parent.parent / "epoch_weights" / ckpt.name.replace(".ckpt", ".pt")
        if out.exists() or time.time() - ckpt.stat().st_mtime < 30:
            continue
        try:
            checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
        except Exception as error:  # being written, or replaced meanwhile: try at the next poll
            print(f"{ckpt}: {error}", flush=True)
            continue
        out.parent.mkdir(exist_ok=True)
        torch.save(
            {key: checkpoint[key] for key in ("epoch", "state_dict", "hyper_parameters", "fned_lightning")},
            out.with_suffix(".tmp"),
        )
        out.with_suffix(".tmp").rename(out)
        print(f"{time.strftime('%H:%M:%S')} kept {out}", flush=True)
    time.sleep(60)
