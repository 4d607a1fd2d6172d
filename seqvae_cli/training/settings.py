"""The rules of the settings the training loop reads (trainer.*, optim.*) and the checks between them.

training/loop.py consumes these keys (make_optimizer and lr_factor the optim.* ones; Trainer the trainer.* ones,
with training/extras.py for weight_average.*, training/runfolder.py for resume/overwrite, cli/launch.py for
devices); their rules live here, beside it, so validate() finds them without the loop. See config/rules.py."""
from __future__ import annotations

import numbers

from omegaconf import DictConfig, OmegaConf

from seqvae_cli.config.rules import (BOOLEAN, batch_limit_rule, number, one_of, precision_rule, resume_rule,
                                     seed_rule)
from seqvae_cli.errors import SeqvaeError

OPTIM_RULES = {
    "optim.name": one_of("adam", "adamw"),
    "optim.lr": number(0, lo_open=True),
    "optim.weight_decay": number(0),
    "optim.grad_clip": number(0),
    "optim.fused": BOOLEAN,
    "optim.betas": (lambda v: isinstance(v, list) and len(v) == 2
                    and all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1 for b in v),
                    "two numbers in [0, 1), e.g. [0.9,0.999]"),
    "optim.eps": number(0, lo_open=True),
    "optim.lr_schedule": one_of("constant", "cosine", "step", "exponential"),
    "optim.lr_min": number(0),
    "optim.lr_gamma": number(0, 1, lo_open=True),
    "optim.lr_step_epochs": number(1, integer=True),
    "optim.warmup_steps": number(0, integer=True),
}


TRAINER_RULES = {
    "trainer.max_epochs": number(1, integer=True),
    "trainer.max_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v > 0),
                          "-1 (no limit) or a positive integer"),
    "trainer.limit_train_batches": batch_limit_rule(),
    "trainer.limit_val_batches": batch_limit_rule(),
    "trainer.limit_test_batches": batch_limit_rule(),
    "trainer.val_every": number(1, integer=True),
    "trainer.log_every": number(1, integer=True),
    "trainer.seed": seed_rule(),
    "trainer.precision": precision_rule(),
    "trainer.resume": resume_rule(),
    "trainer.overwrite": BOOLEAN,
    "trainer.test": BOOLEAN,
    "trainer.test_iw_samples": number(0, integer=True),
    "trainer.val_iw_samples": number(0, integer=True),
    "trainer.weight_average.kind": one_of("none", "ema", "uniform"),
    "trainer.weight_average.ema_decay": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
                                         and 0 <= v < 1, "a number >= 0 and < 1, e.g. 0.999"),
    "trainer.weight_average.start_epoch": number(0, integer=True),
    "trainer.log_visuals": BOOLEAN,
    "trainer.devices": number(1, integer=True),
    "trainer.cuda_graphs": (lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    "trainer.progress_bar": BOOLEAN,
}


# ------------------------------------------------------------------------------------ cross-key checks

def check_run_flags(cfg: DictConfig) -> None:
    """resume vs overwrite; the optimised metric val/iw_nll needs the validation IW pass."""
    if OmegaConf.select(cfg, "trainer.overwrite", default=False) and \
            OmegaConf.select(cfg, "trainer.resume", default=False) is not False:
        raise SeqvaeError("config error: trainer.overwrite=true starts a new run over the old one, and trainer.resume "
                          "continues the old one; set only one of them")
    if OmegaConf.select(cfg, "optimized_metric", default=None) == "val/iw_nll" and \
            not OmegaConf.select(cfg, "trainer.val_iw_samples", default=0):
        raise SeqvaeError("config error: optimized_metric=val/iw_nll needs the validation IW-NLL, but "
                          "trainer.val_iw_samples is 0; set trainer.val_iw_samples=K (e.g. 50)")


def check_lr_floor(cfg: DictConfig) -> None:
    """The cosine schedule's floor must not lie above the learning rate it decays from."""
    lr, lr_min = OmegaConf.select(cfg, "optim.lr", default=None), OmegaConf.select(cfg, "optim.lr_min", default=None)
    cosine = OmegaConf.select(cfg, "optim.lr_schedule", default=None) == "cosine"
    if cosine and lr is not None and lr_min is not None and lr_min > lr:
        raise SeqvaeError(f"config error: optim.lr_min={lr_min} is above optim.lr={lr}: the cosine schedule would "
                          f"raise the learning rate; set optim.lr_min below optim.lr (e.g. optim.lr_min={lr / 100:g})")


def check_weight_average(cfg: DictConfig) -> None:
    """An average that would start after the last epoch averages nothing."""
    average = OmegaConf.select(cfg, "trainer.weight_average", default=None)
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if average is not None and average.kind != "none" and epochs is not None and \
            average.start_epoch >= epochs:
        raise SeqvaeError(f"config error: trainer.weight_average.start_epoch={average.start_epoch} is not below "
                          f"trainer.max_epochs={epochs}, so no weights would ever be averaged; lower "
                          f"start_epoch or set trainer.weight_average.kind=none")
