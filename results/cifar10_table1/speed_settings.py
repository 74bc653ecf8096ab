"""Would another training setting run the sweep faster on this machine? FNED's G+D step at 32x32, batch 64,
channels_last (the sweep's setting), as it stands (eager), with torch.compile, and in bf16-mixed precision.

    OMP_NUM_THREADS=1 .venv/bin/python results/cifar10_table1/speed_settings.py eager|compile|bf16

One process per setting; prints one JSON line: the median of the 9 steps after 3 warm-up steps.
"""

import json
import statistics
import sys
import time

import lightning as L
import torch
from hydra.utils import instantiate

from fned_lightning.bench import ConvYardstick, StepTimer, bench_parts, model_config
from fned_lightning.callbacks import Speedups
from fned_lightning.loggers import hide_lightning_tips

SETTINGS = {"eager": (False, "32-true"), "compile": (True, "32-true"), "bf16": (False, "bf16-mixed")}
REPEATS, WARMUP, BATCH = 8, 3, 64  # 12 batches of data: 9 steps timed

hide_lightning_tips()
setting = sys.argv[1]
compile_networks, precision = SETTINGS[setting]
model = instantiate(model_config("fned", 32).model)
timer = StepTimer(ConvYardstick(torch.device("cpu")))
trainer = L.Trainer(
    accelerator="cpu",
    devices=1,
    max_epochs=1,
    precision=precision,
    limit_val_batches=0,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    callbacks=[timer, Speedups(channels_last=True, compile=compile_networks)],
)
start = time.perf_counter()
trainer.fit(model, datamodule=bench_parts(BATCH * (REPEATS + WARMUP + 1), 32, BATCH))
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
