"""Convolutional building blocks for images: a strided-convolution encoder and its transposed-convolution mirror.

  ConvEncoder  [N, C, H, W] -> [N, hidden]: one stage per entry of `channels`, each a stride-2 convolution
               (halving the grid) followed by layers_per_stage - 1 stride-1 convolutions, then a dense layer
  ConvDecoder  [N, D] -> [N, C, H, W] logits or means: dense layers to the encoder's last grid, then the stages in
               reverse, each ending in a stride-2 transposed convolution back to the grid the encoder had there

The decoder is built from the encoder's recorded grid sizes, so it lands exactly on the input grid (28x28 for
MNIST) whatever kernel size and depth the config picks: each transposed convolution gets the output_padding that
turns its grid into the one the matching encoder stage read.
"""
from __future__ import annotations

import torch
from torch import nn

from seqvae_cli.nn.mlp import ACTIVATIONS


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Grid size after a convolution (no dilation)."""
    return (size + 2 * padding - kernel) // stride + 1


def padding_for(kernel: int) -> int:
    """The padding of the stride-2 layers: about half the grid comes out, for odd and even kernels alike."""
    return (kernel - 1) // 2


def same_conv(c_in: int, c_out: int, kernel: int) -> nn.Module:
    """A stride-1 convolution that keeps the grid. An even kernel needs one more row and column of padding on one
    side; done by hand, since padding="same" would warn about the copy it makes for it on every run."""
    if kernel % 2:
        return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
    low, high = (kernel - 1) // 2, kernel // 2
    return nn.Sequential(nn.ZeroPad2d((low, high, low, high)), nn.Conv2d(c_in, c_out, kernel))


def stage_grids(height: int, width: int, stages: int, kernel: int) -> list[tuple[int, int]]:
    """The grid each stride-2 stage reads, then the last one's output grid: stages + 1 sizes (a size below 1
    means the image was shrunk to nothing)."""
    pad, grids = padding_for(kernel), [(height, width)]
    for _ in range(stages):
        height, width = conv_out(height, kernel, 2, pad), conv_out(width, kernel, 2, pad)
        grids.append((height, width))
    return grids


class ConvEncoder(nn.Module):
    """Strided convolutions over an image, then a dense layer: [N, C, H, W] -> [N, hidden_size]."""

    def __init__(self, image_shape: tuple[int, int, int], channels: list[int], kernel_size: int,
                 layers_per_stage: int, hidden_size: int, activation: str) -> None:
        super().__init__()
        c, h, w = image_shape
        pad = padding_for(kernel_size)
        self.grids = stage_grids(h, w, len(channels), kernel_size)
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, kernel_size, stride=2, padding=pad), ACTIVATIONS[activation]()]
            for _ in range(layers_per_stage - 1):
                layers += [same_conv(out, out, kernel_size), ACTIVATIONS[activation]()]
            c = out
        h, w = self.grids[-1]
        self.convs = nn.Sequential(*layers)
        self.flat_size = c * h * w
        self.dense = nn.Sequential(nn.Linear(self.flat_size, hidden_size), ACTIVATIONS[activation]())
        self.output_size = hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dense(self.convs(images).flatten(1))


class ConvDecoder(nn.Module):
    """The encoder's mirror: z [N, D] -> dense -> the encoder's last grid -> transposed convolutions ->
    [N, out_channels, H, W] (no activation at the end: logits, or the Gaussian's means)."""

    def __init__(self, encoder: ConvEncoder, channels: list[int], kernel_size: int, layers_per_stage: int,
                 hidden_size: int, latent_dim: int, out_channels: int, activation: str) -> None:
        super().__init__()
        pad = padding_for(kernel_size)
        self.start_shape = (channels[-1], *encoder.grids[-1])
        self.dense = nn.Sequential(nn.Linear(latent_dim, hidden_size), ACTIVATIONS[activation](),
                                   nn.Linear(hidden_size, encoder.flat_size), ACTIVATIONS[activation]())
        layers: list[nn.Module] = []
        stages = len(channels)
        for i in reversed(range(stages)):
            c = channels[i]
            for _ in range(layers_per_stage - 1):
                layers += [same_conv(c, c, kernel_size), ACTIVATIONS[activation]()]
            (h_in, w_in), (h_out, w_out) = encoder.grids[i + 1], encoder.grids[i]
            base_h = (h_in - 1) * 2 - 2 * pad + kernel_size
            base_w = (w_in - 1) * 2 - 2 * pad + kernel_size
            out = channels[i - 1] if i > 0 else out_channels
            layers.append(nn.ConvTranspose2d(c, out, kernel_size, stride=2, padding=pad,
                                             output_padding=(h_out - base_h, w_out - base_w)))
            if i > 0:
                layers.append(ACTIVATIONS[activation]())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconvs(self.dense(z).view(z.shape[0], *self.start_shape))
