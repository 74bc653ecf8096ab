"""The honest test's scoring (`eval()` mode, the honest test's batches, the full test set) of every kept epoch
of one run: where the honest number was heading in a run that never reached its last epoch. Read only, never
used to choose anything. Weights: the run's newest checkpoint and every epoch `keep_epoch_weights.py` kept.

    python results/cifar10_paper_budget/eval_per_epoch.py RUN_DIR /path/to/cifar10 OUT.json   # from the repository root

Epochs already in OUT.json are not scored again. The check: for a finished run, its last epoch gives the
AUROC in its metrics.json (the honest test itself).
"""

import json
import sys
import time
from pathlib import Path

from hydra.utils import instantiate

sys.path.insert(0, "scripts")
from paper_batches import run_config, test_metrics  # noqa: E402

from fned_lightning.checkpoints import read_checkpoint  # noqa: E402
from fned_lightning.predict import rebuild_detector  # noqa: E402

run, cifar10_root, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
finished = (run / "metrics.json").exists()
config = run_config(run / ("config.yaml" if finished else ".hydra/config.yaml"), cifar10_root)
data = instantiate(config.data)
data.setup("test")
checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
model, _ = rebuild_detector(checkpoint, run / "checkpoints" / "last.ckpt")
states = {checkpoint["epoch"]: checkpoint["state_dict"]}
for kept in sorted((run / "epoch_weights").glob("epoch=*.pt")):
    weights = read_checkpoint(kept)
    states[weights["epoch"]] = weights["state_dict"]

scored = {int(epoch): value for epoch, value in json.loads(out.read_text()).items()} if out.exists() else {}
for epoch in sorted(set(states) - set(scored)):
    start = time.time()
    scored[epoch] = test_metrics(model, states[epoch], data.test_dataloader(), train_mode=False)
    print(f"{run.name} epoch {epoch}: {scored[epoch]} ({time.time() - start:.0f} s)", flush=True)
    out.write_text(json.dumps(dict(sorted(scored.items())), indent=1) + "\n")
if finished:
    honest = json.loads((run / "metrics.json").read_text())["auroc"]
    last = scored[checkpoint["epoch"]]["auroc"]
    if abs(last - honest) > 1e-4:
        raise SystemExit(
            f"{run}: epoch {checkpoint['epoch']} scores {last:.4f} here, but the run's honest test gave {honest:.4f}"
        )
    print(f"check: epoch {checkpoint['epoch']} gives the run's honest AUROC, {honest:.4f}")
