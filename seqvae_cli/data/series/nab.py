"""data=nab: a series of the Numenta Anomaly Benchmark with its labelled anomaly windows."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from seqvae_cli.config.rules import check_arguments
from seqvae_cli.data.base import resolve_data_dir
from seqvae_cli.data.series.csv import read_csv_series
from seqvae_cli.data.series.windowed import RawSeries, WindowedSeriesData
from seqvae_cli.errors import SeqvaeError

NAB_URL = "https://github.com/numenta/NAB"


# ------------------------------------------------------------------------------------------- NAB

class NABData(WindowedSeriesData):
    """Numenta Anomaly Benchmark series (data=nab): NAB/data/<category>/<name>.csv + labels/combined_windows.json."""

    # folder and labels_file are paths: they have no rule.
    RULES = {
        "series": ((lambda v: (isinstance(v, str) and v != "") or (isinstance(v, (list, tuple)) and len(v) > 0
                                                                   and all(isinstance(s, str) and s for s in v))),
                   "a non-empty list of NAB files, e.g. [realKnownCause/nyc_taxi.csv]"),
        **WindowedSeriesData.RULES,
    }

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
            check_arguments("data", self.RULES, series=series)
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
