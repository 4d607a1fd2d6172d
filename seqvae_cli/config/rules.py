"""The config's rules: the vocabulary a rule is written in, the one-line error a broken value gives, and
validate(), which checks a composed config against the rules of the code that reads it.

A key's rule lives next to the code that consumes the key, in one of two places:

* a verb's own settings (trainer.*, optim.*, objective.*, device.*, eval's and sample's keys): a module-level dict
  of full keys -> rules in the module that reads them (e.g. `RULES = {"objective.beta": number(0)}` in
  objective/schedule.py). CONSUMERS below lists, per verb, those tables and the cross-key checks (functions
  cfg -> None, raising SeqvaeError) that live beside them.
* a part's constructor keys (data.*, model.*): the class attribute `RULES` of the class that `data._target_` or
  `model._target_` names (found through parts.PARTS), in the key's local name (`{"window": number(2, ...)}`).
  The constructor checks its arguments with those same rules through check_arguments(), so a part built from a
  checkpoint is held to them too.

validate(cfg, verb) gathers the rules of the verb's consumers and of the two parts, checks every key the config
holds (the first broken one raises), then runs the cross-key checks. tests/test_rules_cover.py fails on a key of
any composable config that has no rule, and on a key that two consumers declare.
"""
from __future__ import annotations

import importlib
import math
import numbers
from typing import Any, Callable, Iterable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from seqvae_cli.errors import SeqvaeError

# A rule: (check, what is allowed, in words for the error message).
Rule = tuple[Callable[[Any], bool], str]

# ------------------------------------------------------------------------------------- the vocabulary

def one_of(*allowed: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in allowed), "one of: " + ", ".join(map(str, allowed))


BOOLEAN = (lambda v: isinstance(v, bool)), "true or false"


def precision_rule() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in ("32", "bf16-mixed") or (isinstance(v, int) and not isinstance(v, bool) and v == 32)), \
        "32 or bf16-mixed"


def is_bf16(precision: Any) -> bool:
    """A checked precision setting (trainer.precision, eval's iw_precision) -> whether it asks for bf16 autocast."""
    return str(precision) == "bf16-mixed"


def number(lo: float | None = None, hi: float | None = None, integer: bool = False,
           lo_open: bool = False, hi_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    """A finite number within the bounds. NaN and +-inf are refused everywhere: no key gives them a meaning, and
    `x > 0` is False for NaN, so a NaN clip or floor would switch its feature off without a word. An integer key
    takes an integer only: Hydra reads `2.0` as a float, which torch sizes and seeds do not accept."""
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return False
        if integer and not isinstance(v, numbers.Integral):
            return False
        if not isinstance(v, numbers.Integral) and not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)
    kind = "an integer" if integer else "a finite number"
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        bounds.append(f"{'<' if hi_open else '<='} {hi}")
    return ok, kind + (" " + " and ".join(bounds) if bounds else "")


# Seeds reach torch's generators (which take [-2**63, 2**64 - 1]) after offsets and products: seed + 1_000_003 *
# rank in the trainer, seed * 100_003 + batch in evaluate, seed * 3 + split for the sines. 32 bits, the usual range
# of a seed, leaves room for all of them.
SEED_MAX = 2**32 - 1


def seed_rule() -> tuple[Callable[[Any], bool], str]:
    return number(0, SEED_MAX, integer=True)


def optional_positive_int(none_means: str = "") -> tuple[Callable[[Any], bool], str]:
    """null or an integer >= 1 (true and 1.0 are refused)."""
    return (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)), \
        f"null{f' ({none_means})' if none_means else ''} or a positive integer"


def number_pair() -> tuple[Callable[[Any], bool], str]:
    """A [low, high] range of two finite numbers."""
    is_number = number()[0]
    return (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(i) for i in v)
            and v[0] <= v[1]), "a list [low, high] of two finite numbers with low <= high"


def positive_int_list() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, (list, ListConfig)) and len(v) > 0
            and all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v)), \
        "a non-empty list of positive integers, e.g. [512,512]"


def batch_limit_rule() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0)
            or (isinstance(v, float) and 0 < v <= 1)), "null, a positive integer (batches) or a fraction in (0, 1]"


def resume_rule() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool) or (isinstance(v, str) and v.endswith(".pt"))), \
        "false, true (with run_dir=RUN) or a path to a .pt checkpoint"



def probability() -> Rule:
    """A dropout-like rate: a finite number in [0, 1)."""
    return number(0, 1, hi_open=True)[0], "a number in [0, 1)"


# ------------------------------------------------------------------------------------ the one message

def value_error(key: str, value: Any, rule: Rule) -> SeqvaeError:
    """The one-line error for `key=value` outside `rule`. A whole number written as a float (2.0) for an integer key
    gets the override spelled as an integer."""
    ok, allowed = rule
    example = "..."
    if isinstance(value, float) and value.is_integer() and ok(int(value)):
        example = str(int(value))
    return SeqvaeError(f"config error: {key}={value!r} is not allowed; expected {allowed} "
                       f"(fix it with the override {key}={example})")


def check_value(key: str, value: Any, rule: Rule) -> None:
    """Raise value_error when `value` (of the config key `key`) breaks `rule`. Lists arrive as plain lists."""
    if isinstance(value, (ListConfig, tuple)):
        value = list(value)
    if not rule[0](value):
        raise value_error(key, value, rule)


def check_arguments(slot: str, rules: Mapping[str, Rule], **values: Any) -> None:
    """A part's constructor (or a library function): hold each argument to its rule in `rules` (the class's RULES,
    which validate() applies to the composed config), in the order given; the first one outside its rule raises
    the usual one-line error, naming the config key `slot.name` (`name` alone when slot is "")."""
    for name, value in values.items():
        check_value(f"{slot}.{name}" if slot else name, value, rules[name])


# ---------------------------------------------------------------------------------------- the driver

# Per verb, where its settings' rules live ("module:NAME": a dict of full keys -> rules; "data" and "model": the
# rules of the part the config's `_target_` names there), in checking order, then its cross-key checks
# ("module:function", run in this order once every key has passed).
CONSUMERS: dict[str, tuple[str, ...]] = {
    "train": ("seqvae_cli.config.runtime:RULES",                 # device.*
              "data",                                            # data.*: the data class's RULES
              "model",                                           # model.*: the model class's RULES
              "prior",                                           # prior.*: the prior class's RULES
              "posterior",                                       # posterior.*: the posterior head's RULES
              "seqvae_cli.objective.schedule:RULES",             # objective.beta, objective.kl_anneal.*
              "seqvae_cli.objective.elbo:RULES",                 # the rest of objective.*
              "seqvae_cli.training.settings:OPTIM_RULES",        # optim.*
              "seqvae_cli.training.settings:TRAINER_RULES",      # trainer.*
              "seqvae_cli.training.settings:check_run_flags",
              "seqvae_cli.objective.elbo:check_free_bits",
              "seqvae_cli.training.settings:check_lr_floor",
              "seqvae_cli.objective.elbo:check_pretraining",
              "seqvae_cli.training.settings:check_weight_average"),
    "eval": ("seqvae_cli.config.runtime:RULES",
             "seqvae_cli.cli.apps:RUN_RULES",                    # checkpoint, split, seed
             "seqvae_cli.cli.apps:EVAL_RULES",                   # iw_samples, batch_size, ...
             "seqvae_cli.evaluation.series:RULES"),              # score
    "sample": ("seqvae_cli.config.runtime:RULES",
               "seqvae_cli.cli.apps:RUN_RULES",
               "seqvae_cli.cli.apps:SAMPLE_RULES",               # samples_dir
               "seqvae_cli.visuals:RULES",                       # what every kind draws
               "seqvae_cli.visuals.images:RULES",
               "seqvae_cli.visuals.text:RULES",
               "seqvae_cli.models.decoding:RULES",               # temperature, top_k, top_p, beam_width, ...
               "seqvae_cli.visuals.series:RULES",
               "seqvae_cli.evaluation.series:RULES"),
}

# The config slots whose `_target_` names a part (parts.PARTS); the part's class declares the slot's keys' rules.
PART_SLOTS = ("data", "model", "prior", "posterior")


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def verb_of(cfg: DictConfig, verb: str | None = None) -> str:
    """The verb a config is for: `verb`, else its task_name (train, eval or sample)."""
    verb = verb or str(cfg.get("task_name", ""))
    if verb not in CONSUMERS:
        raise ValueError(f"validate() needs the verb ({', '.join(CONSUMERS)}); got {verb!r}")
    return verb


def part_class(cfg: DictConfig, slot: str) -> type | None:
    """The registered class `slot._target_` names (parts.PARTS), or None (no such slot, or a name the build gate
    refuses later with its own message)."""
    from seqvae_cli.parts import PARTS
    target = OmegaConf.select(cfg, f"{slot}._target_", default=None, throw_on_missing=False)
    return PARTS[slot].get(target) if isinstance(target, str) else None


def rule_sources(cfg: DictConfig, verb: str | None = None) -> list[tuple[str, dict[str, Rule]]]:
    """(where, {full key: rule}) of every rule that applies to this config, in CONSUMERS' order."""
    sources = []
    for ref in CONSUMERS[verb_of(cfg, verb)]:
        if ref in PART_SLOTS:
            cls = part_class(cfg, ref)
            if cls is not None:
                sources.append((f"{cls.__module__}.{cls.__qualname__}.RULES",
                                {f"{ref}.{key}": rule for key, rule in cls.RULES.items()}))
        elif isinstance(table := _load(ref), Mapping):
            sources.append((ref, dict(table)))
    return sources


def rules_for(cfg: DictConfig, verb: str | None = None) -> dict[str, Rule]:
    """Every key's rule for this config, in checking order."""
    return {key: rule for _, table in rule_sources(cfg, verb) for key, rule in table.items()}


def cross_checks(verb: str) -> Iterable[Callable[[DictConfig], None]]:
    return [fn for ref in CONSUMERS[verb] if ref not in PART_SLOTS and callable(fn := _load(ref))]


def validate(cfg: DictConfig, verb: str | None = None) -> None:
    """Raise SeqvaeError on a required value left unset (???), on the first value outside what its key allows, or
    on settings that contradict each other. `verb` defaults to the config's task_name."""
    verb = verb_of(cfg, verb)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SeqvaeError(f"config error: {missing[0]} is required but not set (set it with {missing[0]}=...)")
    for key, rule in rules_for(cfg, verb).items():
        if OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False) == "__absent__":
            continue   # keys of another kind of data or model (text-only keys on MNIST)
        check_value(key, OmegaConf.select(cfg, key), rule)
    for check in cross_checks(verb):
        check(cfg)
