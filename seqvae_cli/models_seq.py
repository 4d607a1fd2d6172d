"""Sequence models: the Bowman et al. (2016) sentence VAE (LSTMVAE) and its latent-free baseline (LSTMLM).

The pieces are separable so the time-series models can reuse the recurrent parts with real-valued
inputs and a Gaussian output head:

  TokenIO     the token "heads": embedding (+ embedding dropout, word dropout) and the output
              projection (+ output dropout, optional weight tying) with a log-softmax
  RNNEncoder  any input features [B, T, F] + lengths -> a summary vector [B, H * directions]
  RNNDecoder  input features [B, T, F] + lengths (+ z) -> hidden states of the valid positions only,
              packed as [num_tokens, H] with the example each one belongs to; and a one-step form
              for decoding

Speed: encoder and decoder run on packed sequences, and the output projection + log-softmax are
computed only at the non-pad positions (the packed states are already exactly those).

Decoder state convention (decoding.py relies on it): a tuple of tensors, each [layers, N, H].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from .data import Batch
from .errors import SeqvaeError
from .models import LatentModel

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}
Z_CONDITIONING = ("init", "concat", "both")
State = tuple[torch.Tensor, ...]

# Under no_grad, the output projection runs on at most this many logits at a time, so scoring
# thousands of importance samples never materialises a [tokens, vocab] matrix of gigabytes.
LOGIT_CHUNK = 1 << 22


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise SeqvaeError(f"config error: model.{key}={value!r} is not allowed; expected {allowed} "
                          f"(fix it with the override model.{key}=...)")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _probability(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0


# ----------------------------------------------------------------------------------------- packing

@dataclass
class Packing:
    """How a padded batch [B, T, ...] maps to its valid positions [num_tokens, ...] (PyTorch's packed order)."""

    order: torch.Tensor           # [B] examples sorted by decreasing length
    sorted_lengths: torch.Tensor  # [B] on the CPU, as pack_padded_sequence wants them
    rows: torch.Tensor            # [num_tokens] which example each packed position belongs to
    batch_size: int

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor) -> "Packing":
        lengths_cpu = lengths.detach().cpu()
        sorted_lengths, order_cpu = torch.sort(lengths_cpu, descending=True, stable=True)
        order = order_cpu.to(lengths.device)
        packing = cls(order, sorted_lengths, order, len(lengths_cpu))
        t = int(sorted_lengths[0]) if len(sorted_lengths) else 0
        packing.rows = packing.pack(order.unsqueeze(1).expand(-1, t), sorted_input=True)
        return packing

    def pack(self, padded: torch.Tensor, sorted_input: bool = False) -> torch.Tensor:
        """[B, T, ...] (batch order) -> [num_tokens, ...] in packed order."""
        if not sorted_input:
            padded = padded.index_select(0, self.order)
        return pack_padded_sequence(padded, self.sorted_lengths, batch_first=True, enforce_sorted=True).data

    def packed_sequence(self, padded: torch.Tensor) -> nn.utils.rnn.PackedSequence:
        return pack_padded_sequence(padded.index_select(0, self.order), self.sorted_lengths,
                                    batch_first=True, enforce_sorted=True)

    def sum_per_example(self, values: torch.Tensor) -> torch.Tensor:
        """[num_tokens] -> [B] (batch order)."""
        return values.new_zeros(self.batch_size).index_add_(0, self.rows, values)


# --------------------------------------------------------------------------------------- token I/O

class TokenIO(nn.Module):
    """Token embedding in, log-probabilities over the vocabulary out."""

    def __init__(self, vocab_size: int, embed_dim: int, out_features: int, pad_id: int = 0, unk_id: int = 1,
                 sos_id: int = 2, eos_id: int = 3, word_dropout: float = 0.0, embed_dropout: float = 0.0,
                 output_dropout: float = 0.0, tie_weights: bool = False) -> None:
        super().__init__()
        self.vocab_size, self.embed_dim = vocab_size, embed_dim
        self.pad_id, self.unk_id, self.sos_id, self.eos_id = pad_id, unk_id, sos_id, eos_id
        self.word_dropout = float(word_dropout)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embedding.weight[pad_id].zero_()
        self.embed_drop = nn.Dropout(embed_dropout)
        self.out_drop = nn.Dropout(output_dropout)
        self.out = nn.Linear(out_features, vocab_size)
        if tie_weights:
            if out_features != embed_dim:
                raise SeqvaeError(f"config error: model.tie_weights=true needs the decoder's output size "
                                  f"({out_features}, model.hidden_size) to equal model.embed_dim ({embed_dim}); "
                                  f"set them equal or use model.tie_weights=false")
            self.out.weight = self.embedding.weight

    def drop_words(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word dropout (Bowman et al.): in training, replace decoder inputs by <unk> with probability p;
        <sos> and <pad> are never replaced."""
        if not self.training or self.word_dropout <= 0.0:
            return tokens
        drop = torch.rand(tokens.shape, device=tokens.device) < self.word_dropout
        drop &= (tokens != self.sos_id) & (tokens != self.pad_id)
        return tokens.masked_fill(drop, self.unk_id)

    def embed(self, tokens: torch.Tensor, word_dropout: bool = False) -> torch.Tensor:
        if word_dropout:
            tokens = self.drop_words(tokens)
        return self.embed_drop(self.embedding(tokens))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.out_drop(hidden))

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, V] log-softmax."""
        return F.log_softmax(self.logits(hidden), dim=-1)

    def token_log_likelihood(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(target) at each of N positions, [N, H] + [N] -> [N]; chunked when no gradient is needed."""
        n = hidden.shape[0]
        step = max(1, LOGIT_CHUNK // self.vocab_size)
        if torch.is_grad_enabled() or n <= step:
            return -F.cross_entropy(self.logits(hidden), targets, reduction="none")
        return torch.cat([-F.cross_entropy(self.logits(hidden[i:i + step]), targets[i:i + step], reduction="none")
                          for i in range(0, n, step)])


# ------------------------------------------------------------------------------------- recurrences

class RNNEncoder(nn.Module):
    """Reads [B, T, F] features of the given lengths; returns the last layer's final hidden state(s)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 rnn: str = "lstm") -> None:
        super().__init__()
        self.rnn_type, self.num_layers = rnn, num_layers
        self.directions = 2 if bidirectional else 1
        self.rnn = RNNS[rnn](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                             bidirectional=bidirectional)
        self.output_size = hidden_size * self.directions

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        packing = packing or Packing.from_lengths(lengths)
        _, state = self.rnn(packing.packed_sequence(inputs))
        h = state[0] if self.rnn_type == "lstm" else state            # [layers * dirs, B_sorted, H]
        h = h.view(self.num_layers, self.directions, h.shape[1], h.shape[2])[-1]
        h = h.transpose(0, 1).reshape(h.shape[1], -1)                  # [B_sorted, dirs * H]
        out = torch.empty_like(h)
        out[packing.order] = h                                         # back to batch order
        return out


class RNNDecoder(nn.Module):
    """An autoregressive RNN, optionally conditioned on z: init (z -> initial state), concat (z with every
    input step) or both. Without a latent (latent_dim 0) it is a plain RNN language model."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, rnn: str = "lstm",
                 latent_dim: int = 0, z_conditioning: str = "init") -> None:
        super().__init__()
        self.rnn_type, self.num_layers, self.hidden_size = rnn, num_layers, hidden_size
        self.latent_dim, self.z_conditioning = latent_dim, z_conditioning
        self.concat = latent_dim > 0 and z_conditioning in ("concat", "both")
        self.init = latent_dim > 0 and z_conditioning in ("init", "both")
        self.rnn = RNNS[rnn](input_size + (latent_dim if self.concat else 0), hidden_size, num_layers=num_layers,
                             batch_first=True)
        self.n_state = 2 if rnn == "lstm" else 1
        if self.init:
            self.z_to_state = nn.Linear(latent_dim, self.n_state * num_layers * hidden_size)
        self.output_size = hidden_size

    def initial_state(self, z: torch.Tensor | None, n: int, device: torch.device | None = None) -> State:
        """The state before the first input: from z (init/both) or zeros. Tuple of [layers, n, H]."""
        if self.init:
            s = self.z_to_state(z).view(n, self.n_state, self.num_layers, self.hidden_size)
            return tuple(s[:, i].transpose(0, 1).contiguous() for i in range(self.n_state))
        if device is None:
            device = z.device if z is not None else next(self.parameters()).device
        zeros = torch.zeros(self.num_layers, n, self.hidden_size, device=device)
        return tuple(zeros for _ in range(self.n_state))

    def _rnn_state(self, state: State):
        return state if self.rnn_type == "lstm" else state[0]

    def _as_tuple(self, state) -> State:
        return tuple(state) if self.rnn_type == "lstm" else (state,)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor | None = None,
                packing: Packing | None = None) -> tuple[torch.Tensor, Packing]:
        """Hidden states of the valid positions, [num_tokens, H], in packed order (see Packing.rows)."""
        packing = packing or Packing.from_lengths(lengths)
        b = inputs.shape[0]
        if self.concat:
            inputs = torch.cat([inputs, z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
        state = None
        if self.init:
            state = tuple(s.index_select(1, packing.order) for s in self.initial_state(z, b))
            state = self._rnn_state(state)
        out, _ = self.rnn(packing.packed_sequence(inputs), state)
        return out.data, packing

    def step(self, inputs: torch.Tensor, state: State, z: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """One time step for N sequences: inputs [N, F] -> (hidden [N, H], new state)."""
        if self.concat:
            inputs = torch.cat([inputs, z], dim=-1)
        out, new = self.rnn(inputs.unsqueeze(1), self._rnn_state(state))
        return out[:, 0], self._as_tuple(new)


# ------------------------------------------------------------------------------------------ models

def _check_common(embed_dim, hidden_size, rnn, decoder_layers, word_dropout, embed_dropout, output_dropout,
                  vocab_size) -> None:
    _check(_positive_int(embed_dim), "embed_dim", embed_dim, "a positive integer")
    _check(_positive_int(hidden_size), "hidden_size", hidden_size, "a positive integer")
    _check(rnn in RNNS, "rnn", rnn, "one of: " + ", ".join(RNNS))
    _check(_positive_int(decoder_layers), "decoder_layers", decoder_layers, "a positive integer")
    for key, value in (("word_dropout", word_dropout), ("embed_dropout", embed_dropout),
                       ("output_dropout", output_dropout)):
        _check(_probability(value), key, value, "a number in [0, 1)")
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
    def vocab_size(self) -> int:
        return self.io.vocab_size

    def decoder_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """<sos> followed by the sentence shifted right: [B, T]."""
        sos = x.new_full((x.shape[0], 1), self.io.sos_id)
        return torch.cat([sos, x[:, :-1]], dim=1)

    def _score(self, x: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Sum over positions (incl. <eos>) of log p(x_t | x_<t, z) for each row: [N]."""
        packing = Packing.from_lengths(lengths)
        emb = self.io.embed(self.decoder_inputs(x), word_dropout=True)
        hidden, packing = self.decoder(emb, lengths, z, packing)
        targets = packing.pack(x)
        return packing.sum_per_example(self.io.token_log_likelihood(hidden, targets))

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
    z -> RNN decoder; word dropout, optional bag-of-words loss on z (Zhao et al. 2017)."""

    variational = True

    def __init__(self, vocab_size: int, pad_id: int = 0, unk_id: int = 1, sos_id: int = 2, eos_id: int = 3,
                 embed_dim: int = 256, hidden_size: int = 256, latent_dim: int = 32, rnn: str = "lstm",
                 encoder_layers: int = 1, bidirectional: bool = False, decoder_layers: int = 1,
                 z_conditioning: str = "init", word_dropout: float = 0.0, embed_dropout: float = 0.0,
                 output_dropout: float = 0.0, tie_weights: bool = False, name: str = "lstm_vae") -> None:
        super().__init__()
        _check_common(embed_dim, hidden_size, rnn, decoder_layers, word_dropout, embed_dropout, output_dropout,
                      vocab_size)
        _check(_positive_int(latent_dim), "latent_dim", latent_dim, "a positive integer")
        _check(_positive_int(encoder_layers), "encoder_layers", encoder_layers, "a positive integer")
        _check(z_conditioning in Z_CONDITIONING, "z_conditioning", z_conditioning,
               "one of: " + ", ".join(Z_CONDITIONING))
        self.latent_dim = latent_dim
        self.io = TokenIO(vocab_size, embed_dim, hidden_size, pad_id, unk_id, sos_id, eos_id, word_dropout,
                          embed_dropout, output_dropout, tie_weights)
        self.encoder = RNNEncoder(embed_dim, hidden_size, encoder_layers, bidirectional, rnn)
        self.mu_head = nn.Linear(self.encoder.output_size, latent_dim)
        self.logvar_head = nn.Linear(self.encoder.output_size, latent_dim)
        self.decoder = RNNDecoder(embed_dim, hidden_size, decoder_layers, rnn, latent_dim, z_conditioning)
        self.bow = nn.Linear(latent_dim, vocab_size)

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self.io.embed(batch["x"]), batch["lengths"])
        return self.mu_head(h), self.logvar_head(h)

    def log_likelihood(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats per sentence (all tokens incl. <eos>), z [S, B, D] -> [S, B], in one decoder pass."""
        x, lengths = batch["x"], batch["lengths"]
        s, b, d = z.shape
        if s > 1:
            x, lengths = x.repeat(s, 1), lengths.repeat(s)
        return self._score(x, lengths, z.reshape(s * b, d)).view(s, b)

    def bag_of_words_nll(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """-Σ_t log softmax(bow(z))[x_t] over the sentence's tokens (incl. <eos>, not pad): z [B, D] -> [B]
        (or [S, B, D] -> [S, B])."""
        x = batch["x"]
        log_p = F.log_softmax(self.bow(z), dim=-1)                     # [..., B, V]
        idx = x.expand(log_p.shape[:-1] + x.shape[-1:])
        picked = log_p.gather(-1, idx)                                 # [..., B, T]
        return -(picked * (x != self.io.pad_id)).sum(-1)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, max_len: int = 100) -> torch.Tensor:
        """Greedy decoding of z [B, D] (or [S, B, D]) -> token ids [..., L] padded with <pad>."""
        from .decoding import greedy
        shape = z.shape[:-1]
        out = greedy(self, z.reshape(-1, z.shape[-1]), max_len=max_len)
        return out.tokens.view(*shape, -1)


class LSTMLM(_TextDecoderMixin, LatentModel):
    """The RNN language model baseline: the VAE's decoder without a latent; its NLL is exact."""

    latent_dim = 0
    variational = False

    def __init__(self, vocab_size: int, pad_id: int = 0, unk_id: int = 1, sos_id: int = 2, eos_id: int = 3,
                 embed_dim: int = 256, hidden_size: int = 256, rnn: str = "lstm", decoder_layers: int = 1,
                 word_dropout: float = 0.0, embed_dropout: float = 0.0, output_dropout: float = 0.0,
                 tie_weights: bool = False, name: str = "lstm_lm") -> None:
        super().__init__()
        _check_common(embed_dim, hidden_size, rnn, decoder_layers, word_dropout, embed_dropout, output_dropout,
                      vocab_size)
        self.io = TokenIO(vocab_size, embed_dim, hidden_size, pad_id, unk_id, sos_id, eos_id, word_dropout,
                          embed_dropout, output_dropout, tie_weights)
        self.decoder = RNNDecoder(embed_dim, hidden_size, decoder_layers, rnn, 0)

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise SeqvaeError("lstm_lm has no latent variable: it cannot encode a sentence")

    def log_likelihood(self, batch: Batch, z: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) in nats per sentence (incl. <eos>): [1, B]."""
        return self._score(batch["x"], batch["lengths"], None).unsqueeze(0)

    def decode_mean(self, z: torch.Tensor | None = None, n: int = 1, max_len: int = 100) -> torch.Tensor:
        from .decoding import greedy
        return greedy(self, None, n=n, max_len=max_len).tokens
