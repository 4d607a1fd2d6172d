"""The interface every model implements; the trainer, objective, evaluation and pictures use nothing else.

  latent_dim              size of z (0 for a model without a latent, the language model)
  variational             False for the deterministic autoencoder: z = the posterior mean, no KL
  prior                   p(z), a latent.prior.Prior module
  posterior(batch)        q(z|x), a latent.posterior.Posterior: what the encoder says of each example
  log_likelihood(batch, z) with z [S, B, D] -> log p(x|z), [S, B], in nats per example
  decode_mean(z)          the decoder's mean output, for pictures
  bag_of_words_nll(batch, z) (optional) -> [B], for objective.bow_weight > 0
  decoder_modules()       the modules reset_decoder() re-initialises (Li et al. 2019's recipe); the aggressive
                          training's encoder/decoder split is found from gradients (training/extras.py)

A model with a latent builds its encoder network, then calls add_latent(h_size, latent_dim), which makes the
posterior head (h [B, h_size] -> q(z|x)) and the prior; posterior(batch) is then posterior_head(features(batch)).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from seqvae_cli.config.rules import Rule, number
from seqvae_cli.data.base import Batch
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.latent.posterior import DiagonalGaussian, GaussianPosterior, Posterior
from seqvae_cli.latent.prior import Prior, StandardNormal


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the body with dropout off (model.eval()) and give the model back in the mode it had, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# Parameter names of the posterior head before it was a module of its own: checkpoints written then use them.
FORMER_HEAD_KEYS = {"mu_head.": "posterior_head.mu_head.", "logvar_head.": "posterior_head.logvar_head."}


class LatentModel(nn.Module):
    latent_dim: int
    variational: bool = True
    prior: Prior
    posterior_head: nn.Module
    # The rules of the constructor's keys (model.<key>), which validate() applies to the config and the constructor
    # to its arguments (config/rules.check_arguments). Subclasses with a latent extend these with their own keys.
    RULES: dict[str, Rule] = {"latent_dim": number(1, integer=True)}

    def __init__(self) -> None:
        super().__init__()
        self._register_load_state_dict_pre_hook(_rename_former_keys)

    # The shape of one input row when the encoder reads fixed-size real vectors (flat image pixels), which
    # prior=vamp's pseudo-inputs need; None where inputs are tokens or series windows.
    pseudo_input_shape: tuple[int, ...] | None = None

    def add_latent(self, h_size: int, latent_dim: int) -> None:
        """The posterior head on the encoder's summary (size h_size) and the prior, for a latent of latent_dim: the
        Gaussian and the standard normal. Called where the heads were always created, so that a seed gives the
        same initial weights; use_latent swaps in other families afterwards."""
        self.latent_h_size = h_size
        self.posterior_head = GaussianPosterior(h_size, latent_dim)
        self.prior = StandardNormal(latent_dim)

    def use_latent(self, prior: Callable[..., Prior] | None = None,
                   posterior: Callable[..., nn.Module] | None = None) -> None:
        """Replace the Gaussian head by `posterior(in_features=, latent_dim=)` and the standard normal by
        `prior(latent_dim=, ...)` (training.checkpoint.build calls it for prior=... / posterior=... other than the
        defaults). A prior that reads pseudo-inputs (needs_inputs) gets input_shape and the encoder."""
        name = type(self).__name__
        if self.latent_dim == 0 or not self.variational:
            raise SeqvaeError(f"config error: {name} has no variational posterior, so only prior=standard and "
                              f"posterior=gaussian apply to it; drop the prior=/posterior= override or choose a VAE "
                              f"(model=mlp_vae, model=lstm_vae)")
        if posterior is not None:
            self.posterior_head = posterior(in_features=self.latent_h_size, latent_dim=self.latent_dim)
        if prior is not None:
            if getattr(getattr(prior, "func", prior), "needs_inputs", False):
                if self.pseudo_input_shape is None:
                    raise SeqvaeError(f"config error: prior=vamp learns pseudo-inputs that the encoder reads like "
                                      f"data, which needs fixed-size real inputs (model=mlp_vae on images); "
                                      f"{name} reads token sequences or series windows: use prior=mog")
                self.prior = prior(latent_dim=self.latent_dim, input_shape=self.pseudo_input_shape)
                self.prior.bind(self.base_posterior)
            else:
                self.prior = prior(latent_dim=self.latent_dim)

    def base_posterior(self, batch: Batch) -> DiagonalGaussian:
        """The Gaussian a flow posterior starts from (the posterior itself for posterior=gaussian)."""
        return self.posterior(batch).base

    def features(self, batch: Batch) -> torch.Tensor:
        """The encoder's summary of each example, h [B, h_size]."""
        raise NotImplementedError

    def posterior(self, batch: Batch) -> Posterior:
        return self.posterior_head(self.features(batch))

    def log_likelihood(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decoder_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def reset_decoder(self) -> None:
        for module in self.decoder_modules():
            for m in module.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()


def _rename_former_keys(state_dict: dict, prefix: str, *args) -> None:
    """Load a state dict that names the posterior head's parameters as they were before it was a module."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in FORMER_HEAD_KEYS.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
