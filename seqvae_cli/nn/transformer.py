"""A Transformer encoder for the sequence VAEs (model.encoder=transformer): the same interface as nn/rnn.py's
RNNEncoder, so the sentence and time-series models take either.

  forward(inputs [B, T, F], lengths [B]) -> [B, width]   padded batches (text): pad positions are masked out of
                                                         every attention and of the pooling
  forward_full(inputs [B, T, F])         -> [B, width]   sequences without padding (time-series windows)
  output_size                                            width, the size of the summary q(z|x) is built from

Pre-LayerNorm blocks (Xiong et al. 2020: x + Attn(LN(x)), then x + FFN(LN(x)), a final LN): they train stably
without the learning-rate warm-up post-LN blocks need, so the presets' optimiser recipes serve them unchanged.
Pooling to one vector: `mean` over the valid positions, or `token`, a learned summary token read at position 0
(BERT's [CLS]). Either way a padded sentence gets the posterior it gets alone, up to float rounding.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from seqvae_cli.errors import SeqvaeError

POSITIONS = ("learned", "sinusoidal")
POOLINGS = ("mean", "token")


def sinusoids(length: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Vaswani et al.'s fixed position encodings, [length, width]: sin and cos at geometric frequencies."""
    half = (width + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) * 2 / width)
    angle = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1) * freq
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)[:, :width]


class SelfAttention(nn.Module):
    """Multi-head self-attention; `keep` [B, T] (True = a real position) hides the padding from every query.

    No dropout on the attention weights: it forces PyTorch's unfused attention and draws a [B, heads, T, T] mask,
    which made the encoder's CPU training step ~1.4x slower on ECG windows (T = 140); the blocks drop the residual
    branches instead."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = keep[:, None, None, :] if keep is not None else None          # [B, 1, 1, T]: keys only
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """One pre-LN block: attention then a GELU feed-forward layer, each on the normalised stream, added back."""

    def __init__(self, width: int, heads: int, ffn_size: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_size), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_size, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), keep))
        return x + self.drop(self.ffn(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """Inputs [B, T, input_size] -> (a linear map to `width` if the sizes differ) + positions -> pre-LN blocks ->
    final LayerNorm -> pooled summary [B, width].

    input_scale multiplies the inputs first: the sentence model passes sqrt(embed_dim) (Vaswani et al.), since its
    word embeddings start at ~0.06 per entry and would otherwise be drowned by unit-sized sinusoidal positions."""

    def __init__(self, input_size: int, width: int, layers: int = 2, heads: int = 4, ffn_size: int = 1024,
                 dropout: float = 0.1, positions: str = "learned", pooling: str = "mean", max_len: int = 512,
                 input_scale: float = 1.0) -> None:
        super().__init__()
        self.positions, self.pooling, self.max_len, self.input_scale = positions, pooling, max_len, input_scale
        self.proj = nn.Linear(input_size, width) if input_size != width else nn.Identity()
        if positions == "learned":
            self.position = nn.Parameter(torch.randn(max_len, width) * 0.02)
        if pooling == "token":
            self.token = nn.Parameter(torch.randn(width) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, ffn_size, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.output_size = width

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Padded sequences [B, T, F] of the given lengths (>= 1) -> [B, width]."""
        keep = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0) < lengths.unsqueeze(1)
        return self._encode(inputs, keep)

    def forward_full(self, inputs: torch.Tensor) -> torch.Tensor:
        """Sequences without padding [B, T, F] -> [B, width]: no mask at all."""
        return self._encode(inputs, None)

    def _encode(self, inputs: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, t = inputs.shape[0], inputs.shape[1]
        x = self.proj(inputs * self.input_scale if self.input_scale != 1.0 else inputs)
        if self.positions == "learned":
            if t > self.max_len:
                raise SeqvaeError(f"a sequence of {t} steps is longer than model.transformer.max_len={self.max_len} "
                                  f"(the learned positions); train with a larger model.transformer.max_len or "
                                  f"model.transformer.positions=sinusoidal")
            x = x + self.position[:t]
        else:
            x = x + sinusoids(t, x.shape[-1], x.device).to(x.dtype)
        if self.pooling == "token":
            # The summary token has no position: it is the same vector at the front of every sequence.
            x = torch.cat([self.token.to(x.dtype).expand(b, 1, -1), x], dim=1)
            if keep is not None:
                keep = torch.cat([keep.new_ones(b, 1), keep], dim=1)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        if self.pooling == "token":
            return x[:, 0]
        if keep is None:
            return x.mean(1)
        # masked_fill, not a product: whatever the pad positions hold never reaches the sum.
        return x.masked_fill(~keep.unsqueeze(-1), 0.0).sum(1) / keep.sum(1, keepdim=True).to(x.dtype)
