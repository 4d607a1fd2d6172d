"""model=conv_vae: a convolutional VAE for images (strided convolutions in, transposed convolutions out).

It reads the same flat batches as model=mlp_vae ([B, 784] pixels in [0, 1], from data/mnist.py's in-memory
batching) and views them as one-channel square images, so everything built for the MLP (dynamic binarisation,
the IW-NLL, pictures, CUDA graphs, resume) works unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from seqvae_cli.config.rules import check_arguments, number, one_of, positive_int_list
from seqvae_cli.data.base import Batch
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.base import LatentModel
from seqvae_cli.nn.conv import ConvDecoder, ConvEncoder, stage_grids
from seqvae_cli.nn.kernels import pixel_log_likelihood, pixel_mean
from seqvae_cli.nn.mlp import ACTIVATIONS

LIKELIHOODS = ("bernoulli", "gaussian")


def square_image(input_dim: int) -> tuple[int, int, int]:
    """The (channels, height, width) of a flat one-channel square image of input_dim pixels."""
    side = math.isqrt(input_dim) if isinstance(input_dim, int) and input_dim > 0 else 0
    if side * side != input_dim or side < 2:
        raise SeqvaeError(f"model=conv_vae reads square one-channel images, but the data gives input_dim="
                          f"{input_dim!r}, which is no square of a side >= 2; use data=mnist or model=mlp_vae")
    return 1, side, side


class ConvVAE(LatentModel):
    """Convolutional encoder -> Gaussian q(z|x); z -> transposed-convolution decoder -> Bernoulli logits per pixel
    (binary or grey pixels, as mlp_vae) or Gaussian means with one learned std per pixel.

    Layers are created encoder, posterior head and prior (add_latent), decoder, std, so a seed fixes them all."""

    # Without gradients (the IW-NLL with k in the thousands) the decoder runs on at most this many images at once:
    # its feature maps take ~100 KB per image, and evaluation asks for up to data.iw_rows_per_chunk (65,536).
    max_rows_per_pass = 2048

    RULES = {
        "channels": positive_int_list(),
        "kernel_size": number(2, integer=True),
        "layers_per_stage": number(1, integer=True),
        "hidden_size": number(1, integer=True),
        **LatentModel.RULES,
        "activation": one_of(*ACTIVATIONS),
        "likelihood": one_of(*LIKELIHOODS),
    }

    def __init__(self, input_dim: int, channels: list[int], latent_dim: int, kernel_size: int = 4,
                 layers_per_stage: int = 1, hidden_size: int = 256, activation: str = "elu",
                 likelihood: str = "bernoulli", name: str = "conv_vae") -> None:
        super().__init__()
        channels = list(channels) if isinstance(channels, (list, tuple)) else channels
        check_arguments("model", self.RULES, channels=channels, kernel_size=kernel_size,
                        layers_per_stage=layers_per_stage, hidden_size=hidden_size, latent_dim=latent_dim,
                        activation=activation, likelihood=likelihood)
        self.image_shape = square_image(input_dim)
        self.input_dim, self.latent_dim, self.likelihood = input_dim, latent_dim, likelihood
        self.pseudo_input_shape = (input_dim,)     # flat pixels, as the data gives them: prior=vamp applies
        grid = stage_grids(self.image_shape[1], self.image_shape[2], len(channels), kernel_size)[-1]
        if min(grid) < 1:
            raise SeqvaeError(f"config error: model.channels has {len(channels)} stride-2 stages, which shrink the "
                              f"{self.image_shape[1]}x{self.image_shape[2]} image to nothing with model.kernel_size="
                              f"{kernel_size}; use fewer entries in model.channels (e.g. model.channels=[32,64,128])")
        self.encoder = ConvEncoder(self.image_shape, channels, kernel_size, layers_per_stage, hidden_size,
                                   activation)
        self.add_latent(hidden_size, latent_dim)
        self.decoder = ConvDecoder(self.encoder, channels, kernel_size, layers_per_stage, hidden_size, latent_dim,
                                   self.image_shape[0], activation)
        if likelihood == "gaussian":
            # One learned log-std per pixel, shared by all examples, as mlp_vae's Gaussian decoder.
            self.log_std = nn.Parameter(torch.zeros(input_dim))

    def features(self, batch: Batch) -> torch.Tensor:
        x = batch["x"]
        return self.encoder(x.view(x.shape[0], *self.image_shape))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., D] -> the decoder's flat output [..., input_dim] (logits, or Gaussian means)."""
        flat = z.reshape(-1, z.shape[-1])
        return self.decoder(flat).reshape(*z.shape[:-1], self.input_dim)

    def log_likelihood(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats per image, z [S, B, D] -> [S, B]."""
        s, b, _ = z.shape
        if not torch.is_grad_enabled() and s * b > self.max_rows_per_pass and s > 1:
            per = max(1, self.max_rows_per_pass // b)
            return torch.cat([self.log_likelihood(batch, z[i:i + per]) for i in range(0, s, per)])
        out = self._decode(z)                                  # [S, B, input_dim]
        x = batch["x"].unsqueeze(0).expand_as(out)
        return pixel_log_likelihood(out, x, self.likelihood, getattr(self, "log_std", None))

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images of z [..., D] -> [..., input_dim] in [0, 1] (the flat layout of the batches)."""
        return pixel_mean(self._decode(z), self.likelihood)
