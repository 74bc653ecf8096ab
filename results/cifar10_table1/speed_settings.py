"""Would another training setting run the sweep faster on this machine? FNED's G+D step at 32x32, batch 64,
channels_last (the sweep's setting), as it stands (eager), with torch.compile, and in bf16-mixed precision.

    OMP_NUM_THREADS=1 .venv/bin/python results/cifar10_table1/speed_settings.py eager|compile|bf16

One process per setting; prints one JSON line: the median of 9 timed steps after 3 warm-up steps.
"""

import argparse
import json
import statistics
import time

import torch
from hydra.utils import instantiate

from fned_lightning.bench import ConvYardstick, StepTimer, bench_parts, model_config, training_only
from fned_lightning.callbacks import Speedups
from fned_lightning.loggers import hide_lightning_tips

SETTINGS = {"eager": (False, "32-true"), "compile": (True, "32-true"), "bf16": (False, "bf16-mixed")}
TIMED, WARMUP, BATCH = 9, 3, 64

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("setting", choices=SETTINGS)
setting = parser.parse_args().setting
hide_lightning_tips()
compile_networks, precision = SETTINGS[setting]
model = instantiate(model_config("fned", 32).model)
timer = StepTimer(ConvYardstick(torch.device("cpu")))
trainer = training_only("cpu", 1, [timer, Speedups(channels_last=True, compile=compile_networks)], precision)
start = time.perf_counter()
trainer.fit(model, datamodule=bench_parts(BATCH * (WARMUP + TIMED), 32, BATCH))
steps = timer.times[WARMUP:]
print(
    json.dumps(
        {
            "setting": setting,
            "threads": torch.get_num_threads(),
            "fit_s": round(time.perf_counter() - start, 1),
            "warmup_step_s": [round(t, 2) for t in timer.times[:WARMUP]],
            "median_step_s": round(statistics.median(steps), 3),
            "step_s": [round(t, 2) for t in steps],
        }
    )
)
