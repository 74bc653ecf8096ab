"""The command line end to end, as a user runs it: tiny networks, tiny data, CPU."""

import csv
import json

import pytest
import torch

from tests.conftest import REPO, TINY, TINY_MODELS, compose_config, run_cli

SYNTHETIC = [
    "data=synthetic",
    "data.n_train=48",
    "data.n_test_normal=8",
    "data.n_test_abnormal=8",
    "data.batch_size=16",
]


def results(tmp_path):
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "scores.csv") as file:
        rows = list(csv.DictReader(file))
    return run, metrics, rows


def test_synthetic_run_writes_metrics_scores_config_and_checkpoint(tmp_path):
    done = run_cli(*TINY, *SYNTHETIC, "trainer.max_epochs=2", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    # quiet, and counted
    assert "litlogger" not in output and "Total FLOPs: 0" not in output and "Total FLOPs" in output
    run, metrics, rows = results(tmp_path)
    for key in (
        "auroc",
        "auprc",
        "f1",
        "precision",
        "recall",
        "f1_test_minmax",
        "precision_test_minmax",
        "recall_test_minmax",
        "f1_val_minmax",
        "protocol",
        "model",
        "seed",
        "epochs",
        "n_train",
        "n_val",
        "n_test",
    ):
        assert key in metrics, key
    assert metrics["protocol"] == "honest" and metrics["model"] == "fned" and metrics["epochs"] == 2
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (44, 4, 16)
    assert 0 <= metrics["auroc"] <= 1
    assert 0 <= metrics["pixel_auroc"] <= 1 and 0 <= metrics["pixel_aupro"] <= 1  # synthetic parts: masks known
    assert len(rows) == 16 and {row["label"] for row in rows} == {"0", "1"}
    assert all(row["name"].startswith("synthetic/defect/") == (row["label"] == "1") for row in rows)
    assert (run / "config.yaml").exists() and (run / "csv" / "metrics.csv").exists()
    for figure in ("score_histogram", "roc_pr", "reconstructions", "anomaly_maps"):
        assert (run / "figures" / f"{figure}.png").stat().st_size > 1000
    assert (
        run / "checkpoints" / "last.ckpt"
    ).resolve().name == "epoch=1.ckpt"  # named by epoch, not by optimiser steps
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # plain data, no pickled classes
    assert checkpoint["state_dict"]["score_min"].item() == pytest.approx(metrics["score_min"])
    assert checkpoint["hyper_parameters"]["generator"]["width"] == 4  # rebuildable from the checkpoint alone


def test_cifar10_folder_copy_with_the_papers_short_name(tmp_path, cifar_folder):
    done = run_cli(
        *TINY,
        f"data.root={cifar_folder}",
        "anomaly_class=plane",
        "data.cache_dir=null",
        "trainer.max_epochs=1",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _, metrics, rows = results(tmp_path)
    assert metrics["anomaly_class"] == "airplane"
    assert metrics["pixel_auroc"] is None and 0 <= metrics["auroc_score_map_max"] <= 1  # no masks; both image scores
    assert metrics["n_test_normal"] == 18 and metrics["n_test_abnormal"] == 5
    assert sum(row["name"].split("/")[1] == "airplane" for row in rows) == 5


def test_folder_of_grey_parts(tmp_path, parts_folder):
    done = run_cli(
        *TINY,
        "data=folder",
        f"data.root={parts_folder}",
        "data.channels=1",
        "data.image_size=32",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _, metrics, rows = results(tmp_path)
    assert metrics["n_test"] == 9 and metrics["data"] == "folder"
    assert {row["name"].split("/")[1] for row in rows} == {"good", "scratch", "crack"}


def test_a_mistake_while_resuming_keeps_the_run_folder_and_its_checkpoint(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"a checkpoint")
    # the first mistake found: the checkpoint it would resume
    done = run_cli(*TINY, "anomaly_class=horses", tmp_path=tmp_path)
    assert done.returncode == 2 and f"cannot read {checkpoint} as a checkpoint" in done.stderr
    assert checkpoint.read_bytes() == b"a checkpoint"


@pytest.mark.parametrize("model", ["fned", "fanogan"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, model):
    """Every random draw (shuffle, noise, latent samples, D re-initialisation, simulated anomalies) depends
    on the seed and the epoch alone: killed after its first checkpoint and resumed, a run gives the same
    numbers. FNED runs with the segmentation head, whose anomalies are drawn every batch. f-AnoGAN's 4
    epochs are 2 of GAN and 2 of encoder training: the kill falls in the GAN phase."""
    args = [
        *TINY_MODELS[model],
        "logger=csv",
        *SYNTHETIC,
        "data.n_train=96",
        "data.image_size=16",
        "trainer.max_epochs=4",
        "seed=5",
    ]
    if model == "fned":  # D "collapses" at every batch and is re-initialised at every look: those draws resume too
        args += [
            "model.d_collapse_loss=1e9",
            "model.d_collapse_check_interval=1",
            "experiment=parts_head",
            "model.head.width=4",
            "model.head.depth=2",
        ]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir(), interrupted.mkdir()
    uninterrupted = run_cli(*args, tmp_path=straight, process=True)  # two processes: equal to the last digit
    assert uninterrupted.returncode == 0
    assert model != "fned" or "discriminator collapsed" in uninterrupted.stdout + uninterrupted.stderr
    assert kill_after_first_checkpoint(args, interrupted) < 4
    resumed = run_cli(*args, tmp_path=interrupted, process=True)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout + resumed.stderr
    expected, got = (results(folder)[1] for folder in (straight, interrupted))
    assert model != "fned" or expected["image_score"] == "map_filtered_max"  # the head's
    for name in ("auroc", "auprc", "f1", "f1_calibrated", "score_min", "score_max", "score_threshold"):
        assert got[name] == expected[name], name
    # the whole log: every epoch's rows, those before the interruption too, equal but for the timing columns
    logged = [per_epoch_log(folder / "run" / "csv" / "metrics.csv") for folder in (straight, interrupted)]
    assert logged[0] == logged[1]
    assert {row["epoch"] for row in logged[0]} == {"0", "1", "2", "3", "4"}  # 4: the test, after the last epoch


def per_epoch_log(path) -> list[dict]:
    import csv

    with open(path, newline="") as file:
        return [{k: v for k, v in row.items() if "per_s" not in k} for row in csv.DictReader(file)]


@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_a_failing_sweep_job_keeps_the_others_results(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    done = run_cli(
        "-m",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        *SYNTHETIC,
        "trainer.max_epochs=1",
        "data.image_size=40,16",
        tmp_path=tmp_path,
        process=launcher == "submitit_local",  # its jobs are pickled and started as processes of their own
    )
    assert done.returncode != 0  # the sweep reports the failure at its end
    (failed,) = sweep.glob("0_*")
    (finished,) = sweep.glob("1_*")
    assert "not a multiple of 16" in (failed / "failed.txt").read_text()
    assert json.loads((finished / "metrics.json").read_text())["image_size"] == 16


def kill_after_first_checkpoint(args: list[str], tmp_path) -> int:
    """Start the training command in tmp_path/run and SIGKILL it once it has written a checkpoint,
    as a node failure or an out-of-memory kill would; the epochs that checkpoint holds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "fned_lightning.train", f"hydra.run.dir={tmp_path / 'run'}", *args]
    env = os.environ | {"WANDB_MODE": "disabled"}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    log = tmp_path / "run" / "csv" / "metrics.csv"  # the epoch's own row follows its checkpoint within milliseconds
    while first.poll() is None and time.monotonic() < deadline and not (log.exists() and "train/lr" in log.read_text()):
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "run" / "metrics.json").exists()
    return torch.load(last, weights_only=True)["epoch"]


def test_a_killed_run_resumes_from_its_last_checkpoint_with_the_same_command(tmp_path):
    args = [*TINY, *SYNTHETIC, "data.image_size=16", "trainer.max_epochs=4"]
    assert kill_after_first_checkpoint(args, tmp_path) < 3

    done = run_cli(*args, tmp_path=tmp_path)  # the same command, the same run folder
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout + done.stderr
    _, metrics, _ = results(tmp_path)
    assert metrics["epochs"] == 4
    written = (tmp_path / "run" / "metrics.json").stat().st_mtime

    again = run_cli(*args, tmp_path=tmp_path)  # finished: nothing is trained or written again
    assert again.returncode == 0 and "finished already" in again.stdout + again.stderr
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime == written


def test_a_test_folder_without_abnormal_images_reports_undefined_auroc(tmp_path, parts_folder):
    import shutil

    root = tmp_path / "parts"
    shutil.copytree(parts_folder / "train", root / "train")
    shutil.copytree(parts_folder / "test" / "good", root / "test" / "good")
    done = run_cli(
        *TINY,
        "data=folder",
        f"data.root={root}",
        "data.channels=1",
        "data.image_size=16",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "AUROC/AUPRC will be undefined" in done.stdout + done.stderr
    _, metrics, _ = results(tmp_path)
    assert metrics["auroc"] is None and metrics["n_test_abnormal"] == 0


@pytest.mark.parametrize("on_device,collapse", [(True, False), (False, True)])
def test_ddp_on_two_cpu_processes_scores_each_test_image_once(tmp_path, on_device, collapse):
    """on_device: Lightning's distributed sampler, or our own split of each epoch; collapse: D "collapses"
    at every batch, and the ranks decide together to restart it (a collective at every look). In-process
    gloo tests of the same (tests/test_gpu_path.py) check that the ranks' D weights stay equal."""
    restart = ["model.d_collapse_loss=1e9", "model.d_collapse_check_interval=1"] if collapse else []
    done = run_cli(
        *TINY,
        *SYNTHETIC,
        "data.n_test_normal=9",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_find_unused_parameters_true",
        f"data.on_device={on_device}",
        *restart,
        tmp_path=tmp_path,
        process=True,  # Lightning's DDP starts the other rank by running the command again
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not collapse or "discriminator collapsed" in done.stdout + done.stderr
    _, metrics, rows = results(tmp_path)
    assert metrics["n_test"] == metrics["n_scored"] == len(rows) == 17  # 17 over 2 ranks: one padded repeat dropped
    assert len({row["name"] for row in rows}) == 17


def test_the_one_gpu_paper_script_runs_with_a_tiny_budget_on_cpu(tmp_path, cifar_folder):
    """The GPU path's code (bf16 autocast, channels_last, data resident on the device) on the CPU."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    sweep = tmp_path / "sweep"
    env = os.environ | {"WANDB_MODE": "disabled", "PYTHON": sys.executable, "SWEEP_DIR": str(sweep)}
    overrides = [
        *TINY,
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "data.cache_dir=null",
        "anomaly_class=horse,ship",  # a sweep of two: the script's -m
    ]
    done = subprocess.run(
        [str(REPO / "scripts" / "paper_on_one_gpu.sh"), str(cifar_folder), *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wall time:" in done.stdout and "Table 1" in done.stdout
    runs = sorted(sweep.glob("*_fned_*"))
    assert len(runs) == 2
    config = (runs[0] / "config.yaml").read_text()
    assert "precision: bf16-mixed" in config and "on_device: true" in config and "channels_last: true" in config
    assert json.loads((runs[0] / "metrics.json").read_text())["n_scored"] == 23


def test_the_slurm_launcher_asks_for_one_gpu_per_run(tmp_path, monkeypatch):
    """Renders the sbatch script that submitit would submit, from our launcher config (no cluster here)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # pretend srun exists
    launcher = compose_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra=True).hydra.launcher
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_max_num_timeout=launcher.max_num_timeout)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())  # as hydra-submitit-launcher passes them on
    executor.update_parameters(
        **{
            key if key in shared else f"slurm_{key}": value
            for key, value in OmegaConf.to_container(launcher).items()
            if key not in {"_target_", "submitit_folder", "max_num_timeout"}
        }
    )
    sbatch = executor._executor._make_submission_file_text("python -m fned_lightning.train", "0")
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--nodes=1", "--partition=gpu", "--cpus-per-task=8"):
        assert f"#SBATCH {line}\n" in sbatch


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_builds_its_model(experiment):
    from hydra.utils import instantiate

    from fned_lightning.errors import check_options

    cfg = compose_config(f"experiment={experiment}", "anomaly_class=horse")
    for group in ("data", "model", "trainer"):
        check_options(cfg[group], group)
    instantiate(cfg.model)  # the model checks its own settings (remedies, protocol, scores)


def test_the_gpu_experiments_share_one_set_of_gpu_settings():
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    gpu = compose_config("experiment=gpu", "anomaly_class=horse")
    assert (
        gpu.trainer.precision == "bf16-mixed" and gpu.data.on_device and gpu.callbacks.progress_bar.refresh_rate == 50
    )
    assert gpu.callbacks.speedups.cudnn_benchmark and gpu.callbacks.speedups.matmul_precision == "high"
    for experiment in ("cifar10_gpu", "cifar10_paper"):
        cfg = compose_config(f"experiment={experiment}", "anomaly_class=horse")
        for key in (
            "data.on_device",
            "data.eval_batch_size",
            "trainer.accelerator",
            "trainer.precision",
            "callbacks.speedups",
            "callbacks.progress_bar",
        ):
            assert OmegaConf.select(cfg, key) == OmegaConf.select(gpu, key), (experiment, key)


def test_an_experiments_own_values_win_and_the_progress_bar_can_be_turned_off(tmp_path):
    """experiment=demo sets threads=1 over train.yaml's null; trainer.enable_progress_bar=false leaves the
    configured progress bar out (Lightning refuses a run that has both)."""
    assert compose_config("experiment=demo").threads == 1 and compose_config().threads is None
    done = run_cli(*TINY, *SYNTHETIC, "trainer.max_epochs=1", "+trainer.enable_progress_bar=false", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1


def test_the_evaluation_options_are_one_list_in_code_and_config():
    """conf/evaluation.yaml gives every model the options AnomalyDetector takes; resuming (train) and the report's
    setting names both read the list from the class."""
    from omegaconf import OmegaConf

    from fned_lightning.models.detector import EVALUATION_OPTIONS

    assert set(OmegaConf.load(REPO / "conf" / "evaluation.yaml")) == EVALUATION_OPTIONS
