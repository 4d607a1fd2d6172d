"""seqvae's own parts, by name: the only classes a config, and so a checkpoint, may build.

A checkpoint's config is data read from a file that may come from anywhere. Handed to
hydra.utils.instantiate, any `_target_` in it would be imported and called (Hydra blocks os.system
and exec, not torch.load(weights_only=False), open(mode="w"), shutil.copyfile, ...). So no config
node is ever given to Hydra: `_target_` is only looked up as a name in the tables below, a whole
config is checked for any other `_target_` or instantiation directive before anything is built, and
the registered class is called with the node's plain values. `seqvae train` builds through the same
gate, so train, eval, sample and resume share one rule.
"""
from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqvae_cli.data.base import DataModule
from seqvae_cli.data.mnist import MNISTData
from seqvae_cli.data.series.csv import CSVData
from seqvae_cli.data.series.ecg5000 import ECG5000Data
from seqvae_cli.data.series.nab import NABData
from seqvae_cli.data.series.sines import SinesData
from seqvae_cli.data.text import TextData
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.base import LatentModel
from seqvae_cli.models.lstm_lm import LSTMLM
from seqvae_cli.models.lstm_vae import lstm_vae
from seqvae_cli.models.mlp_vae import MLPAutoencoder, MLPVAE

# Where the parts lived before the package was split into sub-packages: checkpoints written then name them so.
FORMER_PATHS = {"MNISTData": "seqvae_cli.data", "TextData": "seqvae_cli.data_text",
                "SinesData": "seqvae_cli.data_series", "ECG5000Data": "seqvae_cli.data_series",
                "NABData": "seqvae_cli.data_series", "CSVData": "seqvae_cli.data_series",
                "MLPVAE": "seqvae_cli.models", "MLPAutoencoder": "seqvae_cli.models",
                "LSTMLM": "seqvae_cli.models_seq", "lstm_vae": "seqvae_cli.models_seq"}


def _by_name(*classes: type) -> dict[str, type]:
    """Each class under its short name (MNISTData), its full path (seqvae_cli.data.mnist.MNISTData) and the path it
    had before the sub-packages (seqvae_cli.data.MNISTData), so that old configs and checkpoints still load."""
    names = {}
    for cls in classes:
        names[cls.__name__] = names[f"{cls.__module__}.{cls.__qualname__}"] = cls
        if cls.__name__ in FORMER_PATHS:
            names[f"{FORMER_PATHS[cls.__name__]}.{cls.__name__}"] = cls
    return names


# The config slot -> the classes it may name. Nothing else in a config may carry a `_target_`.
PARTS: dict[str, dict[str, type]] = {
    "data": _by_name(MNISTData, TextData, SinesData, ECG5000Data, NABData, CSVData),
    "model": _by_name(MLPVAE, MLPAutoencoder, LSTMLM, lstm_vae),
}


# Hydra's instantiation directives: meaningless to seqvae's builder, so refused rather than passed on as values.
DIRECTIVES = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def short_names(slot: str) -> str:
    return ", ".join(name for name in PARTS[slot] if "." not in name)


def plain(node: Any, source: str) -> Any:
    """The node's resolved plain values (interpolations resolved first, so that a resolver such as oc.decode
    cannot smuggle a `_target_` past the check)."""
    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception as exc:  # noqa: BLE001 - OmegaConf raises several types for a bad interpolation
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SeqvaeError(f"{source}: its config does not resolve ({first[:160]}); it was not written by "
                          f"seqvae train, or was altered: do not use it") from None


def check_parts(cfg: DictConfig | dict, source: str, slots: tuple[str, ...] = tuple(PARTS)) -> None:
    """Refuse, before anything is built, a config that names anything but seqvae's own parts: `_target_` is
    allowed only as data._target_ and model._target_, naming a registered class; no other key anywhere (nested
    dicts, lists, `_args_`) may carry a `_target_` or another instantiation directive. `slots`: the parts the
    config must hold."""
    tree = plain(cfg, source)
    refused = [(path, key, value) for path, key, value in _directives(tree, "")
               if not (key == "_target_" and path[:-1] in PARTS and isinstance(value, str)
                       and value in PARTS[path[:-1]])]
    if refused:
        # A foreign _target_ says most about what the file tried: name it before a bare directive (_args_, ...).
        path, key, value = next((hit for hit in refused if hit[1] == "_target_"), refused[0])
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        what = "is not one of seqvae's own parts" if key == "_target_" else "is an instantiation directive"
        raise SeqvaeError(f"{source}: {path}{key}={shown} {what}; {_rule(source)}")
    for slot in slots:
        node = tree.get(slot) if isinstance(tree, dict) else None
        if not isinstance(node, dict) or "_target_" not in node:
            raise SeqvaeError(f"{source}: the config has no {slot}._target_; {_rule(source)}")


def _rule(source: str) -> str:
    """What is allowed, and the way out: a checkpoint so made was not written by seqvae train (or was altered)."""
    fix = ("do not use this file: seqvae train never writes one like it" if source.startswith("checkpoint")
           else "choose data=... and model=... among their config groups (`seqvae train --help` lists them)")
    return (f"a config or checkpoint may only name seqvae's own parts (data._target_: {short_names('data')}; "
            f"model._target_: {short_names('model')}; or their seqvae_cli.* paths), and no other key may carry "
            f"_target_ or another instantiation directive. Nothing was built; {fix}")


def _directives(node: Any, path: str):
    """(key path prefix, key, value) of every directive key in a plain config tree, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in DIRECTIVES:
                yield path, key, value
            yield from _directives(value, f"{path}{key}.")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _directives(value, f"{path.rstrip('.')}[{index}].")


def build_part(node: DictConfig | dict, slot: str, source: str = "the config", **extra: Any
               ) -> DataModule | LatentModel:
    """The registered class `node._target_` names, called with the node's plain values and `extra` (which win).
    Call check_parts on the whole config first; this re-checks its own node. A SeqvaeError raised by the
    constructor reaches the user as it is."""
    values = plain(node, source)
    check_parts({slot: values}, source, slots=(slot,))
    values = dict(values)     # a copy: the caller's node keeps its _target_
    cls = PARTS[slot][values.pop("_target_")]
    values.update(extra)
    try:
        inspect.signature(cls).bind(**values)
    except TypeError as exc:
        raise SeqvaeError(f"{source}: {slot} ({cls.__name__}) cannot be built from its keys: {exc}; check the "
                          f"{slot}.* keys (`seqvae train --cfg job` prints a valid config)") from None
    return cls(**values)
