"""Long series cut into sliding windows: a training period (its end validates) and a test period scored per
timestamp (data=nab, data=csv)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from seqvae_cli.config.rules import BOOLEAN, check_arguments, number
from seqvae_cli.data.series.base import Loaded, SeriesData, SplitArrays
from seqvae_cli.data.series.windows import (SPLITS, sliding_windows, window_labels, window_scores_to_timestamps,
                                            window_starts)
from seqvae_cli.errors import SeqvaeError

# ------------------------------------------------------------------------------ windowed long series

@dataclass
class RawSeries:
    """One long series as read from disk."""
    name: str
    source: str                 # file path, for messages
    timestamps: np.ndarray      # [L] (strings as written, or row numbers)
    values: np.ndarray          # [L, C] float64
    labels: np.ndarray          # [L] int64: 1 anomalous, 0 normal, -1 unknown
    channels: list[str]


@dataclass
class SeriesPart:
    """The timestamps of one series that a split scores: what per-timestamp evaluation needs."""
    name: str
    series: int                 # series id (the "series" entry of the batches)
    offset: int                 # index of the first timestamp within the whole series
    timestamps: np.ndarray      # [n]
    values: np.ndarray          # [n, C] raw values (the data's units)
    labels: np.ndarray          # [n] 1 / 0 / -1
    window_starts: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.timestamps)


class WindowedSeriesData(SeriesData):
    """Long series cut into sliding windows; subclasses implement load_series().

    Per series of length L (floor/round as written):
        training period = the first n_train = floor(train_fraction * L) timestamps (capped by max_train_length)
        val             = its last round(val_fraction * n_train) timestamps
        train           = the rest of it (the first n_fit timestamps); statistics come from these only
        test            = timestamps n_train .. L-1, the ones that get scored
    train/val windows lie inside their part (stride `stride`); test windows (stride `test_stride`) end at test
    timestamps and, with test_context=true, may reach back into the training period, so the first test
    timestamp already has a full window. A window's label is 1 if any of its timestamps is anomalous."""

    windowed = True
    RULES = {
        **SeriesData.RULES,
        "window": number(2, integer=True),
        "stride": number(1, integer=True),
        "test_stride": number(1, integer=True),
        "train_fraction": number(0, 1, lo_open=True, hi_open=True),
        "val_fraction": number(0, 1, lo_open=True, hi_open=True),
        "max_train_length": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 2),
                             "null or an integer >= 2"),
        "test_context": BOOLEAN,
    }

    def __init__(self, window: int, stride: int, test_stride: int, train_fraction: float, val_fraction: float,
                 max_train_length: int | None, test_context: bool, **base: Any) -> None:
        super().__init__(**base)
        self.parts: dict[str, list[SeriesPart]] = {}
        with self.deferred_errors():
            check_arguments("data", self.RULES, window=window, stride=stride, test_stride=test_stride,
                            train_fraction=train_fraction, val_fraction=val_fraction,
                            max_train_length=max_train_length, test_context=test_context)
            self.window, self.stride, self.test_stride = int(window), int(stride), int(test_stride)
            self.train_fraction, self.val_fraction = float(train_fraction), float(val_fraction)
            self.max_train_length, self.test_context = max_train_length, bool(test_context)

    def load_series(self) -> list[RawSeries]:
        raise NotImplementedError

    def period_lengths(self, length: int) -> tuple[int, int]:
        """(n_fit, n_train): the train part is [0, n_fit), val [n_fit, n_train), test [n_train, length)."""
        n_train = int(math.floor(self.train_fraction * length))
        if self.max_train_length is not None:
            n_train = min(n_train, self.max_train_length)
        return n_train - int(round(self.val_fraction * n_train)), n_train

    def _check_lengths(self, s: RawSeries, n_fit: int, n_train: int) -> None:
        length, w = len(s.values), self.window
        fix = "lower data.window"
        if w > length:
            raise SeqvaeError(f"data.window={w} is longer than the series {s.source} ({length} timestamps); {fix}")
        if n_fit < w:
            raise SeqvaeError(
                f"data.window={w} is longer than the training part of {s.source}: {n_fit} timestamps (the first "
                f"train_fraction={self.train_fraction:g} of its {length} timestamps = {n_train}, minus the last "
                f"val_fraction={self.val_fraction:g} of them for validation); {fix} or raise data.train_fraction")
        if n_train - n_fit < w:
            raise SeqvaeError(
                f"data.window={w} is longer than the validation part of {s.source}: {n_train - n_fit} timestamps "
                f"(val_fraction={self.val_fraction:g} of the {n_train}-step training period); {fix} or raise "
                f"data.val_fraction")
        test_len = length - n_train + (w - 1 if self.test_context else 0)
        if test_len < w:
            raise SeqvaeError(
                f"data.window={w} is longer than the test part of {s.source}: {length - n_train} timestamps after "
                f"the {n_train}-step training period; {fix}, lower data.train_fraction or set data.test_context=true")

    def load(self) -> Loaded:
        series = self.load_series()
        channels = series[0].channels
        for s in series[1:]:
            if len(s.channels) != len(channels):
                raise SeqvaeError(f"{s.source} has {len(s.channels)} value columns but {series[0].source} has "
                                  f"{len(channels)}: series used together need the same number of channels")
        pieces: dict[str, list[SplitArrays]] = {split: [] for split in SPLITS}
        self.parts = {split: [] for split in SPLITS}
        fit_groups = []
        for sid, s in enumerate(series):
            length = len(s.values)
            n_fit, n_train = self.period_lengths(length)
            self._check_lengths(s, n_fit, n_train)
            values = torch.from_numpy(np.ascontiguousarray(s.values, dtype=np.float64))
            labels = torch.from_numpy(np.asarray(s.labels, dtype=np.int64))
            test_lo = n_train - (self.window - 1) if self.test_context else n_train
            # split -> (window region [lo, hi), stride, scored timestamps [a, b))
            layout = {"train": (0, n_fit, self.stride, 0, n_fit),
                      "val": (n_fit, n_train, self.stride, n_fit, n_train),
                      "test": (test_lo, length, self.test_stride, n_train, length)}
            for split, (lo, hi, stride, a, b) in layout.items():
                starts = window_starts(hi - lo, self.window, stride, lo)
                pieces[split].append(SplitArrays(
                    x=sliding_windows(values, starts, self.window),
                    label=window_labels(labels, starts, self.window), start=starts,
                    series=torch.full_like(starts, sid)))
                self.parts[split].append(SeriesPart(s.name, sid, a, s.timestamps[a:b], s.values[a:b],
                                                    np.asarray(s.labels[a:b]), starts.numpy()))
            fit_groups.append(values[:n_fit].unsqueeze(1))   # [n_fit, 1, C]
        splits = {split: SplitArrays(*(torch.cat([getattr(p, f) for p in ps])
                                       for f in ("x", "label", "start", "series")))
                  for split, ps in pieces.items()}

        def describe(group: int, channel: int, step: int | None) -> str:
            return f"column {series[group].channels[channel]!r} of {series[group].source}"
        return Loaded(splits, fit_groups, channels, [s.name for s in series], describe)

    def split_series(self, split: str = "test") -> list[SeriesPart]:
        """Per series, the timestamps `split` scores: timestamps, raw values, per-timestamp labels, offset."""
        if split not in self.parts:
            raise SeqvaeError(f"{self.name}: no split {split!r} (call setup() first); expected one of {SPLITS}")
        return self.parts[split]

    def timestamp_scores(self, window_scores: Any, split: str = "test") -> list[np.ndarray]:
        """One score per window of `split` (in eval_batches order) -> per series of split_series(split), a
        float64 array aligned with its timestamps (see window_scores_to_timestamps; NaN = not scored)."""
        scores = np.asarray(window_scores.detach().cpu() if isinstance(window_scores, torch.Tensor)
                            else window_scores, dtype=np.float64).ravel()
        parts = self.split_series(split)
        n = sum(p.window_starts.size for p in parts)
        if scores.size != n:
            raise SeqvaeError(f"{self.name}: got {scores.size} window scores for the {split} split, which has "
                              f"{n} windows")
        out, done = [], 0
        for p in parts:
            k = p.window_starts.size
            out.append(window_scores_to_timestamps(p.window_starts, scores[done:done + k], self.window,
                                                   p.offset + len(p), p.offset))
            done += k
        return out
