"""data=sines: synthetic multi-channel sine waves from a seed, with optional injected test anomalies."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from seqvae_cli.config.rules import check_arguments, number, number_pair, one_of, seed_rule
from seqvae_cli.data.series.base import Loaded, SeriesData, SplitArrays
from seqvae_cli.data.series.windows import SPLITS
from seqvae_cli.errors import SeqvaeError


# ------------------------------------------------------------------------------------------- sines

def make_sines(n: int, seq_len: int, channels: int, gen: torch.Generator, frequency: Sequence[float],
               phase: Sequence[float], amplitude: Sequence[float], noise_std: float,
               anomaly_fraction: float = 0.0, anomaly_kind: str = "mixed", spike_size: float = 3.0,
               frequency_factor: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences [n, seq_len, channels] of amp * sin(2 pi (f t + phase)) + noise, and labels [n].

    Each channel of each sequence draws its frequency (cycles per step), phase (in periods) and amplitude
    uniformly from the given [low, high] ranges. Then round(anomaly_fraction * n) random sequences get one
    anomaly on one random channel and label 1: `spike` adds +-spike_size * amplitude at one random step;
    `frequency` multiplies the frequency by frequency_factor from a random step in the middle half on (the
    phase stays continuous); `mixed` picks one of the two per sequence. Normal draws come first, so the
    normal part of the data does not depend on the anomaly settings."""
    def uniform(bounds: Sequence[float], *shape: int) -> torch.Tensor:
        lo, hi = float(bounds[0]), float(bounds[1])
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)
    freq = uniform(frequency, n, 1, channels).expand(n, seq_len, channels).clone()
    phase0 = uniform(phase, n, 1, channels)
    amp = uniform(amplitude, n, 1, channels)
    noise = noise_std * torch.randn(n, seq_len, channels, generator=gen, dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    k = int(round(anomaly_fraction * n))
    spikes = []
    if k:
        rows = torch.randperm(n, generator=gen)[:k]
        coin = torch.rand(k, generator=gen)
        when = torch.randint(0, seq_len, (k,), generator=gen)
        change = torch.randint(seq_len // 4, max(seq_len // 4 + 1, (3 * seq_len) // 4), (k,), generator=gen)
        chan = torch.randint(0, channels, (k,), generator=gen)
        sign = torch.randint(0, 2, (k,), generator=gen) * 2 - 1
        for i in range(k):
            is_spike = anomaly_kind == "spike" or (anomaly_kind == "mixed" and bool(coin[i] < 0.5))
            r, c = int(rows[i]), int(chan[i])
            if is_spike:
                spikes.append((r, int(when[i]), c, float(sign[i]) * spike_size * float(amp[r, 0, c])))
            else:
                freq[r, int(change[i]):, c] *= frequency_factor
        labels[rows] = 1
    cycles = torch.cumsum(freq, 1) - freq          # periods completed before step t: phase-continuous
    x = amp * torch.sin(2 * math.pi * (cycles + phase0)) + noise
    for r, t, c, bump in spikes:
        x[r, t, c] += bump
    return x, labels


class SinesData(SeriesData):
    """Synthetic multi-channel sine waves (data=sines): the offline demo, generated from a seed."""

    RULES = {
        **SeriesData.RULES,
        **{f"num_series.{split}": number(1, integer=True) for split in SPLITS},
        "seq_len": number(2, integer=True),
        "channels": number(1, integer=True),
        "seed": seed_rule(),
        "frequency": number_pair(),
        "phase": number_pair(),
        "amplitude": number_pair(),
        "noise_std": number(0),
        "anomaly_fraction": number(0, 1),
        "anomaly_kind": one_of("spike", "frequency", "mixed"),
        "spike_size": number(0),
        "frequency_factor": number(0, lo_open=True),
    }

    def __init__(self, data_dir: str = ".", num_series: dict | None = None, seq_len: int = 100, channels: int = 2,
                 seed: int = 0, frequency: Sequence[float] = (0.02, 0.1), phase: Sequence[float] = (0.0, 1.0),
                 amplitude: Sequence[float] = (0.5, 1.5), noise_std: float = 0.05, anomaly_fraction: float = 0.1,
                 anomaly_kind: str = "mixed", spike_size: float = 3.0, frequency_factor: float = 2.5,
                 normalize: str = "zscore", batch_size: int = 64, eval_batch_size: int = 256,
                 eval_iw_samples: int = 100, name: str = "sines") -> None:
        super().__init__(name=name, data_dir=data_dir, normalize=normalize, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, eval_iw_samples=eval_iw_samples)
        with self.deferred_errors():
            num_series = dict(num_series or {"train": 2000, "val": 200, "test": 500})
            unknown = sorted(set(num_series) - set(SPLITS))
            if unknown:
                raise SeqvaeError(f"config error: data.num_series has unknown key(s) {', '.join(unknown)}; "
                                  f"expected train, val and test")
            check_arguments("data", self.RULES, **{f"num_series.{s}": num_series.get(s) for s in SPLITS},
                            seq_len=seq_len, channels=channels, seed=seed, frequency=frequency, phase=phase,
                            amplitude=amplitude, noise_std=noise_std, anomaly_fraction=anomaly_fraction,
                            anomaly_kind=anomaly_kind, spike_size=spike_size, frequency_factor=frequency_factor)
            self.num_series = {s: int(num_series[s]) for s in SPLITS}
            self.seq_len_setting, self.channels, self.seed = int(seq_len), int(channels), int(seed)
            self.frequency, self.phase, self.amplitude = list(frequency), list(phase), list(amplitude)
            self.noise_std, self.anomaly_fraction = float(noise_std), float(anomaly_fraction)
            self.anomaly_kind, self.spike_size = anomaly_kind, float(spike_size)
            self.frequency_factor = float(frequency_factor)

    def load(self) -> Loaded:
        splits = {}
        for i, split in enumerate(SPLITS):
            # One generator per split (seed*3 + i): the sizes of one split never change another's data.
            gen = torch.Generator().manual_seed(self.seed * 3 + i)
            x, labels = make_sines(self.num_series[split], self.seq_len_setting, self.channels, gen,
                                   self.frequency, self.phase, self.amplitude, self.noise_std,
                                   self.anomaly_fraction if split == "test" else 0.0, self.anomaly_kind,
                                   self.spike_size, self.frequency_factor)
            n = x.shape[0]
            splits[split] = SplitArrays(x, labels, torch.full((n,), -1, dtype=torch.long), torch.arange(n))
        return Loaded(splits, [splits["train"].x], [f"sine{c}" for c in range(self.channels)], [],
                      lambda g, c, step: f"channel {c} of the sines")
