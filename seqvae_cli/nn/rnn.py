"""The recurrent building blocks of the sequence models (models/sentence_vae.py, lstm_lm.py, series_vae.py).

The pieces are separable so the time-series model reuses the recurrent parts with real-valued
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

Decoder state convention (models/decoding.py relies on it): a tuple of tensors, each [layers, N, H].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqvae_cli.config.rules import BOOLEAN, number, one_of, probability
from seqvae_cli.errors import SeqvaeError

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}
Z_CONDITIONING = ("init", "concat", "both")


# The rules of the model keys (model.<key>) the modules below take: the sequence models (models/sentence_vae.py,
# lstm_lm.py, series_vae.py) pick theirs from here into their RULES, so a key shared by two models has one rule.
RNN_RULES = {
    "embed_dim": number(1, integer=True),
    "hidden_size": number(1, integer=True),
    "rnn": one_of(*RNNS),
    "encoder_layers": number(1, integer=True),
    "bidirectional": BOOLEAN,
    "decoder_layers": number(1, integer=True),
    "z_conditioning": one_of(*Z_CONDITIONING),
    "word_dropout": probability(),
    "embed_dropout": probability(),
    "output_dropout": probability(),
    "weight_drop": probability(),
    "tie_weights": BOOLEAN,
    "packed": (lambda v: v is None or isinstance(v, bool), "null (auto), true or false"),
}


State = tuple[torch.Tensor, ...]


# Under no_grad, the output projection runs on at most this many logits at a time, so scoring
# thousands of importance samples never materialises a [tokens, vocab] matrix of gigabytes.
LOGIT_CHUNK = 1 << 22


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
