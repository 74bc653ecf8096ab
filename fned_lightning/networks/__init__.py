"""Generators and discriminators as plain nn.Modules; the LightningModule wires them."""
