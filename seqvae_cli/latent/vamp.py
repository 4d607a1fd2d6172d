"""prior=vamp: the VampPrior of Tomczak & Welling (2018), p(z) = 1/K sum_k q(z | u_k), the mixture of the
posteriors of K learned pseudo-inputs u_k, which are model parameters (trained with it, kept in its checkpoint).

It needs inputs the encoder can read as free parameters: fixed-size real vectors, as the image models' (flat
pixels). Token sequences are discrete and series windows are not offered, so it is refused there, in one line.
With a flow posterior the components are the pseudo-inputs' base Gaussians (the flow's starting densities): a
mixture of Gaussians whose parameters the encoder gives, which is the VampPrior exactly for posterior=gaussian.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from seqvae_cli.config.rules import check_arguments, number
from seqvae_cli.latent.posterior import DiagonalGaussian
from seqvae_cli.latent.prior import Prior, mixture_log_prob, mixture_sample


class VampPrior(Prior):
    needs_inputs = True   # LatentModel.use_latent passes the model's input shape and binds its encoder

    RULES = {"num_components": number(1, integer=True), "init_mean": number(0, 1), "init_std": number(0)}

    def __init__(self, latent_dim: int, input_shape: tuple[int, ...], num_components: int = 500,
                 init_mean: float = 0.05, init_std: float = 0.01, name: str = "vamp") -> None:
        check_arguments("prior", self.RULES, num_components=num_components, init_mean=init_mean, init_std=init_std)
        super().__init__()
        self.latent_dim, self.num_components = latent_dim, num_components
        # Tomczak & Welling's initialisation for MNIST: pseudo-pixels near 0.05, kept in [0, 1] by a hard tanh.
        self.pseudo_inputs = nn.Parameter(torch.randn(num_components, *input_shape) * init_std + init_mean)
        self._encode: Callable[[dict], DiagonalGaussian] | None = None

    def bind(self, encode: Callable[[dict], DiagonalGaussian]) -> None:
        """The model's base-posterior function (a bound method: a deep copy of the model, as weight averaging makes,
        then rebinds to the copy)."""
        self._encode = encode

    def inputs(self) -> torch.Tensor:
        return torch.clamp(self.pseudo_inputs, 0.0, 1.0)

    def components(self) -> DiagonalGaussian:
        return self._encode({"x": self.inputs()}).float()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        q = self.components()
        uniform = torch.full((self.num_components,), -torch.log(torch.tensor(float(self.num_components))).item(),
                             device=z.device)
        return mixture_log_prob(z, q.mu, q.logvar, uniform)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        q = self.components()
        z = mixture_sample(n, q.mu, q.logvar, torch.zeros(self.num_components), generator)
        return z if device is None else z.to(device)
