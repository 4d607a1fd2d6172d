"""What a NaN stop says: which quantity went non-finite, the likely cause, and a cure that is a finite number.

Config values that are themselves NaN or infinite never get this far (config.validate refuses them), so a stop is
about training blowing up. The evidence is what went non-finite, and whether any update had run:
* the loss non-finite while its terms stayed finite: the sum overflowed, so the weight on the KL term (objective.beta,
  objective.kl_anneal.start/end) is too large;
* a term non-finite before the first update: the weights are the initial ones, so the learning rate is innocent:
  the likelihood's fixed std, the bag-of-words weight, or the data;
* anything after updates: the updates diverged: AdamW's decoupled weight decay when it flips and grows the weights,
  else the learning rate (and no gradient clipping, when it is off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf


# What a resumed run may change (trainer.CHANGEABLE_ON_RESUME): any other cure needs a new run.
RESUMABLE_KEYS = ("optim.lr", "optim.grad_clip")


# The largest learning rate a cure suggests: Adam's default and this project's. Dividing an absurd lr (1e30) by 10
# would take thirty stops to reach a sane one.
SAFE_LR = 1e-3
SAFE_GRAD_CLIP = 5.0


# Weights on the KL term above this are beyond the ELBO's own weight of 1; only blamed when the sum overflowed.
KL_WEIGHT_KEYS = ("objective.beta", "objective.kl_anneal.end", "objective.kl_anneal.start")


@dataclass
class Diagnosis:
    why: str             # the likely cause, one clause
    cure: list[str]      # overrides key=value, each value a finite number; empty when no setting is to blame

    @property
    def resumable(self) -> bool:
        """Every override of the cure may be given to a resumed run."""
        return all(item.split("=", 1)[0] in RESUMABLE_KEYS for item in self.cure)


def describe(values: dict[str, float]) -> str:
    """', with loss=inf while rec and kl stayed finite': the non-finite quantities, then the finite ones by name only
    (their values may be sums over several steps)."""
    bad = [f"{name}={value}" for name, value in values.items() if not math.isfinite(value)]
    good = [name for name, value in values.items() if math.isfinite(value)]
    parts = (["with " + _listing(bad)] if bad else []) + (["while " + _listing(good) + " stayed finite"] if good else [])
    return ", " + " ".join(parts) if parts else ""


def _listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _get(cfg: DictConfig, key: str, default: object = None) -> object:
    return OmegaConf.select(cfg, key, default=default)


def diagnose(cfg: DictConfig, values: dict[str, float] | None, updates_done: bool) -> Diagnosis:
    """The likely cause of a non-finite loss/metric. values: the training terms (rec, kl, aux) and the loss, or the
    validation metrics, or None (the weights themselves); updates_done: whether the optimiser had moved the weights."""
    values = values or {}
    bad = {name for name, value in values.items() if not math.isfinite(value)}
    if "loss" in bad and bad == {"loss"}:
        weights = [(float(_get(cfg, key, 0.0)), key) for key in KL_WEIGHT_KEYS]
        weight, key = max(weights)
        if weight > 1:
            return Diagnosis(f"{key}={weight:g} weights the KL term past the float range", [f"{key}=1"])
    if not updates_done:
        if "rec" in bad and _get(cfg, "model.output_std") == "fixed":
            std = _get(cfg, "model.fixed_std")
            return Diagnosis(f"no update has run yet, so not the learning rate: model.fixed_std={std:g} is too "
                             f"small a std for the normalised data", ["model.fixed_std=0.1"])
        bow = float(_get(cfg, "objective.bow_weight", 0.0) or 0.0)
        if "aux" in bad and bow > 1:
            return Diagnosis(f"no update has run yet, so not the learning rate: objective.bow_weight={bow:g} "
                             f"overflows the bag-of-words term", ["objective.bow_weight=1"])
        return Diagnosis("no update has run yet, so not the learning rate: the data or the model's initial outputs "
                         "are (look for extreme values in the data)", [])
    optim = cfg.optim
    lr, decay, clip = float(optim.lr), float(optim.get("weight_decay", 0.0)), float(optim.get("grad_clip", 0.0))
    if optim.get("name") == "adamw" and decay > 1 and lr * decay > 2 and lr <= 10 * SAFE_LR:
        # AdamW multiplies every weight by 1 - lr * weight_decay each step: below -1 they flip sign and grow. (With an
        # lr above 10 * SAFE_LR the lr is the likelier culprit, and the cure below.)
        return Diagnosis(f"optim.weight_decay={decay:g} with optim.lr={lr:g} multiplies the weights by "
                         f"{1 - lr * decay:g} at every step (AdamW's decoupled decay)", ["optim.weight_decay=0.01"])
    new_lr = min(lr / 10, SAFE_LR) if math.isfinite(lr) and lr > 0 else SAFE_LR
    cure = [f"optim.lr={new_lr:g}"] + ([] if clip > 0 else [f"optim.grad_clip={SAFE_GRAD_CLIP}"])
    return Diagnosis(f"the updates diverged with optim.lr={lr:g}" + ("" if clip > 0 else " and no gradient clipping"),
                     cure)
