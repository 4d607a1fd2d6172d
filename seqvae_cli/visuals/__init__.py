"""Pictures, by data kind: each kind's module (images, text, series) draws what suits its data.

A kind's module defines `during_training(model, dm, writer, step)` (TensorBoard pictures after each validation),
`sample(model, dm, cfg, out_dir, writer, step) -> list[Path]` (everything `seqvae sample` draws) and, optionally,
`end_of_training(model, dm, out_dir, writer, step)` (files written next to the run's checkpoints). A new data
kind adds one module and one line to KINDS. visuals/latent.py adds a learned prior's pictures to every kind. Modules
are imported on first use: matplotlib is slow to load.

TensorBoard's Time Series tab sorts its cards by tag prefix and opens only the first two groups: pictures are
tagged visuals/... (seqvae sample's visuals/sample/...), which sorts after the train/ and val/ curves.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from torch.utils.tensorboard import SummaryWriter

from seqvae_cli.config.rules import number
from seqvae_cli.data.base import DataModule
from seqvae_cli.models.base import LatentModel

# `seqvae sample`'s keys that every kind's sample() reads; each kind's module declares the rules of its own keys.
RULES = {
    "num_samples": number(1, integer=True),
    "num_reconstructions": number(1, integer=True),
    "interpolation_steps": number(2, integer=True),
}


KINDS = {"image": "seqvae_cli.visuals.images", "text": "seqvae_cli.visuals.text", "series": "seqvae_cli.visuals.series"}


def for_kind(kind: str) -> ModuleType:
    """The pictures module of a data kind (DataModule.kind)."""
    return importlib.import_module(KINDS[kind])


def during_training(model: LatentModel, dm: DataModule, writer: SummaryWriter, step: int) -> None:
    for_kind(dm.kind).during_training(model, dm, writer, step)
    if model.latent_dim > 0:
        importlib.import_module("seqvae_cli.visuals.latent").during_training(model, dm, writer, step)


def end_of_training(model: LatentModel, dm: DataModule, out_dir: Path, writer: SummaryWriter, step: int) -> None:
    module = for_kind(dm.kind)
    if hasattr(module, "end_of_training"):
        module.end_of_training(model, dm, out_dir, writer, step)


def sample(model: LatentModel, dm: DataModule, cfg, out_dir: Path, writer: SummaryWriter, step: int) -> list[Path]:
    written = for_kind(dm.kind).sample(model, dm, cfg, out_dir, writer, step)
    if model.latent_dim > 0:   # a learned prior's own pictures (visuals/latent.py), whatever the data kind
        written += importlib.import_module("seqvae_cli.visuals.latent").sample(model, dm, cfg, out_dir, writer, step)
    return written
