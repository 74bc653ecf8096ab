"""GANomaly's generator (Akcay et al. 2018): encoder -> decoder -> encoder, DCGAN blocks throughout."""

import torch
from torch import nn

from fned_lightning.networks.dcgan import DCGANDecoder, DCGANEncoder


class GANomalyGenerator(nn.Module):
    """x -> (x_fake, z, z_hat): z = G_E(x), x_fake = G_D(z), z_hat = E(x_fake)."""

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 64, latent: int = 100):
        super().__init__()
        self.encoder = DCGANEncoder(image_size, channels, width, latent)
        self.decoder = DCGANDecoder(image_size, channels, width, latent)
        self.reencoder = DCGANEncoder(image_size, channels, width, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        x_fake = self.decoder(z)
        return x_fake, z.flatten(1), self.reencoder(x_fake).flatten(1)
