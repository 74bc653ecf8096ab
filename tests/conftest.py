"""Tiny data made on the spot (a fake CIFAR-10 folder copy, a fastener folder) and a CLI runner."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from fned_lightning.data.cifar10 import CIFAR10_CLASSES
from fned_lightning.models import config_class, model_names

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.generator.width=4", "model.discriminator.width=8", "logger=csv"]


def random_image(channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randint(
        0, 256, (channels, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory) -> Path:
    """CIFAR-10's folder layout with 3 training and 2 test JPEGs per class (50 images)."""
    root = tmp_path_factory.mktemp("cifar10")
    for split, count in (("train", 3), ("test", 2)):
        for c, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                write_jpeg(random_image(3, 32, 32, seed=100 * c + 10 * i + len(split)), str(folder / f"{i:04d}.jpg"))
    return root


@pytest.fixture(scope="session")
def parts_folder(tmp_path_factory) -> Path:
    """MVTec-style parts: 12 normal training images (grey, 40x48), 4 normal and 5 abnormal test images."""
    root = tmp_path_factory.mktemp("parts")
    layout = {"train/good": 12, "test/good": 4, "test/scratch": 3, "test/crack": 2}
    for seed, (folder, count) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            write_png(random_image(1, 40, 48, seed=10 * seed + i), str(root / folder / f"{i:03d}.png"))
    (root / "train/good/notes.txt").write_text("not an image")
    return root


def tiny_parts(data_class=None, **settings):
    """Tiny synthetic parts at 16x16 grey: 32 training images in batches of 8, 8 to validate, 8 + 8 to test."""
    from fned_lightning.data.synthetic import SyntheticParts

    defaults = dict(
        n_train=40, n_test_normal=8, n_test_abnormal=8, image_size=16, channels=1, batch_size=8, val_fraction=0.2
    )
    return (data_class or SyntheticParts)(**(defaults | settings))


def quiet_trainer(**settings):
    """A Lightning Trainer that writes and prints nothing of its own (any setting may be overridden)."""
    import lightning as L

    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**(defaults | settings))


def run_cli(
    *overrides: str, tmp_path: Path, module: str = "fned_lightning.train", process: bool = False
) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it, writing into tmp_path/run: `python -m module ...` run in
    this process (as `python -m` runs it: its exit code, stdout and stderr; 1 and the traceback for an
    error that escapes), or with `process` as a process of its own, for what a process is needed for
    (DDP's relaunch, a kill, a launcher that pickles the job). In this process it skips the 3-5 s of
    imports a process pays."""
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m: before the overrides, which argparse wants together
    rest = [o for o in overrides if not o.startswith("-")]
    arguments = [*flags, f"hydra.run.dir={tmp_path / 'run'}", *rest]
    if process:
        env = os.environ | {"WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
        command = [sys.executable, "-m", module, *arguments]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return run_in_this_process(module, arguments, tmp_path)


def run_in_this_process(
    module: str, arguments: list[str], cwd: Path, environment: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """`python -m module arguments` in this process, in `cwd`, with W&B off and `environment` (None: unset);
    what a run changes for the whole process is put back afterwards: the working folder, the environment,
    argv, the logging set-up, torch's threads, precision and backend flags, and the random generators."""
    import contextlib
    import io
    import logging
    import runpy
    import traceback
    import warnings

    out, err = io.StringIO(), io.StringIO()
    root, tips = logging.getLogger(), logging.getLogger("lightning.pytorch.utilities.rank_zero")
    saved = os.getcwd(), dict(os.environ), sys.argv, root.handlers[:], root.level, tips.filters[:]
    torch_settings = (
        torch.get_num_threads(),
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
    )
    os.environ.update(WANDB_MODE="disabled")
    for name, value in (environment or {}).items():
        os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    os.chdir(cwd)
    sys.argv = [module, *arguments]
    code = 0
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
            torch.random.fork_rng(devices=[]),
        ):
            warnings.simplefilter("ignore")
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=False)
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved[0])
        os.environ.clear()
        os.environ.update(saved[1])
        sys.argv = saved[2]
        torch.set_num_threads(torch_settings[0])
        torch.set_float32_matmul_precision(torch_settings[1])
        torch.backends.cudnn.benchmark = torch_settings[2]
        torch.use_deterministic_algorithms(torch_settings[3])
        for handler in root.handlers[:]:  # the run's own (its train.log, its console): closed, the suite's back
            if handler not in saved[3]:
                handler.close()
                root.removeHandler(handler)
        root.handlers[:] = saved[3]
        root.setLevel(saved[4])
        tips.filters[:] = saved[5]
    return subprocess.CompletedProcess([module, *arguments], code, out.getvalue(), err.getvalue())


def compose_config(*overrides: str, return_hydra: bool = False):
    """The real Hydra config, composed as the CLI would (with its `hydra` node if `return_hydra`)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra)


MODELS = model_names()  # a new model config joins every test of them all
TINY_SETTINGS = {  # models whose networks are trained: a few channels wide (any other runs as its config says)
    "fned": ["model.generator.width=4", "model.discriminator.width=8"],
    "ganomaly": ["model.generator.width=4", "model.discriminator.width=8", "model.generator.latent=8"],
    "skip_ganomaly": ["model.generator.width=4", "model.discriminator.width=8"],
    "fanogan": [
        "model.generator.width=4",
        "model.critic.width=4",
        "model.encoder.width=4",
        "model.latent=8",
        "model.critic_steps=2",
    ],
}
TINY_MODELS = {name: [f"model={name}", *TINY_SETTINGS.get(name, [])] for name in MODELS}


def models_of(family: str) -> list[str]:
    """The model configs whose class is of a family: `ReconstructionDetector` or `FeatureDetector`."""
    from fned_lightning.models.features import FeatureDetector
    from fned_lightning.models.reconstruction import ReconstructionDetector

    base = {"reconstruction": ReconstructionDetector, "features": FeatureDetector}[family]
    return [name for name in MODELS if issubclass(config_class(name), base)]


PROCESS_STARTERS = {"run_cli", "kill_after_first_checkpoint", "subprocess"}


def pytest_collection_modifyitems(items):
    """Tests that run the command line (in this process or as a process of its own) are marked `cli`:
    `make test-fast` leaves them out; `make test`, which CI runs, keeps them."""
    for item in items:
        functions = [getattr(item, "function", None)] + [
            definition.func for definitions in item._fixtureinfo.name2fixturedefs.values() for definition in definitions
        ]
        if any(f is not None and PROCESS_STARTERS & set(f.__code__.co_names) for f in functions):
            item.add_marker(pytest.mark.cli)
