"""prior=mog: a mixture of K diagonal Gaussians, its means, variances and (optionally) weights learned with the
model (they are model parameters: the optimiser trains them, the checkpoint holds them).

The KL of a Gaussian posterior to a mixture has no closed form: the objective uses the Monte Carlo estimate
log q(z|x) - log p(z) at the sample it decodes, so free bits (which need a KL per dimension) are refused.
"""
from __future__ import annotations

import torch
from torch import nn

from seqvae_cli.config.rules import BOOLEAN, check_arguments, number
from seqvae_cli.latent.prior import Prior, mixture_log_prob, mixture_sample


class MixturePrior(Prior):
    RULES = {"num_components": number(1, integer=True), "learn_weights": BOOLEAN,
             "init_spread": number(0, lo_open=True)}

    def __init__(self, latent_dim: int, num_components: int = 10, learn_weights: bool = True,
                 init_spread: float = 1.0, name: str = "mog") -> None:
        check_arguments("prior", self.RULES, num_components=num_components, learn_weights=learn_weights,
                        init_spread=init_spread)
        super().__init__()
        self.latent_dim, self.num_components = latent_dim, num_components
        # Means spread like draws of N(0, init_spread^2) and unit variances: the mixture starts about as wide as
        # the standard normal, so the first KLs are of the usual size.
        self.means = nn.Parameter(torch.randn(num_components, latent_dim) * init_spread)
        self.logvars = nn.Parameter(torch.zeros(num_components, latent_dim))
        logits = torch.zeros(num_components)
        if learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def log_weights(self) -> torch.Tensor:
        return self.logits.log_softmax(-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return mixture_log_prob(z, self.means, self.logvars, self.log_weights())

    def component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(z; component k) for every k: [..., K] (which component explains a code)."""
        return torch.stack([mixture_log_prob(z, self.means[k:k + 1], self.logvars[k:k + 1],
                                             self.log_weights()[k:k + 1]) for k in range(self.num_components)], -1)

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, component: int | None = None) -> torch.Tensor:
        """n draws (all from `component` when given), from `generator`, moved to `device`."""
        log_weights = self.log_weights()
        if component is not None:
            log_weights = torch.full_like(log_weights, -torch.inf)
            log_weights[component] = 0.0
        z = mixture_sample(n, self.means, self.logvars, log_weights, generator)
        return z if device is None else z.to(device)
