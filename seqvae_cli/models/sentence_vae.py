"""The sentence VAE of Bowman et al. (2016): an RNN encoder, a Gaussian q(z|x), an RNN decoder over tokens."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from seqvae_cli.config.rules import check_arguments
from seqvae_cli.data.base import Batch
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.base import LatentModel
from seqvae_cli.models.encoders import ENCODER_RULES, build_encoder
from seqvae_cli.nn.rnn import RNN_RULES, RNNDecoder, State, TokenIO


# ------------------------------------------------------------------------------------------ models

# The keys of the token decoder that the sentence VAE and the language model share.
DECODER_KEYS = ("packed", "embed_dim", "hidden_size", "rnn", "decoder_layers", "word_dropout", "embed_dropout",
                "output_dropout", "weight_drop", "tie_weights")


def _check_common(embed_dim, hidden_size, rnn, decoder_layers, word_dropout, embed_dropout, output_dropout,
                  weight_drop, vocab_size, packed, tie_weights) -> None:
    check_arguments("model", RNN_RULES, packed=packed, embed_dim=embed_dim, hidden_size=hidden_size, rnn=rnn,
                    decoder_layers=decoder_layers, word_dropout=word_dropout, embed_dropout=embed_dropout,
                    output_dropout=output_dropout, weight_drop=weight_drop, tie_weights=tie_weights)
    if vocab_size < 5:
        raise SeqvaeError(f"the vocabulary has {vocab_size} entries (4 are specials): the text data is too small "
                          f"to train on; check data.min_freq/max_size and the training file")


class _TextDecoderMixin:
    """Teacher-forced scoring and one-step decoding shared by the VAE and the language model."""

    io: TokenIO
    decoder: RNNDecoder

    @property
    def pad_id(self) -> int:
        return self.io.pad_id

    @property
    def sos_id(self) -> int:
        return self.io.sos_id

    @property
    def eos_id(self) -> int:
        return self.io.eos_id

    @property
    def unk_id(self) -> int:
        return self.io.unk_id

    @property
    def vocab_size(self) -> int:
        return self.io.vocab_size

    def decoder_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """<sos> followed by the sentence shifted right: [B, T]."""
        sos = x.new_full((x.shape[0], 1), self.io.sos_id)
        return torch.cat([sos, x[:, :-1]], dim=1)

    def _score(self, x: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Sum over positions (incl. <eos>) of log p(x_t | x_<t, z) for each row: [N]."""
        emb = self.io.embed(self.decoder_inputs(x), word_dropout=True)
        hidden, positions = self.decoder(emb, lengths, z)
        targets = positions.gather(x)
        return positions.sum_per_example(self.io.token_log_likelihood(hidden, targets))

    def init_decoder_state(self, z: torch.Tensor | None = None, n: int | None = None) -> State:
        """The decoder state before <sos>, for n = z.shape[0] sequences (or n without a latent)."""
        n = z.shape[0] if z is not None else n
        return self.decoder.initial_state(z, n, self.io.embedding.weight.device)

    def decoder_step(self, tokens: torch.Tensor, state: State, z: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, State]:
        """Feed tokens [N] -> (log-probabilities of the next token [N, V], new state)."""
        hidden, state = self.decoder.step(self.io.embed(tokens), state, z)
        return self.io.log_probs(hidden), state


class LSTMVAE(_TextDecoderMixin, LatentModel):
    """Bowman et al. 2016 "Generating Sentences from a Continuous Space": RNN encoder -> Gaussian q(z|x),
    z -> RNN decoder; word dropout, optional bag-of-words loss on z (Zhao et al. 2017). encoder=transformer
    reads the sentence with a Transformer instead (models/encoders.py); the decoder is the same RNN."""

    variational = True
    # Without gradients, log_likelihood decodes at most this many sentence copies per pass.
    max_rows_per_pass = 4096
    RULES = {**LatentModel.RULES,
             **{key: RNN_RULES[key] for key in DECODER_KEYS + ("encoder_layers", "bidirectional", "z_conditioning")},
             **ENCODER_RULES}

    def __init__(self, vocab_size: int, pad_id: int = 0, unk_id: int = 1, sos_id: int = 2, eos_id: int = 3,
                 embed_dim: int = 256, hidden_size: int = 256, latent_dim: int = 32, rnn: str = "lstm",
                 encoder_layers: int = 1, bidirectional: bool = False, decoder_layers: int = 1,
                 z_conditioning: str = "init", word_dropout: float = 0.0, embed_dropout: float = 0.0,
                 output_dropout: float = 0.0, weight_drop: float = 0.0, tie_weights: bool = False,
                 packed: bool | None = None, encoder: str = "rnn", transformer: dict | None = None,
                 name: str = "lstm_vae") -> None:
        super().__init__()
        _check_common(embed_dim, hidden_size, rnn, decoder_layers, word_dropout, embed_dropout, output_dropout,
                      weight_drop, vocab_size, packed, tie_weights)
        check_arguments("model", self.RULES, latent_dim=latent_dim, encoder_layers=encoder_layers,
                        bidirectional=bidirectional, z_conditioning=z_conditioning)
        self.latent_dim = latent_dim
        self.io = TokenIO(vocab_size, embed_dim, hidden_size, pad_id, unk_id, sos_id, eos_id, word_dropout,
                          embed_dropout, output_dropout, tie_weights)
        # sqrt(embed_dim): Vaswani et al.'s scale for word embeddings under a Transformer (nn/transformer.py).
        self.encoder = build_encoder(encoder, embed_dim, hidden_size, encoder_layers, bidirectional, rnn, packed,
                                     transformer, input_scale=math.sqrt(embed_dim))
        self.add_latent(self.encoder.output_size, latent_dim)
        self.decoder = RNNDecoder(embed_dim, hidden_size, decoder_layers, rnn, latent_dim, z_conditioning, packed,
                                  weight_drop)
        self.bow = nn.Linear(latent_dim, vocab_size)

    def features(self, batch: Batch) -> torch.Tensor:
        return self.encoder(self.io.embed(batch["x"]), batch["lengths"])

    def log_likelihood(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats per sentence (all tokens incl. <eos>), z [S, B, D] -> [S, B], in one decoder pass."""
        x, lengths = batch["x"], batch["lengths"]
        s, b, d = z.shape
        if not torch.is_grad_enabled() and s * b > self.max_rows_per_pass and s > 1:
            # Scoring many importance samples: bound memory whatever chunk the caller asked for.
            per = max(1, self.max_rows_per_pass // b)
            return torch.cat([self.log_likelihood(batch, z[i:i + per]) for i in range(0, s, per)])
        if s > 1:
            x, lengths = x.repeat(s, 1), lengths.repeat(s)
        return self._score(x, lengths, z.reshape(s * b, d)).view(s, b)

    def bag_of_words_nll(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """-Σ_t log softmax(bow(z))[x_t] over the sentence's tokens (incl. <eos>, not pad): z [B, D] -> [B]
        (or [S, B, D] -> [S, B])."""
        x = batch["x"]
        log_p = F.log_softmax(self.bow(z).float(), dim=-1)             # [..., B, V], float32 under autocast too
        idx = x.expand(log_p.shape[:-1] + x.shape[-1:])
        picked = log_p.gather(-1, idx)                                 # [..., B, T]
        return -(picked * (x != self.io.pad_id)).sum(-1)

    def decoder_modules(self) -> list[nn.Module]:
        """What Li et al. 2019's recipe re-initialises after autoencoder pre-training: the decoder RNN (with
        its z -> state map) and the output projection. The word embedding is shared with the encoder and
        kept; with tie_weights the projection's weight is that embedding, so then only its bias is reset."""
        return [self.decoder] if self.io.tied else [self.decoder, self.io.out]

    def reset_decoder(self) -> None:
        super().reset_decoder()
        if self.io.tied:
            bound = 1.0 / math.sqrt(self.io.out.in_features)
            nn.init.uniform_(self.io.out.bias, -bound, bound)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, max_len: int = 100) -> torch.Tensor:
        """Greedy decoding of z [B, D] (or [S, B, D]) -> token ids [..., L] padded with <pad>."""
        from seqvae_cli.models.decoding import greedy
        shape = z.shape[:-1]
        out = greedy(self, z.reshape(-1, z.shape[-1]), max_len=max_len)
        return out.tokens.view(*shape, -1)
