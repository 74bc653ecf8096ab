"""How much of the paper protocol's AUROC comes from the way its test set is batched. For each run of a
protocol=both sweep, score the test set with BatchNorm in training mode (the anchors' evaluation) in two
batchings: `mixed` (the honest test's order and batch size: the paper protocol before `data.paper_test_batches`
existed) and `anchors` (their CIFAR-10 test loader: the normal images first, then the anomaly class,
unshuffled, in training-size batches; each batch normalises one label). Weights scored: the newest epoch,
the epoch the run's paper protocol selected so far, and every epoch kept in `epoch_weights/` (then the
anchors' own selection, the best epoch under their batching, can be read too).

The batching the run itself tested with (its `paper_test_batches`; mixed before that switch existed) is
already in the run's per-epoch log (`paper/test_auroc`): for the epochs the log has, that value is taken
from it (`logged_batching` in the JSON; null where both were scored) and only the other batching is
scored, half the cost (an FNED pass over 15,000 images takes minutes here). The check that the rescoring
is the run's own test: the selected epoch, rescored in the run's batching, gives the AUROC the run
selected it by (and, once the run has finished, its `paper_auroc`).

    python scripts/paper_batches.py SWEEP_DIR RESULTS_DIR   # writes RESULTS_DIR/paper_batches.{json,md,png}

Unfinished runs are scored too (from their newest checkpoint), and each epoch is scored once: the script
can be given again as a sweep goes on, and scores only the epochs kept since. An entry of the JSON whose
name no run of the sweep has (a lost run's, renamed by hand) is kept as it is; its `note` is printed with it.
"""

import json
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from merge_epoch_logs import epoch_rows  # beside this script
from omegaconf import OmegaConf

from fned_lightning.checkpoints import read_checkpoint
from fned_lightning.data.base import to_model_range
from fned_lightning.data.cifar10 import CIFAR10_CLASSES
from fned_lightning.predict import rebuild_detector
from fned_lightning.report import PAPER, display_name
from fned_lightning.scoring import ranking_metrics

# before data/ was a package
MOVED_DATA = {"fned_lightning.data.CIFAR10OneClass": "fned_lightning.data.cifar10.CIFAR10OneClass"}


def run_config(path: Path, data_root: str | None = None):
    """A sweep run's resolved config, readable by today's code (its data class renamed where it moved);
    `data_root` points it at another copy of the data."""
    config = OmegaConf.load(path)
    config.data._target_ = MOVED_DATA.get(config.data._target_, config.data._target_)
    if data_root is not None:
        config.data.root = data_root
    return config


@torch.inference_mode()
def test_metrics(model, state: dict, loader, train_mode: bool) -> dict[str, float]:
    """AUROC and AUPRC of these weights on the loader's images: BatchNorm in training mode (the anchors'
    evaluation) or in eval() mode (the honest test's)."""
    model.load_state_dict(state)  # fresh weights and BatchNorm statistics for every pass
    model.train(train_mode)
    scores, labels = [], []
    for images, batch_labels, _ in loader:
        scores.append(model(to_model_range(images)).scores)
        labels.append(batch_labels)
    return ranking_metrics(torch.cat(scores), torch.cat(labels))


def train_mode_auroc(model, state: dict, loader) -> float:
    return test_metrics(model, state, loader, train_mode=True)["auroc"]


def logged_paper_aurocs(run: Path) -> dict[int, float]:
    """The run's own per-epoch paper-protocol AUROC, from its log (one cut by resumes under 99bb309: merged)."""
    rows_by_epoch, _ = epoch_rows(run)
    return {
        int(epoch): float(row["paper/test_auroc"])
        for epoch, rows in rows_by_epoch.items()
        for row in rows
        if row.get("paper/test_auroc")
    }


def score_run(run: Path, scored: dict) -> dict:
    """`scored`: this run's entry from an earlier call (its epochs are not scored again), or {}."""
    finished = (run / "metrics.json").exists()
    config = run_config(run / ("config.yaml" if finished else ".hydra/config.yaml"))
    run_batching = OmegaConf.select(config, "data.paper_test_batches", default="mixed")  # mixed: before the switch
    data = instantiate(config.data, paper_test_batches="anchors")
    data.setup("test")
    loaders = {"mixed": data.test_dataloader(), "anchors": data.paper_test_dataloader()}
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    model, _ = rebuild_detector(checkpoint, run / "checkpoints" / "last.ckpt")
    selection = checkpoint["callbacks"]["PaperProtocol"]
    selected = selection["best_epoch"]
    states = {
        checkpoint["epoch"]: {k: v.clone() for k, v in model.state_dict().items()},
        selected: selection["best_state"],
    }
    for kept in sorted((run / "epoch_weights").glob("epoch=*.pt")):
        weights = read_checkpoint(kept)
        states[weights["epoch"]] = weights["state_dict"]

    check = train_mode_auroc(model, states[selected], loaders[run_batching])  # the first pass: the check
    expected = {"the AUROC its paper protocol selected it by": selection["best_auroc"]}
    if finished:
        metrics = json.loads((run / "metrics.json").read_text())
        expected["the run's paper test gave"] = metrics["paper_auroc"]
    for what, value in expected.items():
        if abs(check - value) > 1e-4:
            raise SystemExit(
                f"{run}: {run_batching} batches give {check:.4f} at epoch {selected}, but {what} {value:.4f}"
            )

    logged = logged_paper_aurocs(run)
    logged[selected] = check  # scored just now
    per_epoch = {int(epoch): aurocs for epoch, aurocs in scored.get("per_epoch", {}).items()}
    for epoch in sorted(set(states) - set(per_epoch)):
        start = time.time()
        per_epoch[epoch] = {
            batching: logged[epoch]
            if batching == run_batching and epoch in logged
            else train_mode_auroc(model, states[epoch], loader)
            for batching, loader in loaders.items()
        }
        print(f"{run.name} epoch {epoch}: {per_epoch[epoch]} ({time.time() - start:.0f} s)", flush=True)
    model_name = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.choices.model
    return {
        "model": model_name,
        "anomaly_class": config.anomaly_class,
        "finished": finished,
        "honest_auroc": metrics["auroc"] if finished else None,
        "selected_epoch": selected,
        "last_epoch": checkpoint["epoch"],
        "logged_batching": run_batching,
        "per_epoch": dict(sorted(per_epoch.items())),
    }


def published(model: str, anomaly_class: str) -> str:
    """The paper's AUROC for that model and class (its own protocol), as the report prints it."""
    values = PAPER["auroc"].get(display_name(model))
    return f"{values[CIFAR10_CLASSES.index(anomaly_class)]:.3f}" if values else "—"


def table(runs: dict[str, dict]) -> str:
    lines = [
        "| model | class | honest (last epoch, eval()) "
        "| mixed batches, at the epoch the run's paper protocol selected | "
        "the same weights, the anchors' batches | anchors' batches, best epoch scored | the paper's |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in runs.values():
        per_epoch = {int(k): v for k, v in result["per_epoch"].items()}
        selected = result["selected_epoch"]
        best = max(per_epoch, key=lambda e: per_epoch[e]["anchors"])
        scored = f"{len(per_epoch)} of {result['last_epoch'] + 1} epochs scored"
        honest = (
            f"{result['honest_auroc']:.3f}" if result["finished"] else f"not finished (epochs 0-{result['last_epoch']})"
        )
        run = result["anomaly_class"] + (f" ({result['note']})" if result.get("note") else "")
        lines.append(
            f"| {display_name(result['model'])} | {run} | {honest} | "
            f"{per_epoch[selected]['mixed']:.3f} (epoch {selected}) | {per_epoch[selected]['anchors']:.3f} | "
            f"{per_epoch[best]['anchors']:.3f} (epoch {best}; {scored}) | "
            f"{published(result['model'], result['anomaly_class'])} |"
        )
    return "\n".join(lines) + "\n"


def main(sweep: str, out: str) -> None:
    out_json = Path(out) / "paper_batches.json"
    runs = json.loads(out_json.read_text()) if out_json.exists() else {}
    for run in sorted(Path(sweep).glob("*/checkpoints/last.ckpt")):
        run = run.parent.parent
        state = {
            "epoch_weights_kept": len(list((run / "epoch_weights").glob("epoch=*.pt"))),
            "finished": (run / "metrics.json").exists(),
        }
        previous = runs.get(run.name, {})
        if previous and all(previous.get(key) == value for key, value in state.items()):
            continue
        runs[run.name] = score_run(run, previous) | state
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
        label = f"{display_name(result['model'])}, {result['anomaly_class']}" + (
            f" ({result['note']})" if result.get("note") else ""
        )
        for batching, style in (("anchors", "-"), ("mixed", ":")):
            ax.plot(
                [int(e) for e in epochs],
                [result["per_epoch"][e][batching] for e in epochs],
                style,
                marker=".",
                label=f"{label}: {batching} batches",
            )
    ax.axhline(0.5, color="grey", linewidth=0.5)
    ax.set(
        xlabel="epoch",
        ylabel="test AUROC (BatchNorm in training mode)",
        title="the paper protocol's test, two batchings",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:])
