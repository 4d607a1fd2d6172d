"""A part from outside the package, as a user writes one (docs/extending.md): a linear VAE for flat images.

seqvae imports this module when the user names it (SEQVAE_PARTS=toy_parts, with this folder on PYTHONPATH);
the decorator registers the class, and a config may then say `model._target_: toy_parts.ToyVAE`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqvae_cli.models.base import LatentModel
from seqvae_cli.parts import register


@register("model")
class ToyVAE(LatentModel):
    """q(z|x) from the pixels themselves (the posterior head's linear maps); p(x|z) Bernoulli, logits W z + b."""

    def __init__(self, input_dim: int, latent_dim: int = 2, name: str = "toy") -> None:
        super().__init__()     # input_dim comes from the data module (model_kwargs); the rest from the YAML
        self.latent_dim = latent_dim
        self.add_latent(input_dim, latent_dim)     # q(z|x) from h = x, and the prior (prior=..., posterior=...)
        self.decoder = nn.Linear(latent_dim, input_dim)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["x"]                                            # h [B, input_dim]

    def log_likelihood(self, batch: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(z)                                     # z [S, B, D] -> [S, B, input_dim]
        x = batch["x"].expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)   # [S, B]

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]
