"""seqvae: config-driven VAE experiments (MNIST, text, time series)."""

__version__ = "0.1.0"
