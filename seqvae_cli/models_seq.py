"""Sequence models: the Bowman et al. (2016) sentence VAE (LSTMVAE) and its latent-free baseline (LSTMLM), and
the time-series LSTM-VAE (SeriesLSTMVAE: Gaussian outputs, forecasting by sampling). model=lstm_vae builds
either one from what the data gives (the lstm_vae factory at the end of this file).

The pieces are separable so the time-series models can reuse the recurrent parts with real-valued
inputs and a Gaussian output head:

  TokenIO     the token "heads": embedding (+ embedding dropout, word dropout) and the output
              projection (+ output dropout, optional weight tying) with a log-softmax
  RNNEncoder  any input features [B, T, F] + lengths -> a summary vector [B, H * directions]
  RNNDecoder  input features [B, T, F] + lengths (+ z) -> hidden states of the valid positions only,
              gathered to [num_tokens, H] with the example each one belongs to (Positions); and a
              one-step form for decoding

Speed: the output projection + log-softmax (the bulk of the work with a 10k vocabulary) run only at
the non-pad positions. The recurrences run on packed sequences on CUDA; on the CPU they run padded
(PyTorch's packed CPU kernels are 1.5-2x slower, and length-bucketed batches carry little padding),
which is exact for the causal decoder and a unidirectional encoder read at each sentence's last
step; a bidirectional encoder is always packed. `packed: true|false` forces either.

Decoder state convention (decoding.py relies on it): a tuple of tensors, each [layers, N, H].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .data import Batch
from .errors import SeqvaeError
from .models import LatentModel, eval_mode

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


# --------------------------------------------------------------------------------------- positions

@dataclass
class Positions:
    """The valid (non-pad) positions of a padded batch [B, T, ...], in row-major order: [num_tokens, ...]."""

    lengths: torch.Tensor     # [B]
    rows: torch.Tensor        # [num_tokens] the example of each valid position
    cols: torch.Tensor        # [num_tokens] its time step
    width: int                # T

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor, width: int | None = None) -> "Positions":
        width = int(lengths.max()) if width is None else width
        mask = torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
        rows, cols = mask.nonzero(as_tuple=True)
        return cls(lengths, rows, cols, width)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [num_tokens, ...]."""
        return padded[self.rows, self.cols]

    def sum_per_example(self, values: torch.Tensor) -> torch.Tensor:
        """[num_tokens] -> [B]."""
        return values.new_zeros(self.batch_size).index_add_(0, self.rows, values)


def run_rnn(rnn: nn.RNNBase | Callable, inputs: torch.Tensor, lengths: torch.Tensor, state, packed: bool):
    """Run a batch-first RNN over padded inputs; packed=True hides the padding from it (needed when the
    final state or a backward direction must stop/start at each sequence's own end). Returns the padded
    outputs [B, T, H*dirs] and the final state (exact only when packed)."""
    if not packed:
        return rnn(inputs, state)
    seq = pack_padded_sequence(inputs, lengths.detach().cpu(), batch_first=True, enforce_sorted=False)
    out, final = rnn(seq, state)    # a given state is permuted to the sorted order by the module itself
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=inputs.shape[1])
    return out, final


def default_packing(device: torch.device) -> bool:
    """Packed sequences on CUDA (cuDNN handles them natively); padded runs on the CPU, where PyTorch's
    packed kernels are 1.5-2x slower than the padded ones at the small padding length-bucketed batches have."""
    return device.type == "cuda"


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
        self.tied = bool(tie_weights)
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
                 rnn: str = "lstm", packed: bool | None = None) -> None:
        super().__init__()
        self.rnn_type, self.num_layers, self.packed = rnn, num_layers, packed
        self.directions = 2 if bidirectional else 1
        self.rnn = RNNS[rnn](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                             bidirectional=bidirectional)
        self.output_size = hidden_size * self.directions

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = default_packing(inputs.device) if self.packed is None else self.packed
        # The backward direction must start at each sentence's own end: only packing does that.
        packed = packed or self.directions == 2
        out, state = run_rnn(self.rnn, inputs, lengths, None, packed)
        if not packed:  # causal: the top layer's output at the last valid step is its final state
            return out[torch.arange(out.shape[0], device=out.device), lengths - 1]
        h = state[0] if self.rnn_type == "lstm" else state            # [layers * dirs, B, H], batch order
        h = h.view(self.num_layers, self.directions, h.shape[1], h.shape[2])[-1]
        return h.transpose(0, 1).reshape(h.shape[1], -1)               # [B, dirs * H]

    def forward_full(self, inputs: torch.Tensor) -> torch.Tensor:
        """Sequences without padding [B, T, F] (time-series windows): one plain batched run, no lengths and no
        packing. The final state is exact for both directions, since every row ends at step T-1."""
        _, state = self.rnn(inputs)
        h = state[0] if self.rnn_type == "lstm" else state
        h = h.view(self.num_layers, self.directions, h.shape[1], h.shape[2])[-1]
        return h.transpose(0, 1).reshape(h.shape[1], -1)               # [B, dirs * H]


class RNNDecoder(nn.Module):
    """An autoregressive RNN, optionally conditioned on z: init (z -> initial state), concat (z with every
    input step) or both. Without a latent (latent_dim 0) it is a plain RNN language model."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, rnn: str = "lstm",
                 latent_dim: int = 0, z_conditioning: str = "init", packed: bool | None = None,
                 weight_drop: float = 0.0) -> None:
        super().__init__()
        self.rnn_type, self.num_layers, self.hidden_size = rnn, num_layers, hidden_size
        self.weight_drop = float(weight_drop)
        self.latent_dim, self.z_conditioning, self.packed = latent_dim, z_conditioning, packed
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

    def _recurrence(self) -> nn.RNNBase | Callable:
        """The RNN a teacher-forced pass runs. In training with weight_drop > 0 it is the same RNN with
        DropConnect on its hidden-to-hidden weights (Merity et al. 2018, AWD-LSTM): one mask per batch, shared
        by all time steps, so the recurrence itself is regularised, which dropout on the inputs and outputs
        cannot do. Evaluation and one-step decoding use the full weights (inverted dropout keeps their scale)."""
        if not (self.training and self.weight_drop > 0):
            return self.rnn
        dropped = {name: F.dropout(getattr(self.rnn, name), self.weight_drop, training=True)
                   for name in (f"weight_hh_l{i}" for i in range(self.num_layers))}
        return lambda *args: functional_call(self.rnn, dropped, args)

    def _rnn_state(self, state: State):
        return state if self.rnn_type == "lstm" else state[0]

    def _as_tuple(self, state) -> State:
        return tuple(state) if self.rnn_type == "lstm" else (state,)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor | None = None,
                positions: Positions | None = None) -> tuple[torch.Tensor, Positions]:
        """Hidden states at the valid positions only, [num_tokens, H] (row-major, see Positions).

        Run padded, the states at valid positions are exact too: the recurrence is causal, so what
        follows a sentence's end never reaches them."""
        positions = positions or Positions.from_lengths(lengths, inputs.shape[1])
        if self.concat:
            inputs = torch.cat([inputs, z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
        state = self._rnn_state(self.initial_state(z, inputs.shape[0])) if self.init else None
        packed = default_packing(inputs.device) if self.packed is None else self.packed
        out, _ = run_rnn(self._recurrence(), inputs, lengths, state, packed)
        return positions.gather(out), positions

    def forward_full(self, inputs: torch.Tensor, z: torch.Tensor | None = None, state: State | None = None
                     ) -> tuple[torch.Tensor, State]:
        """All steps of sequences without padding, [N, T, F] -> (outputs [N, T, H], final state): the time-series
        form (no lengths, no packing). Starts from `state`, else from initial_state(z)."""
        n, t = inputs.shape[0], inputs.shape[1]
        if self.concat:
            inputs = torch.cat([inputs, z.unsqueeze(1).expand(-1, t, -1)], dim=-1)
        if state is None:
            state = self.initial_state(z, n, inputs.device)
        out, final = self._recurrence()(inputs, self._rnn_state(state))
        return out, self._as_tuple(final)

    def step(self, inputs: torch.Tensor, state: State, z: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """One time step for N sequences: inputs [N, F] -> (hidden [N, H], new state)."""
        if self.concat:
            inputs = torch.cat([inputs, z], dim=-1)
        out, new = self.rnn(inputs.unsqueeze(1), self._rnn_state(state))
        return out[:, 0], self._as_tuple(new)


# ------------------------------------------------------------------------------------------ models

def _check_common(embed_dim, hidden_size, rnn, decoder_layers, word_dropout, embed_dropout, output_dropout,
                  weight_drop, vocab_size, packed) -> None:
    _check(packed is None or isinstance(packed, bool), "packed", packed, "null (auto), true or false")
    _check(_positive_int(embed_dim), "embed_dim", embed_dim, "a positive integer")
    _check(_positive_int(hidden_size), "hidden_size", hidden_size, "a positive integer")
    _check(rnn in RNNS, "rnn", rnn, "one of: " + ", ".join(RNNS))
    _check(_positive_int(decoder_layers), "decoder_layers", decoder_layers, "a positive integer")
    for key, value in (("word_dropout", word_dropout), ("embed_dropout", embed_dropout),
                       ("output_dropout", output_dropout), ("weight_drop", weight_drop)):
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
    z -> RNN decoder; word dropout, optional bag-of-words loss on z (Zhao et al. 2017)."""

    variational = True
    # Without gradients, log_likelihood decodes at most this many sentence copies per pass.
    max_rows_per_pass = 4096

    def __init__(self, vocab_size: int, pad_id: int = 0, unk_id: int = 1, sos_id: int = 2, eos_id: int = 3,
                 embed_dim: int = 256, hidden_size: int = 256, latent_dim: int = 32, rnn: str = "lstm",
                 encoder_layers: int = 1, bidirectional: bool = False, decoder_layers: int = 1,
                 z_conditioning: str = "init", word_dropout: float = 0.0, embed_dropout: float = 0.0,
                 output_dropout: float = 0.0, weight_drop: float = 0.0, tie_weights: bool = False,
                 packed: bool | None = None, name: str = "lstm_vae") -> None:
        super().__init__()
        _check_common(embed_dim, hidden_size, rnn, decoder_layers, word_dropout, embed_dropout, output_dropout,
                      weight_drop, vocab_size, packed)
        _check(_positive_int(latent_dim), "latent_dim", latent_dim, "a positive integer")
        _check(_positive_int(encoder_layers), "encoder_layers", encoder_layers, "a positive integer")
        _check(z_conditioning in Z_CONDITIONING, "z_conditioning", z_conditioning,
               "one of: " + ", ".join(Z_CONDITIONING))
        self.latent_dim = latent_dim
        self.io = TokenIO(vocab_size, embed_dim, hidden_size, pad_id, unk_id, sos_id, eos_id, word_dropout,
                          embed_dropout, output_dropout, tie_weights)
        self.encoder = RNNEncoder(embed_dim, hidden_size, encoder_layers, bidirectional, rnn, packed)
        self.mu_head = nn.Linear(self.encoder.output_size, latent_dim)
        self.logvar_head = nn.Linear(self.encoder.output_size, latent_dim)
        self.decoder = RNNDecoder(embed_dim, hidden_size, decoder_layers, rnn, latent_dim, z_conditioning, packed,
                                  weight_drop)
        self.bow = nn.Linear(latent_dim, vocab_size)

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self.io.embed(batch["x"]), batch["lengths"])
        return self.mu_head(h), self.logvar_head(h)

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
                 weight_drop: float = 0.0, tie_weights: bool = False, packed: bool | None = None,
                 name: str = "lstm_lm") -> None:
        super().__init__()
        _check_common(embed_dim, hidden_size, rnn, decoder_layers, word_dropout, embed_dropout, output_dropout,
                      weight_drop, vocab_size, packed)
        self.io = TokenIO(vocab_size, embed_dim, hidden_size, pad_id, unk_id, sos_id, eos_id, word_dropout,
                          embed_dropout, output_dropout, tie_weights)
        self.decoder = RNNDecoder(embed_dim, hidden_size, decoder_layers, rnn, 0, "init", packed, weight_drop)

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise SeqvaeError("lstm_lm has no latent variable: it cannot encode a sentence")

    def log_likelihood(self, batch: Batch, z: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) in nats per sentence (incl. <eos>): [1, B]."""
        return self._score(batch["x"], batch["lengths"], None).unsqueeze(0)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder, self.io]

    def decode_mean(self, z: torch.Tensor | None = None, n: int = 1, max_len: int = 100) -> torch.Tensor:
        from .decoding import greedy
        return greedy(self, None, n=n, max_len=max_len).tokens


# ------------------------------------------------------------------------------------ time series

SERIES_DECODERS = ("repeat", "autoregressive")
OUTPUT_STDS = ("learned_channel", "learned_step", "fixed")
LOG_2PI = math.log(2 * math.pi)
# Bounds on a learned log-std (normalised units): a std below 1e-3 lets the likelihood of a near-perfect
# reconstruction grow without limit; above 1e3 nothing is modelled any more.
MIN_LOG_STD, MAX_LOG_STD = math.log(1e-3), math.log(1e3)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_std)^2), elementwise (shapes broadcast). The one Gaussian density of the time-series
    model: its likelihood, importance weights and forecasts all go through it."""
    return -0.5 * ((x - mean) * torch.exp(-log_std)).pow(2) - log_std - 0.5 * LOG_2PI


def _randn(shape: tuple, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on its own device), returned on like's device/dtype."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like)


class GaussianHead(nn.Module):
    """Decoder hidden states [..., H] -> the mean [..., C] and log-std of a diagonal Gaussian per step.

    output_std: learned_channel = one learned std per channel, shared by all steps and sequences |
    learned_step = the decoder predicts a std at every step and channel (heteroscedastic) |
    fixed = fixed_std for everything (in normalised units: 0.1 = a tenth of the training data's std)."""

    def __init__(self, hidden_size: int, channels: int, output_std: str, fixed_std: float) -> None:
        super().__init__()
        self.output_std = output_std
        self.mean = nn.Linear(hidden_size, channels)
        if output_std == "learned_channel":
            self.log_std = nn.Parameter(torch.zeros(channels))
        elif output_std == "learned_step":
            self.log_std_head = nn.Linear(hidden_size, channels)
        else:
            self.register_buffer("fixed_log_std", torch.full((channels,), math.log(fixed_std)), persistent=False)

    def reset_parameters(self) -> None:
        """reset_decoder() resets the Linear layers itself; this resets the per-channel std (to 1)."""
        if self.output_std == "learned_channel":
            nn.init.zeros_(self.log_std)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean [..., C], log_std [..., C] or [C] (broadcasts against the mean))."""
        if self.output_std == "learned_channel":
            log_std = self.log_std.clamp(MIN_LOG_STD, MAX_LOG_STD)
        elif self.output_std == "learned_step":
            log_std = self.log_std_head(hidden).clamp(MIN_LOG_STD, MAX_LOG_STD)
        else:
            log_std = self.fixed_log_std
        return self.mean(hidden), log_std


class SeriesLSTMVAE(LatentModel):
    """LSTM-VAE for fixed-length multichannel sequences [B, T, C] (normalised values): generate, forecast, score.

    Encoder: input projection (Linear C -> embed_dim, or the raw channels with project_input=false) -> RNNEncoder
    (lstm/gru, layers, bidirectional) -> Gaussian posterior heads. Decoder (series_decoder):
      repeat          z is the decoder's input at every step (the "SequenceVAE" of Fabius & van Amersfoort 2015 /
                      the LSTM-VAE anomaly detectors); with z_conditioning init/both it also gives the initial
                      state (concat: zero initial state). Its output cannot copy the previous value, so z must
                      carry the whole sequence.
      autoregressive  teacher forcing: step t reads x_{t-1} (zeros at t=0), conditioned on z as z_conditioning
                      says (init: initial state, concat: appended to every input, both).
    Likelihood: a diagonal Gaussian per step and channel (GaussianHead, output_std); log p(x|z) is summed over
    steps and channels: nats per sequence, so ELBOs compare across runs with the same data and window.

    Sequences have the data's fixed length (batches carry no "lengths"): every recurrence is one plain batched
    run, without packing.
    """

    variational = True
    # Without gradients, log_likelihood decodes at most this many sequence copies per pass (IW scoring).
    max_rows_per_pass = 4096

    def __init__(self, num_channels: int, seq_len: int, embed_dim: int = 32, project_input: bool = True,
                 hidden_size: int = 64, latent_dim: int = 16, rnn: str = "lstm", encoder_layers: int = 1,
                 bidirectional: bool = False, decoder_layers: int = 1, series_decoder: str = "repeat",
                 z_conditioning: str = "init", output_std: str = "learned_channel", fixed_std: float = 0.1,
                 name: str = "lstm_vae") -> None:
        super().__init__()
        _check(_positive_int(num_channels), "num_channels (from the data)", num_channels, "a positive integer")
        _check(_positive_int(seq_len), "seq_len (from the data)", seq_len, "a positive integer")
        _check(isinstance(project_input, bool), "project_input", project_input, "true or false")
        if project_input:
            _check(_positive_int(embed_dim), "embed_dim", embed_dim, "a positive integer")
        _check(_positive_int(hidden_size), "hidden_size", hidden_size, "a positive integer")
        _check(_positive_int(latent_dim), "latent_dim", latent_dim, "a positive integer")
        _check(rnn in RNNS, "rnn", rnn, "one of: " + ", ".join(RNNS))
        _check(_positive_int(encoder_layers), "encoder_layers", encoder_layers, "a positive integer")
        _check(isinstance(bidirectional, bool), "bidirectional", bidirectional, "true or false")
        _check(_positive_int(decoder_layers), "decoder_layers", decoder_layers, "a positive integer")
        _check(series_decoder in SERIES_DECODERS, "series_decoder", series_decoder,
               "one of: " + ", ".join(SERIES_DECODERS))
        _check(z_conditioning in Z_CONDITIONING, "z_conditioning", z_conditioning,
               "one of: " + ", ".join(Z_CONDITIONING))
        _check(output_std in OUTPUT_STDS, "output_std", output_std, "one of: " + ", ".join(OUTPUT_STDS))
        _check(isinstance(fixed_std, (int, float)) and not isinstance(fixed_std, bool) and fixed_std > 0,
               "fixed_std", fixed_std, "a number > 0 (a std in normalised units, e.g. 0.1)")
        self.num_channels, self.seq_len, self.latent_dim = num_channels, seq_len, latent_dim
        self.series_decoder, self.output_std = series_decoder, output_std
        features = embed_dim if project_input else num_channels
        self.input_proj = nn.Linear(num_channels, embed_dim) if project_input else nn.Identity()
        self.encoder = RNNEncoder(features, hidden_size, encoder_layers, bidirectional, rnn, packed=False)
        self.mu_head = nn.Linear(self.encoder.output_size, latent_dim)
        self.logvar_head = nn.Linear(self.encoder.output_size, latent_dim)
        if series_decoder == "repeat":
            # No input of its own: z (concatenated to an empty input) is what every step reads.
            conditioning = "both" if z_conditioning in ("init", "both") else "concat"
            self.decoder_proj = None
            self.decoder = RNNDecoder(0, hidden_size, decoder_layers, rnn, latent_dim, conditioning, packed=False)
        else:
            self.decoder_proj = nn.Linear(num_channels, embed_dim) if project_input else nn.Identity()
            self.decoder = RNNDecoder(features, hidden_size, decoder_layers, rnn, latent_dim, z_conditioning,
                                      packed=False)
        self.head = GaussianHead(hidden_size, num_channels, output_std, float(fixed_std))

    # ------------------------------------------------------------------------------ the interface
    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) for x [B, T', C]; any length T' works (forecast() encodes a prefix)."""
        h = self.encoder.forward_full(self.input_proj(batch["x"]))
        return self.mu_head(h), self.logvar_head(h)

    def _decode_full(self, z: torch.Tensor, x: torch.Tensor | None = None, steps: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder Gaussians of all steps, z [N, D] -> (mean [N, T, C], log_std [N, T, C] or [C]).
        repeat: from z alone (`steps` long, default seq_len); autoregressive: teacher-forced on x [N, T, C]."""
        if self.series_decoder == "repeat":
            inputs = z.new_zeros(z.shape[0], steps or self.seq_len, 0)
        else:
            previous = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
            inputs = self.decoder_proj(previous)
        out, _ = self.decoder.forward_full(inputs, z)
        return self.head(out)

    def log_likelihood(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats per sequence (summed over steps and channels), z [S, B, D] -> [S, B]."""
        x = batch["x"]
        s, b, d = z.shape
        if not torch.is_grad_enabled() and s * b > self.max_rows_per_pass and s > 1:
            per = max(1, self.max_rows_per_pass // b)
            return torch.cat([self.log_likelihood(batch, z[i:i + per]) for i in range(0, s, per)])
        teacher = x.repeat(s, 1, 1) if self.series_decoder == "autoregressive" else None
        mean, log_std = self._decode_full(z.reshape(s * b, d), teacher, x.shape[1])
        mean = mean.view(s, b, *x.shape[1:])
        if log_std.dim() == 3:
            log_std = log_std.view(s, b, *x.shape[1:])
        return gaussian_log_prob(x.unsqueeze(0), mean, log_std).sum((-2, -1))

    def _roll_out(self, z: torch.Tensor, state: State, previous: torch.Tensor, steps: int,
                  noise: bool, generator: torch.Generator | None) -> torch.Tensor:
        """Autoregressive generation: from `state` with last value `previous` [N, C], `steps` steps, each fed
        back: a draw from the step's Gaussian (noise=True) or its mean. -> [N, steps, C]."""
        out = []
        for _ in range(steps):
            hidden, state = self.decoder.step(self.decoder_proj(previous), state, z)
            mean, log_std = self.head(hidden)
            if noise:
                mean = mean + log_std.exp() * _randn(tuple(mean.shape), generator, mean)
            out.append(mean)
            previous = mean
        return torch.stack(out, 1)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Mean sequences of z [..., D] -> [..., T, C] (autoregressive: each step's mean is fed back)."""
        shape, flat = z.shape[:-1], z.reshape(-1, z.shape[-1])
        if self.series_decoder == "repeat":
            mean, _ = self._decode_full(flat)
        else:
            state = self.decoder.initial_state(flat, flat.shape[0], flat.device)
            mean = self._roll_out(flat, state, flat.new_zeros(flat.shape[0], self.num_channels), self.seq_len,
                                  noise=False, generator=None)
        return mean.view(*shape, self.seq_len, self.num_channels)

    def decoder_modules(self) -> list[nn.Module]:
        """Reset by Li et al. 2019's recipe: the decoder RNN (with its z -> state map), its input projection
        (autoregressive) and the Gaussian head; the encoder and posterior heads are kept."""
        return [m for m in (self.decoder, self.decoder_proj, self.head) if m is not None]

    # --------------------------------------------------------------------------------- forecasting
    @torch.no_grad()
    def forecast(self, prefix: torch.Tensor, horizon: int, num_samples: int = 100,
                 generator: torch.Generator | None = None, noise: bool = True) -> torch.Tensor:
        """Predict the future by sampling: prefix [B, P, C] (observed, normalised) -> [N, B, H, C] sampled futures.

        z ~ q(z | prefix) (the encoder reads only the P observed steps), then
          autoregressive: the decoder is teacher-forced on the prefix, then samples x_P, x_P+1, ... one step at a
            time from its Gaussian, each draw fed back (noise=False: the means are fed back instead);
          repeat: the whole window is decoded from z and steps P..P+H-1 are kept (plus Gaussian noise unless
            noise=False). This is an approximation: nothing forces the decoded first P steps to match the
            observed prefix, the future depends on the prefix only through z, and P + H <= seq_len.
        All randomness comes from `generator` (on the CPU or the model's device), so a fixed seed reproduces it."""
        b, p, c = prefix.shape
        if not (isinstance(horizon, int) and horizon > 0):
            raise SeqvaeError(f"forecast horizon must be a positive integer; got {horizon!r}")
        if p < 1:
            raise SeqvaeError("forecast needs at least one observed step (the prefix is empty)")
        if self.series_decoder == "repeat" and p + horizon > self.seq_len:
            raise SeqvaeError(f"the repeat decoder forecasts inside its window only: prefix {p} + horizon {horizon} "
                              f"> seq_len {self.seq_len}; shorten them (or use model.series_decoder=autoregressive)")
        with eval_mode(self):
            mu, logvar = self.encode({"x": prefix})
            eps = _randn((num_samples, b, self.latent_dim), generator, mu)
            z = (mu + eps * (0.5 * logvar).exp()).reshape(num_samples * b, -1)   # row n*B + i: sample n of prefix i
            if self.series_decoder == "repeat":
                mean, log_std = self._decode_full(z)
                mean = mean[:, p:p + horizon]
                if noise:
                    log_std = log_std[:, p:p + horizon] if log_std.dim() == 3 else log_std
                    mean = mean + log_std.exp() * _randn(tuple(mean.shape), generator, mean)
                out = mean
            else:
                observed = prefix.repeat(num_samples, 1, 1)
                teacher = torch.cat([torch.zeros_like(observed[:, :1]), observed[:, :-1]], dim=1)
                _, state = self.decoder.forward_full(self.decoder_proj(teacher), z)
                out = self._roll_out(z, state, observed[:, -1], horizon, noise, generator)
        return out.reshape(num_samples, b, horizon, c)


# ------------------------------------------------------------------------------------- the factory

# model=lstm_vae serves both data kinds: the data module's kwargs pick the model, and the config keys of the
# other kind are dropped here (conf/model/lstm_vae.yaml lists which keys are text-only and series-only).
TEXT_ONLY_KEYS = ("vocab_size", "pad_id", "unk_id", "sos_id", "eos_id", "word_dropout", "embed_dropout",
                  "output_dropout", "weight_drop", "tie_weights", "packed")
SERIES_ONLY_KEYS = ("num_channels", "seq_len", "project_input", "series_decoder", "output_std", "fixed_std")


def build_lstm_vae(**kwargs) -> LatentModel:
    """The sentence VAE (LSTMVAE) when the data gives vocab_size, the time-series SeriesLSTMVAE when it gives
    num_channels and seq_len."""
    if "vocab_size" in kwargs:
        return LSTMVAE(**{k: v for k, v in kwargs.items() if k not in SERIES_ONLY_KEYS})
    if "num_channels" in kwargs and "seq_len" in kwargs:
        return SeriesLSTMVAE(**{k: v for k, v in kwargs.items() if k not in TEXT_ONLY_KEYS})
    given = sorted(k for k in kwargs if k not in LSTMVAE_CONFIG_KEYS)
    raise SeqvaeError(f"model=lstm_vae needs text data (data=ptb|text: a vocabulary) or time-series data "
                      f"(data=sines|ecg5000|nab|csv: channels and a sequence length); this data gives "
                      f"{', '.join(given) or 'nothing'}. Use model=mlp_vae for images")


LSTMVAE_CONFIG_KEYS = frozenset({"name", "embed_dim", "hidden_size", "latent_dim", "rnn", "encoder_layers",
                                 "bidirectional", "decoder_layers", "z_conditioning"}
                                | set(TEXT_ONLY_KEYS) | set(SERIES_ONLY_KEYS))


class lstm_vae:  # noqa: N801 - named like the config option it serves
    """`_target_` of conf/model/lstm_vae.yaml: lstm_vae(**kwargs) returns build_lstm_vae(**kwargs), an LSTMVAE or a
    SeriesLSTMVAE, never an instance of this class. A class rather than a function only because config tooling
    (hydra.utils.get_class, e.g. in tests/test_compose.py) locates model targets as classes."""

    def __new__(cls, **kwargs) -> LatentModel:  # type: ignore[misc]
        return build_lstm_vae(**kwargs)
