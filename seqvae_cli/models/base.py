"""The interface every model implements; the objective, evaluation and pictures use nothing else."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from seqvae_cli.config.rules import Rule, number
from seqvae_cli.data.base import Batch

@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the body with dropout off (model.eval()) and give the model back in the mode it had, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class LatentModel(nn.Module):
    latent_dim: int
    variational: bool = True
    # The rules of the constructor's keys (model.<key>), which validate() applies to the config and the constructor
    # to its arguments (config/rules.check_arguments). Subclasses with a latent extend these with their own keys.
    RULES: dict[str, Rule] = {"latent_dim": number(1, integer=True)}

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

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
