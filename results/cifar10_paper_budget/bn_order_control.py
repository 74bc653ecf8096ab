"""Control: an untrained GANomaly (its initial weights, seed 0) scored with BatchNorm in training mode, in
batches mixed as the honest test's and in the anchors' label-ordered ones, airplane and horse as the anomaly.
Nothing is learned, so any AUROC away from 0.5 would come from the batching alone.

    python results/cifar10_paper_budget/bn_order_control.py /path/to/cifar10   # from the repository root
"""

import sys
from pathlib import Path

import torch
from hydra.utils import instantiate

sys.path.insert(0, "scripts")
from paper_batches import run_config, train_mode_auroc  # noqa: E402

here = Path(__file__).parent
for run in ["1_ganomaly_airplane_seed0", "0_ganomaly_horse_seed0"]:
    config = run_config(here / run / "config.yaml", sys.argv[1])  # the sweep's own settings
    data = instantiate(config.data, paper_test_batches="anchors")
    data.setup("test")
    torch.manual_seed(0)
    model = instantiate(config.model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, loader in {"mixed": data.test_dataloader(), "anchors": data.paper_test_dataloader()}.items():
        print(run, "untrained", name, round(train_mode_auroc(model, state, loader), 4), flush=True)
