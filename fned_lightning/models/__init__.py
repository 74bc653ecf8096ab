"""The LightningModules, one model a file: `detector.AnomalyDetector` is the evaluation they share;
`gan.AnomalyGAN` the alternating G/D training step of FNED (`fned.py`), GANomaly and Skip-GANomaly,
each of which gives its own losses and score; `fanogan.FAnoGAN` trains a WGAN-GP, then an encoder."""
