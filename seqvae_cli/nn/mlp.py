"""Fully connected stacks and the activations a config may name."""
from __future__ import annotations


from torch import nn

from seqvae_cli.nn.kernels import ELU

ACTIVATIONS = {"relu": nn.ReLU, "elu": ELU, "tanh": nn.Tanh, "softplus": nn.Softplus, "gelu": nn.GELU}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)
