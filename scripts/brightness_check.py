"""How far global brightness alone ranks a folder's test set, before and after data.intensity=per_image:
the AUROC of each image's mean grey level and of its standard deviation, used as anomaly scores.

    python scripts/brightness_check.py ../shared/datasets/mvtec_screw [image_size] [channels]
"""

import sys

from fned_lightning.data.base import to_model_range
from fned_lightning.data.folder import ImageFolderAnomaly
from fned_lightning.models.intensity import image_moments, match_intensity
from fned_lightning.scoring import ranking_metrics


def main(root: str, image_size: int = 64, channels: int = 1) -> None:
    data = ImageFolderAnomaly(root=root, image_size=image_size, channels=channels, intensity="per_image")
    data.setup("fit")
    reference_mean, reference_std = data.intensity_reference()
    test, labels = to_model_range(data.test_set.images), data.test_set.labels
    matched = match_intensity(test, reference_mean, reference_std)  # what the model sees
    print(
        f"{root} at {image_size}x{image_size}: "
        f"{int((labels == 0).sum())} normal, {int(labels.sum())} abnormal test images"
    )
    print("| score | intensity=none | intensity=per_image |\n|---|---|---|")
    for name, index in (("mean grey level", 0), ("standard deviation", 1)):
        before, after = (ranking_metrics(image_moments(x)[index].flatten(), labels)["auroc"] for x in (test, matched))
        print(f"| {name} | {before:.3f} | {after:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
