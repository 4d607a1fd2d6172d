"""Time-series data: fixed-length sequences for the LSTM-VAE (generate, forecast, score anomalies).

Every module yields batches

    {"x":      FloatTensor [B, T, C]  normalised values,
     "label":  LongTensor  [B]        1 anomalous, 0 normal, -1 unknown,
     "start":  LongTensor  [B]        the window's first index in its series (-1: a whole sequence),
     "series": LongTensor  [B]        which series the row comes from}

(ECG5000 adds "y": the beat's class 1..5, for plots). The shared base does everything but loading:
normalisation with statistics of the training part only, on-device storage, shuffled training batches
(torch.randperm + gather by index) and deterministic evaluation batches in storage order. Modules only say
how they load:

* SinesData (data=sines): synthetic multi-channel sine waves from a seed, optional injected test anomalies.
* ECG5000Data (data=ecg5000): UCR ECG5000 heartbeats, one 140-step beat per row.
* NABData (data=nab) and CSVData (data=csv): long series cut into sliding windows (WindowedSeriesData):
  the first train_fraction of each series is the training period (its last val_fraction validates), the
  rest is the test period, scored per timestamp (split_series / timestamp_scores).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .config import RULES, one_of, value_error
from .data import Batch, DataModule, batch_limit, read_text_file, resolve_data_dir
from .errors import SeqvaeError

log = logging.getLogger("seqvae")

SPLITS = ("train", "val", "test")
UNKNOWN = -1
# Cells that mean "no value" in a CSV file (compared lower-case, after stripping blanks).
MISSING_MARKERS = frozenset({"", "nan", "na", "n/a", "null", "none", "-"})
# The largest magnitude a data cell may have. A z-score squares the values (1e300 squared is inf in float64, so one
# such cell made the scale inf and trained the column as zeros), and the model and plots hold them in float32 (max
# 3.4e38): 1e30 leaves room for both, and no sensor reads that much.
MAX_ABS_VALUE = 1e30
UCR_URL = "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/"
NAB_URL = "https://github.com/numenta/NAB"


# ------------------------------------------------------------------------------------ config checks

def check(key: str, value: Any, rule: tuple[Callable[[Any], bool], str] | None = None) -> None:
    """Raise the usual one-line config error when `value` breaks `rule`, by default config.RULES["data.<key>"]: the
    rule validate() applies to the composed config, so a module built from a checkpoint is held to the same one."""
    rule = rule or RULES[f"data.{key}"]
    if not rule[0](value):
        raise value_error(f"data.{key}", value, rule)


# --------------------------------------------------------------------------------------- windowing

def window_starts(length: int, window: int, stride: int, offset: int = 0) -> torch.Tensor:
    """Starts of the windows of `window` steps taken every `stride` steps inside [offset, offset + length):
    floor((length - window) / stride) + 1 of them, none when length < window."""
    if length < window:
        return torch.zeros(0, dtype=torch.long)
    return offset + torch.arange(0, length - window + 1, stride, dtype=torch.long)


def sliding_windows(values: torch.Tensor, starts: torch.Tensor, window: int) -> torch.Tensor:
    """values [L, C] -> the windows values[s:s+window] for each start s: [N, window, C]."""
    return values[starts[:, None] + torch.arange(window)]


def window_labels(labels: torch.Tensor, starts: torch.Tensor, window: int) -> torch.Tensor:
    """Per-timestamp labels [L] -> per-window labels [N]: 1 if any timestamp of the window is anomalous,
    else -1 if any is unknown, else 0."""
    lab = labels[starts[:, None] + torch.arange(window)]
    if lab.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    unknown = torch.where((lab < 0).any(1), UNKNOWN, 0)
    return torch.where((lab == 1).any(1), 1, unknown).long()


def window_scores_to_timestamps(starts: Any, scores: Any, window: int, length: int, offset: int = 0) -> np.ndarray:
    """Per-window scores of one series -> per-timestamp scores of its timestamps offset..length-1.

    Our choice: timestamp t gets the score of the window that ENDS at t. With stride 1 (the default for
    scoring) that window holds t and the window-1 steps before it, so each timestamp is scored from data up
    to it only (causal, like NAB's streaming detectors). With a stride s > 1 a timestamp takes the score of
    the first window that ends at or after it and contains it (a delay of at most s-1 steps). Timestamps
    before the end of the first window (no full window up to them) and timestamps no window contains get NaN.
    Example: window 3, windows starting at 0, 1, 2 with scores 5, 6, 7 on a series of length 5:
    -> [nan, nan, 5, 6, 7].
    """
    starts = np.asarray(starts.cpu() if isinstance(starts, torch.Tensor) else starts, dtype=np.int64).ravel()
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores,
                        dtype=np.float64).ravel()
    order = np.argsort(starts, kind="mergesort")
    starts, scores = starts[order], scores[order]
    ends = starts + window - 1
    t = np.arange(offset, length)
    out = np.full(t.size, np.nan)
    j = np.searchsorted(ends, t, side="left")   # first window ending at or after t
    ok = j < ends.size
    jj = j[ok]
    out[ok] = np.where((starts[jj] <= t[ok]) & (t[ok] >= ends[0]), scores[jj], np.nan)
    return out


# ------------------------------------------------------------------------------------ normalisation

@dataclass
class Normalizer:
    """x_norm = (x - shift) / scale, with statistics of the training part only.

    shift/scale are [G, T or 1, C] float64: G = 1 (one set for all rows) or one set per series (a row
    uses the set of its series id); T when statistics are per time step (ECG per_step), else 1."""
    mode: str                # zscore | minmax | per_step | none
    shift: torch.Tensor
    scale: torch.Tensor

    def _stats(self, series: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shift.shape[0] == 1:
            return self.shift[0].to(device), self.scale[0].to(device)
        idx = series.long().cpu()
        return self.shift[idx].to(device), self.scale[idx].to(device)

    def apply(self, x: torch.Tensor, series: torch.Tensor) -> torch.Tensor:
        shift, scale = self._stats(series, x.device)
        return ((x.double() - shift) / scale).float()

    def invert(self, x: torch.Tensor, series: torch.Tensor) -> torch.Tensor:
        """Back to the data's own units (e.g. for plots of samples and forecasts)."""
        shift, scale = self._stats(series, x.device)
        return (x.double() * scale + shift).to(x.dtype)


def fit_normalizer(groups: Sequence[torch.Tensor], mode: str,
                   describe: Callable[[int, int, int | None], str], setting: str | None = None) -> Normalizer:
    """Statistics of each group of training values [n, T, C]: over rows (and time unless per_step).

    zscore/per_step: mean and population std; minmax: min and max - min (training values -> [0, 1]); none:
    0 and 1. A zero std/range cannot scale anything: a SeqvaeError names the series/column (describe(group,
    channel, step)) and suggests normalize=none. `setting` is the user's name of the mode, for that message."""
    channels = groups[0].shape[-1]
    if mode == "none":
        return Normalizer(mode, torch.zeros(len(groups), 1, channels, dtype=torch.float64),
                          torch.ones(len(groups), 1, channels, dtype=torch.float64))
    dims = (0,) if mode == "per_step" else (0, 1)
    shifts, scales = [], []
    for g, values in enumerate(groups):
        v = values.double()
        if mode == "minmax":
            lo, hi = v.amin(dims), v.amax(dims)
            shift, scale = lo, hi - lo
        else:
            shift, scale = v.mean(dims), v.std(dims, unbiased=False)
        shift, scale = shift.reshape(-1, channels), scale.reshape(-1, channels)   # [T or 1, C]
        overflow = ~(torch.isfinite(shift) & torch.isfinite(scale))
        if overflow.any():   # the readers refuse such cells; generated data (sines' amplitude) can still get here
            step, channel = (int(i) for i in overflow.nonzero()[0])
            what = describe(g, channel, step if mode == "per_step" else None)
            raise SeqvaeError(f"{what}: its training values are too large to normalise (largest magnitude "
                              f"{float(v.abs().max()):g}; mean {float(shift[step, channel]):g}, scale "
                              f"{float(scale[step, channel]):g}); keep values within +-{MAX_ABS_VALUE:g}")
        flat = v.reshape(-1, v.shape[1] if mode == "per_step" else 1, channels).abs().amax(0)
        bad = scale <= 1e-10 * flat.clamp_min(1.0)
        if bad.any():
            step, channel = (int(i) for i in bad.nonzero()[0])
            what = describe(g, channel, step if mode == "per_step" else None)
            value = float(shift[step, channel])
            stat = "range (max - min)" if mode == "minmax" else "standard deviation"
            count = v.shape[0] if mode == "per_step" else v.shape[0] * v.shape[1]
            raise SeqvaeError(f"{what} is constant in the training part (all {count} training values are "
                              f"{value:g}): normalize={setting or mode} divides by its {stat}, which is 0; "
                              f"set data.normalize=none or use another series/column")
        shifts.append(shift)
        scales.append(scale)
    return Normalizer(mode, torch.stack(shifts), torch.stack(scales))


# ------------------------------------------------------------------------------------- the base

@dataclass
class SplitArrays:
    """One split before normalisation: x [N, T, C] in the data's units plus the per-row tensors."""
    x: torch.Tensor
    label: torch.Tensor
    start: torch.Tensor
    series: torch.Tensor
    y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        assert self.x.dim() == 3 and all(t.shape == (n,) for t in (self.label, self.start, self.series))


@dataclass
class Loaded:
    """What a module's load() returns: the three splits and the training values to fit statistics on."""
    splits: dict[str, SplitArrays]
    fit_groups: list[torch.Tensor]     # one [n, T, C] tensor per statistics group (1 shared, or one per series)
    channels: list[str]
    series_names: list[str]
    describe: Callable[[int, int, int | None], str]   # (group, channel, step) -> "column 'v' of file.csv"


class SeriesData(DataModule):
    """Shared base of the time-series modules: subclasses implement load() and nothing else."""

    kind = "series"
    windowed = False
    NORMALIZE: tuple[str, ...] = ("zscore", "minmax", "none")

    def __init__(self, name: str, data_dir: str, normalize: str, batch_size: int, eval_batch_size: int,
                 eval_iw_samples: int) -> None:
        self.config_error: SeqvaeError | None = None
        self.name, self.data_dir, self.normalize = name, data_dir, normalize
        with self.deferred_errors():
            check("normalize", normalize, one_of(*self.NORMALIZE))
            check("batch_size", batch_size)
            check("eval_batch_size", eval_batch_size)
            check("eval_iw_samples", eval_iw_samples)
            self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
            self.eval_iw_samples = int(eval_iw_samples)
        self.splits: dict[str, dict[str, torch.Tensor]] = {}
        self.normalizer: Normalizer | None = None
        self.channel_names: list[str] = []
        self.series_names: list[str] = []
        self.seq_len = self.num_channels = 0
        self.loaded_state: dict | None = None
        self.device = torch.device("cpu")

    @contextmanager
    def deferred_errors(self) -> Iterator[None]:
        """Keep the first config error of a constructor and raise it in setup(): hydra.utils.instantiate would
        wrap an error raised in __init__ into a multi-line InstantiationException, while setup() errors
        reach the CLI as the one line users should see. setup() still fails before any work is done."""
        try:
            yield
        except SeqvaeError as exc:
            if self.config_error is None:
                self.config_error = exc

    # --------------------------------------------------------------------- what subclasses provide
    def load(self) -> Loaded:
        raise NotImplementedError

    def stats_mode(self) -> str:
        """The normaliser's mode for this module's `normalize` setting."""
        return self.normalize

    # ------------------------------------------------------------------------------------ set-up
    def setup(self, device: torch.device) -> None:
        if self.config_error is not None:
            raise self.config_error
        self.device = torch.device(device)
        loaded = self.load()
        for split in SPLITS:
            if loaded.splits[split].x.shape[0] == 0:
                raise SeqvaeError(f"{self.name}: the {split} split holds no sequence; give it some data "
                                  f"(see conf/data/{self.name}.yaml)")
        normalizer = self._restore(fit_normalizer(loaded.fit_groups, self.stats_mode(), loaded.describe,
                                                  self.normalize))
        self.normalizer = normalizer
        self.channel_names, self.series_names = list(loaded.channels), list(loaded.series_names)
        for split in SPLITS:
            part = loaded.splits[split]
            tensors = {"x": normalizer.apply(part.x, part.series), "label": part.label.long(),
                       "start": part.start.long(), "series": part.series.long()}
            if part.y is not None:
                tensors["y"] = part.y.long()
            self.splits[split] = {k: v.to(self.device) for k, v in tensors.items()}
        _, self.seq_len, self.num_channels = self.splits["train"]["x"].shape
        counts = {s: self.num_examples(s) for s in SPLITS}
        anomalous = int((self.splits["test"]["label"] == 1).sum())
        log.info("%s: sequences of %d steps x %d channel%s; train %d, val %d, test %d (%d labelled anomalous)",
                 self.name, self.seq_len, self.num_channels, "" if self.num_channels == 1 else "s",
                 counts["train"], counts["val"], counts["test"], anomalous)

    def _restore(self, fitted: Normalizer) -> Normalizer:
        """A checkpoint's statistics win over refitted ones: the model was trained on them."""
        state = self.loaded_state
        if not state or "shift" not in state:
            return fitted
        shift = torch.tensor(state["shift"], dtype=torch.float64)
        scale = torch.tensor(state["scale"], dtype=torch.float64)
        if state.get("normalize") != fitted.mode or shift.shape != fitted.shift.shape:
            raise SeqvaeError(
                f"the checkpoint's normalisation ({state.get('normalize')}, statistics of shape {tuple(shift.shape)}) "
                f"does not fit the data ({fitted.mode}, shape {tuple(fitted.shift.shape)}): the data has other "
                f"series or channels than the run was trained on. Point paths.data_dir (or $SEQVAE_DATA_DIR) / "
                f"data.path at the training data, or train a new run on this data")
        if not (torch.allclose(shift, fitted.shift, rtol=1e-6, atol=1e-9)
                and torch.allclose(scale, fitted.scale, rtol=1e-6, atol=1e-9)):
            log.warning("%s: the training part's statistics differ from the checkpoint's (the data changed since "
                        "training); normalising with the checkpoint's, which the model was trained on", self.name)
        return Normalizer(fitted.mode, shift, scale)

    # ----------------------------------------------------------------------------- the interface
    def model_kwargs(self) -> dict:
        return {"num_channels": self.num_channels, "seq_len": self.seq_len}

    def num_examples(self, split: str) -> int:
        return self.splits[split]["x"].shape[0]

    def _gather(self, split: str, idx: torch.Tensor) -> Batch:
        return {k: v.index_select(0, idx) for k, v in self.splits[split].items()}

    def train_batches(self, shuffle_gen: torch.Generator, data_gen: torch.Generator | None = None,
                      limit: int | float | None = None) -> Iterator[Batch]:
        order = torch.randperm(self.num_examples("train"), generator=shuffle_gen).to(self.device)
        for i in range(self.num_train_batches(limit)):
            yield self._gather("train", order[i * self.batch_size:(i + 1) * self.batch_size])

    def eval_batches(self, split: str, batch_size: int | None = None,
                     limit: int | float | None = None) -> Iterator[Batch]:
        """Every row of `split` once, in storage order (series by series, windows by start)."""
        tensors, bs = self.splits[split], batch_size or self.eval_batch_size
        n = tensors["x"].shape[0]
        for i in range(batch_limit(limit, math.ceil(n / bs))):
            yield {k: v[i * bs:(i + 1) * bs] for k, v in tensors.items()}

    def state_dict(self) -> dict:
        if self.normalizer is None:
            return {}
        return {"normalize": self.normalizer.mode, "shift": self.normalizer.shift.tolist(),
                "scale": self.normalizer.scale.tolist(), "channels": list(self.channel_names),
                "series_names": list(self.series_names), "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if state and "shift" in state:
            self.loaded_state = dict(state)

    # ------------------------------------------------------------------------------------ helpers
    def denormalize(self, x: torch.Tensor, series: torch.Tensor) -> torch.Tensor:
        """Normalised [B, T, C] -> the data's own units (series ids pick per-series statistics)."""
        if self.normalizer is None:
            raise SeqvaeError(f"{self.name}: call setup() (or load a checkpoint) before denormalising")
        return self.normalizer.invert(x, series)

    def split_series(self, split: str = "test") -> list["SeriesPart"]:
        raise SeqvaeError(f"data={self.name} holds independent sequences, not long series: per-timestamp "
                          f"scores exist for windowed data only (data=nab, data=csv)")

    def timestamp_scores(self, window_scores: Any, split: str = "test") -> list[np.ndarray]:
        self.split_series(split)   # raises: independent sequences have no timestamps to map back to
        return []


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

    def __init__(self, window: int, stride: int, test_stride: int, train_fraction: float, val_fraction: float,
                 max_train_length: int | None, test_context: bool, **base: Any) -> None:
        super().__init__(**base)
        self.parts: dict[str, list[SeriesPart]] = {}
        with self.deferred_errors():
            check("window", window)
            check("stride", stride)
            check("test_stride", test_stride)
            check("train_fraction", train_fraction)
            check("val_fraction", val_fraction)
            check("max_train_length", max_train_length)
            check("test_context", test_context)
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


# ------------------------------------------------------------------------------------ CSV reading

def _is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_MARKERS


def _cell_problem(cell: str) -> str:
    """What is wrong with a value cell that did not parse as a finite number of at most MAX_ABS_VALUE."""
    cell = cell.strip()
    if _is_missing(cell):
        return "missing value"
    try:
        value = float(cell)
    except ValueError:
        return f"non-numeric value {cell!r}"
    if not math.isfinite(value):
        return f"non-finite value {cell!r}"
    return f"value {cell} beyond +-{MAX_ABS_VALUE:g}"


def _cell_fix(cell: str) -> str:
    if _is_missing(cell.strip()) or _parse_number(cell) is None:
        return "seqvae does not impute: fill or drop that row"
    return "a value that large breaks the normalisation (its square overflows): correct or drop that row"


def _parse_number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_csv_series(path: Path, timestamp_column: str | None, value_columns: Sequence[str] | None,
                    label_column: str | None = None, delimiter: str = ",", name: str | None = None) -> RawSeries:
    """Read one series from a CSV file with a header row. Every problem is one SeqvaeError line naming the
    file, and the data row (1 = first row after the header), file line and column where relevant."""
    where = f"CSV file {path}"
    text = read_text_file(path, where, "data.path (relative paths are taken from the directory seqvae runs in, "
                                       "or from data_dir with data.relative_to=data_dir)", encoding="utf-8-sig")
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header, rows, lines = None, [], []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue                                   # blank lines are skipped
            if header is None:
                header = [cell.strip() for cell in row]
            else:
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise SeqvaeError(f"{where}: line {reader.line_num} is not valid CSV ({exc})") from None
    if header is None:
        raise SeqvaeError(f"{where} is empty; expected a header row (column names) and one row per timestamp")
    if not rows:
        raise SeqvaeError(f"{where} has a header but no data rows; expected one row per timestamp")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise SeqvaeError(f"{where}: the header names column(s) {', '.join(map(repr, dupes))} more than once; "
                          f"column names must be unique")
    for r, (row, line) in enumerate(zip(rows, lines), 1):
        if len(row) != len(header):
            raise SeqvaeError(f"{where}: row {r} (line {line}) has {len(row)} fields but the header has "
                              f"{len(header)} ({', '.join(header)})")
    columns = ", ".join(map(repr, header))

    def column(key: str, col: str) -> int:
        if col not in header:
            raise SeqvaeError(f"{where} has no column {col!r} (data.{key}); its columns are {columns}")
        return header.index(col)

    ts_idx = column("timestamp_column", str(timestamp_column)) if timestamp_column is not None else None
    label_idx = column("label_column", str(label_column)) if label_column is not None else None
    if value_columns is not None:
        value_idx = [column("value_columns", str(c)) for c in value_columns]
        for i in value_idx:
            if i in (ts_idx, label_idx):
                raise SeqvaeError(f"{where}: column {header[i]!r} is listed in data.value_columns and is also the "
                                  f"timestamp or label column; list only value columns")
    else:   # all numeric columns: those with at least one number (others, e.g. ids or dates, are skipped)
        value_idx = [i for i in range(len(header)) if i not in (ts_idx, label_idx)
                     and any(_parse_number(row[i]) is not None for row in rows)]
        if not value_idx:
            raise SeqvaeError(f"{where} has no numeric column besides the timestamp/label column (columns: "
                              f"{columns}); name them with data.value_columns=[...]")
    values = np.empty((len(rows), len(value_idx)), dtype=np.float64)
    for j, i in enumerate(value_idx):
        for r, row in enumerate(rows):
            value = _parse_number(row[i])
            if value is None or abs(value) > MAX_ABS_VALUE:
                raise SeqvaeError(f"{where}: {_cell_problem(row[i])} at row {r + 1} (line {lines[r]}), column "
                                  f"{header[i]!r}; {_cell_fix(row[i])}")
            values[r, j] = value
    labels = np.full(len(rows), UNKNOWN, dtype=np.int64)
    if label_idx is not None:
        for r, row in enumerate(rows):
            cell = row[label_idx].strip()
            value = _parse_number(cell)
            if value not in (0.0, 1.0):
                raise SeqvaeError(f"{where}: label column {header[label_idx]!r} must hold 0 (normal) or 1 "
                                  f"(anomalous); row {r + 1} (line {lines[r]}) has {cell!r}")
            labels[r] = int(value)
    timestamps = (np.array([row[ts_idx].strip() for row in rows]) if ts_idx is not None
                  else np.arange(len(rows)))
    return RawSeries(name or path.name, str(path), timestamps, values, labels, [header[i] for i in value_idx])


class CSVData(WindowedSeriesData):
    """Your own series: one CSV file with a header, one row per timestamp (data=csv)."""

    def __init__(self, path: str, timestamp_column: str | None = None, value_columns: Sequence[str] | None = None,
                 label_column: str | None = None, delimiter: str = ",", data_dir: str = ".",
                 relative_to: str = "cwd", window: int = 64, stride: int = 1, test_stride: int = 1,
                 train_fraction: float = 0.6, val_fraction: float = 0.2, max_train_length: int | None = None,
                 test_context: bool = True, normalize: str = "zscore", batch_size: int = 64,
                 eval_batch_size: int = 256, eval_iw_samples: int = 100, name: str = "csv") -> None:
        super().__init__(window=window, stride=stride, test_stride=test_stride, train_fraction=train_fraction,
                         val_fraction=val_fraction, max_train_length=max_train_length, test_context=test_context,
                         name=name, data_dir=data_dir, normalize=normalize, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, eval_iw_samples=eval_iw_samples)
        self.path, self.relative_to, self.delimiter = path, relative_to, delimiter
        self.timestamp_column, self.label_column = timestamp_column, label_column
        self.resolved: Path | None = None
        if isinstance(value_columns, str):
            value_columns = [value_columns]
        self.value_columns = value_columns
        with self.deferred_errors():
            check("path", path, ((lambda v: isinstance(v, str) and v.strip() != ""), "the path of a CSV file"))
            check("relative_to", relative_to, one_of("cwd", "data_dir"))
            check("delimiter", delimiter, ((lambda v: isinstance(v, str) and len(v) == 1), "one character, e.g. ','"))
            check("value_columns", value_columns,
                  ((lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) > 0)),
                   "null (all numeric columns) or a non-empty list of column names"))
            self.value_columns = None if value_columns is None else [str(c) for c in value_columns]

    def resolve(self) -> Path:
        raw = Path(str(self.path)).expanduser()
        if raw.is_absolute():
            return raw
        if self.relative_to == "data_dir":
            return resolve_data_dir(self.data_dir) / raw
        path = raw.resolve()
        remembered = (self.loaded_state or {}).get("path")   # eval/sample of a run trained elsewhere
        if not path.exists() and remembered and Path(remembered).exists():
            return Path(remembered)
        return path

    def load_series(self) -> list[RawSeries]:
        self.resolved = self.resolve()
        return [read_csv_series(self.resolved, self.timestamp_column, self.value_columns, self.label_column,
                                self.delimiter)]

    def state_dict(self) -> dict:
        state = super().state_dict()
        if state and self.resolved is not None:
            state["path"] = str(self.resolved)
        return state


# ------------------------------------------------------------------------------------------- NAB

class NABData(WindowedSeriesData):
    """Numenta Anomaly Benchmark series (data=nab): NAB/data/<category>/<name>.csv + labels/combined_windows.json."""

    def __init__(self, series: Sequence[str] | str = ("realKnownCause/nyc_taxi.csv",), data_dir: str = ".",
                 folder: str = "NAB", labels_file: str = "labels/combined_windows.json", window: int = 64,
                 stride: int = 1, test_stride: int = 1, train_fraction: float = 0.15, val_fraction: float = 0.2,
                 max_train_length: int | None = None, test_context: bool = True, normalize: str = "zscore",
                 batch_size: int = 64, eval_batch_size: int = 256, eval_iw_samples: int = 100,
                 name: str = "nab") -> None:
        super().__init__(window=window, stride=stride, test_stride=test_stride, train_fraction=train_fraction,
                         val_fraction=val_fraction, max_train_length=max_train_length, test_context=test_context,
                         name=name, data_dir=data_dir, normalize=normalize, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, eval_iw_samples=eval_iw_samples)
        if isinstance(series, str):
            series = [series]
        self.series, self.folder, self.labels_file = series, folder, labels_file
        with self.deferred_errors():
            check("series", series, ((lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                                      and all(isinstance(s, str) and s for s in v)),
                                     "a non-empty list of NAB files, e.g. [realKnownCause/nyc_taxi.csv]"))
            self.series = list(series)

    def load_series(self) -> list[RawSeries]:
        root = resolve_data_dir(self.data_dir) / self.folder
        label_path = root / self.labels_file
        get = (f"get NAB from {NAB_URL} (its data/ and labels/ folders) and put it in {root}, or set "
               f"paths.data_dir (or $SEQVAE_DATA_DIR) to the folder that holds {self.folder}/")
        if not root.is_dir():
            raise SeqvaeError(f"NAB not found: expected the folder {root} with data/<category>/<name>.csv and "
                              f"{self.labels_file}; {get}")
        if not label_path.is_file():
            raise SeqvaeError(f"NAB label file {label_path} not found (data.labels_file); {get}")
        try:
            windows = json.loads(label_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise SeqvaeError(f"NAB label file {label_path} is not valid JSON ({exc}); "
                              f"restore it from {NAB_URL}") from None
        if not isinstance(windows, dict):
            raise SeqvaeError(f"NAB label file {label_path} should map series names to lists of [start, end] "
                              f"timestamps; it holds a {type(windows).__name__}")
        out = []
        for name in self.series:
            if name not in windows:
                close = [k for k in sorted(windows) if Path(k).name == Path(name).name]
                hint = f"did you mean {close[0]}?" if close else f"known series look like {sorted(windows)[0]}"
                raise SeqvaeError(f"NAB series {name!r} (data.series) is not in the label file {label_path} "
                                  f"({len(windows)} series; {hint}): names are <category>/<file>.csv under "
                                  f"{root / 'data'}")
            if not isinstance(windows[name], list):
                raise SeqvaeError(f"NAB label file {label_path}: the entry of {name} is {json.dumps(windows[name])}, "
                                  f"not a list; expected a list of [start, end] timestamp pairs ([] for none); "
                                  f"restore it from {NAB_URL}")
            path = root / "data" / name
            if not path.is_file():
                raise SeqvaeError(f"NAB series file {path} not found although {label_path.name} lists {name}; {get}")
            s = read_csv_series(path, "timestamp", ["value"], None, name=name)
            s.labels = self._labels(path, s.timestamps, windows[name], label_path, name)
            out.append(s)
        return out

    @staticmethod
    def _labels(path: Path, timestamps: np.ndarray, windows: list, label_path: Path, name: str) -> np.ndarray:
        """A timestamp is anomalous (1) if it lies inside any labelled [start, end] window (ends included)."""
        try:
            ts = np.array(timestamps, dtype="datetime64[us]")
        except ValueError as exc:
            raise SeqvaeError(f"{path}: a timestamp is not a date-time ({exc}); "
                              f"expected e.g. 2014-07-01 00:00:00") from None
        labels = np.zeros(ts.size, dtype=np.int64)
        for i, w in enumerate(windows):
            wrong = f"NAB label file {label_path}: window {i} of {name}, {w!r},"
            # Numbers would parse as years (1 -> 0001-01-01) and label nothing.
            if not (isinstance(w, list) and len(w) == 2 and all(isinstance(t, str) for t in w)):
                raise SeqvaeError(f"{wrong} is not a [start, end] pair of timestamps; expected e.g. "
                                  f'["2014-07-01 00:00:00.000000", "2014-07-02 00:00:00.000000"]')
            try:
                lo, hi = (np.datetime64(t.strip().replace(" ", "T"), "us") for t in w)
            except ValueError:
                raise SeqvaeError(f"{wrong} holds a timestamp that is not a date-time; expected e.g. "
                                  f"2014-07-01 00:00:00.000000") from None
            if lo > hi:
                raise SeqvaeError(f"{wrong} ends before it starts; expected [start, end] with start <= end")
            labels[(ts >= lo) & (ts <= hi)] = 1
        return labels


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
            for split in SPLITS:
                check(f"num_series.{split}", num_series.get(split))
            check("seq_len", seq_len)
            check("channels", channels)
            check("seed", seed)
            for key, value in (("frequency", frequency), ("phase", phase), ("amplitude", amplitude)):
                check(key, list(value) if isinstance(value, (list, tuple)) else value)
            check("noise_std", noise_std)
            check("anomaly_fraction", anomaly_fraction)
            check("anomaly_kind", anomaly_kind, one_of("spike", "frequency", "mixed"))
            check("spike_size", spike_size)
            check("frequency_factor", frequency_factor)
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


# ------------------------------------------------------------------------------------------- ECG5000

def read_ucr(path: Path, classes_allowed: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A UCR-archive file (class label, then the values; tab-, comma- or blank-separated) ->
    classes LongTensor [N] and values float64 [N, T]. classes_allowed: the dataset's classes (others are refused)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SeqvaeError(f"{path} cannot be read ({exc}); restore it from the UCR archive 2018, {UCR_URL}") from None
    classes, rows, first = [], [], None
    for ln, line in enumerate(text.splitlines(), 1):
        fields = [f for f in re.split(r"[\s,]+", line.strip()) if f]
        if not fields:
            continue
        try:
            row = np.array(fields, dtype=np.float64)
        except ValueError:
            col = next(j for j, f in enumerate(fields) if _parse_number(f) is None and not _is_missing(f))
            raise SeqvaeError(f"{path}: non-numeric value {fields[col]!r} at line {ln}, column {col + 1}; expected "
                              f"UCR's format: the class label, then the values, tab-separated") from None
        if not np.isfinite(row).all():
            col = int(np.flatnonzero(~np.isfinite(row))[0])
            raise SeqvaeError(f"{path}: missing value ({fields[col]}) at line {ln}, column {col + 1}; ECG5000 beats "
                              f"have no gaps: restore the file from the UCR archive 2018, {UCR_URL}")
        if (np.abs(row[1:]) > MAX_ABS_VALUE).any():
            col = int(np.flatnonzero(np.abs(row[1:]) > MAX_ABS_VALUE)[0]) + 1
            raise SeqvaeError(f"{path}: value {fields[col]} at line {ln}, column {col + 1} is beyond "
                              f"+-{MAX_ABS_VALUE:g} (UCR beats are z-normalised, within a few units): restore the "
                              f"file from the UCR archive 2018, {UCR_URL}")
        if first is None:
            first = (ln, row.size)
        elif row.size != first[1]:
            raise SeqvaeError(f"{path}: line {ln} has {row.size - 1} values but line {first[0]} has {first[1] - 1}; "
                              f"every beat must have the same length")
        if row.size < 2 or not float(row[0]).is_integer():
            raise SeqvaeError(f"{path}: line {ln} does not start with an integer class label ({fields[0]!r})")
        if classes_allowed is not None and int(row[0]) not in classes_allowed:
            raise SeqvaeError(f"{path}: line {ln} has class {int(row[0])}; expected one of "
                              f"{', '.join(map(str, classes_allowed))}: restore the file from the UCR archive "
                              f"2018, {UCR_URL}")
        classes.append(int(row[0]))
        rows.append(row[1:])
    if not rows:
        raise SeqvaeError(f"{path} is empty; restore it from the UCR archive 2018, {UCR_URL}")
    return torch.tensor(classes, dtype=torch.long), torch.from_numpy(np.stack(rows))


class ECG5000Data(SeriesData):
    """UCR ECG5000 heartbeats (data=ecg5000): [N, 140, 1]; class 1 = normal, classes 2-5 = anomalous."""

    NORMALIZE = ("global", "per_step", "none")
    FILES = ("ECG5000_TRAIN.tsv", "ECG5000_TEST.tsv")
    CLASSES = (1, 2, 3, 4, 5)   # 1 normal, 2-5 abnormal

    def __init__(self, data_dir: str = ".", folder: str = "ECG5000", protocol: str = "normal_only",
                 num_val_normal: int = 300, num_test_normal: int = 600, ucr_num_val: int = 50, seed: int = 0,
                 normalize: str = "global", batch_size: int = 64, eval_batch_size: int = 500,
                 eval_iw_samples: int = 100, name: str = "ecg5000") -> None:
        super().__init__(name=name, data_dir=data_dir, normalize=normalize, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, eval_iw_samples=eval_iw_samples)
        self.folder, self.protocol = folder, protocol
        self.split_index: dict[str, torch.Tensor] = {}
        with self.deferred_errors():
            check("protocol", protocol, one_of("normal_only", "ucr"))
            check("num_val_normal", num_val_normal)
            check("num_test_normal", num_test_normal)
            check("ucr_num_val", ucr_num_val)
            check("seed", seed)
            self.seed, self.ucr_num_val = int(seed), int(ucr_num_val)
            self.num_val_normal, self.num_test_normal = int(num_val_normal), int(num_test_normal)

    def stats_mode(self) -> str:
        return {"global": "zscore", "per_step": "per_step", "none": "none"}[self.normalize]

    def load(self) -> Loaded:
        root = resolve_data_dir(self.data_dir) / self.folder
        missing = [f for f in self.FILES if not (root / f).is_file()]
        if missing:
            raise SeqvaeError(
                f"ECG5000 not found: expected {', '.join(self.FILES)} in {root} (missing {', '.join(missing)}). There "
                f"is no download: get ECG5000 from the UCR archive 2018, {UCR_URL} (UCRArchive_2018/ECG5000/), put "
                f"the two .tsv files in {root}, or set paths.data_dir (or $SEQVAE_DATA_DIR) to the folder that "
                f"holds {self.folder}/")
        (train_c, train_x), (test_c, test_x) = (read_ucr(root / f, self.CLASSES) for f in self.FILES)
        if train_x.shape[1] != test_x.shape[1]:
            raise SeqvaeError(f"{root}: the TRAIN beats have {train_x.shape[1]} steps but the TEST beats "
                              f"{test_x.shape[1]}; restore the files from {UCR_URL}")
        # Pooled order: TRAIN rows are beats 0..n_train-1, TEST rows follow; the "series" id is this index.
        classes, x = torch.cat([train_c, test_c]), torch.cat([train_x, test_x]).unsqueeze(-1)
        n_train_file, n = train_c.numel(), classes.numel()
        gen = torch.Generator().manual_seed(self.seed)
        if self.protocol == "normal_only":
            normal = torch.nonzero(classes == 1).squeeze(1)
            v, t = self.num_val_normal, self.num_test_normal
            if v + t >= normal.numel():
                raise SeqvaeError(f"config error: data.num_val_normal={v} + data.num_test_normal={t} leaves no "
                                  f"normal beat to train on (ECG5000 has {normal.numel()} normal beats in "
                                  f"{root}); lower them")
            perm = normal[torch.randperm(normal.numel(), generator=gen)]
            index = {"val": perm[:v], "train": perm[v + t:],
                     "test": torch.cat([perm[v:v + t], torch.nonzero(classes != 1).squeeze(1)])}
        else:
            if self.ucr_num_val >= n_train_file:
                raise SeqvaeError(f"config error: data.ucr_num_val={self.ucr_num_val} leaves no UCR training beat "
                                  f"(ECG5000_TRAIN.tsv has {n_train_file}); lower it")
            perm = torch.randperm(n_train_file, generator=gen)
            index = {"val": perm[:self.ucr_num_val], "train": perm[self.ucr_num_val:],
                     "test": torch.arange(n_train_file, n)}
        self.split_index = {s: torch.sort(i).values for s, i in index.items()}
        splits = {}
        for split, idx in self.split_index.items():
            splits[split] = SplitArrays(x[idx], (classes[idx] != 1).long(), torch.full_like(idx, -1), idx,
                                        y=classes[idx])
        return Loaded(splits, [splits["train"].x], ["ecg"], [],
                      lambda g, c, step: "the ECG5000 training beats" + ("" if step is None else f" at step {step}"))
