"""`python -m fned_lightning.bench [--out bench/results.json]`: speed of every model, on this machine.

For each model at 32x32, batch 64: training images/s (a whole G+D step through Lightning, as a
user runs it), inference images/s (scores, anomaly maps and reconstructions, `torch.inference_mode`)
and what the maps alone cost (ms per image, share of inference), the
FLOPs per image of both (torch.utils.flop_counter; one FLOP = one multiply or one add) and the
GFLOP/s they achieve; the data path alone (datamodule to a ready batch on the device); and, as
the machine's own yardstick, a large 3x3 convolution forward + backward, timed just before and
just after each training step. Medians of `--repeats` after `--warmup`. A benchmark: it asserts nothing.
"""

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from fned_lightning.callbacks import Speedups
from fned_lightning.data.synthetic import SyntheticParts
from fned_lightning.loggers import hide_lightning_tips
from fned_lightning.models import config_class, model_names
from fned_lightning.scoring import residual_map, smooth

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = model_names()


def median_seconds(step, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class ConvYardstick:
    """A large 3x3 convolution, forward + backward: about the best this machine does on conv work."""

    FLOPS = 3 * 2 * 64 * 32 * 32 * 128 * 128 * 9  # forward, and the two backward convolutions

    def __init__(self, device: torch.device):
        self.device = device
        self.conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device)
        self.x = torch.randn(64, 128, 32, 32, device=device, requires_grad=True)
        self.seconds()  # warm-up

    def seconds(self) -> float:
        start = time.perf_counter()
        self.conv(self.x).sum().backward()
        sync(self.device)
        return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Times each training step, and a yardstick step just before and just after it: a shared
    machine's speed drifts within seconds, so the steps are compared with the machine as it was
    around them."""

    def __init__(self, yardstick: ConvYardstick):
        self.yardstick = yardstick
        self.times: list[float] = []
        self.yardstick_times: list[float] = []  # the mean of the two around each step

    def on_train_batch_start(self, *_):
        self._before = self.yardstick.seconds()
        sync(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, *_):
        sync(self.device)
        self.times.append(time.perf_counter() - self._start)
        self.yardstick_times.append((self._before + self.yardstick.seconds()) / 2)

    def setup(self, trainer, pl_module, stage):
        self.device = pl_module.device


def model_config(name: str, image_size: int):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train", overrides=[f"model={name}", "data=synthetic", f"data.image_size={image_size}", "data.channels=3"]
        )


def models_of_kind(pretrained: str) -> list[str]:
    """The model configs whose class is pretrained ("yes"), trained from scratch ("no"), or all of them."""
    if pretrained == "all":
        return list(MODELS)
    return [name for name in MODELS if config_class(name).pretrained == (pretrained == "yes")]


def bench_parts(n_train: int, image_size: int, batch_size: int) -> SyntheticParts:
    """Synthetic colour parts to time on: `n_train` training images, none held out, 8 + 8 to test."""
    return SyntheticParts(
        n_train=n_train,
        n_test_normal=8,
        n_test_abnormal=8,
        image_size=image_size,
        channels=3,
        batch_size=batch_size,
        val_fraction=0.0,
    )


def training_only(accelerator: str, epochs: int, callbacks: list, precision: str = "32-true") -> L.Trainer:
    """A Trainer that trains on one device and does nothing else: no validation, logs or checkpoints."""
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs,
        precision=precision,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def bench_model(
    name: str,
    batch_size: int,
    image_size: int,
    repeats: int,
    warmup: int,
    accelerator: str,
    channels_last: bool = False,
) -> dict:
    cfg = model_config(name, image_size)
    data = bench_parts(batch_size * (repeats + warmup + 1), image_size, batch_size)
    model = instantiate(cfg.model)
    timer = StepTimer(ConvYardstick(torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")))
    trainer = training_only(accelerator, model.fit_epochs, [timer, Speedups(channels_last=channels_last)])
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)  # f-AnoGAN needs two epochs: the first its WGAN-GP, the second its encoder
    fit_seconds = time.perf_counter() - start  # the whole fit: a feature model's own fitting at the end included
    first_epoch = len(timer.times) // model.fit_epochs
    cycle = model.hparams.get("critic_steps", 1)  # f-AnoGAN: a generator update every `critic_steps` batches
    timed = slice(warmup, min(warmup + cycle, first_epoch) if cycle > 1 else first_epoch)
    train_seconds = (statistics.mean if cycle > 1 else statistics.median)(timer.times[timed])
    yardstick_gflop_per_s = ConvYardstick.FLOPS / statistics.median(timer.yardstick_times[timed]) / 1e9

    device = model.device
    x = torch.rand(batch_size, 3, image_size, image_size, device=device) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()

    def infer():
        with torch.inference_mode():
            model(x)
        sync(device)

    infer_seconds = median_seconds(infer, repeats, warmup)  # maps included: every forward computes them
    with torch.inference_mode():
        detection = model(x)

    def maps():  # a reconstruction model's anomaly maps alone, to see what they add to inference
        with torch.inference_mode():
            smooth(residual_map(x, detection.x_fake), model.map_sigma)
        sync(device)

    map_seconds = median_seconds(maps, repeats, warmup) if detection.x_fake is not None else math.nan
    with torch.no_grad(), FlopCount() as counter:  # inference_mode would skip the counting mode
        model(x)
    infer_flops = counter.total / batch_size
    train_flops = training_flops(name, batch_size, image_size) / batch_size
    train_gflop_per_s = train_flops * batch_size / train_seconds / 1e9
    return {
        "fit_images_per_s": len(data.train_set) * model.fit_epochs / fit_seconds,
        "train_images_per_s": batch_size / train_seconds,
        "train_gflop_per_image": train_flops / 1e9,
        "train_gflop_per_s": train_gflop_per_s,
        "yardstick_gflop_per_s": yardstick_gflop_per_s,
        "train_fraction_of_yardstick": train_gflop_per_s / yardstick_gflop_per_s,
        "infer_images_per_s": batch_size / infer_seconds,
        "infer_gflop_per_image": infer_flops / 1e9,
        "infer_gflop_per_s": infer_flops * batch_size / infer_seconds / 1e9,
        "map_ms_per_image": map_seconds / batch_size * 1e3,
        "map_share_of_inference": map_seconds / infer_seconds,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


class FlopCount(TorchDispatchMode):
    """Counts FLOPs with torch's formulas, like FlopCounterMode but without its module hooks,
    which break on the double backward of f-AnoGAN's gradient penalty."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._overloadpacket in flop_registry:
            self.total += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        return out


class FirstEpochFlops(L.Callback):
    """Counts every forward and backward FLOP of the first training epoch."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.counter = FlopCount()
            self.counter.__enter__()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.counter.__exit__(None, None, None)


def training_flops(name: str, batch_size: int, image_size: int) -> float:
    """FLOPs of one training step (all its forwards and backwards), counted on the CPU; for f-AnoGAN,
    averaged over one cycle of `critic_steps` critic updates and one generator update."""
    model = instantiate(model_config(name, image_size).model)
    batches = model.hparams.get("critic_steps", 1)
    counter = FirstEpochFlops()
    training_only("cpu", model.fit_epochs, [counter]).fit(
        model, datamodule=bench_parts(batch_size * batches, image_size, batch_size)
    )
    return counter.counter.total / batches


def bench_data_path(batch_size: int, image_size: int, repeats: int, device: torch.device) -> dict:
    """uint8 tensors in memory -> a float batch in [-1, 1] on the device, as training gets it."""
    data = bench_parts(batch_size * 64, image_size, batch_size)
    data.setup("fit")

    def epoch():
        for batch in data.train_dataloader():
            images = data.on_after_batch_transfer(tuple(t.to(device) for t in batch), 0)[0]
        sync(device)
        return images

    seconds = median_seconds(epoch, repeats, 1)
    return {"images_per_s": len(data.train_set) // batch_size * batch_size / seconds}


def table(results: dict) -> str:
    lines = [
        f"device: {results['device']}, torch {results['torch']}, threads {results['threads']}, "
        f"channels_last {results['channels_last']}; data path: {results['data_path']['images_per_s']:.0f} images/s",
        "| model | fit img/s | train img/s | train GFLOP/img | train GFLOP/s | 3x3 conv GFLOP/s | of it "
        "| infer img/s | infer GFLOP/img | infer GFLOP/s | map ms/img | map share | params (M) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        no_maps = math.isnan(r["map_ms_per_image"])  # a feature model: its maps are its inference
        lines.append(
            f"| {name} | {r['fit_images_per_s']:.1f} | {r['train_images_per_s']:.1f} | "
            f"{r['train_gflop_per_image']:.3f} | {r['train_gflop_per_s']:.1f} | {r['yardstick_gflop_per_s']:.1f} | "
            f"{r['train_fraction_of_yardstick']:.2f} | "
            f"{r['infer_images_per_s']:.1f} | {r['infer_gflop_per_image']:.3f} | {r['infer_gflop_per_s']:.1f} | "
            f"{'—' if no_maps else format(r['map_ms_per_image'], '.3f')} | "
            f"{'—' if no_maps else format(r['map_share_of_inference'], '.1%')} | {r['parameters_m']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    hide_lightning_tips()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--models", nargs="+", choices=MODELS, help="default: every model of --pretrained")
    parser.add_argument(
        "--pretrained",
        choices=("yes", "no", "all"),
        default="all",
        help="which models by default: those on a pretrained backbone (make bench times them at 224 px), "
        "those trained from scratch (at 32 px), or all",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last weights and inputs, as training uses them by default",
    )
    args = parser.parse_args(argv)
    args.models = args.models or models_of_kind(args.pretrained)
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "channels_last": args.channels_last,
        "data_path": bench_data_path(args.batch_size, args.image_size, args.repeats, device),
        "models": {},
    }
    for name in args.models:
        r = bench_model(
            name, args.batch_size, args.image_size, args.repeats, args.warmup, args.accelerator, args.channels_last
        )
        r["data_path_vs_train_step"] = results["data_path"]["images_per_s"] / r["train_images_per_s"]
        results["models"][name] = r
        print(
            f"{name}: {r['train_images_per_s']:.1f} train images/s, {r['infer_images_per_s']:.1f} inference images/s",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
