"""The time-series LSTM-VAE: Gaussian outputs, forecasting by sampling continuations."""
from __future__ import annotations

import math

import torch
from torch import nn

from seqvae_cli.config.rules import BOOLEAN, check_arguments, number, one_of
from seqvae_cli.data.base import Batch
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.latent.prior import LOG_2PI
from seqvae_cli.models.base import LatentModel, eval_mode
from seqvae_cli.models.encoders import ENCODER_RULES, build_encoder
from seqvae_cli.nn.rnn import RNN_RULES, RNNDecoder, State


# ------------------------------------------------------------------------------------ time series

SERIES_DECODERS = ("repeat", "autoregressive")
OUTPUT_STDS = ("learned_channel", "learned_step", "fixed")


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
    (lstm/gru, layers, bidirectional), or with encoder=transformer a Transformer (models/encoders.py) -> Gaussian
    posterior heads. Decoder (series_decoder):
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
    RULES = {
        "project_input": BOOLEAN,
        **{key: RNN_RULES[key] for key in ("embed_dim", "hidden_size")},
        **LatentModel.RULES,
        **{key: RNN_RULES[key] for key in ("rnn", "encoder_layers", "bidirectional", "decoder_layers",
                                            "z_conditioning")},
        "series_decoder": one_of(*SERIES_DECODERS),
        "output_std": one_of(*OUTPUT_STDS),
        "fixed_std": number(0, lo_open=True),
        **ENCODER_RULES,
    }

    def __init__(self, num_channels: int, seq_len: int, embed_dim: int = 32, project_input: bool = True,
                 hidden_size: int = 64, latent_dim: int = 16, rnn: str = "lstm", encoder_layers: int = 1,
                 bidirectional: bool = False, decoder_layers: int = 1, series_decoder: str = "repeat",
                 z_conditioning: str = "init", output_std: str = "learned_channel", fixed_std: float = 0.1,
                 encoder: str = "rnn", transformer: dict | None = None, name: str = "lstm_vae") -> None:
        super().__init__()
        for what, value in (("num_channels", num_channels), ("seq_len", seq_len)):   # shapes of the data
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SeqvaeError(f"the data gives {what}={value!r}: the series model needs a positive integer")
        check_arguments("model", self.RULES, project_input=project_input,
                        **({"embed_dim": embed_dim} if project_input else {}),   # unused without the projection
                        hidden_size=hidden_size, latent_dim=latent_dim, rnn=rnn, encoder_layers=encoder_layers,
                        bidirectional=bidirectional, decoder_layers=decoder_layers, series_decoder=series_decoder,
                        z_conditioning=z_conditioning, output_std=output_std, fixed_std=fixed_std)
        self.num_channels, self.seq_len, self.latent_dim = num_channels, seq_len, latent_dim
        self.series_decoder, self.output_std = series_decoder, output_std
        features = embed_dim if project_input else num_channels
        self.input_proj = nn.Linear(num_channels, embed_dim) if project_input else nn.Identity()
        self.encoder = build_encoder(encoder, features, hidden_size, encoder_layers, bidirectional, rnn, False,
                                     transformer)
        self.add_latent(self.encoder.output_size, latent_dim)
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
    def features(self, batch: Batch) -> torch.Tensor:
        """The encoder's summary of x [B, T', C]; any length T' works (forecast() encodes a prefix)."""
        return self.encoder.forward_full(self.input_proj(batch["x"]))

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
            q = self.posterior({"x": prefix})
            eps = _randn((num_samples, b, self.latent_dim), generator, q.mu)
            z = (q.mu + eps * (0.5 * q.logvar).exp()).reshape(num_samples * b, -1)   # row n*B + i: sample n of prefix i
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
