"""Backbones (image -> embedding) found through `registry`, and the AE/VAE extractors."""
