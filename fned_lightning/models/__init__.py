"""The LightningModules, one model a file: `detector.AnomalyDetector` is the evaluation they share;
`fned.AnomalyGAN` is FNED's alternating G/D training step, which GANomaly and Skip-GANomaly reuse
with their own losses and scores; `fanogan.FAnoGAN` trains a WGAN-GP, then an encoder."""
