"""MNIST from the four IDX files (found under data_dir/MNIST/raw, or downloaded with checksums)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from seqvae_cli.config.rules import BOOLEAN, check_arguments, number, one_of, seed_rule
from seqvae_cli.data.base import DataModule, batch_limit, failure_cause, remove_empty_folders, resolve_data_dir
from seqvae_cli.errors import SeqvaeError


# --------------------------------------------------------------------------------------------- MNIST

MNIST_FILES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}


def read_idx(path: Path) -> torch.Tensor:
    """Parse an IDX file (LeCun's MNIST format) into a uint8 tensor."""
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise SeqvaeError(f"{path} is {what}, not an IDX file; remove it so seqvae downloads the file, or set "
                          f"paths.data_dir (or $SEQVAE_DATA_DIR) to the folder that holds MNIST/raw/")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SeqvaeError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}); check its "
                          f"permissions") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SeqvaeError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                          "delete it so seqvae downloads a fresh copy")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(dims):
        raise SeqvaeError(f"{path} has the wrong size: header says {dims} ({math.prod(dims)} bytes) but it holds "
                          f"{len(raw) - offset} bytes; "
                          "delete it so seqvae downloads a fresh copy")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(dims)


def find_or_download_mnist(data_dir: str, download: bool, needed: tuple[str, ...] = tuple(MNIST_FILES)) -> Path:
    """Return the folder holding the raw MNIST files `needed` (default: all four), downloading them (torchvision)
    if absent."""
    root = resolve_data_dir(data_dir)
    raw = root / "MNIST" / "raw"
    missing = [f for f in needed if not (raw / f).exists()]
    if not missing:
        return raw
    reason = "download=false"
    if download:
        created = [p for p in (root, root / "MNIST", raw) if not p.exists()]
        try:
            from torchvision.datasets import MNIST
            MNIST(str(root), train=True, download=True)   # md5-checked, with a progress bar
            MNIST(str(root), train=False, download=True)
            missing = [f for f in needed if not (raw / f).exists()]
            if not missing:
                return raw
            reason = "the download finished but files are still missing"
        except Exception as exc:  # network down, read-only folder, ...
            reason = f"download failed: {failure_cause(exc)}"
            remove_empty_folders(created)
    raise SeqvaeError(
        f"MNIST not found: expected {', '.join(missing)} in {raw} ({reason}). "
        f"Set paths.data_dir (or $SEQVAE_DATA_DIR) to the folder that holds MNIST/raw/, "
        f"or try the offline demo that needs no download: seqvae train experiment=sines")


def read_mnist_split(raw: Path, images_file: str, labels_file: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One MNIST file pair -> images [N, 784] (uint8) and labels [N] (long), checked against MNIST's layout: 28x28
    images, one label per image, each a digit 0-9. The fix for a bad file is always a fresh download."""
    fresh = "delete it so seqvae downloads a fresh copy"
    images, labels = read_idx(raw / images_file), read_idx(raw / labels_file)
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise SeqvaeError(f"{raw / images_file} holds an array of shape {tuple(images.shape)}; MNIST images are "
                          f"N x 28 x 28: {fresh}")
    expected = MNIST_FILES[images_file][0]
    if images.shape[0] == 0:
        raise SeqvaeError(f"{raw / images_file} holds 0 images; MNIST's has {expected}: {fresh}")
    if labels.dim() != 1:
        raise SeqvaeError(f"{raw / labels_file} holds an array of shape {tuple(labels.shape)}; MNIST labels are "
                          f"one number per image: {fresh}")
    if labels.shape[0] != images.shape[0]:
        raise SeqvaeError(f"{raw / labels_file} holds {labels.shape[0]} labels but {images_file} holds "
                          f"{images.shape[0]} images (MNIST's: {expected} each); one label per image is expected: "
                          f"delete both so seqvae downloads fresh copies")
    bad = torch.nonzero(labels > 9).flatten()
    if bad.numel():
        i = int(bad[0])
        raise SeqvaeError(f"{raw / labels_file}: label {int(labels[i])} at index {i} (counting from 0; "
                          f"{bad.numel()} such labels); MNIST labels are the digits 0-9: {fresh}")
    return images.reshape(-1, 784), labels.long()


class MNISTData(DataModule):
    kind = "image"
    RULES = {
        "binarize": one_of("dynamic", "static", "none"),
        "static_seed": seed_rule(),
        "num_val": number(1, 59999, integer=True),
        **DataModule.RULES,
        "iw_rows_per_chunk": number(1, integer=True),
        "download": BOOLEAN,
    }

    def __init__(self, data_dir: str, binarize: str = "dynamic", static_seed: int = 0,
                 num_val: int = 10000, batch_size: int = 128, eval_batch_size: int = 1000,
                 eval_iw_samples: int = 100, iw_rows_per_chunk: int = 65536, download: bool = True,
                 name: str = "mnist") -> None:
        check_arguments("data", self.RULES, binarize=binarize, static_seed=static_seed, num_val=num_val,
                        batch_size=batch_size, eval_batch_size=eval_batch_size, eval_iw_samples=eval_iw_samples,
                        iw_rows_per_chunk=iw_rows_per_chunk, download=download)
        self.data_dir, self.binarize, self.static_seed = data_dir, binarize, static_seed
        self.num_val, self.batch_size, self.eval_batch_size = num_val, batch_size, eval_batch_size
        self.eval_iw_samples, self.iw_rows_per_chunk, self.download = eval_iw_samples, iw_rows_per_chunk, download
        self.image_shape = (1, 28, 28)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._binary_train: torch.Tensor | None = None

    def setup(self, device: torch.device, splits: tuple[str, ...] | None = None) -> None:
        self.device = device
        wanted = ("train", "val", "test") if splits is None else tuple(splits)
        if not wanted:
            return    # a model from its checkpoint draws from its prior without images
        # Static binarisation draws the test images' bits after the training images': it needs them all.
        need_train = bool({"train", "val"} & set(wanted)) or self.binarize == "static"
        files = (["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] if need_train else []) + \
            (["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] if "test" in wanted else [])
        raw = find_or_download_mnist(self.data_dir, self.download, tuple(files))
        if files[0].startswith("train"):
            train_x, train_y = read_mnist_split(raw, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
        else:   # the test split alone: stand-ins for the training images, never served, with as many validation
            # images as the real ones, so the test images' fixed binarisation draws exactly the same bits
            train_x, train_y = torch.zeros(self.num_val + 1, 784, dtype=torch.uint8), torch.zeros(self.num_val + 1,
                                                                                                   dtype=torch.long)
        if "test" in wanted:
            test_x, test_y = read_mnist_split(raw, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
        else:
            test_x, test_y = torch.zeros(0, 784, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
        n_train = train_x.shape[0] - self.num_val
        if n_train < 1:   # else an empty training split fails far downstream (e.g. as "no VAE step is left")
            raise SeqvaeError(
                f"{raw / 'train-images-idx3-ubyte'} holds {train_x.shape[0]} images; MNIST's training file has "
                f"{MNIST_FILES['train-images-idx3-ubyte'][0]}, and data.num_val={self.num_val} of them validate, "
                f"which leaves none to train on: delete it so seqvae downloads a fresh copy, or lower data.num_val "
                f"below {train_x.shape[0]}")
        grey = {"train": train_x[:n_train], "val": train_x[n_train:], "test": test_x}
        labels = {"train": train_y[:n_train], "val": train_y[n_train:], "test": test_y}
        gen = torch.Generator().manual_seed(self.static_seed)
        for split in ("train", "val", "test"):
            x = grey[split].float().div_(255.0)
            if self.binarize == "static":
                x = torch.bernoulli(x, generator=gen)
            # Dynamic binarisation of held-out splits would make metrics noisy from run to run, so
            # val/test are binarised once with a fixed seed (the usual protocol for reported NLLs).
            elif self.binarize == "dynamic" and split != "train":
                x = torch.bernoulli(x, generator=gen)
            if split in wanted:
                self.splits[split] = (x.to(device), labels[split].to(device))

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def model_kwargs(self) -> dict:
        return {"input_dim": 784}

    def num_examples(self, split: str) -> int:
        return self.splits[split][0].shape[0]

    def train_batches(self, shuffle_gen, data_gen, limit=None):
        x, y = self.splits["train"]
        order = torch.randperm(x.shape[0], generator=shuffle_gen).to(x.device)
        for i in range(self.num_train_batches(limit)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = x.index_select(0, idx)  # same rows as x[idx], with less indexing overhead on the CPU
            if self.binarize == "dynamic":
                xb = torch.bernoulli(xb, generator=data_gen)
            yield {"x": xb, "y": y.index_select(0, idx)}

    def eval_batches(self, split, batch_size=None, limit=None):
        x, y = self.splits[split]
        bs = batch_size or self.eval_batch_size
        if split == "train" and self.binarize == "dynamic":
            x = self.binary_train_images()
        for i in range(batch_limit(limit, math.ceil(x.shape[0] / bs))):
            yield {"x": x[i * bs:(i + 1) * bs], "y": y[i * bs:(i + 1) * bs]}

    def restrict(self, split: str, rows: torch.Tensor) -> None:
        if split == "train" and self.binarize == "dynamic":   # the same binarisation as the whole split's
            self._binary_train = self.binary_train_images()[rows.to(self.device)]
        x, y = self.splits[split]
        self.splits[split] = (x[rows.to(x.device)], y[rows.to(y.device)])

    def binary_train_images(self) -> torch.Tensor:
        """Dynamically binarised training images are kept grey; scoring them (eval split=train) uses one fixed
        binarisation, drawn on the CPU as val/test were, so the scores are of binary images and the same on
        every device and for every batch size."""
        if self._binary_train is None:
            grey = self.splits["train"][0]
            gen = torch.Generator().manual_seed(self.static_seed + 1)
            self._binary_train = torch.bernoulli(grey.cpu(), generator=gen).to(grey.device)
        return self._binary_train
