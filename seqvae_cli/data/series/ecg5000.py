"""data=ecg5000: the UCR ECG5000 heartbeats, one 140-step beat per row; class 1 is normal."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from seqvae_cli.config.rules import check_arguments, number, one_of, seed_rule
from seqvae_cli.data.base import resolve_data_dir
from seqvae_cli.data.series.base import Loaded, SeriesData, SplitArrays
from seqvae_cli.data.series.csv import MAX_ABS_VALUE, _is_missing, _parse_number
from seqvae_cli.errors import SeqvaeError

UCR_URL = "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/"


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
    RULES = {
        **SeriesData.RULES,
        "normalize": one_of(*NORMALIZE),     # its own choices: statistics over all beats, or per step
        "protocol": one_of("normal_only", "ucr"),
        "num_val_normal": number(1, integer=True),
        "num_test_normal": number(1, integer=True),
        "ucr_num_val": number(1, integer=True),
        "seed": seed_rule(),
    }
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
            check_arguments("data", self.RULES, protocol=protocol, num_val_normal=num_val_normal,
                            num_test_normal=num_test_normal, ucr_num_val=ucr_num_val, seed=seed)
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
