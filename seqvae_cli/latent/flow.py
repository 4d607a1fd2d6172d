"""Flow posteriors: a diagonal Gaussian pushed through K invertible maps, z_K = f_K(... f_1(z_0)), z_0 ~ N(mu, s^2).

Its density is known at its own samples only: log q(z_K|x) = log N(z_0; mu, s^2) - sum_k log |det df_k/dz|, which is
all the ELBO, the IWAE bound and the IW-NLL need (they score the samples they draw). Neither family has a closed
KL to any prior, so the objective uses the Monte Carlo estimate log q(z|x) - log p(z) at the sample it decodes.

  posterior=planar  Rezende & Mohamed 2015: f(z) = z + u' tanh(w.z + b), with u, w, b of every step predicted from
                    the encoder's summary h (amortised); u' = u + (softplus(w.u) - 1 - w.u) w / |w|^2 keeps
                    w.u' >= -1, so each step is invertible (its Jacobian determinant 1 + u'.psi(z) > 0).
  posterior=iaf     Kingma et al. 2016: z <- sigma * z + (1 - sigma) * m, (m, s) = MADE(z, c), sigma = sigmoid(s),
                    with a context c from h; each step is autoregressive in z (dimension d sees only those before
                    it), so its Jacobian is triangular and the map invertible; the order flips between steps.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from seqvae_cli.config.rules import check_arguments, number
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.latent.posterior import DiagonalGaussian, GaussianPosterior, Posterior

Flow = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class FlowPosterior(Posterior):
    """A base Gaussian [B, D] and the flow of the batch: flow(z0 [S, B, D]) -> (z_K, sum of log|det|) [S, B]."""

    def __init__(self, base: DiagonalGaussian, flow: Flow, params: tuple[torch.Tensor, ...],
                 dtype: torch.dtype | None = None) -> None:
        self._base, self.flow, self.params, self.dtype = base, flow, params, dtype

    @property
    def base(self) -> DiagonalGaussian:
        return self._base

    def push_with_log_det(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_det = self.flow(z0)
        if self.dtype is not None:   # float(): under bf16 autocast the flow's layers give bfloat16
            z, log_det = z.to(self.dtype), log_det.to(self.dtype)
        return z, log_det

    def push(self, z0: torch.Tensor) -> torch.Tensor:
        return self.push_with_log_det(z0)[0]

    @property
    def mean(self) -> torch.Tensor:
        """The base mean through the flow: the code pictures and reconstructions decode."""
        return self.push(self._base.mu.unsqueeze(0))[0]

    def rsample(self, num_samples: int) -> torch.Tensor:
        return self.rsample_and_log_prob(num_samples)[0]

    def rsample_and_log_prob(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        z0 = self._base.rsample(num_samples)
        z, log_det = self.push_with_log_det(z0)
        return z, self._base.log_prob(z0) - log_det

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise SeqvaeError("a flow posterior's density is known at its own samples only "
                          "(rsample_and_log_prob), not at any z")

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self._base.tensors() + tuple(self.params)

    def float(self) -> "FlowPosterior":
        return FlowPosterior(self._base.float(), self.flow, self.params, torch.float32)

    def detach(self) -> "FlowPosterior":
        detached = tuple(p.detach() for p in self.params)
        return FlowPosterior(self._base.detach(), self.flow, detached, self.dtype)


# ------------------------------------------------------------------------------------------- planar

def planar_steps(u: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> Flow:
    """The planar flow of a batch: u, w [B, K, D], b [B, K] (K steps)."""
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (F.softplus(wu) - 1.0 - wu) * w / (w.pow(2).sum(-1, keepdim=True) + 1e-8)

    def flow(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = z.new_zeros(z.shape[:-1])
        for k in range(u.shape[1]):
            wk, uk, bk = w[:, k], u_hat[:, k], b[:, k].unsqueeze(-1)          # [B, D], [B, D], [B, 1]
            h = torch.tanh((z * wk).sum(-1, keepdim=True) + bk)                # [S, B, 1]
            psi_u = ((1.0 - h.pow(2)) * (wk * uk).sum(-1, keepdim=True)).squeeze(-1)
            log_det = log_det + torch.log((1.0 + psi_u).abs() + 1e-8)
            z = z + uk * h
        return z, log_det
    return flow


class PlanarPosterior(nn.Module):
    """posterior=planar: the Gaussian head, and a linear map of h to every step's u, w, b."""

    RULES = {"num_flows": number(1, integer=True)}

    def __init__(self, in_features: int, latent_dim: int, num_flows: int = 10, name: str = "planar") -> None:
        check_arguments("posterior", self.RULES, num_flows=num_flows)
        super().__init__()
        self.latent_dim, self.num_flows = latent_dim, num_flows
        self.gaussian = GaussianPosterior(in_features, latent_dim)
        self.steps = nn.Linear(in_features, num_flows * (2 * latent_dim + 1))
        # Start near the identity: small u and b, so early training sees the Gaussian it would without the flow.
        nn.init.normal_(self.steps.weight, std=0.01)
        nn.init.zeros_(self.steps.bias)

    def forward(self, h: torch.Tensor) -> FlowPosterior:
        base = self.gaussian(h)
        d, k = self.latent_dim, self.num_flows
        out = self.steps(h).view(h.shape[0], k, 2 * d + 1)
        u, w, b = out[..., :d], out[..., d:2 * d], out[..., 2 * d]
        return FlowPosterior(base, planar_steps(u, w, b), (u, w, b))


# ---------------------------------------------------------------------------------------------- IAF

class MaskedLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """One autoregressive step (a MADE with one hidden layer; the context joins the hidden layer unmasked)."""

    def __init__(self, latent_dim: int, hidden_size: int, context_size: int) -> None:
        super().__init__()
        d_in = torch.arange(1, latent_dim + 1)
        d_hidden = torch.arange(hidden_size) % max(latent_dim - 1, 1) + 1
        self.hidden = MaskedLinear(latent_dim, hidden_size, d_hidden[:, None] >= d_in[None, :])
        self.context = nn.Linear(context_size, hidden_size)
        out_mask = d_in[:, None] > d_hidden[None, :]      # output d sees hidden units of degree < d only
        self.shift = MaskedLinear(hidden_size, latent_dim, out_mask)
        self.scale = MaskedLinear(hidden_size, latent_dim, out_mask)
        # A positive bias on the gate keeps sigma near 1 at the start (Kingma et al.): each step begins near the
        # identity, z <- z.
        nn.init.constant_(self.scale.bias, 2.0)

    def shift_and_gate(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.elu(self.hidden(z) + self.context(c))
        return self.shift(h), torch.sigmoid(self.scale(h))

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, sigma = self.shift_and_gate(z, c)
        return sigma * z + (1.0 - sigma) * m, torch.log(sigma).sum(-1)

    def inverse(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The z this step maps to y: dimension by dimension, each one's gate depending on those before it."""
        z = torch.zeros_like(y)
        for d in range(y.shape[-1]):
            m, sigma = self.shift_and_gate(z, c)
            z[..., d] = (y[..., d] - (1.0 - sigma[..., d]) * m[..., d]) / sigma[..., d]
        return z


class IAFPosterior(nn.Module):
    """posterior=iaf: the Gaussian head, a context c = linear(h), and num_flows autoregressive steps."""

    RULES = {"num_flows": number(1, integer=True), "hidden_size": number(1, integer=True),
             "context_size": number(1, integer=True)}

    def __init__(self, in_features: int, latent_dim: int, num_flows: int = 2, hidden_size: int = 320,
                 context_size: int = 32, name: str = "iaf") -> None:
        check_arguments("posterior", self.RULES, num_flows=num_flows, hidden_size=hidden_size,
                        context_size=context_size)
        super().__init__()
        self.gaussian = GaussianPosterior(in_features, latent_dim)
        self.context = nn.Linear(in_features, context_size)
        self.steps = nn.ModuleList(IAFStep(latent_dim, hidden_size, context_size) for _ in range(num_flows))

    def transform(self, c: torch.Tensor) -> Flow:
        def flow(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            log_det = z.new_zeros(z.shape[:-1])
            for k, step in enumerate(self.steps):
                if k > 0:
                    z = z.flip(-1)     # each step autoregressive in the other order
                z, step_log_det = step(z, c)
                log_det = log_det + step_log_det
            return z, log_det
        return flow

    def forward(self, h: torch.Tensor) -> FlowPosterior:
        c = self.context(h)
        return FlowPosterior(self.gaussian(h), self.transform(c), (c,))
