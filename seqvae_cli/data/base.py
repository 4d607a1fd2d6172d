"""What every data module is: splits of on-device tensors served as batches, and where data lives."""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Iterator

import torch

from seqvae_cli.config.rules import Rule, number
from seqvae_cli.errors import SeqvaeError

Batch = dict[str, torch.Tensor]


def resolve_data_dir(data_dir: str) -> Path:
    return Path(os.path.expanduser(str(data_dir))).resolve()


def read_text_file(path: Path, what: str, setting: str, encoding: str = "utf-8") -> str:
    """The text of a user's data file; a missing, non-regular, non-UTF-8 or unreadable file is one SeqvaeError
    naming `what` (e.g. "CSV file x.csv") and the `setting` that points at it."""
    if not path.exists():
        raise SeqvaeError(f"{what} does not exist; check {setting}")
    if not path.is_file():
        raise SeqvaeError(f"{what} is not a regular file; point {setting} at a file")
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise SeqvaeError(f"{what} is not UTF-8 (byte {exc.start}: {exc.reason}); convert it, e.g. with "
                          f"`iconv -t utf-8`") from None
    except OSError as exc:
        raise SeqvaeError(f"{what} cannot be read ({exc.strerror or type(exc).__name__}); check its "
                          f"permissions") from None


def failure_cause(exc: BaseException) -> str:
    """One line saying why a download failed. torchvision's message is a list ("Error downloading X:" / "Tried URL,
    got:" / the error) whose first line names no cause: take the last line that does."""
    lines = [ln.strip().strip("<>") for ln in str(exc).splitlines() if ln.strip()]
    causes = [ln for ln in lines if not ln.endswith(":") and not ln.startswith("Tried ")]
    cause = causes[-1] if causes else (str(exc.__cause__ or exc.__context__ or "").strip() or "no reason given")
    return f"{type(exc).__name__}: {cause[:200]}"


def remove_empty_folders(created: list[Path]) -> None:
    """Remove the folders (deepest first) that an attempt created and left empty, e.g. data/MNIST/raw after a
    failed download, so that nothing looks like data that is not there."""
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:   # not empty, or gone: leave it
            pass


def batch_limit(limit: int | float | None, num_batches: int) -> int:
    """How many batches a `limit_*_batches` setting allows: None = all, int = count, float = fraction."""
    if limit is None:
        return num_batches
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(math.floor(limit * num_batches)))
    return min(int(limit), num_batches)


class DataModule:
    """What the trainer, evaluator and sampler need from a dataset."""

    kind: str  # "image" | "text" | "series": picks the visuals in sample.py
    batch_size: int
    eval_batch_size: int
    eval_iw_samples: int
    iw_rows_per_chunk: int = 65536  # examples x importance samples scored at once in the IW pass
    cut_splits: dict[str, int] = {}  # splits that subset() cut: split -> how many examples the whole split has

    # The rules of the constructor's keys (data.<key>), which validate() applies to the config and the constructor
    # to its arguments (config/rules.check_arguments). Subclasses extend these with their own keys.
    RULES: dict[str, Rule] = {
        "batch_size": number(1, integer=True),
        "eval_batch_size": number(1, integer=True),
        "eval_iw_samples": number(1, integer=True),
    }

    def setup(self, device: torch.device, splits: tuple[str, ...] | None = None) -> None:
        """Load the data onto `device`. splits: None = every split (training); a tuple = only those, for a model
        rebuilt from its checkpoint (load_state_dict first), which carries what the others would give (a
        vocabulary, normalisation statistics): `seqvae sample` needs none, `seqvae eval` the one it scores."""
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        """Whether `split` was loaded (setup with a tuple of splits loads only those)."""
        return True

    def model_kwargs(self) -> dict:
        """Shapes the model needs from the data (input size, vocabulary size, ...)."""
        raise NotImplementedError

    def num_examples(self, split: str) -> int:
        raise NotImplementedError

    def train_batches(self, shuffle_gen: torch.Generator, data_gen: torch.Generator,
                      limit: int | float | None = None) -> Iterator[Batch]:
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int | None = None,
                     limit: int | float | None = None) -> Iterator[Batch]:
        raise NotImplementedError

    def num_train_batches(self, limit: int | float | None = None) -> int:
        return batch_limit(limit, math.ceil(self.num_examples("train") / self.batch_size))

    def subset(self, split: str, n: int, seed: int) -> DataModule:
        """`seqvae eval limit_examples=n`: this data with `split` cut to n of its examples, drawn uniformly with
        `seed` (kept in storage order), so that the scores describe the split whatever its batches are sorted by.
        A shallow copy (its dicts copied, its tensors shared): this module is left whole."""
        total = self.num_examples(split)
        if n >= total:
            return self
        clone = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, dict):   # restrict() replaces entries of these (splits, lengths): not ours
                setattr(clone, name, dict(value))
        drawn = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
        clone.restrict(split, torch.sort(drawn).values)
        clone.cut_splits = {**self.cut_splits, split: total}
        return clone

    def restrict(self, split: str, rows: torch.Tensor) -> None:
        """Keep only these rows (a CPU index tensor) of `split`."""
        raise SeqvaeError(f"limit_examples needs {type(self).__name__}.restrict(split, rows), which this data module "
                          f"does not define: score the whole split, or add the method (docs/extending.md)")

    def state_dict(self) -> dict:
        """What must travel with a checkpoint so eval/sample rebuild the data identically (e.g. a vocabulary)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
