#!/usr/bin/env bash
# Does the sweep's commit (7f7fb11) train FNED as the first sweep's commit (99bb309) did? The same seeded,
# shortened command at both commits on this machine (one environment, the code chosen by PYTHONPATH),
# then the logged losses and the honest test compared with each other and with the first sweep's log.
set -e
export WANDB_MODE=disabled OMP_WAIT_POLICY=PASSIVE
out=/root/sweep/equivalence
for commit in 99bb309 7f7fb11; do
  cd /root/sweep/fned_$commit
  /usr/bin/time -f "$commit wall %e s" env PYTHONPATH=/root/sweep/fned_$commit /root/sweep/fned_7f7fb11/.venv/bin/python -c 'import fned_lightning, sys; print(fned_lightning.__file__, file=sys.stderr)'
  /usr/bin/time -f "$commit wall %e s" env PYTHONPATH=/root/sweep/fned_$commit /root/sweep/fned_7f7fb11/.venv/bin/python -m fned_lightning.train \
    experiment=cifar10_cpu data.root=/root/sweep/data/cifar10 model=fned anomaly_class=airplane seed=0 protocol=both \
    trainer.max_epochs=1 trainer.limit_train_batches=100 trainer.limit_val_batches=2 trainer.limit_test_batches=4 \
    hydra.run.dir=$out/$commit
done
