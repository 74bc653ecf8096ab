"""Every user mistake we know of, as a user makes it on the command line: exit code 2, one line on
stderr that names the option or the file (and the fix), and nothing created or left behind."""

from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from tests.conftest import MODELS, TINY, TINY_MODELS, random_image, run_cli, run_in_this_process

SYNTHETIC = [
    "data=synthetic",
    "data.n_train=48",
    "data.n_test_normal=8",
    "data.n_test_abnormal=8",
    "data.batch_size=16",
]
FANOGAN = TINY_MODELS["fanogan"]  # its own widths: it has no model.discriminator
HEAD = ["experiment=parts_head", "data=synthetic", "model.head.width=4"]  # FNED with a segmentation head
TRAIN, PREDICT, EXPORT, REPORT = (
    "fned_lightning.train",
    "fned_lightning.predict",
    "fned_lightning.export",
    "fned_lightning.report",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny FNED run at 16x16 grey: a checkpoint to resume, predict and export from."""
    tmp_path = tmp_path_factory.mktemp("trained")
    done = run_cli(*TINY, *SYNTHETIC, "data.image_size=16", "trainer.max_epochs=1", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "run"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Things a user points at by mistake: a plain file, a damaged checkpoint, an empty folder."""
    root = tmp_path_factory.mktemp("files")
    (root / "afile.png").write_bytes(b"not a folder")
    (root / "damaged.ckpt").write_bytes(bytes(range(256)) * 4)
    (root / "empty").mkdir()
    for folder in ("train/good", "test/good", "test/crack"):  # a training set of one image
        (root / "one" / folder).mkdir(parents=True)
        write_png(random_image(1, 16, 16, seed=len(folder)), str(root / "one" / folder / "0.png"))
    return root


# (module, arguments, what the one line must say); {run}: the trained run, {files}: the folder above
MISTAKES = [
    (TRAIN, ["anomaly_class=horses"], "unknown anomaly_class 'horses'; choose one of: airplane, automobile"),
    (TRAIN, [], "needs an anomaly class, e.g. anomaly_class=horse"),
    (
        TRAIN,
        ["anomaly_class=horse", "data.root=/nonexistent/cifar", "data.download=false"],
        "no CIFAR-10 at data.root=/nonexistent/cifar",
    ),
    (TRAIN, ["data=folder", "data.root=/nonexistent/parts"], "/nonexistent/parts/train/good"),
    (TRAIN, ["data=folder"], "data.root has no value and needs one: add data.root=... to the command"),
    (TRAIN, ["data=folder", "data.root={files}/afile.png"], "data.root={files}/afile.png is a file, not a folder"),
    (TRAIN, ["data=folder", "data.root={files}/empty"], "{files}/empty/train/good"),
    (TRAIN, [*SYNTHETIC, "data.image_size=40"], "data.image_size=40 is not a multiple of 16"),
    (TRAIN, [*SYNTHETIC, "data.image_size=48"], "data.image_size=48 is not a power of two, which DCGANDiscriminator"),
    (TRAIN, [*SYNTHETIC, *FANOGAN, "data.image_size=96"], "data.image_size=96 is not a power of two"),
    (TRAIN, [*SYNTHETIC, "data.channels=2"], "data.channels must be 1 (grey) or 3 (colour), got 2"),
    (TRAIN, ["data=folder", "data.root=~/parts"], """write 'data.root="~/parts"'"""),
    (TRAIN, ["data=folder", "data.root=/srv/pièces"], """write 'data.root="/srv/pièces"'"""),
    (TRAIN, [*SYNTHETIC, "data.val_fraction=0"], "data.val_fraction=0 of 48 normal training image(s) leaves 0 to"),
    (
        TRAIN,
        ["data=folder", "data.root={files}/one", "data.channels=1", "data.image_size=16"],
        "data.val_fraction=0.1 of 1 normal training image(s) leaves 0 to validate and 1 to train on",
    ),
    (TRAIN, [*SYNTHETIC, "model.generator.width=0"], "model.generator.width must be a whole number >= 1, got 0"),
    (TRAIN, [*SYNTHETIC, "data.on_device=true", "data.num_workers=2"], "give data.num_workers=0"),
    (TRAIN, [*SYNTHETIC, "trainer.limit_val_batches=0"], "trainer.limit_val_batches=0 skips the validation"),
    (TRAIN, [*SYNTHETIC, *FANOGAN, "model.critic.width=-2"], "model.critic.width must be a whole number >= 1"),
    (TRAIN, [*SYNTHETIC, "data.batch_size=-4"], "data.batch_size must be a whole number >= 1, got -4"),
    (TRAIN, [*SYNTHETIC, "data.eval_batch_size=0"], "data.eval_batch_size must be a whole number >= 1, got 0"),
    (TRAIN, [*SYNTHETIC, "data.n_train=many"], "data.n_train must be a whole number >= 2, got 'many'"),
    (TRAIN, [*SYNTHETIC, "data.val_fraction=1.5"], "data.val_fraction must be in [0, 1), got 1.5"),
    (TRAIN, [*SYNTHETIC, "data.intensity=bright"], "unknown data.intensity=bright; choose one of: none, per_image"),
    (TRAIN, [*SYNTHETIC, "seed=abc"], "seed must be a whole number >= 0"),
    (TRAIN, [*SYNTHETIC, "seed=-1"], "seed must be a whole number >= 0"),
    (TRAIN, [*SYNTHETIC, "threads=0"], "threads must be a whole number >= 1, got 0"),
    (TRAIN, [*SYNTHETIC, "protocol=best"], "unknown protocol=best; choose one of: honest, paper, both"),
    (TRAIN, [*SYNTHETIC, "trainer.max_epochs=-1"], "trainer.max_epochs must be a whole number >= 1, got -1"),
    (
        TRAIN,
        [*SYNTHETIC, "trainer.max_epoch=1"],
        "trainer.max_epoch is not a key of the config; did you mean trainer.max_epochs?",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "+trainer.max_epoch=1"],
        "trainer.max_epoch is not an option of Trainer; did you mean trainer.max_epochs",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "+model.score_weigth=0.5"],
        "model.score_weigth is not an option of FNED; did you mean model.score_weight",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "+data.n_trian=8"],
        "data.n_trian is not an option of SyntheticParts; did you mean data.n_train",
    ),
    (TRAIN, [*SYNTHETIC, "model=fnedd"], f"unknown model=fnedd; choose one of: {', '.join(MODELS)}"),
    (TRAIN, [*SYNTHETIC, "data=parts"], "unknown data=parts; choose one of: cifar10, folder, synthetic"),
    (TRAIN, [*SYNTHETIC, "model.lr=-1"], "model.lr must be a number > 0, got -1"),
    (TRAIN, [*SYNTHETIC, "model=ganomaly", "model.generator.widht=8"], "did you mean model.generator.width?"),
    (TRAIN, [*SYNTHETIC, "model.betas=[0.5]"], "model.betas must be two numbers in [0, 1)"),
    (TRAIN, [*SYNTHETIC, "model.loss_weights.con=-20"], "model.loss_weights.con must be a number >= 0, got -20"),
    (TRAIN, [*SYNTHETIC, "model.image_score=mean"], "unknown model.image_score=mean; choose one of: paper, map_max"),
    (TRAIN, [*SYNTHETIC, "model.map_sigma=-1"], "model.map_sigma must be a number >= 0, got -1"),
    (
        TRAIN,
        [*SYNTHETIC, "model.train_corruption=blur"],
        "unknown model.train_corruption=blur; choose one of: none, noise, patches",
    ),
    (TRAIN, [*SYNTHETIC, "data.val_defects=-1"], "data.val_defects must be a whole number >= 0, got -1"),
    (
        TRAIN,
        [*SYNTHETIC, "data.val_defects=8"],
        "data.val_defects=8 needs more than 8 normal and abnormal test images, but "
        "the test set has 8 normal and 8 abnormal: give a smaller data.val_defects",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "data.paper_test_batches=sorted"],
        "unknown data.paper_test_batches=sorted; choose one of: anchors, mixed",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "model.anomaly_sources=[paint]"],
        "model.anomaly_sources=['paint']: choose one or more of: colour, image, noise",
    ),
    (
        TRAIN,
        [*SYNTHETIC, *HEAD, "model.train_corruption=patches", "model.corruption_strength=0.25"],
        "model.head trains on simulated anomalies, which take the place of model.train_corruption=patches",
    ),
    (
        TRAIN,
        [*SYNTHETIC, *HEAD, "model.head.depth=8"],
        "model.head.depth=8 needs a data.image_size that is a multiple of 256, got 128",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "model.generator.skip_levels=7"],
        "model.generator.skip_levels must be 0 (the paper's) to 4, got 7",
    ),
    (
        TRAIN,
        [*SYNTHETIC, *FANOGAN, "trainer.max_epochs=1"],
        "model=fanogan trains a GAN and then an encoder: it needs trainer.max_epochs >= 2",
    ),
    (TRAIN, [*SYNTHETIC, *FANOGAN, "model.critic_steps=0"], "model.critic_steps must be a whole number >= 1, got 0"),
    (
        TRAIN,
        [*SYNTHETIC, "model=padim", "trainer.max_epochs=3"],
        "model=padim is fitted in one pass over the training "
        "images, with no optimiser: trainer.max_epochs=3 does not apply; give trainer.max_epochs=1",
    ),
    (TRAIN, [*SYNTHETIC, "model=patchcore", "protocol=both"], "protocol=both does not apply; give protocol=honest"),
    (
        TRAIN,
        [*SYNTHETIC, "model=padim", "trainer.limit_train_batches=0"],
        "model=padim has not been fitted, so it cannot score",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "model=padim", "model.backbone=vgg16"],
        "unknown model.backbone=vgg16; choose one of: efficientnet_lite0, wide_resnet50_2, resnet18",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "model=padim", "model.strides=[8,64]"],
        "model.strides=[8, 64]: give distinct strides of efficientnet_lite0's stages",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "model=padim", "model.n_features=1000"],
        "model.n_features=1000: the chosen stages of efficientnet_lite0 have 152 channels",
    ),
    (TRAIN, [*SYNTHETIC, "model=patchcore", "model.coreset_ratio=0"], "model.coreset_ratio must be a number > 0"),
    (TRAIN, [*SYNTHETIC, "model=patchcore", "model.neighbourhood=2"], "model.neighbourhood=2 must be odd"),
    (TRAIN, [*SYNTHETIC, "hydra.run.dir={files}/afile.png/run"], "cannot create the run folder {files}/afile.png/run"),
    (TRAIN, [*SYNTHETIC, "ckpt_path=/nonexistent/last.ckpt"], "no checkpoint at ckpt_path=/nonexistent/last.ckpt"),
    (
        TRAIN,
        [*SYNTHETIC, "data.image_size=16", "model=ganomaly", "ckpt_path={run}/checkpoints/last.ckpt"],
        "it was trained with other settings: the model (FNED there, GANomaly here)",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "data.image_size=32", "ckpt_path={run}/checkpoints/last.ckpt"],
        "data.image_size (16 there, 32 here)",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "data.image_size=16", "model.generator.width=8", "ckpt_path={run}/checkpoints/last.ckpt"],
        "model.generator.width (4 there, 8 here)",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "data.image_size=16", "model.lr=0.001", "ckpt_path={run}/checkpoints/last.ckpt"],
        "model.lr (0.0002 there, 0.001 here)",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "data.image_size=16", "data.intensity=per_image", "ckpt_path={run}/checkpoints/last.ckpt"],
        "model.intensity (none there, per_image here)",
    ),
    (
        TRAIN,
        [*SYNTHETIC, "data.image_size=16", "ckpt_path={files}/damaged.ckpt"],
        "cannot read {files}/damaged.ckpt as a checkpoint",
    ),
    (
        PREDICT,
        ["ckpt_path={files}/damaged.ckpt", "input={files}"],
        "cannot read {files}/damaged.ckpt as a checkpoint: it is damaged",
    ),
    (PREDICT, ["ckpt_path={run}/metrics.json", "input={files}"], "cannot read {run}/metrics.json as a checkpoint"),
    (PREDICT, ["ckpt_path={run}/checkpoints/last.ckpt", "input=/nonexistent"], "no images found at input=/nonexistent"),
    (
        PREDICT,
        ["ckpt_path={run}/checkpoints/last.ckpt", "input={files}", "decision=best"],
        "unknown decision=best; choose one of: calibrated, paper",
    ),
    (PREDICT, ["input={files}"], "ckpt_path has no value and needs one"),
    (
        EXPORT,
        ["ckpt_path={run}/checkpoints/last.ckpt", "format=tflite"],
        "unknown format=tflite; choose one of: onnx, pt2",
    ),
    (
        EXPORT,
        ["ckpt_path={run}/checkpoints/last.ckpt", "output={files}/afile.png/model.onnx"],
        "cannot write to output={files}/afile.png/model.onnx ({files}/afile.png is a file)",
    ),
    (REPORT, ["{files}/empty"], "no runs under {files}/empty"),
    (REPORT, ["/nonexistent/multirun"], "no such folder: /nonexistent/multirun"),
]
if not torch.cuda.is_available():
    MISTAKES.append((TRAIN, [*SYNTHETIC, "trainer.accelerator=gpu"], "trainer.accelerator=gpu, but torch sees no"))


# these run as their own process too, the strictest check (a real command's whole stderr); the rest run
# in this process, as `python -m` would, to keep the suite fast
AS_A_PROCESS = {
    "unknown model=fnedd",
    "trainer.max_epochs must be a whole number",
    "cannot create the run folder",
    "the model (FNED there, GANomaly here)",
    "it is damaged",
    "unknown format=tflite",
    "no runs under",
}


def tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("module,arguments,message", MISTAKES, ids=[" ".join(a)[-60:] or m for m, a, _ in MISTAKES])
def test_every_mistake_gets_one_line_exit_2_and_leaves_nothing(tmp_path, trained, files, module, arguments, message):
    fill = {"run": trained, "files": files}
    arguments = [a.format(**fill) for a in arguments]
    if module == TRAIN:
        other_model = any(a.startswith("model=") and a != "model=fned" for a in arguments)  # TINY's widths are FNED's
        arguments = [*(["logger=csv"] if other_model else TINY), *arguments]
        if not any(a.startswith("hydra.run.dir=") for a in arguments):
            arguments.append(f"hydra.run.dir={tmp_path / 'run'}")
    before = tree(tmp_path), tree(files), tree(trained)
    done = run_in_this_process(module, arguments, tmp_path)
    runs = [(done.returncode, done.stderr)]
    if any(key in message for key in AS_A_PROCESS):
        runs.append(as_a_process(module, arguments, tmp_path))
    for returncode, stderr in runs:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert returncode == 2, stderr[-2000:]
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
        assert message.format(**fill) in lines[0]
        assert (tree(tmp_path), tree(files), tree(trained)) == before  # nothing created, nothing left behind


def as_a_process(module: str, arguments: list[str], cwd: Path) -> tuple[int, str]:
    """`python -m module arguments` as a user types it: (exit code, stderr)."""
    import os
    import subprocess
    import sys

    env = os.environ | {"WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(
        [sys.executable, "-m", module, *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "environment,message",
    [
        ({}, "there is no W&B API key here: run wandb login"),
        ({"WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}, "127.0.0.1:9 cannot be reached"),
    ],
)
def test_live_wandb_with_no_key_or_no_network_is_refused_before_training(tmp_path, environment, message):
    """logger.wandb.offline=false: W&B would ask for a key, or wait for its server; one line instead."""
    unset = {name: None for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC")}
    arguments = [*TINY, *SYNTHETIC, "logger=[csv,wandb]", "logger.wandb.offline=false", "hydra.run.dir=run"]
    arguments.remove("logger=csv")
    # HOME: no ~/.netrc, so no key from `wandb login`
    environment = unset | {"HOME": str(tmp_path), "HYDRA_FULL_ERROR": "1"} | environment
    done = run_in_this_process(TRAIN, arguments, tmp_path, environment)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()
