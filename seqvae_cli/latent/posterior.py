"""q(z|x): the posterior a model's encoder gives for a batch, and the network head that makes it.

Everything downstream (the objective, IW-NLL, active units, mutual information, anomaly scores, pictures) reads
the latent only through a Posterior and the model's Prior (prior.py):

  posterior.mean                   [B, D]     a code per example (the mean, pushed through a flow): for pictures
  posterior.base                   DiagonalGaussian  the Gaussian a flow starts from (itself for the Gaussian):
                                              active units and mutual information are measured on it (documented)
  posterior.rsample(S)             [S, B, D]  reparameterised samples
  posterior.rsample_and_log_prob(S)  ([S, B, D], [S, B])  samples and their log q(z|x) (a flow's only density)
  posterior.log_prob(z)            [S, B]     log q(z|x) of any z, summed over dimensions (families that have it)
  posterior.push(z0)               [..., D]   a base sample through the flow (the identity for the Gaussian)
  posterior.kl_per_dim(prior)      [B, D]     KL(q || p) per dimension in closed form, or None where there is none
  posterior.mutual_information()   float      I(x; z) over the examples held (the batch, or a whole split joined)
  Posterior.cat(list), .to(device) join a split's batches, move them (DDP gathers)

A posterior *head* is the module that turns the encoder's summary h [B, H] into a Posterior; its parameters are
the model's. The families: the diagonal Gaussian here (Kingma & Welling 2014, posterior=gaussian), and flows
on it (latent/flow.py): planar (Rezende & Mohamed 2015) and IAF (Kingma et al. 2016).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from seqvae_cli.latent.prior import LOG_2PI, Prior, StandardNormal


class Posterior:
    """A batch of distributions q(z|x_i). Subclasses give what their family has."""

    mean: torch.Tensor
    base: "DiagonalGaussian"

    def rsample(self, num_samples: int) -> torch.Tensor:
        raise NotImplementedError

    def rsample_and_log_prob(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.rsample(num_samples)
        return z, self.log_prob(z)

    def push(self, z0: torch.Tensor) -> torch.Tensor:
        return z0

    def float(self) -> "Posterior":
        return self

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kl_per_dim(self, prior: Prior) -> torch.Tensor | None:
        return None

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors that define the batch's posteriors (the encoder's outputs): what depends on the encoder."""
        raise NotImplementedError

    @classmethod
    def cat(cls, parts: list["Posterior"]) -> "Posterior":
        """The posteriors of several batches as one (for split-wide statistics)."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Posterior":
        raise NotImplementedError

    def mutual_information(self) -> float:
        raise NotImplementedError

    def kl(self, prior: Prior, z: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q || p) per example [B]: the closed form where it exists, else the one-sample Monte Carlo estimate
        log q(z|x) - log p(z) at `z` (drawn here if not given)."""
        per_dim = self.kl_per_dim(prior)
        if per_dim is not None:
            return per_dim.sum(-1)
        if z is None:
            z, log_q = self.rsample_and_log_prob(1)
        else:
            log_q = self.log_prob(z)
        return (log_q - prior.log_prob(z)).mean(0)


class DiagonalGaussian(Posterior):
    """N(mu, diag(exp(logvar))) for each example: mu, logvar [B, D]."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mu, self.logvar = mu, logvar

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def base(self) -> "DiagonalGaussian":
        return self

    @property
    def stddev(self) -> torch.Tensor:
        return (0.5 * self.logvar).exp()

    def float(self) -> "DiagonalGaussian":
        """In float32: under bf16 autocast the heads give bfloat16, and KLs and bounds are summed in float32."""
        return DiagonalGaussian(self.mu.float(), self.logvar.float())

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.mu, self.logvar

    def detach(self) -> "DiagonalGaussian":
        return DiagonalGaussian(self.mu.detach(), self.logvar.detach())

    @classmethod
    def cat(cls, parts: list["DiagonalGaussian"]) -> "DiagonalGaussian":
        return cls(torch.cat([p.mu for p in parts]), torch.cat([p.logvar for p in parts]))

    def to(self, device: torch.device | str) -> "DiagonalGaussian":
        return DiagonalGaussian(self.mu.to(device), self.logvar.to(device))

    def rsample(self, num_samples: int) -> torch.Tensor:
        eps = torch.randn((num_samples,) + tuple(self.mu.shape), device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + eps * (0.5 * self.logvar).exp()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu).pow(2) / self.logvar.exp()).sum(-1)

    def kl_per_dim(self, prior: Prior) -> torch.Tensor | None:
        if isinstance(prior, StandardNormal):
            return 0.5 * (self.mu.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return None

    @torch.no_grad()
    def mutual_information(self, chunk: int = 1024) -> float:
        """I(x;z) under q(x,z) = p_data(x) q(z|x), the estimator of Hoffman & Johnson 2016 / He et al. 2019:
        E_x[-H(q(z|x))] - E_{x, z~q(z|x)}[log q(z)], with the aggregate posterior q(z) the mixture of the
        posteriors held (one per example of the split)."""
        mu, logvar = self.mu.double(), self.logvar.double()  # the expanded quadratic form below cancels badly in float32
        n, d = mu.shape
        neg_entropy = (-0.5 * d * LOG_2PI - 0.5 * (1.0 + logvar).sum(-1)).mean()
        z = DiagonalGaussian(mu, logvar).rsample(1)[0]
        # log N(z_i; mu_j, var_j) for all pairs as matrix products: the [N, N, D] tensor is never built.
        inv_var = (-logvar).exp()
        const = ((mu.pow(2) * inv_var).sum(1) + logvar.sum(1) + d * LOG_2PI)  # [N]
        log_qz = []
        for i in range(0, n, chunk):
            zi = z[i:i + chunk]
            quad = zi.pow(2) @ inv_var.T - 2.0 * zi @ (mu * inv_var).T + const   # [c, N]
            log_qz.append(torch.logsumexp(-0.5 * quad, 1) - math.log(n))
        return float(neg_entropy - torch.cat(log_qz).mean())


class GaussianPosterior(nn.Module):
    """posterior=gaussian: two linear maps of the encoder's summary h give the mean and the log-variance."""

    RULES: dict = {}   # posterior.<key> rules (config/rules.py): the Gaussian has no keys

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.mu_head = nn.Linear(in_features, latent_dim)
        self.logvar_head = nn.Linear(in_features, latent_dim)

    def forward(self, h: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.mu_head(h), self.logvar_head(h))
