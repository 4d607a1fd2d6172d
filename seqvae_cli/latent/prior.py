"""p(z): the prior of a model's latent. A prior is a module (a learned one owns parameters, which then reach the
optimiser and the checkpoint with the model's) with

  prior.log_prob(z)                 [...]    log p(z) summed over the last dimension
  prior.sample(n, generator)        [n, D]   draws for pictures and prior samples

Today's one is the standard normal N(0, I).
"""
from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class Prior(nn.Module):
    latent_dim: int

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        raise NotImplementedError


class StandardNormal(Prior):
    """prior=standard: N(0, I); no parameters."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        """n draws from `generator` (a CPU one gives the same pictures on every device), moved to `device`."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        return z if device is None else z.to(device)
