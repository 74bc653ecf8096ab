"""How much of the paper protocol's AUROC comes from the way its test set is batched. For each finished run
of a protocol=both sweep, score the test set with BatchNorm in training mode (the anchors' evaluation) in
two batchings: `mixed` (the honest test's order and batch size: the paper protocol before `data.paper_test_batches`
existed) and `anchors` (their CIFAR-10 test loader: the normal images first, then the anomaly class,
unshuffled, in training-size batches; each batch normalises one label). Weights scored: the last epoch,
the epoch the run's paper protocol selected, and every epoch kept in `epoch_weights/` (then the anchors'
own selection, the best epoch under their batching, can be read too). It checks first that the selected
epoch, in the batching the run tested with (its `paper_test_batches`; mixed before that switch existed),
gives the run's own `paper_auroc`.

    python scripts/paper_batches.py SWEEP_DIR RESULTS_DIR   # writes RESULTS_DIR/paper_batches.{json,md}

A run's JSON is kept as each run finishes, so the script can be given again as a sweep goes on: runs
already scored with the same weights are not scored again.
"""

import json
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fned_lightning.checkpoints import read_checkpoint
from fned_lightning.data.cifar10 import CIFAR10_CLASSES
from fned_lightning.data.base import to_model_range
from fned_lightning.predict import rebuild_detector
from fned_lightning.report import MODELS, PAPER
from fned_lightning.scoring import ranking_metrics

MOVED_DATA = {"fned_lightning.data.CIFAR10OneClass": "fned_lightning.data.cifar10.CIFAR10OneClass"}  # before data/ was a package


@torch.inference_mode()
def train_mode_auroc(model, state: dict, loader) -> float:
    model.load_state_dict(state)  # fresh weights and BatchNorm statistics for every pass
    model.train()
    scores, labels = [], []
    for images, batch_labels, _ in loader:
        scores.append(model(to_model_range(images)).scores)
        labels.append(batch_labels)
    return ranking_metrics(torch.cat(scores), torch.cat(labels))["auroc"]


def score_run(run: Path) -> dict:
    config = OmegaConf.load(run / "config.yaml")
    config.data._target_ = MOVED_DATA.get(config.data._target_, config.data._target_)
    data = instantiate(config.data, paper_test_batches="anchors")
    data.setup("test")
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    model, _ = rebuild_detector(checkpoint, run / "checkpoints" / "last.ckpt")
    selection = checkpoint["callbacks"]["PaperProtocol"]
    states = {checkpoint["epoch"]: {k: v.clone() for k, v in model.state_dict().items()},
              selection["best_epoch"]: selection["best_state"]}
    for kept in sorted((run / "epoch_weights").glob("epoch=*.pt")):
        weights = read_checkpoint(kept)
        states[weights["epoch"]] = weights["state_dict"]
    loaders = {"mixed": data.test_dataloader(), "anchors": data.paper_test_dataloader()}
    per_epoch = {}
    for epoch in sorted(states):
        start = time.time()
        per_epoch[epoch] = {name: train_mode_auroc(model, states[epoch], loader) for name, loader in loaders.items()}
        print(f"{run.name} epoch {epoch}: {per_epoch[epoch]} ({time.time() - start:.0f} s)", flush=True)
    metrics = json.loads((run / "metrics.json").read_text())
    batching = metrics.get("paper_test_batches", "mixed")  # runs from before the switch batched mixed
    rescored = per_epoch[selection["best_epoch"]][batching]
    if abs(rescored - metrics["paper_auroc"]) > 1e-4:  # the check that this rescoring is the run's own paper test
        raise SystemExit(f"{run}: {batching} batches give {rescored:.4f} at epoch {selection['best_epoch']}, "
                         f"but the run's paper test gave {metrics['paper_auroc']:.4f}")
    return {"model": metrics["model"], "anomaly_class": metrics["anomaly_class"], "honest_auroc": metrics["auroc"],
            "selected_epoch": selection["best_epoch"], "last_epoch": checkpoint["epoch"], "per_epoch": per_epoch}


def published(model: str, anomaly_class: str) -> str:
    """The paper's AUROC for that model and class (its own protocol), as the report prints it."""
    values = PAPER["auroc"].get(MODELS.get(model, model))
    return f"{values[CIFAR10_CLASSES.index(anomaly_class)]:.3f}" if values else "—"


def table(runs: dict[str, dict]) -> str:
    lines = ["| model | class | honest (last epoch, eval()) | mixed batches, at the epoch the run's paper protocol selected | "
             "the same weights, the anchors' batches | anchors' batches, best epoch scored | the paper's |",
             "|---|---|---|---|---|---|---|"]
    for result in runs.values():
        per_epoch = {int(k): v for k, v in result["per_epoch"].items()}
        selected = result["selected_epoch"]
        best = max(per_epoch, key=lambda e: per_epoch[e]["anchors"])
        scored = f"{len(per_epoch)} of {result['last_epoch'] + 1} epochs scored"
        lines.append(f"| {MODELS.get(result['model'], result['model'])} | {result['anomaly_class']} | {result['honest_auroc']:.3f} | "
                     f"{per_epoch[selected]['mixed']:.3f} (epoch {selected}) | {per_epoch[selected]['anchors']:.3f} | "
                     f"{per_epoch[best]['anchors']:.3f} (epoch {best}; {scored}) | "
                     f"{published(result['model'], result['anomaly_class'])} |")
    return "\n".join(lines) + "\n"


def main(sweep: str, out: str) -> None:
    out_json = Path(out) / "paper_batches.json"
    runs = json.loads(out_json.read_text()) if out_json.exists() else {}
    for run in sorted(Path(sweep).glob("*/metrics.json")):
        run = run.parent
        kept = len(list((run / "epoch_weights").glob("epoch=*.pt")))
        if run.name in runs and runs[run.name].get("epoch_weights_kept") == kept:
            continue
        runs[run.name] = score_run(run) | {"epoch_weights_kept": kept}
        out_json.write_text(json.dumps(runs, indent=1) + "\n")
    (Path(out) / "paper_batches.md").write_text(table(runs))
    plot(runs, Path(out) / "paper_batches.png")
    print(table(runs))


def plot(runs: dict[str, dict], path: Path) -> None:
    """Per-epoch test AUROC, BatchNorm in training mode, in each batching, for the runs with every epoch kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {name: result for name, result in runs.items() if len(result["per_epoch"]) > 2}
    if not shown:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for result in shown.values():
        epochs = sorted(result["per_epoch"], key=int)
        label = f"{MODELS.get(result['model'], result['model'])}, {result['anomaly_class']}"
        for batching, style in (("anchors", "-"), ("mixed", ":")):
            ax.plot([int(e) for e in epochs], [result["per_epoch"][e][batching] for e in epochs], style, marker=".",
                    label=f"{label}: {batching} batches")
    ax.axhline(0.5, color="grey", linewidth=0.5)
    ax.set(xlabel="epoch", ylabel="test AUROC (BatchNorm in training mode)", title="the paper protocol's test, two batchings")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:])
