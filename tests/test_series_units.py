"""Unit tests of the time-series data side: windowing, normalisation, labels, the ECG protocol, CSV/NAB errors,
anomaly metrics and baselines.

Everything runs on tiny files written to tmp_path (seconds on a CPU); the last two tests load the real
ECG5000 and NAB copies under $SEQVAE_DATA_DIR and are skipped when they are absent.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from seqvae_cli.evaluation.baselines import last_value_forecast, rolling_zscore_scores, seasonal_naive_forecast
from seqvae_cli.evaluation.ranking import auprc, auroc, best_f1
from seqvae_cli.data.series.csv import CSVData
from seqvae_cli.data.series.ecg5000 import ECG5000Data
from seqvae_cli.data.series.nab import NABData
from seqvae_cli.data.series.sines import SinesData
from seqvae_cli.data.series.windows import sliding_windows, window_labels, window_scores_to_timestamps, window_starts
from seqvae_cli.errors import SeqvaeError

from conftest import DATA_DIR

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------ helpers

def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join([",".join(header)] + [",".join(str(c) for c in row) for row in rows]) + "\n",
                    encoding="utf-8")
    return path


def csv_data(path: Path, **kwargs) -> CSVData:
    settings = dict(window=4, stride=1, train_fraction=0.5, val_fraction=0.25, batch_size=3, eval_batch_size=5)
    settings.update(kwargs)
    dm = CSVData(str(path), **settings)
    dm.setup(CPU)
    return dm


def ramp_csv(tmp_path: Path, n: int = 40, name: str = "ramp.csv", labels: dict | None = None) -> Path:
    """Columns time, value (= 0..n-1 squared a little so the windows differ) and an optional label."""
    header = ["time", "value"] + (["anomaly"] if labels is not None else [])
    rows = [[f"t{i}", i * 1.5 + (i % 3)] + ([labels.get(i, 0)] if labels is not None else []) for i in range(n)]
    return write_csv(tmp_path / name, header, rows)


def write_nab(root: Path, series: dict[str, list[float]], windows: dict[str, list[list[str]]]) -> Path:
    """root/NAB/data/<name> (timestamp,value every hour from 2020-01-01) and labels/combined_windows.json."""
    nab = root / "NAB"
    for name, values in series.items():
        path = nab / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        stamps = np.datetime64("2020-01-01T00:00") + np.arange(len(values)) * np.timedelta64(1, "h")
        write_csv(path, ["timestamp", "value"], [[str(t).replace("T", " ") + ":00", v]
                                                 for t, v in zip(stamps, values)])
    (nab / "labels").mkdir(parents=True, exist_ok=True)
    (nab / "labels" / "combined_windows.json").write_text(json.dumps(windows), encoding="utf-8")
    return root


def hour(i: int) -> str:
    """NAB's label-file format for the i-th hourly timestamp of write_nab."""
    t = np.datetime64("2020-01-01T00:00") + i * np.timedelta64(1, "h")
    return str(t).replace("T", " ") + ":00.000000"


def write_ecg(root: Path, classes_train: list[int], classes_test: list[int], steps: int = 6) -> Path:
    """root/ECG5000/ECG5000_{TRAIN,TEST}.tsv: beat k of class c holds c*10 + k/100 + step/1000."""
    folder = root / "ECG5000"
    folder.mkdir(parents=True)
    k = 0
    for fname, classes in (("ECG5000_TRAIN.tsv", classes_train), ("ECG5000_TEST.tsv", classes_test)):
        lines = []
        for c in classes:
            lines.append("\t".join([f"{float(c):.7e}"] + [f"{c * 10 + k / 100 + s / 1000:.7e}" for s in range(steps)]))
            k += 1
        (folder / fname).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------- windowing

@pytest.mark.parametrize("length,window,stride", [(10, 4, 1), (10, 4, 3), (10, 10, 1), (9, 4, 2), (3, 4, 1),
                                                  (100, 7, 5)])
def test_window_count_and_contents(length, window, stride):
    starts = window_starts(length, window, stride, offset=2)
    expected = (length - window) // stride + 1 if length >= window else 0
    assert starts.numel() == expected
    assert starts.tolist() == [2 + i * stride for i in range(expected)]
    values = torch.arange(length + 2, dtype=torch.float64).unsqueeze(1) * torch.tensor([[1.0, -1.0]])
    windows = sliding_windows(values, starts, window)
    assert windows.shape == (expected, window, 2)
    for i, s in enumerate(starts.tolist()):
        assert windows[i, :, 0].tolist() == list(range(s, s + window))
        assert windows[i, :, 1].tolist() == [-v for v in range(s, s + window)]


def test_window_labels_any_anomalous_timestamp():
    labels = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0, -1, 0])
    starts = window_starts(10, 3, 1)
    # windows [s, s+2]: the anomaly at 3 is in windows 1, 2, 3; the unknown at 8 in windows 6, 7.
    assert window_labels(labels, starts, 3).tolist() == [0, 1, 1, 1, 0, 0, -1, -1]


def test_csv_splits_windows_and_denormalise(tmp_path):
    n = 40
    dm = csv_data(ramp_csv(tmp_path, n), timestamp_column="time", stride=2, test_stride=1)
    # training period floor(0.5*40) = 20 rows; val = round(0.25*20) = 5 rows (15..19); train = rows 0..14.
    n_fit, n_train, w = 15, 20, 4
    assert dm.num_examples("train") == (n_fit - w) // 2 + 1
    assert dm.num_examples("val") == (n_train - n_fit - w) // 2 + 1
    # test windows end at every test row 20..39 (test_context reaches back 3 rows into the training period)
    assert dm.num_examples("test") == n - n_train
    assert dm.model_kwargs() == {"num_channels": 1, "seq_len": w}
    raw = torch.tensor([[i * 1.5 + (i % 3)] for i in range(n)], dtype=torch.float64)
    for split in ("train", "val", "test"):
        rows = dm.splits[split]
        back = dm.denormalize(rows["x"], rows["series"]).double()
        for j, s in enumerate(rows["start"].tolist()):
            assert torch.allclose(back[j], raw[s:s + w], atol=1e-4)
        assert (rows["series"] == 0).all() and (rows["label"] == -1).all()   # no label column: unknown
    assert dm.splits["train"]["start"].tolist() == list(range(0, n_fit - w + 1, 2))
    assert dm.splits["val"]["start"].tolist() == list(range(n_fit, n_train - w + 1, 2))
    assert dm.splits["test"]["start"].tolist() == list(range(n_train - w + 1, n - w + 1))
    part = dm.split_series("test")[0]
    assert part.offset == n_train and len(part) == n - n_train and part.timestamps[0] == "t20"


def test_batches_cover_each_row_once_and_eval_is_deterministic(tmp_path):
    dm = csv_data(ramp_csv(tmp_path, 60), batch_size=7)
    n = dm.num_examples("train")
    batches = list(dm.train_batches(torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)))
    assert len(batches) == math.ceil(n / 7) == dm.num_train_batches()
    seen = torch.cat([b["start"] for b in batches])
    assert sorted(seen.tolist()) == dm.splits["train"]["start"].tolist()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    assert seen.tolist() == dm.splits["train"]["start"][order].tolist()
    b = batches[0]
    assert set(b) == {"x", "label", "start", "series"}
    assert b["x"].dtype == torch.float32 and b["x"].shape == (7, 4, 1)
    assert all(b[k].dtype == torch.long for k in ("label", "start", "series"))
    first = [x["start"].tolist() for x in dm.eval_batches("test", batch_size=6)]
    assert first == [x["start"].tolist() for x in dm.eval_batches("test", batch_size=6)]
    assert sum(first, []) == dm.splits["test"]["start"].tolist()
    assert len(list(dm.eval_batches("test", batch_size=6, limit=2))) == 2
    assert len(list(dm.train_batches(torch.Generator().manual_seed(0), None, limit=2))) == 2


# ------------------------------------------------------------------------------------ normalisation

def test_normalisation_uses_training_part_only(tmp_path):
    n, n_fit = 40, 15
    values = [i * 1.5 + (i % 3) for i in range(n)]
    changed = values[:n_fit] + [v * 100 - 7 for v in values[n_fit:]]      # val and test values changed
    a = csv_data(write_csv(tmp_path / "a.csv", ["v"], [[v] for v in values]))
    b = csv_data(write_csv(tmp_path / "b.csv", ["v"], [[v] for v in changed]))
    assert torch.equal(a.normalizer.shift, b.normalizer.shift)
    assert torch.equal(a.normalizer.scale, b.normalizer.scale)
    assert torch.equal(a.splits["train"]["x"], b.splits["train"]["x"])
    fit = torch.tensor(values[:n_fit], dtype=torch.float64)
    assert float(a.normalizer.shift.squeeze()) == pytest.approx(float(fit.mean()))
    assert float(a.normalizer.scale.squeeze()) == pytest.approx(float(fit.std(unbiased=False)))
    assert not torch.equal(a.splits["test"]["x"], b.splits["test"]["x"])
    mm = csv_data(tmp_path / "a.csv", normalize="minmax")
    train_values = mm.denormalize(mm.splits["train"]["x"], mm.splits["train"]["series"])
    assert float(mm.splits["train"]["x"].min()) == pytest.approx(0.0, abs=1e-6)
    assert float(mm.splits["train"]["x"].max()) == pytest.approx(1.0, abs=1e-6)
    assert float(train_values.max()) == pytest.approx(max(values[:n_fit]), rel=1e-5)
    none = csv_data(tmp_path / "a.csv", normalize="none")
    assert none.splits["train"]["x"][0, :, 0].tolist() == pytest.approx(values[:4])


def test_checkpoint_statistics_win_and_shape_mismatch_is_an_error(tmp_path):
    first = csv_data(ramp_csv(tmp_path, 40))
    torch.save({"data_state": first.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["data_state"]   # as checkpoint.py reads it
    assert state["path"] == str(tmp_path / "ramp.csv") and state["seq_len"] == 4
    write_csv(tmp_path / "ramp.csv", ["time", "value"], [[f"t{i}", 3 * i] for i in range(40)])   # data changed
    again = CSVData(str(tmp_path / "ramp.csv"), window=4, train_fraction=0.5, val_fraction=0.25)
    again.load_state_dict(state)
    again.setup(CPU)
    assert torch.equal(again.normalizer.shift, first.normalizer.shift)
    write_csv(tmp_path / "two.csv", ["a", "b"], [[i, i * i] for i in range(40)])
    other = CSVData(str(tmp_path / "two.csv"), window=4, train_fraction=0.5, val_fraction=0.25)
    other.load_state_dict(state)
    with pytest.raises(SeqvaeError, match="does not fit the data"):
        other.setup(CPU)


# --------------------------------------------------------------------------------- label alignment

def test_csv_label_column_windows_and_per_timestamp_mapping(tmp_path):
    n, w = 40, 4
    anomalous = {26, 27, 28}
    dm = csv_data(ramp_csv(tmp_path, n, labels={i: 1 for i in anomalous}), timestamp_column="time",
                  label_column="anomaly", value_columns=["value"])
    test = dm.splits["test"]
    for s, label in zip(test["start"].tolist(), test["label"].tolist()):
        assert label == int(any(s <= t < s + w for t in anomalous)), s
    assert (dm.splits["train"]["label"] == 0).all() and (dm.splits["val"]["label"] == 0).all()
    part = dm.split_series("test")[0]
    assert part.labels.tolist() == [int(t in anomalous) for t in range(20, n)]
    assert part.values[:, 0].tolist() == [t * 1.5 + (t % 3) for t in range(20, n)]
    # score of a window = its start; timestamp t must get the window that ends at t, i.e. start t - w + 1
    (per_t,) = dm.timestamp_scores(test["start"].float())
    assert per_t.tolist() == [t - w + 1 for t in range(20, n)]
    with pytest.raises(SeqvaeError, match="window scores"):
        dm.timestamp_scores(np.zeros(3))
    no_context = csv_data(tmp_path / "ramp.csv", test_context=False, value_columns=["value"])
    (per_t,) = no_context.timestamp_scores(no_context.splits["test"]["start"].double())
    assert np.isnan(per_t[:w - 1]).all() and per_t[w - 1:].tolist() == [t - w + 1 for t in range(20 + w - 1, n)]


def test_window_scores_to_timestamps_examples():
    assert window_scores_to_timestamps([0, 1, 2], [5, 6, 7], 3, 5).tolist() == pytest.approx(
        [math.nan, math.nan, 5, 6, 7], nan_ok=True)
    # stride 2: windows [0..2] and [2..4]; t=3 takes the next window end (4) that contains it
    out = window_scores_to_timestamps([2, 0], [9, 8], 3, 6, offset=1)
    assert out.tolist() == pytest.approx([math.nan, 8, 9, 9, math.nan], nan_ok=True)


def test_nab_labels_windows_and_scoring(tmp_path):
    n, w = 60, 5
    rng = np.random.default_rng(0)
    write_nab(tmp_path, {"cat/a.csv": list(rng.normal(size=n).round(4)),
                         "cat/b.csv": list(rng.normal(size=n) * 9 + 50)},
              {"cat/a.csv": [[hour(40), hour(42)]], "cat/b.csv": [], "cat/c.csv": []})
    dm = NABData(["cat/a.csv", "cat/b.csv"], data_dir=str(tmp_path), window=w, train_fraction=0.5,
                 val_fraction=0.3, batch_size=4)
    dm.setup(CPU)
    assert dm.model_kwargs() == {"num_channels": 1, "seq_len": w}
    assert dm.normalizer.shift.shape == (2, 1, 1)          # one set of statistics per series
    parts = dm.split_series("test")
    assert [p.name for p in parts] == ["cat/a.csv", "cat/b.csv"]
    assert parts[0].labels.tolist() == [int(40 <= t <= 42) for t in range(30, n)]
    assert parts[1].labels.sum() == 0
    test = dm.splits["test"]
    a = test["series"] == 0
    for s, label in zip(test["start"][a].tolist(), test["label"][a].tolist()):
        assert label == int(s <= 42 and s + w - 1 >= 40)
    assert (test["label"][~a] == 0).all()
    for split in ("train", "val"):
        assert (dm.splits[split]["label"] == 0).all()
    scores = dm.timestamp_scores(test["start"] * 10 + test["series"])
    assert [len(s) for s in scores] == [30, 30]
    assert scores[1].tolist() == [(t - w + 1) * 10 + 1 for t in range(30, n)]


def test_nab_errors(tmp_path):
    write_nab(tmp_path, {"cat/a.csv": [float(i % 7) for i in range(50)], "cat/flat.csv": [3.0] * 50},
              {"cat/a.csv": [], "cat/flat.csv": [], "cat/gone.csv": []})
    def make(series, **kw):
        dm = NABData(series, data_dir=str(tmp_path), window=kw.pop("window", 4), train_fraction=0.5, **kw)
        dm.setup(CPU)
        return dm
    with pytest.raises(SeqvaeError, match=r"'cat/nope\.csv'.*not in the label file") as info:
        make(["cat/nope.csv"])
    assert "combined_windows.json" in str(info.value)
    with pytest.raises(SeqvaeError, match="gone.csv not found"):
        make(["cat/gone.csv"])
    with pytest.raises(SeqvaeError, match=r"window=30 is longer than the training part .* 20 timestamps"):
        make(["cat/a.csv"], window=30)
    with pytest.raises(SeqvaeError, match=r"window=60 is longer than the series .*a\.csv \(50 timestamps\)"):
        make(["cat/a.csv"], window=60)
    with pytest.raises(SeqvaeError, match="flat.csv is constant .*normalize=none"):
        make(["cat/flat.csv"])
    assert make(["cat/flat.csv"], normalize="none").num_examples("train") > 0
    with pytest.raises(SeqvaeError, match=r"NAB not found: expected the folder .*elsewhere"):
        NABData(["cat/a.csv"], data_dir=str(tmp_path / "elsewhere")).setup(CPU)
    with pytest.raises(SeqvaeError, match="per-timestamp scores exist for windowed data only"):
        SinesData(num_series={"train": 2, "val": 2, "test": 2}).split_series()


# --------------------------------------------------------------------------------------------- CSV errors

@pytest.mark.parametrize("rows,message", [
    ([["t0", 1], ["t1", ""], ["t2", 3]], r"missing value at row 2 \(line 3\), column 'value'"),
    ([["t0", 1], ["t1", 2], ["t2", "NaN"]], r"missing value at row 3 \(line 4\), column 'value'"),
    ([["t0", 1], ["t1", "abc"], ["t2", 3]], r"non-numeric value 'abc' at row 2 \(line 3\), column 'value'"),
    ([["t0", 1], ["t1", "inf"], ["t2", 3]], r"non-finite value 'inf' at row 2 \(line 3\), column 'value'"),
    ([["t0", 1], ["t1", 2, 5], ["t2", 3]], r"row 2 \(line 3\) has 3 fields but the header has 2"),
])
def test_csv_value_errors_name_file_row_and_column(tmp_path, rows, message):
    path = write_csv(tmp_path / "bad.csv", ["time", "value"], rows + [[f"t{i}", i] for i in range(3, 40)])
    with pytest.raises(SeqvaeError, match=message) as info:
        csv_data(path, timestamp_column="time")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_csv_file_errors(tmp_path):
    with pytest.raises(SeqvaeError, match=r"missing\.csv does not exist"):
        csv_data(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(SeqvaeError, match=r"empty\.csv is empty"):
        csv_data(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("time,value\n", encoding="utf-8")
    with pytest.raises(SeqvaeError, match=r"header\.csv has a header but no data rows"):
        csv_data(tmp_path / "header.csv")
    path = ramp_csv(tmp_path, 40)
    with pytest.raises(SeqvaeError,
                       match=r"has no column 'stamp' \(data.timestamp_column\); its columns are 'time', 'value'"):
        csv_data(path, timestamp_column="stamp")
    with pytest.raises(SeqvaeError, match=r"no column 'pressure' \(data.value_columns\)"):
        csv_data(path, value_columns=["pressure"])
    words = write_csv(tmp_path / "words.csv", ["time", "name"], [[f"t{i}", "x"] for i in range(40)])
    with pytest.raises(SeqvaeError, match="no numeric column"):
        csv_data(words, timestamp_column="time")
    labels = write_csv(tmp_path / "labels.csv", ["v", "y"], [[i, 2 if i == 5 else 0] for i in range(40)])
    with pytest.raises(SeqvaeError, match=r"label column 'y' must hold 0 \(normal\) or 1 .*row 6 \(line 7\) has '2'"):
        csv_data(labels, label_column="y")


def test_csv_window_too_long_and_constant_series(tmp_path):
    path = ramp_csv(tmp_path, 40)
    with pytest.raises(SeqvaeError, match=r"window=50 is longer than the series .*ramp\.csv \(40 timestamps\)"):
        csv_data(path, window=50)
    with pytest.raises(SeqvaeError,
                       match=r"window=16 is longer than the training part .*: 15 timestamps .* 40 timestamps = 20"):
        csv_data(path, window=16)
    with pytest.raises(SeqvaeError, match=r"window=6 is longer than the validation part .*: 5 timestamps"):
        csv_data(path, window=6)
    flat = write_csv(tmp_path / "flat.csv", ["a", "b"], [[i, 2.5 if i < 30 else i] for i in range(40)])
    for mode in ("zscore", "minmax"):
        with pytest.raises(SeqvaeError, match=rf"column 'b' of .*flat\.csv is constant in the training part .*"
                                              rf"2\.5\): normalize={mode} .*data\.normalize=none") as info:
            csv_data(flat, normalize=mode)
        assert "\n" not in str(info.value)
    dm = csv_data(flat, normalize="none")
    assert dm.model_kwargs() == {"num_channels": 2, "seq_len": 4} and dm.channel_names == ["a", "b"]


def test_config_errors_surface_in_setup(tmp_path):
    path = str(ramp_csv(tmp_path, 40))
    for kwargs, key in ((dict(window=1), "window"), (dict(train_fraction=1.0), "train_fraction"),
                        (dict(normalize="robust"), "normalize"), (dict(stride=0), "stride"),
                        (dict(path=""), "path")):
        dm = CSVData(**{"path": path, **kwargs})     # kept until setup(): Hydra would wrap it in __init__
        with pytest.raises(SeqvaeError, match=rf"config error: data\.{key}="):
            dm.setup(CPU)
    with pytest.raises(SeqvaeError, match=r"config error: data\.normalize='zscore' .* one of: global, per_step, none"):
        ECG5000Data(data_dir=str(tmp_path), normalize="zscore").setup(CPU)
    with pytest.raises(SeqvaeError, match=r"config error: data\.num_series\.val="):
        SinesData(num_series={"train": 2, "val": 0, "test": 2}).setup(CPU)


# ------------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("option", ["sines", "ecg5000", "nab", "csv"])
def test_yaml_composes_validates_and_instantiates(option, tmp_path):
    """conf/data/<option>.yaml: every key is a constructor argument with an allowed value."""
    from conftest import compose_train_config
    from seqvae_cli.config.rules import validate
    from seqvae_cli.parts import build_part
    extra = [f"data.path={tmp_path / 'x.csv'}"] if option == "csv" else []
    cfg = compose_train_config(f"data={option}", f"paths.data_dir={tmp_path}", *extra)
    validate(cfg)
    assert cfg.data._target_.startswith("seqvae_cli.data.series.") and cfg.data.name == option
    dm = build_part(cfg.data, "data")          # as the trainer builds it
    assert dm.kind == "series" and dm.config_error is None and dm.data_dir == str(tmp_path)
    assert dm.batch_size == 64 and dm.eval_iw_samples == 100
    if option == "ecg5000":
        assert (dm.protocol, dm.num_val_normal, dm.num_test_normal) == ("normal_only", 300, 600)
    if option == "nab":
        assert dm.series == ["realKnownCause/nyc_taxi.csv"] and dm.train_fraction == 0.15


# ---------------------------------------------------------------------------------------------- ECG

ECG_TRAIN = [1, 2, 1, 1, 3, 1, 1, 4, 1, 1]               # 7 normal, 3 abnormal
ECG_TEST = [1, 5, 1, 1, 2, 1, 1, 1, 3, 1, 1, 1]          # 9 normal, 3 abnormal


def test_ecg_normal_only_protocol(tmp_path):
    write_ecg(tmp_path, ECG_TRAIN, ECG_TEST)
    dm = ECG5000Data(data_dir=str(tmp_path), num_val_normal=3, num_test_normal=4, batch_size=4)
    dm.setup(CPU)
    classes = torch.tensor(ECG_TRAIN + ECG_TEST)
    abnormal = set(torch.nonzero(classes != 1).squeeze(1).tolist())
    ids = {s: set(dm.splits[s]["series"].tolist()) for s in ("train", "val", "test")}
    assert [dm.num_examples(s) for s in ("train", "val", "test")] == [16 - 3 - 4, 3, 4 + 6]
    for split in ("train", "val"):
        assert not ids[split] & abnormal and (dm.splits[split]["label"] == 0).all()
        assert (dm.splits[split]["y"] == 1).all()
    assert abnormal <= ids["test"]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert len(ids["train"] | ids["val"] | ids["test"]) == 22
    test = dm.splits["test"]
    assert test["label"].tolist() == (test["y"] != 1).long().tolist() and int(test["label"].sum()) == 6
    assert (test["start"] == -1).all()
    assert dm.model_kwargs() == {"num_channels": 1, "seq_len": 6}
    assert dm.splits["train"]["x"].shape == (9, 6, 1)
    # beat k holds c*10 + k/100 + step/1000: the stored rows really are the beats their ids name
    back = dm.denormalize(test["x"], test["series"]).double()
    k = test["series"].double()
    expected = test["y"].double()[:, None] * 10 + k[:, None] / 100 + torch.arange(6) / 1000
    assert torch.allclose(back[..., 0], expected, atol=1e-4)
    # global statistics of the training beats only
    train_raw = dm.denormalize(dm.splits["train"]["x"], dm.splits["train"]["series"]).double()
    assert float(dm.normalizer.shift.squeeze()) == pytest.approx(float(train_raw.mean()), abs=1e-4)
    again = ECG5000Data(data_dir=str(tmp_path), num_val_normal=3, num_test_normal=4)
    again.setup(CPU)
    assert torch.equal(again.splits["val"]["series"], dm.splits["val"]["series"])
    other_seed = ECG5000Data(data_dir=str(tmp_path), num_val_normal=3, num_test_normal=4, seed=5)
    other_seed.setup(CPU)
    assert not torch.equal(other_seed.splits["train"]["series"], dm.splits["train"]["series"])


def test_ecg_ucr_protocol_per_step_and_errors(tmp_path):
    write_ecg(tmp_path, ECG_TRAIN, ECG_TEST)
    dm = ECG5000Data(data_dir=str(tmp_path), protocol="ucr", ucr_num_val=3, normalize="per_step")
    dm.setup(CPU)
    assert [dm.num_examples(s) for s in ("train", "val", "test")] == [7, 3, 12]
    assert dm.splits["test"]["series"].tolist() == list(range(10, 22))
    assert dm.splits["test"]["y"].tolist() == ECG_TEST
    assert dm.normalizer.shift.shape == (1, 6, 1)
    x = dm.splits["train"]["x"]
    assert torch.allclose(x.mean(0), torch.zeros(6, 1), atol=1e-5)
    with pytest.raises(SeqvaeError, match="leaves no normal beat"):
        ECG5000Data(data_dir=str(tmp_path), num_val_normal=10, num_test_normal=6).setup(CPU)
    with pytest.raises(SeqvaeError) as info:
        ECG5000Data(data_dir=str(tmp_path / "nowhere")).setup(CPU)
    message = str(info.value)
    assert "ECG5000_TRAIN.tsv" in message and "ECG5000_TEST.tsv" in message
    assert str(tmp_path / "nowhere" / "ECG5000") in message
    assert "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/" in message
    bad = tmp_path / "bad"
    write_ecg(bad, ECG_TRAIN, ECG_TEST)
    path = bad / "ECG5000" / "ECG5000_TEST.tsv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("\t", "\tx", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SeqvaeError, match=r"ECG5000_TEST\.tsv: non-numeric value 'x.*' at line 3, column 2"):
        ECG5000Data(data_dir=str(bad)).setup(CPU)


# -------------------------------------------------------------------------------------------- sines

def test_sines_shapes_seed_and_injected_anomalies():
    sizes = {"train": 20, "val": 5, "test": 40}
    dm = SinesData(num_series=sizes, seq_len=30, channels=3, anomaly_fraction=0.25, seed=1, batch_size=8)
    dm.setup(CPU)
    assert dm.model_kwargs() == {"num_channels": 3, "seq_len": 30}
    assert {s: dm.num_examples(s) for s in sizes} == sizes
    assert int(dm.splits["test"]["label"].sum()) == 10
    assert (dm.splits["train"]["label"] == 0).all() and (dm.splits["val"]["label"] == 0).all()
    assert (dm.splits["test"]["start"] == -1).all()
    x = dm.splits["train"]["x"]
    assert torch.allclose(x.mean((0, 1)), torch.zeros(3), atol=1e-5)
    same = SinesData(num_series=sizes, seq_len=30, channels=3, anomaly_fraction=0.25, seed=1)
    same.setup(CPU)
    assert all(torch.equal(same.splits[s]["x"], dm.splits[s]["x"]) for s in sizes)
    clean = SinesData(num_series=sizes, seq_len=30, channels=3, anomaly_fraction=0.0, seed=1)
    clean.setup(CPU)
    normal = dm.splits["test"]["label"] == 0
    assert torch.equal(clean.splits["test"]["x"][normal], dm.splits["test"]["x"][normal])
    assert not torch.equal(clean.splits["test"]["x"][~normal], dm.splits["test"]["x"][~normal])
    bigger = SinesData(num_series={**sizes, "test": 50}, seq_len=30, channels=3, anomaly_fraction=0.25, seed=1)
    bigger.setup(CPU)
    assert torch.equal(bigger.splits["train"]["x"], dm.splits["train"]["x"])


# ------------------------------------------------------------------------------------ anomaly metrics

EXAMPLE = ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])


def test_auroc_hand_values():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5] * 6, [0, 1, 0, 1, 1, 0]) == 0.5
    assert auroc(*EXAMPLE) == 0.75
    # one tie between an anomaly and a normal counts 1/2: pairs (0.5>0.1) (0.5=0.5) -> 1.5/2
    assert auroc([0.1, 0.5, 0.5], [0, 0, 1]) == 0.75
    assert auroc(torch.tensor([0.3, 0.9, 0.2, float("nan")]), torch.tensor([0, 1, -1, 1])) == 1.0
    assert math.isnan(auroc([0.1, 0.2], [0, 0]))
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200)
    pairs = (s[y == 1][:, None] > s[y == 0][None]).mean() + 0.5 * (s[y == 1][:, None] == s[y == 0][None]).mean()
    assert auroc(s, y) == pytest.approx(pairs)


def test_auprc_hand_values():
    assert auprc(*EXAMPLE) == pytest.approx(1 / 2 + 1 / 3)
    assert auprc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    # reversed: thresholds 0.9 (P 0) 0.8 (P 0) 0.2 (P 1/3, R 1/2) 0.1 (P 1/2, R 1): 1/2*1/3 + 1/2*1/2
    assert auprc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == pytest.approx(1 / 6 + 1 / 4)
    assert auprc([0.5] * 5, [1, 0, 0, 1, 0]) == pytest.approx(0.4)     # all tied: the anomaly rate
    assert math.isnan(auprc([0.1, 0.2], [0, 0]))


def test_best_f1_example():
    f1, precision, recall, threshold = best_f1(*EXAMPLE)
    assert (f1, precision, recall, threshold) == pytest.approx((0.8, 2 / 3, 1.0, 0.35))
    assert best_f1([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == pytest.approx((1.0, 1.0, 1.0, 0.8))
    assert all(math.isnan(v) for v in best_f1([0.1, 0.2], [0, 0]))


def test_rolling_zscore_and_forecast_baselines():
    out = rolling_zscore_scores([0, 2, 0, 2, 4], 2)
    assert np.isnan(out[:2]).all() and out[2:].tolist() == [1.0, 1.0, 3.0]
    flat = rolling_zscore_scores(np.array([1.0, 1, 1, 1, 5]), 3)
    assert flat[3] == 0.0 and flat[4] == np.inf
    # largest channel score: t=2 channel 1 (|10 - 0.5| / 0.5), t=3 channel 1 (|0 - 5.5| / 4.5), t=4 channel 0
    two = rolling_zscore_scores(np.array([[0, 0], [2, 1], [0, 10], [2, 0], [4, 0]], dtype=float), 2)
    assert two[2:].tolist() == pytest.approx([19.0, 5.5 / 4.5, 3.0])
    assert np.isnan(rolling_zscore_scores([1.0, 2.0], 2)).all()
    assert last_value_forecast([1, 2, 3], 2).tolist() == [3, 3]
    assert seasonal_naive_forecast([1, 2, 3, 4, 5], 3, season=2).tolist() == [4, 5, 4]
    assert seasonal_naive_forecast([1, 2, 3, 4, 5], 5, season=1).tolist() == [5] * 5
    batch = torch.arange(12.0).reshape(2, 3, 2)           # [B, T, C]
    out = seasonal_naive_forecast(batch, 4, season=2)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 2)
    assert out[1, :, 0].tolist() == [8.0, 10.0, 8.0, 10.0]
    assert last_value_forecast(batch, 2)[0].tolist() == [[4.0, 5.0], [4.0, 5.0]]
    with pytest.raises(ValueError, match="season"):
        seasonal_naive_forecast([1, 2], 2, season=3)


# ------------------------------------------------------------------------------------- real data

def real_data_dir(folder: str) -> Path:
    if not (DATA_DIR / folder).is_dir():
        pytest.skip(f"{DATA_DIR / folder} is missing ($SEQVAE_DATA_DIR, else ./data)")
    return DATA_DIR


def test_real_ecg5000_protocol_sizes():
    root = real_data_dir("ECG5000")
    dm = ECG5000Data(data_dir=str(root))
    dm.setup(CPU)
    # 5,000 beats, 2,919 normal: train 2,919 - 300 - 600 = 2,019; val 300; test 600 normal + 2,081 abnormal
    assert [dm.num_examples(s) for s in ("train", "val", "test")] == [2019, 300, 2681]
    assert dm.splits["train"]["x"].shape == (2019, 140, 1)
    assert int(dm.splits["test"]["label"].sum()) == 2081
    assert (dm.splits["train"]["y"] == 1).all() and (dm.splits["val"]["y"] == 1).all()
    ucr = ECG5000Data(data_dir=str(root), protocol="ucr")
    ucr.setup(CPU)
    assert [ucr.num_examples(s) for s in ("train", "val", "test")] == [450, 50, 4500]
    assert ucr.splits["test"]["x"].shape == (4500, 140, 1)


def test_real_nab_nyc_taxi_with_labels():
    root = real_data_dir("NAB")
    dm = NABData(["realKnownCause/nyc_taxi.csv"], data_dir=str(root), window=64)
    dm.setup(CPU)
    (part,) = dm.split_series("test")
    length = 10320                                            # nyc_taxi: half-hourly, 2014-07-01 .. 2015-01-31
    n_train = int(0.15 * length)
    assert part.offset == n_train and len(part) == length - n_train
    assert dm.num_examples("test") == length - n_train and dm.splits["test"]["x"].shape[1:] == (64, 1)
    assert dm.num_examples("train") == (n_train - round(0.2 * n_train)) - 64 + 1
    assert part.labels.sum() > 0 and (dm.splits["test"]["label"] == 1).any()
    # the first labelled window starts at 2014-10-30 15:30
    first = int(np.flatnonzero(part.labels)[0])
    assert str(part.timestamps[first]).startswith("2014-10-30 15:30")
    assert part.labels[first - 1] == 0
