"""Faster CPU kernels for two hot spots: ELU and the Bernoulli log-likelihood."""
from __future__ import annotations

import math


import torch
from torch import nn
from torch.nn import functional as F


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


def pixel_log_likelihood(out: torch.Tensor, x: torch.Tensor, likelihood: str,
                         log_std: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x|z) of flat images summed over pixels, from the decoder's output `out` [..., P] (the image models'
    one likelihood): bernoulli (logits; binary or grey targets) or gaussian (means, one learned log-std per pixel,
    floored at -7). The Gaussian density is summed in float32 under bf16 autocast, as every bound."""
    if likelihood == "bernoulli":
        return bernoulli_log_prob(out, x)
    out = out.float()
    log_std = log_std.clamp(min=-7.0)
    return (-0.5 * ((x - out) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def pixel_mean(out: torch.Tensor, likelihood: str) -> torch.Tensor:
    """The mean image of the decoder's output, in [0, 1]."""
    return torch.sigmoid(out) if likelihood == "bernoulli" else out.clamp(0.0, 1.0)
