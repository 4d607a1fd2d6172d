"""The optimiser and the learning-rate schedule (constant, cosine, step, exponential; linear warm-up)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from omegaconf import DictConfig

from seqvae_cli.models.base import LatentModel


def make_optimizer(model: LatentModel, cfg: DictConfig, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam/AdamW. capturable: for a CUDA-graph step (its state and lr live on the device, read by the kernels)."""
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    lr = torch.tensor(float(cfg.lr), device=next(model.parameters()).device) if capturable else cfg.lr
    return cls(model.parameters(), lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
               fused=bool(cfg.get("fused", False)), capturable=capturable)


def set_lr(group: dict, value: float) -> None:
    """Set a param group's lr, in place when it is a device tensor (a captured step reads that tensor)."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def lr_factor(cfg: DictConfig | SimpleNamespace, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier on optim.lr at `step`: optional linear warm-up times the schedule."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    epoch = step // max(steps_per_epoch, 1)
    if cfg.lr_schedule == "cosine":
        floor = cfg.lr_min / cfg.lr
        sched = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    elif cfg.lr_schedule == "step":
        sched = cfg.lr_gamma ** (epoch // cfg.lr_step_epochs)
    elif cfg.lr_schedule == "exponential":
        sched = cfg.lr_gamma ** epoch
    else:
        sched = 1.0
    return warm * sched
