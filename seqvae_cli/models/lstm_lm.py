"""model=lstm_lm: the sentence VAE's decoder alone, an RNN language model (the latent-free baseline)."""
from __future__ import annotations


import torch
from torch import nn

from seqvae_cli.data.base import Batch
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.base import LatentModel
from seqvae_cli.models.sentence_vae import DECODER_KEYS, _TextDecoderMixin, _check_common
from seqvae_cli.nn.rnn import RNN_RULES, RNNDecoder, TokenIO


class LSTMLM(_TextDecoderMixin, LatentModel):
    """The RNN language model baseline: the VAE's decoder without a latent; its NLL is exact."""

    latent_dim = 0
    variational = False
    RULES = {key: RNN_RULES[key] for key in DECODER_KEYS}     # no latent: LatentModel's latent_dim is not a key

    def __init__(self, vocab_size: int, pad_id: int = 0, unk_id: int = 1, sos_id: int = 2, eos_id: int = 3,
                 embed_dim: int = 256, hidden_size: int = 256, rnn: str = "lstm", decoder_layers: int = 1,
                 word_dropout: float = 0.0, embed_dropout: float = 0.0, output_dropout: float = 0.0,
                 weight_drop: float = 0.0, tie_weights: bool = False, packed: bool | None = None,
                 name: str = "lstm_lm") -> None:
        super().__init__()
        _check_common(embed_dim, hidden_size, rnn, decoder_layers, word_dropout, embed_dropout, output_dropout,
                      weight_drop, vocab_size, packed, tie_weights)
        self.io = TokenIO(vocab_size, embed_dim, hidden_size, pad_id, unk_id, sos_id, eos_id, word_dropout,
                          embed_dropout, output_dropout, tie_weights)
        self.decoder = RNNDecoder(embed_dim, hidden_size, decoder_layers, rnn, 0, "init", packed, weight_drop)

    def posterior(self, batch: Batch):
        raise SeqvaeError("lstm_lm has no latent variable: it cannot encode a sentence")

    def log_likelihood(self, batch: Batch, z: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) in nats per sentence (incl. <eos>): [1, B]."""
        return self._score(batch["x"], batch["lengths"], None).unsqueeze(0)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder, self.io]

    def decode_mean(self, z: torch.Tensor | None = None, n: int = 1, max_len: int = 100) -> torch.Tensor:
        from seqvae_cli.models.decoding import greedy
        return greedy(self, None, n=n, max_len=max_len).tokens
