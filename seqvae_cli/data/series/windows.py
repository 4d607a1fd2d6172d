"""Sliding windows over long series and their normalisation (statistics of the training part only)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from seqvae_cli.errors import SeqvaeError

# The largest magnitude a data cell may have. A z-score squares the values (1e300 squared is inf in float64, so one
# such cell made the scale inf and trained the column as zeros), and the model and plots hold them in float32 (max
# 3.4e38): 1e30 leaves room for both, and no sensor reads that much.
MAX_ABS_VALUE = 1e30
SPLITS = ("train", "val", "test")
UNKNOWN = -1


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
