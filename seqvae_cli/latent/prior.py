"""p(z): the prior of a model's latent. A prior is a module (a learned one owns parameters, which then reach the
optimiser and the checkpoint with the model's) with

  prior.log_prob(z)                 [...]    log p(z) summed over the last dimension
  prior.sample(n, generator)        [n, D]   draws for pictures and prior samples

The families: the standard normal N(0, I) here (prior=standard), a mixture of learned Gaussians (latent/mog.py,
prior=mog) and the VampPrior (latent/vamp.py, prior=vamp: the mixture of the posteriors of learned pseudo-inputs).
"""
from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class Prior(nn.Module):
    latent_dim: int
    # The rules of the constructor's keys (prior.<key>): validate() applies them to the config, the constructor
    # to its arguments (config/rules.check_arguments).
    RULES: dict = {}

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


def mixture_log_prob(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor,
                     log_weights: torch.Tensor) -> torch.Tensor:
    """log sum_k w_k N(z; means_k, diag(exp(logvars_k))) for z [..., D] and K components [K, D] -> [...].

    The squared distances come from matrix products ([rows, K] at a time, as evaluation's mutual information does),
    so the [rows, K, D] tensor is never built: with K = 500 pseudo-inputs and 65536 importance samples per chunk it
    would be gigabytes."""
    shape = z.shape[:-1]
    flat = z.reshape(-1, z.shape[-1])
    inv_var = (-logvars).exp()                                                     # [K, D]
    const = (means.pow(2) * inv_var).sum(-1) + logvars.sum(-1) + z.shape[-1] * LOG_2PI   # [K]
    quad = flat.pow(2) @ inv_var.T - 2.0 * flat @ (means * inv_var).T + const      # [rows, K]
    return torch.logsumexp(-0.5 * quad + log_weights, -1).reshape(shape)


def mixture_sample(n: int, means: torch.Tensor, logvars: torch.Tensor, log_weights: torch.Tensor,
                   generator: torch.Generator | None) -> torch.Tensor:
    """n draws from the mixture, the components and the noise drawn from `generator` (on the CPU) -> [n, D] there."""
    weights = log_weights.detach().float().softmax(-1).cpu()
    picked = torch.multinomial(weights, n, replacement=True, generator=generator)
    eps = torch.randn(n, means.shape[-1], generator=generator)
    means, std = means.detach().float().cpu(), (0.5 * logvars.detach().float()).exp().cpu()
    return means[picked] + std[picked] * eps
