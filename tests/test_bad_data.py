"""Bad data files: each is one error line naming the file, the row (where there is one) and what was expected,
before any training. Tiny fake files in tmp_path (as tests/test_data.py and tests/test_series_units.py make them);
two runs of the CLI show the line users see."""
from __future__ import annotations

import json

import pytest
import torch

from seqvae_cli.data.mnist import MNISTData
from seqvae_cli.data.series.ecg5000 import ECG5000Data
from seqvae_cli.data.series.nab import NABData
from seqvae_cli.data.series.sines import SinesData
from seqvae_cli.errors import SeqvaeError

from conftest import assert_one_error_line, run_seqvae, seqvae_env
from test_data import idx_bytes, write_fake_mnist
from test_series_units import csv_data, hour, write_csv, write_ecg, write_nab

CPU = torch.device("cpu")


def refused(make, *needles: str) -> str:
    """make() must raise one SeqvaeError line holding every needle."""
    with pytest.raises(SeqvaeError) as info:
        make()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def mnist(root, num_val=10):
    return lambda: MNISTData(str(root), num_val=num_val, batch_size=8, download=False).setup(CPU)


# -------------------------------------------------------------------------------------------- MNIST

def test_mnist_label_outside_the_digits(tmp_path):
    raw, data = write_fake_mnist(tmp_path)
    labels = data["train-labels-idx1-ubyte"].clone()
    labels[16] = 255
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    refused(mnist(tmp_path), str(raw / "train-labels-idx1-ubyte"), "label 255 at index 16", "digits 0-9",
            "fresh copy")


def test_mnist_label_file_shorter_than_its_images(tmp_path):
    raw, data = write_fake_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(data["t10k-labels-idx1-ubyte"][:-3]))
    refused(mnist(tmp_path), str(raw / "t10k-labels-idx1-ubyte"), "holds 9 labels", "t10k-images-idx3-ubyte holds "
            "12 images", "one label per image")


def test_mnist_folder_in_place_of_a_file(tmp_path):
    raw, _ = write_fake_mnist(tmp_path)
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-images-idx3-ubyte").mkdir()
    refused(mnist(tmp_path), str(raw / "train-images-idx3-ubyte"), "is a folder, not an IDX file")


def test_mnist_images_of_another_shape(tmp_path):
    raw, _ = write_fake_mnist(tmp_path)
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(torch.zeros(12, 32, 32)))
    refused(mnist(tmp_path), str(raw / "t10k-images-idx3-ubyte"), "(12, 32, 32)", "28 x 28")


def test_mnist_with_fewer_images_than_num_val(tmp_path):
    raw, _ = write_fake_mnist(tmp_path, n_train=30)
    refused(mnist(tmp_path, num_val=10000), f"{raw / 'train-images-idx3-ubyte'} holds 30 images; MNIST's training "
            "file has 60000", "data.num_val=10000", "lower data.num_val below 30")


def test_cli_blames_the_short_image_file_not_ae_pretraining(tmp_path):
    """The issue's run: a training file of few images used to end in 'objective.ae_pretrain_epochs=0 leaves no VAE
    step'."""
    data = tmp_path / "data"
    write_fake_mnist(data, n_train=30)
    proc = run_seqvae(["train", "data.download=false", "trainer.progress_bar=false", "run_dir=run"], cwd=tmp_path,
                      env=seqvae_env(SEQVAE_DATA_DIR=str(data)))
    line = assert_one_error_line(proc, "train-images-idx3-ubyte holds 30 images", "60000", "data.num_val=10000")
    assert "ae_pretrain_epochs" not in line


# ---------------------------------------------------------------------------------------------- ECG

def test_ecg_class_outside_1_to_5(tmp_path):
    write_ecg(tmp_path, [1, 2, 1, 9, 1, 1], [1, 1, 3, 1, 1, 1])
    path = tmp_path / "ECG5000" / "ECG5000_TRAIN.tsv"
    refused(lambda: ECG5000Data(data_dir=str(tmp_path), num_val_normal=1, num_test_normal=1).setup(CPU),
            str(path), "line 4 has class 9", "expected one of 1, 2, 3, 4, 5")


def test_ecg_value_too_large(tmp_path):
    write_ecg(tmp_path, [1, 2, 1, 1, 1, 1], [1, 1, 3, 1, 1, 1])
    path = tmp_path / "ECG5000" / "ECG5000_TEST.tsv"
    lines = path.read_text().splitlines()
    cells = lines[2].split("\t")
    cells[3] = "1e300"
    lines[2] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")
    refused(lambda: ECG5000Data(data_dir=str(tmp_path), num_val_normal=1, num_test_normal=1).setup(CPU),
            str(path), "value 1e300 at line 3, column 4", "beyond +-1e+30")


# ------------------------------------------------------------------------------------- CSV and NAB cells

@pytest.mark.parametrize("cell,what", [("1e300", "value 1e300 beyond +-1e+30"),
                                       ("-2.5e31", "value -2.5e31 beyond +-1e+30"),
                                       ("1e400", "non-finite value '1e400'")])
def test_csv_cell_too_large_for_the_normalisation(tmp_path, cell, what):
    """One finite 1e300 cell made the z-score scale inf: the column trained as zeros, exit 0."""
    rows = [[f"t{i}", i * 1.5 + (i % 3)] for i in range(40)]
    rows[6][1] = cell
    path = write_csv(tmp_path / "big.csv", ["time", "value"], rows)
    refused(lambda: csv_data(path, timestamp_column="time"), str(path), f"{what} at row 7 (line 8), column 'value'")
    rows[6][1] = "1e29"     # large, but within the limit
    assert csv_data(write_csv(path, ["time", "value"], rows), timestamp_column="time").num_examples("train") > 0


def test_generated_values_whose_statistics_overflow(tmp_path):
    """The readers refuse such cells; generated data can still overflow the z-score: its scale must not be inf."""
    dm = SinesData(num_series={"train": 4, "val": 2, "test": 2}, seq_len=10, amplitude=[1e300, 1e300])
    refused(lambda: dm.setup(CPU), "channel 0 of the sines", "too large to normalise", "scale inf")


def nab_root(tmp_path, windows):
    return write_nab(tmp_path, {"cat/a.csv": [float(i % 7) for i in range(50)]}, {"cat/a.csv": windows})


def nab(root):
    return lambda: NABData(["cat/a.csv"], data_dir=str(root), window=4, train_fraction=0.5).setup(CPU)


def test_nab_window_written_end_first(tmp_path):
    good = nab_root(tmp_path / "good", [[hour(30), hour(32)]])
    dm = NABData(["cat/a.csv"], data_dir=str(good), window=4, train_fraction=0.5)
    dm.setup(CPU)
    assert int((dm.splits["test"]["label"] == 1).sum()) > 0      # the same window written start first labels
    root = nab_root(tmp_path, [[hour(30), hour(32)], [hour(40), hour(35)]])
    refused(nab(root), str(root / "NAB" / "labels" / "combined_windows.json"), "window 1 of cat/a.csv",
            "ends before it starts", "start <= end")


@pytest.mark.parametrize("window", [[30, 32], [hour(30)], hour(30), [hour(30), None]])
def test_nab_window_that_is_not_a_pair_of_timestamps(tmp_path, window):
    """Numbers parsed as years (30 -> 0030-01-01) and labelled nothing: AUROC silently disappeared."""
    root = nab_root(tmp_path, [window])
    refused(nab(root), "combined_windows.json", "window 0 of cat/a.csv", "is not a [start, end] pair of timestamps")


@pytest.mark.parametrize("entry,shown", [(5, "is 5, not a list"), (None, "is null, not a list"),
                                         ({"start": 1}, 'is {"start": 1}, not a list')])
def test_nab_labels_of_a_series_that_are_not_a_list(tmp_path, entry, shown):
    root = write_nab(tmp_path, {"cat/a.csv": [float(i % 7) for i in range(50)]}, {"cat/a.csv": []})
    labels = root / "NAB" / "labels" / "combined_windows.json"
    labels.write_text(json.dumps({"cat/a.csv": entry}), encoding="utf-8")
    refused(nab(root), str(labels), f"the entry of cat/a.csv {shown}", "[start, end] timestamp pairs")


def test_cli_names_the_csv_cell(tmp_path):
    rows = [[f"t{i}", i * 1.5 + (i % 3)] for i in range(60)]
    rows[4][1] = "1e300"
    write_csv(tmp_path / "big.csv", ["time", "value"], rows)
    proc = run_seqvae(["train", "model=lstm_vae", "data=csv", "data.path=big.csv", "data.timestamp_column=time",
                       "data.window=8", "trainer.progress_bar=false", "run_dir=run"], cwd=tmp_path)
    assert_one_error_line(proc, "big.csv", "value 1e300 beyond +-1e+30 at row 5 (line 6), column 'value'")
    assert not (tmp_path / "run" / "checkpoints").exists()
