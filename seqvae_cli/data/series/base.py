"""The shared base of the time-series data modules: on-device splits, shuffled training batches,
evaluation batches in storage order. Modules only say how they load."""
from __future__ import annotations

from typing import TYPE_CHECKING

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from seqvae_cli.config.rules import check_arguments, one_of
from seqvae_cli.data.base import Batch, DataModule, batch_limit
from seqvae_cli.data.series.windows import Normalizer, SPLITS, fit_normalizer
from seqvae_cli.errors import SeqvaeError

if TYPE_CHECKING:  # windowed.py builds on this file
    from seqvae_cli.data.series.windowed import SeriesPart

log = logging.getLogger("seqvae")


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
    RULES = {"normalize": one_of(*NORMALIZE), **DataModule.RULES}

    def __init__(self, name: str, data_dir: str, normalize: str, batch_size: int, eval_batch_size: int,
                 eval_iw_samples: int) -> None:
        self.config_error: SeqvaeError | None = None
        self.name, self.data_dir, self.normalize = name, data_dir, normalize
        with self.deferred_errors():
            check_arguments("data", self.RULES, normalize=normalize, batch_size=batch_size,
                            eval_batch_size=eval_batch_size, eval_iw_samples=eval_iw_samples)
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
        """Keep the first config error of a constructor (check_arguments against the class's RULES) and raise it
        in setup(), which still fails before any work is done: a config passed validate() already, so only a
        module built otherwise (from a checkpoint, or in code) gets here."""
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
    def setup(self, device: torch.device, splits: tuple[str, ...] | None = None) -> None:
        if self.config_error is not None:
            raise self.config_error
        self.device = torch.device(device)
        state = self.loaded_state
        if splits is not None and not splits and state and "shift" in state and "seq_len" in state:
            # From a checkpoint, for what needs no data (prior samples): its statistics give the shapes and units.
            self.normalizer = Normalizer(state["normalize"], torch.tensor(state["shift"], dtype=torch.float64),
                                         torch.tensor(state["scale"], dtype=torch.float64))
            self.channel_names, self.series_names = list(state["channels"]), list(state.get("series_names", []))
            self.seq_len, self.num_channels = int(state["seq_len"]), int(self.normalizer.shift.shape[-1])
            return
        # Every split comes from the same files (the splits are parts of them): all are loaded.
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

    def has_split(self, split: str) -> bool:
        return split in self.splits

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

    def restrict(self, split: str, rows: torch.Tensor) -> None:
        self.splits[split] = {k: v.index_select(0, rows.to(v.device)) for k, v in self.splits[split].items()}

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
