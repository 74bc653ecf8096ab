#!/usr/bin/env bash
# Issue 19's comparison on the fastener set: three settings x seeds 0-2, 64 px, 15 epochs, data.val_defects=10,
# from a worktree at commit a6556f6, as two Hydra multiruns side by side (one core each); the same command resumes.
cd /root/sweep/parts_a6556f6
export PYTHONPATH=$PWD WANDB_MODE=disabled OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
python=/work/main/.venv/bin/python
common=(data.root=/work/shared/datasets/mvtec_screw data.image_size=64 data.val_defects=10 data.synthetic_val_defects=true
        trainer.max_epochs=15 logger=csv hydra.sweep.dir=/root/sweep/multirun/parts_head
        'hydra.sweep.subdir=${hydra.runtime.choices.experiment}_seed${seed}')
run() { nice -n 19 $python -m fned_lightning.train -m "${common[@]}" "$@"; }
( run experiment=parts_head seed=0,1,2 && run experiment=screw seed=0 ) > /root/sweep/parts_head_a.log 2>&1 &
( run experiment=parts seed=0,1,2 && run experiment=screw seed=1,2 ) > /root/sweep/parts_head_b.log 2>&1 &
wait
