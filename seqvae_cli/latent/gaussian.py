"""The diagonal Gaussian and the standard normal: densities, KL, reparameterised samples."""
from __future__ import annotations

import math

import torch



LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per dimension, same shape as mu."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def sample_posterior(mu: torch.Tensor, logvar: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Reparameterised samples z ~ q(z|x), shape [S, B, D]."""
    eps = torch.randn((num_samples,) + tuple(mu.shape), device=mu.device, dtype=mu.dtype)
    return mu + eps * (0.5 * logvar).exp()
