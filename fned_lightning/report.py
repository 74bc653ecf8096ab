"""`python -m fned_lightning.report <runs dir> [...]`: the paper's tables and bar charts from runs.

Reads every `metrics.json` below the given folders (a multirun, several, or single runs):
Table 1 (AUROC) and Table 2 (AUPRC) for CIFAR-10, rows = models, columns = the ten classes and
their average, mean ± standard deviation over seeds; Table 3 for image-folder data sets (AUROC,
AUPRC, F1, recall, precision), then the paper's own Table 3 in a table of its own (its railway
fasteners, a data set not public: never rows beside ours), and, for runs whose data has ground-truth
masks, the localisation table (image AUROC by each image score, pixel AUROC, AUPRO, pixel F1). Every
row says its budget (epochs x training images per epoch). A protocol=both run gives two rows, its
honest and its paper evaluation, and a column shows the paper's gain. Writes tables.md, table*.csv
and auroc_bars.png / auprc_bars.png.

A run folder (one holding .hydra/) without metrics.json shows as one of, never as zeros:
- failed: it wrote failed.txt (train.py does, for an error), whose first line the report quotes, and
  was not started again since;
- running: no failed.txt, and something in it was written in the last `--running-within` minutes
  (default 60; a run writes its CSV log every 50 batches and a checkpoint every epoch);
- stopped: neither (killed, or out of its time limit); the same command resumes it.

Where it writes: `--out`, by default `report/` in the first folder given, unless that folder is a run
folder (or lies in one): then `report/` beside that run, in its parent. It never writes into a run that
has not finished: an `--out` inside one is refused.
"""

import argparse
import csv
import json
import math
import re
import statistics
import time
from collections import defaultdict
from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from hydra.utils import get_class
from omegaconf import OmegaConf

from fned_lightning.checkpoints import MOVED
from fned_lightning.data.cifar10 import CIFAR10_CLASSES
from fned_lightning.errors import InputError, fail
from fned_lightning.models import MODEL_CONFIGS, config_class
from fned_lightning.models.detector import EVALUATION_OPTIONS

CONF = Path(__file__).resolve().parents[1] / "conf"
EVALUATION = EVALUATION_OPTIONS  # what every model shares
SHORT_NAMES = {"airplane": "plane", "automobile": "car"}
FOLDER_METRICS = ("auroc", "auprc", "f1", "recall", "precision")
PIXEL_METRICS = {
    "auroc_score_paper": "AUROC (paper's score)",
    "auroc_score_map_max": "AUROC (map max)",
    "pixel_auroc": "pixel AUROC",
    "pixel_aupro": "AUPRO (30% FPR)",
    "pixel_f1": "pixel F1",
    "defect_residual_ratio": "residual defect / normal",  # ~1: G copies its input, defects too
}
PAPER = {  # as printed in the paper (its own protocol), for comparison only
    "auroc": {
        "f-AnoGAN": [0.529, 0.731, 0.389, 0.482, 0.365, 0.517, 0.431, 0.603, 0.484, 0.697, 0.523],
        "GANomaly": [0.966, 0.691, 0.561, 0.637, 0.745, 0.722, 0.915, 0.632, 0.919, 0.711, 0.750],
        "Skip-GANomaly": [0.997, 0.869, 0.661, 0.747, 0.927, 0.749, 0.974, 0.663, 0.968, 0.872, 0.843],
        "FNED": [0.999, 0.947, 0.874, 0.877, 0.973, 0.839, 0.995, 0.864, 0.998, 0.901, 0.927],
    },
    "auprc": {
        "GANomaly": [0.929, 0.516, 0.492, 0.525, 0.666, 0.604, 0.853, 0.501, 0.821, 0.525, 0.643],
        "Skip-GANomaly": [0.997, 0.770, 0.558, 0.635, 0.911, 0.606, 0.961, 0.494, 0.943, 0.803, 0.768],
        "FNED": [0.999, 0.912, 0.818, 0.825, 0.963, 0.707, 0.993, 0.775, 0.998, 0.836, 0.883],
    },
    "folder": {  # the paper's railway fastener set (not public): AUROC, AUPRC, F1, recall, precision
        "GANomaly": [0.892, 0.887, 0.764, 0.682, 0.870],
        "Skip-GANomaly": [0.873, 0.828, 0.775, 0.831, 0.733],
        "FNED": [0.987, 0.967, 0.983, 1.000, 0.967],
    },
}


PAPER_BUDGET = "15 ep x all img"  # the paper's section 2.2
PAPER_ORDER = list(PAPER["auroc"])  # the paper's rows; other models after them


def display_name(name: str) -> str:
    """A model config's name as reports give it: model=skip_ganomaly -> Skip-GANomaly."""
    return model_identity(None, name)["model_name"]


def model_identity(target: str | None, name: str | None) -> dict:
    """A run's model as reports name it (its class's display_name), and whether it is pretrained (marked †)."""
    cls = model_class(target, name)
    return {
        "model_name": (cls.display_name or cls.__name__) if cls else name,
        "pretrained": cls.pretrained if cls else False,
    }


@cache
def model_class(target: str | None, name: str | None) -> type | None:
    """A run's model class (from its config's target, else from conf/model/<name>.yaml), for its name in
    tables and whether it is pretrained; None if this version has none."""
    try:
        if target is None:
            return config_class(name) if name and (MODEL_CONFIGS / f"{name}.yaml").is_file() else None
        return get_class(MOVED.get(target, target))
    except (ImportError, ValueError, AttributeError):
        return None


RUNNING_WITHIN_MINUTES = 60  # a run without metrics.json written to this recently is running, not stopped


def collect(roots: list[Path], running_within: float = RUNNING_WITHIN_MINUTES * 60) -> tuple[list[dict], list[dict]]:
    """(metrics of finished runs, descriptions of runs that started but wrote no metrics.json, each with its
    `state`: failed, running or stopped, see `run_state`)."""
    finished, unfinished = [], []
    now = time.time()
    for root in roots:
        for hydra_dir in sorted(root.rglob(".hydra")):
            run = hydra_dir.parent
            if (run / "metrics.json").exists():
                config = OmegaConf.load(run / "config.yaml") if (run / "config.yaml").exists() else {}
                metrics = json.loads((run / "metrics.json").read_text())
                model = OmegaConf.to_container(config.model) if "model" in config else {}
                finished.append(
                    metrics
                    | {
                        "run": str(run),
                        "variant": model_variant(metrics.get("model"), model),
                        **model_identity(model.get("_target_"), metrics.get("model")),
                    }
                )
                continue
            config = OmegaConf.load(hydra_dir / "config.yaml")
            choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices
            unfinished.append(
                {
                    "run": str(run),
                    "state": run_state(run, now, running_within),
                    "reason": failure_of(run),
                    "model": choices.get("model"),
                    "data": choices.get("data"),
                    **model_identity(config.get("model", {}).get("_target_"), choices.get("model")),
                    "anomaly_class": config.get("anomaly_class"),
                    "protocol": config.get("protocol"),
                    "data_root": config.get("data", {}).get("root"),
                }
            )
    return finished, unfinished


FAILURE_MARKER = "failed.txt"  # what train.py's main() writes into a run folder when the run raises
UNFINISHED_STATES = ("failed", "running", "stopped")


RERUN_AFTER_S = 120  # written this long after failed.txt: the run was started again (a rerun, a requeue)


def run_state(run: Path, now: float, running_within: float) -> str:
    """A run folder without metrics.json: failed (it wrote failed.txt, and nothing has been written since but
    the failure's own log lines), running (something in it was written in the last `running_within` seconds)
    or stopped (killed, or out of its time limit: no failure recorded)."""
    last, marker = last_written(run), run / FAILURE_MARKER
    if marker.exists() and last <= marker.stat().st_mtime + RERUN_AFTER_S:
        return "failed"
    return "running" if now - last < running_within else "stopped"  # started again since it failed


def last_written(folder: Path) -> float:
    """The latest modification time of anything in the folder (files, links, folders) but failed.txt."""
    times = [folder.stat().st_mtime]
    for path in folder.rglob("*"):
        try:
            times.append(path.lstat().st_mtime if path.name != FAILURE_MARKER else 0.0)
        except FileNotFoundError:  # removed while we looked (a checkpoint replaced by the next)
            continue
    return max(times)


def failure_of(run: Path) -> str | None:
    """The first line of a failed run's failed.txt (the error), else None."""
    marker = run / FAILURE_MARKER
    if not marker.exists():
        return None
    return next(iter(marker.read_text().splitlines()), "").strip() or None


def unfinished_cell(states: set[str]) -> str:
    """What a table shows where a run has no result yet: its state (several seeds: each state once)."""
    return ", ".join(state for state in UNFINISHED_STATES if state in states)


REMEDIES = {"train_corruption", "corruption_strength", "head"}  # named below in their own words


def model_variant(name: str | None, model) -> str | None:
    """What sets a run's model apart from its config as published: the remedies against copying (issue 13),
    its segmentation head (issue 19), and any other setting of its own that differs from `conf/model/<name>.yaml`,
    e.g. "patches 0.25, skip_levels=1" or "neighbourhood=3"; None for the model as configured."""
    remedies = []
    if model.get("train_corruption", "none") != "none":
        remedies.append(f"{model['train_corruption']} {model['corruption_strength']:g}")
    if (model.get("generator") or {}).get("skip_levels", 0):
        remedies.append(f"skip_levels={model['generator']['skip_levels']}")
    if model.get("head"):
        remedies.append(f"segmentation head {model['head'].get('width')}")
    return ", ".join(remedies + changed_settings(name, model)) or None


def changed_settings(name: str | None, model) -> list[str]:
    """`key=value` for each plain setting of the model that differs from its config file's (interpolated and
    evaluation settings aside, which the data and the protocol already name)."""
    path = CONF / "model" / f"{name}.yaml"
    if not name or not path.is_file():
        return []
    published = OmegaConf.load(path)
    published = published.model if "model" in published else published  # a config in the global package
    return [
        f"{key}={value}"
        for key, value in model.items()
        if key in published
        and not key.startswith("_")
        and key not in REMEDIES | EVALUATION
        and not OmegaConf.is_interpolation(published, key)
        and not isinstance(value, (dict, list))
        and published[key] != value
    ]


def evaluations(finished: list[dict]) -> list[dict]:
    """One record per evaluation: a protocol=both run gives its honest one and its paper one
    (`paper_*` metrics under the usual names), so they land in separate rows."""
    records = []
    for run in finished:
        if run.get("protocol") == "both":
            paper = {k.removeprefix("paper_"): v for k, v in run.items() if k.startswith("paper_")}
            records += [run | {"protocol": "honest"}, run | paper | {"protocol": "paper"}]
        else:
            records.append(run)
    return records


def paper_gap(averages: dict[str, float | None], name: str) -> str:
    """On a [protocol=paper] row: its value minus the honest row's of the same model, when both exist."""
    honest = name.split(" [")[0]
    if name == honest or averages.get(name) is None or averages.get(honest) is None:
        return ""
    return f"{averages[name] - averages[honest]:+.3f}"


def row_name(run: dict) -> str:
    name = run.get("model_name") or run["model"]
    name += f" ({run['variant']})" if run.get("variant") else ""  # a remedy against copying (issue 13), a setting
    name += " †" if run.get("pretrained") else ""  # features of an ImageNet network (see the note under Table 1)
    return name if run.get("protocol", "honest") == "honest" else f"{name} [protocol={run['protocol']}]"


def data_set_of(run: dict) -> str:
    """A folder run's data set: the folder's name, and the image size it was read at (runs at different
    sizes are different experiments, never averaged together)."""
    name = Path(run.get("data_root") or run["data"]).name
    return f"{name} ({run['image_size']} px)" if run.get("image_size") else name


def budget(run: dict) -> str:
    """What a run trained on: epochs x training images per epoch (all of them when none is recorded)."""
    images = run.get("train_images_per_epoch") or run.get("n_train")
    return f"{run.get('epochs', '?')} ep x {images:,} img" if images else f"{run.get('epochs', '?')} ep"


def budgets(runs: list[dict]) -> str:
    return ", ".join(sorted({budget(run) for run in runs}))


def finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def summarise(values: list[float]) -> str:
    values = finite(values)
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def model_rank(name: str) -> tuple[int, str, str]:
    """The paper's row order; each remedy variant after the published model, each protocol=paper row
    after its honest one."""
    model = re.split(r" \[| \(", name)[0]
    return PAPER_ORDER.index(model) if model in PAPER_ORDER else 99, name.split(" [")[0], name


def ordered_rows(names) -> list[str]:
    return sorted(names, key=model_rank)


def cifar_table(finished, unfinished, metric: str) -> tuple[list[str], list[list[str]], dict]:
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    row_runs: dict[str, list[dict]] = defaultdict(list)
    for run in finished:
        if run["data"] == "cifar10":
            values[row_name(run)][run["anomaly_class"]].append(run[metric])
            row_runs[row_name(run)].append(run)
    states: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for run in unfinished:
        if run["data"] == "cifar10":
            states[row_name(run)][run["anomaly_class"]].add(run["state"])
    header = ["model", "budget"] + [SHORT_NAMES.get(c, c) for c in CIFAR10_CLASSES] + ["avg", "paper - honest"]
    rows, means, averages = [], {}, {}
    for name in ordered_rows(set(values) | set(states)):
        cells, class_means = [name, budgets(row_runs[name]) or "—"], []
        for c in CIFAR10_CLASSES:
            runs = values[name].get(c, [])
            cells.append(summarise(runs) if runs else (unfinished_cell(states[name][c]) or "—"))
            if runs and not all(math.isnan(v) for v in runs):
                class_means.append(statistics.mean(v for v in runs if not math.isnan(v)))
        complete = len(class_means) == len(CIFAR10_CLASSES)
        average = statistics.mean(class_means) if class_means else None
        cells.append(
            "—" if average is None else f"{average:.3f}" + ("" if complete else f" ({len(class_means)}/10 classes)")
        )
        rows.append(cells)
        means[name] = {c: statistics.mean(values[name][c]) for c in CIFAR10_CLASSES if values[name].get(c)}
        averages[name] = average
    for cells in rows:
        cells.append(paper_gap(averages, cells[0]))
    return header, rows, means


def folder_table(finished, unfinished) -> tuple[list[str], list[list[str]]]:
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    row_runs: dict[tuple, list[dict]] = defaultdict(list)
    for run in finished:
        if run["data"] != "cifar10":
            key = (data_set_of(run), row_name(run))
            row_runs[key].append(run)
            for metric in FOLDER_METRICS:
                values[key][metric].append(run[metric])
    states: dict[tuple, set[str]] = defaultdict(set)
    for run in unfinished:
        if run["data"] != "cifar10":
            values.setdefault((data_set_of(run), row_name(run)), defaultdict(list))
            states[(data_set_of(run), row_name(run))].add(run["state"])
    # the metrics' columns are FOLDER_METRICS'
    header = ["data set", "model", "budget", "AUROC", "AUPRC", "F1", "recall", "precision", "AUROC paper - honest"]
    rows = []
    for data_set, name in sorted(values, key=lambda key: (key[0], model_rank(key[1]))):
        cells = values[(data_set, name)]
        aurocs = {
            row: mean_of(values[(data_set, row)]["auroc"])
            for row in (name, name.split(" [")[0])
            if (data_set, row) in values
        }
        rows.append(
            [
                data_set,
                name,
                budgets(row_runs[(data_set, name)]) or "—",
                *(
                    summarise(cells[m]) if cells[m] else unfinished_cell(states[(data_set, name)])
                    for m in FOLDER_METRICS
                ),
                paper_gap(aurocs, name),
            ]
        )
    return header, rows


def summary_table(finished, columns: dict[str, str], include) -> tuple[list[str], list[list[str]]]:
    """One row per (data set, model row) over the runs `include` accepts: each metric in `columns` summarised."""
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    row_runs: dict[tuple, list[dict]] = defaultdict(list)
    for run in filter(include, finished):
        key = (data_set_of(run), row_name(run))
        row_runs[key].append(run)
        for metric in columns:
            values[key][metric].append(run.get(metric))
    header = ["data set", "model", "budget", *columns.values()]
    rows = [
        [
            data_set,
            name,
            budgets(row_runs[(data_set, name)]),
            *(summarise(values[(data_set, name)][m]) for m in columns),
        ]
        for data_set, name in sorted(values, key=lambda key: (key[0], model_rank(key[1])))
    ]
    return header, rows


def pixel_table(finished) -> tuple[list[str], list[list[str]]]:
    """Localisation, for runs whose test set has ground-truth masks: rows as Table 3's."""
    return summary_table(finished, PIXEL_METRICS, lambda run: run.get("pixel_auroc") is not None)


VAL_DEFECT_METRICS = {
    "val_auroc_score_paper": "AUROC (paper's score)",
    "val_auroc_score_map_max": "AUROC (map max)",
    "val_pixel_auroc": "pixel AUROC",
    "val_defect_residual_ratio": "residual defect / normal",
}


def painted_defects_table(finished) -> tuple[list[str], list[list[str]]]:
    """Runs with data.synthetic_val_defects: how each found the defects painted on its normal validation
    images after its last epoch (no test label involved; the same for both protocols, so honest rows only)."""
    return summary_table(
        finished,
        VAL_DEFECT_METRICS,
        lambda run: run.get("val_auroc_score_paper") is not None and run.get("protocol") != "paper",
    )


REAL_DEFECT_METRICS = {
    "val_real_auroc": "AUROC (its image score)",
    "val_real_auprc": "AUPRC",
    "val_real_auroc_score_paper": "AUROC (paper's score)",
    "val_real_auroc_score_map_max": "AUROC (map max)",
    "auroc": "test AUROC (honest)",
}


def real_defects_table(finished) -> tuple[list[str], list[list[str]]]:
    """Runs with data.val_defects: how each found the real defects moved from the test set into validation,
    after its last epoch, beside its honest test AUROC on the test images left."""
    return summary_table(
        finished,
        REAL_DEFECT_METRICS,
        lambda run: run.get("val_real_auroc") is not None and run.get("protocol") != "paper",
    )


def mean_of(values: list[float]) -> float | None:
    values = finite(values)
    return statistics.mean(values) if values else None


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def paper_rows(metric: str) -> list[list[str]]:
    return [
        [f"{name} (paper, its protocol)", PAPER_BUDGET, *(f"{v:.3f}" for v in values), ""]
        for name, values in PAPER[metric].items()
    ]


def bar_chart(means: dict[str, dict[str, float]], metric: str, path: Path) -> Path | None:
    """Per-class bars for every model (paper Figs. 4-5)."""
    if not means:
        return None
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(means)
    for i, (name, per_class) in enumerate(means.items()):
        xs = [k + i * width for k, c in enumerate(CIFAR10_CLASSES) if c in per_class]
        ax.bar(xs, [per_class[c] for c in CIFAR10_CLASSES if c in per_class], width, label=name)
    ax.set_xticks(
        [k + 0.4 - width / 2 for k in range(len(CIFAR10_CLASSES))], [SHORT_NAMES.get(c, c) for c in CIFAR10_CLASSES]
    )
    ax.set(ylabel=metric.upper(), ylim=(0, 1), title=f"CIFAR-10 {metric.upper()} per anomaly class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([header, *rows])


def report(
    roots: list[Path], out: Path, wandb_mode: str = "offline", running_within: float = RUNNING_WITHIN_MINUTES * 60
) -> str:
    runs, unfinished = collect(roots, running_within)
    if not runs and not unfinished:
        raise InputError(
            f"no runs under {', '.join(map(str, roots))}: expected run folders holding .hydra/ and metrics.json "
            f"(a train run's or a multirun's folder)"
        )
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    sections, figures, tables = [], [], {}
    protocols = sorted({run.get("protocol", "honest") for run in runs})
    finished = evaluations(runs)
    counts = {state: sum(run["state"] == state for run in unfinished) for state in UNFINISHED_STATES}
    others = "".join(f", {counts[state]} {state}" for state in ("running", "stopped") if counts[state])
    sections.append(
        f"Runs: {len(runs)} finished, {counts['failed']} failed{others}; protocols: {', '.join(protocols) or '—'}. "
        "Rows marked [protocol=paper] choose the epoch on test labels: optimistic by construction; "
        "the last column is their gain over the honest row of the same model."
    )

    def add_table(name: str, header: list[str], rows: list[list[str]], title: str, shown_with: list[list[str]] = ()):
        """A table's CSV, its W&B copy and its section (with reference rows shown, not saved)."""
        write_csv(out / f"{name}.csv", header, rows)
        tables[name] = (header, rows)
        sections.append(f"### {title}\n\n" + markdown(header, rows + list(shown_with)))

    for number, metric in ((1, "auroc"), (2, "auprc")):
        header, rows, means = cifar_table(finished, unfinished, metric)
        if rows:
            pretrained = any(row[0].endswith(" †") for row in rows)
            note = (
                "\n\n† A reference, not a one-class result: its features come from a network pretrained on "
                "ImageNet, which has seen these kinds of objects (airplanes, cars, birds, cats, ...) labelled; "
                "only its model of normal features is fitted on the nine normal classes."
                if pretrained
                else ""
            )
            add_table(
                f"table{number}_{metric}",
                header,
                rows,
                f"Table {number}: CIFAR-10 {metric.upper()}, anomaly class given{note}",
                paper_rows(metric),
            )
            figures.append(bar_chart(means, metric, out / f"{metric}_bars.png"))
    header, rows = folder_table(finished, unfinished)
    if rows:
        add_table(
            "table3_folder",
            header,
            rows,
            "Table 3: image-folder data sets, these runs (the paper's Table 3 is on another data set: below)",
        )
        sections.append(
            "### The paper's Table 3, for reference only: its railway fasteners, under its own protocol\n\n"
            "A data set that is not public and none of the data sets above: these numbers say what the paper "
            "reports there, not what a row above should reach.\n\n" + markdown(*paper_folder_table())
        )
    header, rows = pixel_table(finished)
    if rows:
        add_table(
            "table3_localisation",
            header,
            rows,
            "Table 3, localisation: where ground-truth masks exist (the paper reports none)\n\n"
            "Image AUROC with the paper's score and with the anomaly map's maximum (both from the same "
            "runs), pixel AUROC, AUPRO (per-region overlap up to 30% false-positive rate, normalised), "
            "pixel F1 at the pixel threshold fitted on normal validation images, and the residual on defect "
            "pixels over that on normal pixels of the same images (near 1: the generator copies its input, "
            "defects included).",
        )
    header, rows = painted_defects_table(finished)
    if rows:
        add_table(
            "painted_validation_defects",
            header,
            rows,
            "Defects painted on normal validation images (data.synthetic_val_defects), last epoch\n\n"
            "No test label is involved: these are what settings may be chosen on. The residual ratio is "
            "the mean raw residual on defect pixels over that on the other pixels of the same images: "
            "near 1, the generator copies its input, defects included.",
        )
    header, rows = real_defects_table(finished)
    if rows:
        add_table(
            "real_validation_defects",
            header,
            rows,
            "Real defects moved from the test set into validation (data.val_defects), last epoch\n\n"
            "What settings are chosen on when a few known bad parts exist; the test AUROC is on the test "
            "images left (the test set shrank by twice data.val_defects).",
        )
    sections += unfinished_sections(unfinished, running_within)
    text = "\n\n".join(sections) + "\n"
    (out / "tables.md").write_text(text)
    if wandb_mode != "off":
        log_to_wandb(tables, [f for f in figures if f], out, wandb_mode)
    return text


def paper_folder_table() -> tuple[list[str], list[list[str]]]:
    """The paper's Table 3 (its railway fasteners) as printed, in a table of its own."""
    header = ["data set", "model", "budget", "AUROC", "AUPRC", "F1", "recall", "precision"]
    return header, [
        ["the paper's railway fasteners", f"{name} (paper, its protocol)", PAPER_BUDGET, *(f"{v:.3f}" for v in values)]
        for name, values in PAPER["folder"].items()
    ]


def unfinished_sections(unfinished: list[dict], running_within: float) -> list[str]:
    """The runs without metrics.json, listed by state (see the module docstring)."""
    minutes = f"{running_within / 60:g} min"
    intros = {
        "failed": "Failed runs (failed.txt: the error):",
        "running": f"Running runs (no metrics.json yet; written to in the last {minutes}):",
        "stopped": f"Stopped runs (no metrics.json, no failure recorded, nothing written for over {minutes}: "
        "killed or out of time? The same command resumes them):",
    }
    sections = []
    for state, intro in intros.items():
        runs = [run for run in unfinished if run["state"] == state]
        if runs:
            lines = [f"- {run['run']}" + (f": {run['reason']}" if run.get("reason") else "") for run in runs]
            sections.append(intro + "\n\n" + "\n".join(lines))
    return sections


def run_folder_of(path: Path) -> Path | None:
    """The run folder (one holding .hydra/) that `path` is or lies in, if any."""
    path = path.resolve()
    return next((folder for folder in (path, *path.parents) if (folder / ".hydra").is_dir()), None)


def default_out(roots: list[Path]) -> Path:
    """`report/` in the first folder given, or, where that is a run folder (or lies in one), beside that run."""
    run = run_folder_of(roots[0])
    return run.parent / "report" if run else roots[0] / "report"


def check_out(out: Path) -> None:
    """Refuse to write into a run that has not finished (it may be running: its folder is its own)."""
    run = run_folder_of(out)
    if run is not None and not (run / "metrics.json").exists():
        raise InputError(
            f"--out {out} is inside {run}, a run that has not finished (no metrics.json); "
            f"write the report elsewhere, e.g. --out {run.parent / 'report'}"
        )


def log_to_wandb(tables: dict, figures: list[Path], out: Path, mode: str) -> None:
    import wandb

    run = wandb.init(project="fned_lightning", job_type="report", dir=str(out), mode=mode)
    try:
        for name, (header, rows) in tables.items():
            run.log({name: wandb.Table(columns=header, data=rows)})
        for figure in figures:
            run.log({figure.stem: wandb.Image(str(figure))})
    finally:
        run.finish()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="multirun or run folders to collect metrics.json from")
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the tables (default: <first folder>/report; beside it where the first folder is a run)",
    )
    parser.add_argument(
        "--running-within",
        type=float,
        default=RUNNING_WITHIN_MINUTES,
        metavar="MINUTES",
        help="a run without metrics.json or failed.txt written to this recently counts as running, else stopped",
    )
    parser.add_argument(
        "--wandb", choices=("offline", "online", "off"), default="offline", help="log the tables to W&B"
    )
    args = parser.parse_args(argv)
    for root in args.runs:
        if not root.is_dir():
            fail(f"no such folder: {root}; give run or multirun folders (each holding .hydra/ and metrics.json)")
    try:
        print(report(args.runs, args.out or default_out(args.runs), args.wandb, args.running_within * 60))
    except InputError as error:
        fail(str(error))


if __name__ == "__main__":
    main()
