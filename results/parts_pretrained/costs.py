"""Costs and choice table of the fastener runs (issue 36): python results/parts_pretrained/costs.py > costs.md

Per setting, over its seeds: validation AUROC (the choice), honest test AUROC (read after it), fit and test
images/s as the run measured them, wall time and peak memory of the whole process (/usr/bin/time, one thread),
and the checkpoint's size (the fitted statistics or memory bank are in it).
"""

import json
import statistics
from pathlib import Path

here = Path(__file__).parent
settings: dict[str, list[tuple[dict, dict]]] = {}
for run in sorted(here.glob("*_seed*/metrics.json")):
    tokens = (run.parent / "time.txt").read_text().split()  # "wall_s 26.3 peak_rss_kb 1984832 checkpoint_mb 82"
    timing = dict(zip(tokens[::2], map(float, tokens[1::2]), strict=True))
    settings.setdefault(run.parent.name.rsplit("_seed", 1)[0], []).append((json.loads(run.read_text()), timing))


def mean_sd(values: list[float], digits: int = 3) -> str:
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


print(
    "| setting | seeds | val AUROC (choice) | honest test AUROC | fit img/s | test img/s | wall s | peak RSS MB | checkpoint MB |"
)
print("|---|---|---|---|---|---|---|---|---|")
for name, runs in sorted(settings.items(), key=lambda item: -statistics.mean(m["val_real_auroc"] for m, _ in item[1])):
    metrics, timings = zip(*runs, strict=True)
    print(
        f"| {name} | {len(runs)} | {mean_sd([m['val_real_auroc'] for m in metrics])} | {mean_sd([m['auroc'] for m in metrics])}"
        f" | {statistics.median(m['train_images_per_s'] for m in metrics):.1f}"
        f" | {statistics.median(m['test_images_per_s'] for m in metrics):.1f}"
        f" | {statistics.median(t['wall_s'] for t in timings):.0f}"
        f" | {max(t['peak_rss_kb'] for t in timings) / 1024:.0f}"
        f" | {statistics.median(t['checkpoint_mb'] for t in timings):.0f} |"
    )
