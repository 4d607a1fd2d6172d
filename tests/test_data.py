"""Layer 4: MNIST data units on tiny IDX files written by the tests themselves."""
from __future__ import annotations

import struct

import pytest
import torch

from seqvae_cli.data.base import batch_limit
from seqvae_cli.data.mnist import MNISTData, find_or_download_mnist, read_idx
from seqvae_cli.errors import SeqvaeError

from conftest import MNIST_FILES


def idx_bytes(array: torch.Tensor) -> bytes:
    """LeCun's IDX format: 0x00 0x00 0x08(ubyte) ndim, big-endian uint32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + bytes(array.to(torch.uint8).flatten().tolist())


def write_fake_mnist(root, n_train=30, n_test=12, seed=0):
    """root/MNIST/raw with the four files, images of n examples of 28x28 (grey levels) and labels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    data = {"train-images-idx3-ubyte": torch.randint(0, 256, (n_train, 28, 28), generator=gen),
            "train-labels-idx1-ubyte": torch.arange(n_train) % 10,
            "t10k-images-idx3-ubyte": torch.randint(0, 256, (n_test, 28, 28), generator=gen),
            "t10k-labels-idx1-ubyte": (torch.arange(n_test) + 3) % 10}
    for name, array in data.items():
        (raw / name).write_bytes(idx_bytes(array))
    return raw, data


# ------------------------------------------------------------------------------------------ read_idx

def test_read_idx_shape_and_values(tmp_path):
    array = torch.arange(2 * 3 * 4).reshape(2, 3, 4) * 10 % 256
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(array))
    out = read_idx(path)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 4)
    assert torch.equal(out, array.to(torch.uint8))
    labels = torch.tensor([7, 0, 255, 3])
    (tmp_path / "labels").write_bytes(idx_bytes(labels))
    assert read_idx(tmp_path / "labels").tolist() == [7, 0, 255, 3]


@pytest.mark.parametrize("magic", [b"\x00\x00\x0d\x03",   # float32 IDX
                                   b"\x01\x00\x08\x03",   # not zero-prefixed
                                   b"\x1f\x8b\x08\x00",   # a still gzipped download
                                   b"\x00\x00"])          # shorter than a magic number
def test_read_idx_bad_magic(tmp_path, magic):
    path = tmp_path / "bad"
    path.write_bytes(magic + struct.pack(">III", 1, 2, 2) + bytes(4) if len(magic) == 4 else magic)
    with pytest.raises(SeqvaeError, match="magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [1, 10, 30])
def test_read_idx_truncated(tmp_path, cut):
    good = idx_bytes(torch.zeros(2, 4, 4))
    path = tmp_path / "short"
    path.write_bytes(good[:-cut])
    with pytest.raises(SeqvaeError, match="wrong size") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_refuses_extra_bytes(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(torch.zeros(2, 4, 4)) + b"\x00\x01")
    with pytest.raises(SeqvaeError):
        read_idx(path)


# ---------------------------------------------------------------------------- find_or_download_mnist

def test_missing_mnist_names_folder_and_files(tmp_path):
    with pytest.raises(SeqvaeError) as info:
        find_or_download_mnist(str(tmp_path), download=False)
    message = str(info.value)
    assert str((tmp_path / "MNIST" / "raw").resolve()) in message
    for name in MNIST_FILES:
        assert name in message
    assert "\n" not in message
    assert not (tmp_path / "MNIST").exists() or not any((tmp_path / "MNIST").rglob("*-ubyte"))


def test_partly_missing_mnist_names_only_the_missing_files(tmp_path):
    raw, _ = write_fake_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(SeqvaeError) as info:
        find_or_download_mnist(str(tmp_path), download=False)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and "train-images-idx3-ubyte" not in message


def test_present_mnist_is_found_without_download(tmp_path, monkeypatch):
    raw, _ = write_fake_mnist(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert find_or_download_mnist(".", download=True) == raw.resolve()   # relative data_dir, no network


# ------------------------------------------------------------------------------------- batch_limit

@pytest.mark.parametrize("limit,n,expected", [
    (None, 7, 7),          # all
    (3, 7, 3),             # an int counts batches
    (100, 7, 7),           # never more than there are
    (1, 7, 1),
    (0.5, 7, 3),           # a float is a fraction, floored
    (1.0, 7, 7),           # 1.0 = every batch, not one batch
    (0.01, 7, 1),          # at least one batch
])
def test_batch_limit(limit, n, expected):
    assert batch_limit(limit, n) == expected


# ----------------------------------------------------------------------------------- MNISTData

def test_mnist_data_splits_and_batches(tmp_path):
    _, data = write_fake_mnist(tmp_path, n_train=30, n_test=12)
    dm = MNISTData(str(tmp_path), binarize="none", num_val=10, batch_size=8, eval_batch_size=5, download=False)
    dm.setup(torch.device("cpu"))
    assert dm.model_kwargs() == {"input_dim": 784}
    assert [dm.num_examples(s) for s in ("train", "val", "test")] == [20, 10, 12]
    # val = the LAST num_val training images, grey levels scaled to [0, 1]
    expected_val = data["train-images-idx3-ubyte"][20:].reshape(10, 784).float() / 255
    assert torch.allclose(dm.splits["val"][0], expected_val)
    assert dm.splits["test"][1].tolist() == data["t10k-labels-idx1-ubyte"].tolist()

    assert dm.num_train_batches() == 3 and dm.num_train_batches(2) == 2 and dm.num_train_batches(0.5) == 1
    gen = lambda s: torch.Generator().manual_seed(s)
    batches = list(dm.train_batches(gen(0), gen(1)))
    assert [b["x"].shape[0] for b in batches] == [8, 8, 4]
    seen = torch.cat([b["x"] for b in batches])
    assert torch.allclose(seen.sum(0), dm.splits["train"][0].sum(0))   # an epoch is a permutation of train
    assert len(list(dm.train_batches(gen(0), gen(1), limit=2))) == 2
    assert [b["x"].shape[0] for b in dm.eval_batches("test")] == [5, 5, 2]
    assert [b["x"].shape[0] for b in dm.eval_batches("test", batch_size=4, limit=2)] == [4, 4]
    assert [b["x"].shape[0] for b in dm.eval_batches("test", limit=0.5)] == [5]


def test_dynamic_binarisation(tmp_path):
    write_fake_mnist(tmp_path)
    make = lambda: MNISTData(str(tmp_path), binarize="dynamic", num_val=10, batch_size=8, download=False)
    a, b = make(), make()
    a.setup(torch.device("cpu")), b.setup(torch.device("cpu"))
    for split in ("val", "test"):   # held-out splits: binary and identical from one run to the next
        assert set(a.splits[split][0].unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(a.splits[split][0], b.splits[split][0])
    assert not set(a.splits["train"][0].unique().tolist()) <= {0.0, 1.0}   # train keeps grey levels...
    gen = lambda s: torch.Generator().manual_seed(s)
    first = next(a.train_batches(gen(0), gen(1)))["x"]
    again = next(a.train_batches(gen(0), gen(1)))["x"]
    other = next(a.train_batches(gen(0), gen(2)))["x"]
    assert set(first.unique().tolist()) <= {0.0, 1.0}                   # ...and is sampled per batch
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Scoring the training split (seqvae eval split=train) sees binary images, the same on every call.
    scored = torch.cat([b["x"] for b in a.eval_batches("train", batch_size=7)])
    assert set(scored.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(scored, torch.cat([b["x"] for b in b.eval_batches("train", batch_size=7)]))


def test_static_binarisation_is_fixed(tmp_path):
    write_fake_mnist(tmp_path)
    dm = MNISTData(str(tmp_path), binarize="static", num_val=10, batch_size=8, download=False)
    dm.setup(torch.device("cpu"))
    assert set(dm.splits["train"][0].unique().tolist()) <= {0.0, 1.0}
    gen = lambda s: torch.Generator().manual_seed(s)
    one = next(dm.train_batches(gen(0), gen(1)))["x"]
    two = next(dm.train_batches(gen(0), gen(2)))["x"]
    assert torch.equal(one, two)
