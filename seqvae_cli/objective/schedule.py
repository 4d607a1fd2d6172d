"""The weight on the KL term over training: constant, linear, sigmoid (Bowman 2016), cyclical (Fu 2019)."""
from __future__ import annotations

import math

from omegaconf import DictConfig

from seqvae_cli.config.rules import number, one_of

# The keys KLSchedule.from_config reads.
RULES = {
    "objective.beta": number(0),
    "objective.kl_anneal.schedule": one_of("constant", "linear", "sigmoid", "cyclical"),
    "objective.kl_anneal.unit": one_of("steps", "epochs"),
    "objective.kl_anneal.start": number(0),
    "objective.kl_anneal.end": number(0),
    "objective.kl_anneal.warmup": number(0),
    "objective.kl_anneal.n_cycles": number(1, integer=True),
    "objective.kl_anneal.ratio": number(0, 1, lo_open=True),
}

class KLSchedule:
    """The weight on the KL term: beta * anneal(t), t counted in steps or epochs (fractional)."""

    def __init__(self, beta: float, schedule: str, unit: str, start: float, end: float, warmup: float,
                 n_cycles: int, ratio: float, total: float) -> None:
        self.beta, self.schedule, self.unit = beta, schedule, unit
        self.start, self.end, self.warmup = start, end, warmup
        self.n_cycles, self.ratio, self.total = n_cycles, ratio, total

    @classmethod
    def from_config(cls, cfg: DictConfig, total_steps: int, steps_per_epoch: int) -> "KLSchedule":
        a = cfg.kl_anneal
        total = total_steps if a.unit == "steps" else total_steps / max(steps_per_epoch, 1)
        return cls(cfg.beta, a.schedule, a.unit, a.start, a.end, a.warmup, a.n_cycles, a.ratio, total)

    def anneal(self, t: float) -> float:
        if self.schedule == "constant":
            return self.end
        if self.schedule == "linear":
            frac = min(1.0, t / self.warmup) if self.warmup > 0 else 1.0
            return self.start + (self.end - self.start) * frac
        if self.schedule == "sigmoid":
            # Bowman et al. 2016: a logistic ramp centred at warmup/2, within 0.7% of start/end at 0 and warmup.
            frac = 1.0 / (1.0 + math.exp(-10.0 * (t / max(self.warmup, 1e-12) - 0.5)))
            return self.start + (self.end - self.start) * frac
        if self.schedule == "cyclical":
            # Fu et al. 2019: n_cycles equal periods; rise linearly over the first `ratio` of each, then hold.
            period = self.total / self.n_cycles
            tau = (t % period) / period
            return self.start + (self.end - self.start) * min(1.0, tau / self.ratio)
        raise ValueError(f"unknown KL schedule {self.schedule!r}")

    def __call__(self, step: int, steps_per_epoch: int) -> float:
        t = step if self.unit == "steps" else step / max(steps_per_epoch, 1)
        return self.beta * self.anneal(t)
