"""The LightningModules, one model a file: `detector.AnomalyDetector` is the evaluation they all share;
`reconstruction.ReconstructionDetector` the models that score by reconstructing (`gan.AnomalyGAN`'s
alternating G/D step for FNED, GANomaly and Skip-GANomaly; `fanogan.FAnoGAN`); `features.FeatureDetector`
the models of frozen ImageNet features fitted in one pass (PaDiM, PatchCore). docs/adding_a_model.md."""

from pathlib import Path

MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "conf" / "model"


def model_names() -> list[str]:
    """Every model config, conf/model/<name>.yaml: a new one joins the benchmarks and the tests."""
    return sorted(path.stem for path in MODEL_CONFIGS.glob("*.yaml"))


def config_class(name: str) -> type:
    """The class conf/model/<name>.yaml builds (its `_target_`, read from the file: nothing is built)."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    config = OmegaConf.load(MODEL_CONFIGS / f"{name}.yaml")
    return get_class(config.get("_target_") or config.model._target_)
