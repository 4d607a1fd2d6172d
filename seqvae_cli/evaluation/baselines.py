"""Baselines a series model is compared with: rolling z-score anomaly scores and naive forecasts."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from seqvae_cli.evaluation.ranking import _numpy


def rolling_zscore_scores(values: Any, window: int) -> np.ndarray:
    """The simple NAB baseline: score_t = |x_t - mean(x[t-window:t])| / std(x[t-window:t]).

    Mean and (population, ddof=0) standard deviation of the `window` values strictly before t, so the score
    is causal. The first `window` timestamps get NaN (no full history). A zero std gives 0 when x_t equals
    the mean and +inf otherwise. `values` is [L] or [L, C]; with several channels the score is the largest
    channel score. Returns float64 numpy [L].
    Example: values [0, 2, 0, 2, 4], window 2 -> [nan, nan, 1, 1, 3] (mean 1 and std 1 before each of t=2,3,4).
    """
    x = _numpy(values).astype(np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"values must be [L] or [L, C]; got shape {tuple(x.shape)}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer; got {window!r}")
    length = x.shape[0]
    out = np.full(length, np.nan)
    if length <= window:
        return out
    past = np.lib.stride_tricks.sliding_window_view(x[:-1], window, axis=0)  # [L-window, C, window]
    mean, std = past.mean(-1), past.std(-1)
    dev = np.abs(x[window:] - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, dev / np.where(std > 0, std, 1.0), np.where(dev > 0, np.inf, 0.0))
    out[window:] = z.max(-1)
    return out


def _time_index(prefix: Any, idx: np.ndarray) -> Any:
    """prefix[idx] along the time axis: axis 0 of [T], axis -2 of [T, C] or [B, T, C]."""
    if isinstance(prefix, torch.Tensor):
        idx = torch.as_tensor(idx, device=prefix.device)
    return prefix[idx] if prefix.ndim == 1 else prefix[..., idx, :]


def _check_forecast(prefix: Any, horizon: int) -> int:
    if prefix.ndim < 1:
        raise ValueError("prefix must have a time axis: [T], [T, C] or [B, T, C]")
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer; got {horizon!r}")
    length = prefix.shape[0] if prefix.ndim == 1 else prefix.shape[-2]
    if length < 1:
        raise ValueError("prefix is empty: a forecast needs at least one observed step")
    return length


def last_value_forecast(prefix: Any, horizon: int) -> Any:
    """Repeat the last observed value `horizon` times (the naive forecast).

    prefix: [T], [T, C] or [B, T, C] (time = axis 0 of a 1-D prefix, else axis -2), numpy or torch; the
    result has the same type with the time axis of length `horizon`.
    Example: last_value_forecast([1, 2, 3], 2) -> [3, 3].
    """
    if not isinstance(prefix, torch.Tensor):
        prefix = np.asarray(prefix)
    length = _check_forecast(prefix, horizon)
    return _time_index(prefix, np.full(horizon, length - 1))


def seasonal_naive_forecast(prefix: Any, horizon: int, season: int) -> Any:
    """Repeat the last observed season: y_hat[T+h] = y[T+h-season*ceil(h/season)], h = 1..horizon.

    Same shapes and types as last_value_forecast; needs season <= T. season=1 is last_value_forecast.
    Example: seasonal_naive_forecast([1, 2, 3, 4, 5], 3, season=2) -> [4, 5, 4].
    """
    if not isinstance(prefix, torch.Tensor):
        prefix = np.asarray(prefix)
    length = _check_forecast(prefix, horizon)
    if isinstance(season, bool) or not isinstance(season, (int, np.integer)) or not 1 <= season <= length:
        raise ValueError(f"season must be an integer in [1, {length}] (the prefix length); got {season!r}")
    return _time_index(prefix, length - season + np.arange(horizon) % season)


def dominant_period(values: Any, min_lag: int = 2, max_lag: int | None = None) -> int:
    """The season for seasonal_naive_forecast when none is given: among the local maxima of the
    autocorrelation of `values` ([T] or [T, C]; channels averaged) at lags min_lag..max_lag (default T/2),
    the lag of the highest one. 1 (the last-value forecast) when there is none: a series without a repeating
    pattern, too short or constant.
    Example: a sine with a period of 10 steps, 40 steps long -> 10; a straight ramp -> 1."""
    x = _numpy(values).astype(np.float64)
    x = x.mean(-1) if x.ndim == 2 else x.ravel()
    length = x.size
    max_lag = length // 2 if max_lag is None else min(max_lag, length - 2)
    x = x - x.mean()
    denom = float((x * x).sum())
    if max_lag < max(min_lag, 1) or denom <= 0:
        return 1
    lags = np.arange(1, max_lag + 2)
    acf = np.array([float((x[:-lag] * x[lag:]).sum()) / denom for lag in lags])
    peaks = [i for i in range(1, len(lags) - 1)
             if lags[i] >= min_lag and acf[i] > acf[i - 1] and acf[i] >= acf[i + 1] and acf[i] > 0]
    if not peaks:
        return 1
    return int(lags[max(peaks, key=lambda i: acf[i])])
