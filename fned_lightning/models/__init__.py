"""The LightningModules, one model a file: `detector.AnomalyDetector` is the evaluation they all share;
`reconstruction.ReconstructionDetector` the models that score by reconstructing (`gan.AnomalyGAN`'s
alternating G/D step for FNED, GANomaly and Skip-GANomaly; `fanogan.FAnoGAN`); `features.FeatureDetector`
the models of frozen ImageNet features fitted in one pass (PaDiM, PatchCore). docs/adding_a_model.md."""
