"""The parts a config, and so a checkpoint, may build: a closed table, by slot, that only Python code adds to.

A checkpoint's config is data read from a file that may come from anywhere. Handed to
hydra.utils.instantiate, any `_target_` in it would be imported and called (Hydra blocks os.system
and exec, not torch.load(weights_only=False), open(mode="w"), shutil.copyfile, ...). So no config
node is ever given to Hydra: `_target_` is only looked up as a name in the table below, a whole
config is checked for any other `_target_` or instantiation directive before anything is built, and
the registered class is called with the node's plain values. `seqvae train` builds through the same
gate, so train, eval, sample and resume share one rule.

The table is filled by `register`: seqvae's own parts below, and parts from modules the USER names (never a
config): $SEQVAE_PARTS and the `seqvae.parts` entry points of installed distributions (load_plugins).
docs/extending.md shows how to add one.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from omegaconf import DictConfig, OmegaConf

from seqvae_cli.data.base import DataModule
from seqvae_cli.data.mnist import MNISTData
from seqvae_cli.data.series.csv import CSVData
from seqvae_cli.data.series.ecg5000 import ECG5000Data
from seqvae_cli.data.series.nab import NABData
from seqvae_cli.data.series.sines import SinesData
from seqvae_cli.data.text import TextData
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.latent.flow import IAFPosterior, PlanarPosterior
from seqvae_cli.latent.mog import MixturePrior
from seqvae_cli.latent.posterior import GaussianPosterior
from seqvae_cli.latent.prior import StandardNormal
from seqvae_cli.latent.vamp import VampPrior
from seqvae_cli.models.base import LatentModel
from seqvae_cli.models.conv_vae import ConvVAE
from seqvae_cli.models.lstm_lm import LSTMLM
from seqvae_cli.models.lstm_vae import lstm_vae
from seqvae_cli.models.mlp_vae import MLPAutoencoder, MLPVAE


@dataclass(frozen=True)
class Slot:
    """A config node that names a part by `_target_` (and the config group of the same name): what the part is
    (for messages and docs), and whether every run's config must hold one."""
    what: str
    required: bool = True


# The slots. Nothing else in a config may carry a `_target_`. A new kind of part adds a line here.
SLOTS: dict[str, Slot] = {
    "data": Slot("a data module (seqvae_cli.data.base.DataModule)"),
    "model": Slot("a model (seqvae_cli.models.base.LatentModel)"),
    # Runs from before these slots have no prior/posterior node: they trained with the standard normal and the Gaussian.
    "prior": Slot("a prior p(z) (seqvae_cli.latent.prior.Prior)", required=False),
    "posterior": Slot("a posterior head, h -> q(z|x) (seqvae_cli.latent.posterior)", required=False),
}

# The slot -> {name: class}: each part under its short name, its full dotted path and any former path.
PARTS: dict[str, dict[str, Callable[..., Any]]] = {slot: {} for slot in SLOTS}

# Where the parts lived before the package was split into sub-packages: checkpoints written then name them so.
FORMER_PATHS = {"MNISTData": "seqvae_cli.data", "TextData": "seqvae_cli.data_text",
                "SinesData": "seqvae_cli.data_series", "ECG5000Data": "seqvae_cli.data_series",
                "NABData": "seqvae_cli.data_series", "CSVData": "seqvae_cli.data_series",
                "MLPVAE": "seqvae_cli.models", "MLPAutoencoder": "seqvae_cli.models",
                "LSTMLM": "seqvae_cli.models_seq", "lstm_vae": "seqvae_cli.models_seq"}

Part = TypeVar("Part", bound=Callable[..., Any])


def register(slot: str, cls: Part | None = None, name: str | None = None) -> Any:
    """Add `cls` (a class, or a function that returns the part) to `slot` under its short name (or `name`), its
    full dotted path and, for seqvae's own parts, the path it had before the sub-packages. Returns `cls`, so it
    also works as a decorator: `@register("model")` or `@register("model", name="toy")`. A name already taken by
    another class is refused: a plugin must not replace one of seqvae's parts behind a config's back."""
    if cls is None:
        return lambda given: register(slot, given, name)
    if slot not in SLOTS:
        raise SeqvaeError(f"register({slot!r}, {getattr(cls, '__name__', cls)!r}): no such slot; the slots are "
                          f"{', '.join(SLOTS)}")
    full = f"{cls.__module__}.{cls.__qualname__}"
    names = [name or cls.__name__, full]
    if cls.__module__.startswith("seqvae_cli.") and cls.__name__ in FORMER_PATHS:
        names.append(f"{FORMER_PATHS[cls.__name__]}.{cls.__name__}")
    table = PARTS.setdefault(slot, {})
    for key in names:
        taken = table.get(key)
        # The same class imported again (a module reloaded, or imported under a second name) replaces itself.
        if taken is not None and taken is not cls and f"{taken.__module__}.{taken.__qualname__}" != full:
            raise SeqvaeError(f"register({slot!r}, {full}): the name {key!r} is already {slot} part "
                              f"{taken.__module__}.{taken.__qualname__}; register it under another name "
                              f"(register({slot!r}, name=...))")
    for key in names:
        table[key] = cls
    return cls


# seqvae's own parts. A new part inside the package adds its class here (parts outside it: load_plugins).
BUILTIN: dict[str, tuple[Callable[..., Any], ...]] = {
    "data": (MNISTData, TextData, SinesData, ECG5000Data, NABData, CSVData),
    "model": (MLPVAE, MLPAutoencoder, LSTMLM, lstm_vae, ConvVAE),
    "prior": (StandardNormal, MixturePrior, VampPrior),
    "posterior": (GaussianPosterior, PlanarPosterior, IAFPosterior),
}
for _slot, _classes in BUILTIN.items():
    for _cls in _classes:
        register(_slot, _cls)


# Where the user names modules of parts, and the entry-point group of installed distributions that bring some.
PLUGINS_ENV = "SEQVAE_PARTS"
ENTRY_POINT_GROUP = "seqvae.parts"
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_imported: set[str] = set()
_entry_points_loaded = False


def load_plugins() -> None:
    """Import the modules that register parts from outside the package (their imports call `register`): every
    `seqvae.parts` entry point of the installed distributions, then each module named in $SEQVAE_PARTS
    (comma-separated). Only the user names them, never a config, which is data that may come from anywhere.
    Cheap to call again: each module is imported once."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        for point in entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(getattr(point, "dist", None), "name", None) or "an installed distribution"
            _import(point.load, f"the {ENTRY_POINT_GROUP} entry point {point.name} = {point.value} of {dist}",
                    f"fix or uninstall {dist}")
        _entry_points_loaded = True
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    for name in names:
        if name in _imported:
            continue
        if not _MODULE_NAME.match(name):
            raise SeqvaeError(f"{PLUGINS_ENV} names {name!r}, which is not a module name; set it to module names "
                              f"separated by commas, e.g. {PLUGINS_ENV}=my_package.parts,other.parts")
        _import(lambda: importlib.import_module(name), f"{PLUGINS_ENV} names {name}",
                f"fix the name in {PLUGINS_ENV}, or make the module importable (put its folder on PYTHONPATH "
                f"or pip install its package)")
        _imported.add(name)


def _import(load: Callable[[], Any], what: str, fix: str) -> None:
    try:
        load()
    except SeqvaeError:
        raise                   # the plugin's own one line (e.g. a name already taken)
    except Exception as exc:    # noqa: BLE001 - a plugin's import may raise anything
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise SeqvaeError(f"{what}, which cannot be imported: {type(exc).__name__}: {first}; {fix}") from None


# Hydra's instantiation directives: meaningless to seqvae's builder, so refused rather than passed on as values.
DIRECTIVES = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def short_names(slot: str) -> str:
    return ", ".join(name for name in PARTS.get(slot, {}) if "." not in name)


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


def check_parts(cfg: DictConfig | dict, source: str, slots: tuple[str, ...] | None = None) -> None:
    """Refuse, before anything is built, a config that names anything but registered parts: `_target_` is allowed
    only as SLOT._target_ (data, model, ...), naming a class registered in that slot; no other key anywhere (nested
    dicts, lists, `_args_`) may carry a `_target_` or another instantiation directive. `slots`: the parts the config
    must hold (default: the required slots). The user's plugin modules are imported first (load_plugins)."""
    load_plugins()
    tree = plain(cfg, source)
    refused = [(path, key, value) for path, key, value in _directives(tree, "")
               if not (key == "_target_" and path[:-1] in SLOTS and isinstance(value, str)
                       and value in PARTS.get(path[:-1], {}))]
    if refused:
        # A foreign _target_ says most about what the file tried: name it before a bare directive (_args_, ...).
        path, key, value = next((hit for hit in refused if hit[1] == "_target_"), refused[0])
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        in_slot = key == "_target_" and path[:-1] in SLOTS
        what = ("is not one of seqvae's own parts (nor a registered plugin's)" if key == "_target_"
                else "is an instantiation directive")
        raise SeqvaeError(f"{source}: {path}{key}={shown} {what}; {_rule(source, in_slot)}")
    for slot in slots if slots is not None else tuple(s for s, d in SLOTS.items() if d.required):
        node = tree.get(slot) if isinstance(tree, dict) else None
        if not isinstance(node, dict) or "_target_" not in node:
            raise SeqvaeError(f"{source}: the config has no {slot}._target_; {_rule(source, False)}")


def _rule(source: str, plugin_hint: bool) -> str:
    """What is allowed, and the way out: a checkpoint so made was not written by seqvae train (or was altered), or
    (plugin_hint: a slot names an unknown class) its part comes from a plugin module the user has not named."""
    listed = "; ".join(f"{slot}._target_: {short_names(slot)}" for slot in SLOTS if PARTS.get(slot))
    plugin = (f"name the module that registers it in {PLUGINS_ENV}=my_package.parts (or install it with a "
              f"{ENTRY_POINT_GROUP} entry point; docs/extending.md)")
    if source.startswith("checkpoint"):
        fix = ((f"if this run was trained with a part of your own, {plugin}; else " if plugin_hint else "")
               + "do not use this file: seqvae train never writes one like it")
    else:
        fix = ("choose data=... and model=... among their config groups (`seqvae train --help` lists them)"
               + (f"; for a part of your own, {plugin}" if plugin_hint else ""))
    return (f"a config or checkpoint may only name registered parts ({listed}; or their full paths), and no "
            f"other key may carry _target_ or another instantiation directive. Nothing was built; {fix}")


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


def part_factory(node: DictConfig | dict, slot: str, source: str = "the config") -> Callable[..., Any]:
    """The registered class `node._target_` names, with the node's plain values bound: call it with the values only
    the builder knows (sizes from the data or the model), which win. Its `func` is the class. Call check_parts on
    the whole config first; this re-checks its own node. A SeqvaeError raised by the constructor reaches the user
    as it is."""
    values = plain(node, source)
    check_parts({slot: values}, source, slots=(slot,))
    values = dict(values)     # a copy: the caller's node keeps its _target_
    cls = PARTS[slot][values.pop("_target_")]

    def make(**extra: Any) -> Any:
        kwargs = {**values, **extra}
        try:
            inspect.signature(cls).bind(**kwargs)
        except TypeError as exc:
            raise SeqvaeError(f"{source}: {slot} ({cls.__name__}) cannot be built from its keys: {exc}; check the "
                              f"{slot}.* keys (`seqvae train --cfg job` prints a valid config)") from None
        return cls(**kwargs)
    make.func = cls
    return make


def build_part(node: DictConfig | dict, slot: str, source: str = "the config", **extra: Any
               ) -> DataModule | LatentModel | Any:
    """The part `node` names, built now (part_factory, called with `extra`)."""
    return part_factory(node, slot, source)(**extra)
