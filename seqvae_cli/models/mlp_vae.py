"""model=mlp_vae and model=ae: fully connected networks for flat images."""
from __future__ import annotations

import torch
from torch import nn

from seqvae_cli.config.rules import check_arguments, one_of, positive_int_list
from seqvae_cli.data.base import Batch
from seqvae_cli.models.base import LatentModel
from seqvae_cli.nn.kernels import pixel_log_likelihood, pixel_mean
from seqvae_cli.nn.mlp import ACTIVATIONS, mlp


class MLPVAE(LatentModel):
    """Fully connected VAE for flat images; 784-400-20 with ReLU is the pytorch/examples model.

    Layer creation order (encoder, mu head, logvar head, decoder) matches pytorch/examples, so the
    same seed gives the same initial weights as that script.
    """

    RULES = {
        "hidden_sizes": positive_int_list(),
        "activation": one_of(*ACTIVATIONS),
        **LatentModel.RULES,
        "likelihood": one_of("bernoulli", "gaussian"),
    }

    def __init__(self, input_dim: int, hidden_sizes: list[int], latent_dim: int, activation: str = "relu",
                 likelihood: str = "bernoulli", name: str = "mlp_vae") -> None:
        super().__init__()
        check_arguments("model", self.RULES, hidden_sizes=hidden_sizes, activation=activation, latent_dim=latent_dim,
                        likelihood=likelihood)
        hidden = list(hidden_sizes)
        self.input_dim, self.latent_dim, self.likelihood = input_dim, latent_dim, likelihood
        self.pseudo_input_shape = (input_dim,)
        self.encoder = nn.Sequential(mlp([input_dim] + hidden, activation), ACTIVATIONS[activation]())
        self.add_latent(hidden[-1], latent_dim)
        self.decoder = mlp([latent_dim] + hidden[::-1] + [input_dim], activation)
        if likelihood == "gaussian":
            # One learned log-std per pixel, shared by all examples (a homoscedastic Gaussian decoder).
            self.log_std = nn.Parameter(torch.zeros(input_dim))

    def features(self, batch: Batch) -> torch.Tensor:
        return self.encoder(batch["x"])

    def log_likelihood(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)                      # [S, B, input_dim]
        x = batch["x"].unsqueeze(0).expand_as(out)
        return pixel_log_likelihood(out, x, self.likelihood, getattr(self, "log_std", None))

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return pixel_mean(self.decoder(z), self.likelihood)


class MLPAutoencoder(MLPVAE):
    """The deterministic baseline: same networks, z is the encoder's mean, no noise and no KL."""

    variational = False
