"""Models only say how they encode and decode; the objective (objective.py) does the rest.

Interface every model implements (the trainer, evaluator and sampler use nothing else):
  latent_dim            size of z (0 for a model without a latent)
  variational           False for the deterministic autoencoder: z = posterior mean, no KL
  encode(batch)         -> (mu, logvar), each [B, D]: the Gaussian posterior q(z|x)
  log_likelihood(batch, z) with z [S, B, D] -> log p(x|z), [S, B], in nats per example
  decode_mean(z)        -> the decoder's mean output, for pictures
  bag_of_words_nll(batch, z) (optional) -> [B], for objective.bow_weight > 0
  decoder_modules()     -> the modules re-initialised by reset_decoder() (Li et al. 2019's recipe); the
                        aggressive training's split (trainer.split_encoder_decoder) is found from gradients
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from .data import Batch
from .errors import SeqvaeError


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the body with dropout off (model.eval()) and give the model back in the mode it had, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _ELUFunction(torch.autograd.Function):
    """ELU (alpha 1) as relu(x) + (exp(min(x, 0)) - 1), with the library's backward on the output.

    The library's CPU kernel is built on expm1, which runs ~10 ns per element on this machine against ~2-3 for
    this exp-based form (benchmarks/mnist_kernels.py), and the ELU of mnist_nll/mnist_iwae decoders runs on
    every importance sample. In float32, exp(x) - 1 instead of expm1(x) adds at most ~6e-8 absolute error
    where x < 0 (float32 rounding of 1); where x > 0 the result is x exactly. bfloat16/float16 inputs take
    the exp in float32 and round once, as the library does: in bfloat16 itself, exp(-0.001) rounds to 1 and
    small negative inputs would become 0. The output is saved for backward: do not modify it in place.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        negative = x.clamp(max=0.0)
        if negative.dtype in (torch.float16, torch.bfloat16):
            negative = negative.float()
        y = negative.exp_().sub_(1.0).to(x.dtype).add_(x.clamp(min=0.0))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        # d elu / dx = 1 where x > 0, else exp(x) = y + 1; aten's kernel reads it off the output.
        return torch.ops.aten.elu_backward(grad, 1.0, 1, 1, True, y)


class ELU(nn.Module):
    """nn.ELU() with a faster CPU forward (_ELUFunction); other devices use the library's fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ELUFunction.apply(x) if x.device.type == "cpu" else F.elu(x)


ACTIVATIONS = {"relu": nn.ReLU, "elu": ELU, "tanh": nn.Tanh, "softplus": nn.Softplus, "gelu": nn.GELU}


class BernoulliLogProb(torch.autograd.Function):
    """log p(x | logits) of independent Bernoulli pixels, summed over the last dim: x*l - softplus(l).

    Same value and gradient as -F.binary_cross_entropy_with_logits(l, x).sum(-1), but ~2-3x faster on the
    CPU (benchmarks/mnist_kernels.py). The library's kernel computes log(sigmoid) with log1p, which runs ~3x
    slower than exp + log here, and autograd through a written-out formula keeps many intermediates. This term
    is a large share of each MNIST step: k times over for IWAE training and the IW-NLL. softplus(l) is computed
    as max(l, 0) + log(1 + exp(-|l|)) in place on one buffer; log(1 + e) instead of log1p(e) only
    drops e where e < 6e-8, far below float32 noise in a sum over 784 pixels. The gradient is the
    textbook x - sigmoid(l). x may hold grey levels in [0, 1] (soft targets, as pytorch/examples).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        softplus = logits.abs().neg_().exp_().add_(1.0).log_().add_(logits.clamp(min=0.0))
        return softplus.addcmul_(x, logits, value=-1.0).sum(-1).neg_()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        logits, x = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = (x - torch.sigmoid(logits)).mul_(grad) if ctx.needs_input_grad[0] else None
        grad_x = (logits * grad).sum_to_size(x.shape) if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[..., P] logits and targets in [0, 1] (the two broadcast) -> [...] log-likelihood in nats, in float32
    at least (under bf16 autocast too, as autocast does for the library's cross-entropy)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    x = x.to(logits.dtype)
    shape = torch.broadcast_shapes(logits.shape, x.shape)
    logits = logits.expand(shape)
    if logits.device.type != "cpu":  # GPUs run the library's op as one fused kernel
        return -F.binary_cross_entropy_with_logits(logits, x.expand(shape), reduction="none").sum(-1)
    return BernoulliLogProb.apply(logits, x)


class LatentModel(nn.Module):
    latent_dim: int
    variational: bool = True

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


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPVAE(LatentModel):
    """Fully connected VAE for flat images; 784-400-20 with ReLU is the pytorch/examples model.

    Layer creation order (encoder, mu head, logvar head, decoder) matches pytorch/examples, so the
    same seed gives the same initial weights as that script.
    """

    def __init__(self, input_dim: int, hidden_sizes: list[int], latent_dim: int, activation: str = "relu",
                 likelihood: str = "bernoulli", name: str = "mlp_vae") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise SeqvaeError(f"model.activation={activation!r} is not allowed; expected one of {sorted(ACTIVATIONS)}")
        hidden = list(hidden_sizes)
        self.input_dim, self.latent_dim, self.likelihood = input_dim, latent_dim, likelihood
        self.encoder = nn.Sequential(mlp([input_dim] + hidden, activation), ACTIVATIONS[activation]())
        self.mu_head = nn.Linear(hidden[-1], latent_dim)
        self.logvar_head = nn.Linear(hidden[-1], latent_dim)
        self.decoder = mlp([latent_dim] + hidden[::-1] + [input_dim], activation)
        if likelihood == "gaussian":
            # One learned log-std per pixel, shared by all examples (a homoscedastic Gaussian decoder).
            self.log_std = nn.Parameter(torch.zeros(input_dim))

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(batch["x"])
        return self.mu_head(h), self.logvar_head(h)

    def log_likelihood(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)                      # [S, B, input_dim]
        x = batch["x"].unsqueeze(0).expand_as(out)
        if self.likelihood == "bernoulli":
            return bernoulli_log_prob(out, x)
        log_std = self.log_std.clamp(min=-7.0)
        return (-0.5 * ((x - out) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out.clamp(0.0, 1.0)


class MLPAutoencoder(MLPVAE):
    """The deterministic baseline: same networks, z is the encoder's mean, no noise and no KL."""

    variational = False
