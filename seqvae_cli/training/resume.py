"""Checkpoint state and resume: what a checkpoint holds of a run, how a killed run continues, and which settings
a resuming command may change."""
from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from seqvae_cli.training import distributed
from seqvae_cli.config.runtime import override_keys
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.training.optim import set_lr
from seqvae_cli.training.checkpoint import (FORMAT, check_belongs, check_finite_weights, load_checkpoint,
                                            load_model_state, record_run_id, save_atomic)

log = logging.getLogger("seqvae")


# A resumed run takes its config from the checkpoint, except: where and how this process runs, always from the
# resuming command; and, when that command overrides them explicitly, how long to train, what to report at the
# end (its defaults would silently cut mnist_nll's 400 epochs to trainer/default's 20), the learning rate and
# gradient clipping (the cure a NaN stop advises; the run then leaves its exact-replay path, by request), and the
# weight average (it never feeds back into training, so a run may take one up, or drop it, midway).
FROM_COMMAND_LINE = ("trainer.resume", "trainer.overwrite", "trainer.progress_bar", "device", "paths", "data.data_dir",
                     "trainer.devices", "trainer.cuda_graphs")


CHANGEABLE_ON_RESUME = ("trainer.max_epochs", "trainer.max_steps", "trainer.test", "trainer.test_iw_samples",
                        "trainer.log_visuals", "optim.lr", "optim.grad_clip", "trainer.weight_average")


RESUMABLE_OVERRIDES = FROM_COMMAND_LINE + CHANGEABLE_ON_RESUME + ("run_dir", "hydra")


def _is_under(key: str, prefixes: tuple[str, ...]) -> bool:
    """key is one of prefixes or inside one (optim.lr matches optim.lr, not optim.lr_schedule)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def merge_resumed_config(cfg: DictConfig, stored: DictConfig, overrides: list[str], path: Path) -> DictConfig:
    """The checkpoint's config wins; an explicit override that contradicts it is an error, not silently dropped."""
    explicit = override_keys(overrides)
    for key in explicit:
        if _is_under(key, RESUMABLE_OVERRIDES):
            continue
        now, then = OmegaConf.select(cfg, key), OmegaConf.select(stored, key)
        as_plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        if as_plain(now) != as_plain(then):
            raise SeqvaeError(f"cannot resume from {path}: it was trained with {key}={as_plain(then)!r} but this "
                              f"command asks for {key}={as_plain(now)!r}; drop that override to continue the run, "
                              f"or start a new run without trainer.resume")
    merged = stored.copy()
    changed = tuple(k for k in CHANGEABLE_ON_RESUME if any(_is_under(e, (k,)) for e in explicit))
    for key in FROM_COMMAND_LINE + changed:
        if OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    then_lr, now_lr = OmegaConf.select(stored, "optim.lr"), OmegaConf.select(merged, "optim.lr")
    if then_lr != now_lr and OmegaConf.select(merged, "optim.lr_min") is not None:
        # A lower lr is the NaN cure: the whole schedule scales with it, floor included (an unscaled lr_min above the
        # new lr would make the cosine rise).
        OmegaConf.update(merged, "optim.lr_min", merged.optim.lr_min * now_lr / then_lr)
    for key in ("trainer.max_epochs", "trainer.max_steps", "optim.lr"):
        then, now = OmegaConf.select(stored, key), OmegaConf.select(merged, key)
        if key in explicit and then != now:
            log.warning("resuming with %s=%s (was %s): the schedules are recomputed for it, so this run no "
                        "longer replays the uninterrupted one exactly", key, now, then)
    return merged


def find_resume_state(cfg: DictConfig, run_dir: Path) -> tuple[dict | None, Path | None]:
    resume = cfg.trainer.resume
    last = run_dir / "checkpoints" / "last.pt"
    if resume is False:
        if last.exists() and not cfg.trainer.get("overwrite", False):
            raise SeqvaeError(f"{run_dir} already holds a run ({last}); add trainer.resume=true to continue it, "
                              f"or leave run_dir unset for a fresh run directory")
        return None, None
    path = last if resume is True else Path(resume)
    if resume is True and not path.exists():
        if cfg.get("run_dir") is None:
            raise SeqvaeError("trainer.resume=true needs the run to continue: pass run_dir=<the run's folder> "
                              "(it holds checkpoints/last.pt) or trainer.resume=<path/to/checkpoint.pt>")
        # The folder exists (e.g. the run was killed in its first epoch) or is mistyped: either way nothing to load.
        raise SeqvaeError(f"trainer.resume=true but {path} does not exist: {run_dir} has no checkpoint yet "
                          f"(last.pt is written at the end of each epoch). Start it afresh with "
                          f"trainer.overwrite=true instead of trainer.resume=true (run_dir={run_dir} may stay), or "
                          f"check the run_dir")
    state = load_checkpoint(path)
    check_belongs(state, path, run_dir, f"continue that run in a new folder (seqvae train trainer.resume={path} "
                                        f"run_dir=<a new folder>), or resume {run_dir}'s own last.pt")
    # Weights only: Adam's second moment can legitimately hold inf after a huge gradient (the step it scales stays
    # finite), and damage to the optimiser state is the checksum's to find.
    check_finite_weights(state, path, ("model", "training_model"))
    return state, path


class CheckpointState:
    """The Trainer's checkpoint side: save and restore everything a run needs to continue exactly."""

    # ---------------------------------------------------------------------------- checkpoint state
    def state(self) -> dict:
        # "model" is always what eval/sample should score (the average, with averaging on); the training weights
        # and the average's step count ride beside it for resuming.
        extra = {}
        if self.average is not None:
            extra = {"training_model": self.model.state_dict(), "weight_average": {"count": self.average.count}}
        if self.aggressive is not None:
            extra["aggressive"] = self.aggressive.state_dict()
        return {
            "format": FORMAT,
            "run_id": self.run_id,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "model": self.eval_model().state_dict(),
            **extra,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch,
            "best": {"value": self.best_value, "epoch": self.best_epoch, "val": self.best_val},
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle_gen.get_state(),
                    "data": self.data_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    **self.rank_rng_states()},
            "data_state": self.dm.state_dict(),
        }

    def rank_rng_states(self) -> dict:
        """Under DDP, every rank's own noise stream (the shuffle and binarisation streams are shared). Every rank
        must call this: it gathers."""
        if self.world == 1:
            return {}
        mine = {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        return {"ranks": distributed.all_gather(mine)}

    def save(self, name: str) -> None:
        """Write checkpoints/NAME.pt; every rank calls this (the state gathers RNG states), rank 0 writes."""
        state = self.state()
        if self.rank == 0:
            record_run_id(self.run_dir, self.run_id)
            save_atomic(state, self.run_dir / "checkpoints" / name)
            if name == "last.pt":
                self.saved_epoch = self.epoch

    def restore(self, state: dict, path: Path) -> None:
        if "training_model" in state:
            load_model_state(self.model, {"model": state["training_model"]}, path)
            if self.average is not None and state["weight_average"]["count"] > 0:
                load_model_state(self.average.model, state, path)
                self.average.count = state["weight_average"]["count"]
        else:
            load_model_state(self.model, state, path)
        if self.aggressive is not None:
            self.aggressive.load_state_dict(state["aggressive"])
        optimizer_state = state["optimizer"]
        for group in optimizer_state["param_groups"]:
            # How this process runs the optimiser (a CUDA-graph step or not) wins over how the checkpoint's did:
            # load_state_dict places Adam's step counters by these flags.
            group["capturable"] = self.capture
            group["lr"] = float(group["lr"])
        self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        # The loaded states carry the old lr and the lr of the old schedule length; resumed with a new optim.lr or
        # max_epochs/max_steps, the schedule continues from the new ones (unchanged, this recomputes the same value).
        self.scheduler.base_lrs = [self.cfg.optim.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.cfg.optim.lr
            if self.capture:
                group["lr"] = torch.tensor(0.0, device=self.device)
            set_lr(group, self.cfg.optim.lr * self.lr_factor(state["step"]))
        self.step, self.epoch = state["step"], state["epoch"]
        best = state["best"]
        self.best_value, self.best_epoch, self.best_val = best["value"], best["epoch"], best["val"]
        self.restore_noise_streams(state)
        self.shuffle_gen.set_state(state["rng"]["shuffle"])
        try:  # generator states are CPU byte tensors whatever the generator's device
            self.data_gen.set_state(state["rng"]["data"].cpu())
        except RuntimeError:  # written on another device type (CPU vs CUDA states differ in size)
            log.warning("the checkpoint's data RNG state belongs to another device type than %s; it is re-seeded, "
                        "so this resumed run does not replay the original one exactly", self.device.type)
        self.carry_best_checkpoint(path)

    def restore_noise_streams(self, state: dict) -> None:
        """The global CPU and CUDA RNG streams (dropout, z samples). One process, or as many ranks as the run was
        saved with: each rank continues its own. Another number of ranks: rank 0 continues the saved rank 0's
        stream and the other ranks are re-seeded from (seed, rank, step); the shuffle and binarisation streams,
        shared by all ranks, continue exactly whatever the number."""
        rng, ranks = state["rng"], state["rng"].get("ranks")
        if ranks and len(ranks) == self.world:
            torch.set_rng_state(ranks[self.rank]["torch"])
            if ranks[self.rank]["cuda"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(ranks[self.rank]["cuda"], self.device)
            return
        if self.rank > 0:
            torch.manual_seed(self.cfg.trainer.seed + 1_000_003 * self.rank + state["step"])
        else:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                try:
                    torch.cuda.set_rng_state_all(rng["cuda"])
                except RuntimeError:  # another number of GPUs
                    log.warning("the checkpoint's CUDA RNG states do not fit this machine's GPUs; not restored")
        if (ranks and len(ranks) != self.world) or (not ranks and self.world > 1):
            if self.rank == 0:
                log.warning("resuming a run saved by %d process(es) with %d: the noise streams of ranks other than 0 "
                            "are re-seeded (the shuffle and binarisation streams continue exactly), so this run does "
                            "not replay the original one exactly", len(ranks) if ranks else 1, self.world)

    def carry_best_checkpoint(self, path: Path) -> None:
        """Resuming from a checkpoint file into another run directory: bring its best.pt along, so the test pass
        and later comparisons use the best weights seen, not just those after resuming."""
        target, source = self.run_dir / "checkpoints" / "best.pt", path.parent / "best.pt"
        if self.best_epoch < 0 or (target.exists() and source.exists() and target.samefile(source)):
            return
        best = load_checkpoint(source) if source.is_file() else None
        if best is not None and best["epoch"] == self.best_epoch and best.get("run_id", self.run_id) == self.run_id:
            if self.rank > 0:
                return
            tmp = target.with_name("best.pt.tmp")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
            log.info("copied %s to %s (best epoch %d)", source, target, self.best_epoch)
            return
        log.warning("%s has no best.pt of its best epoch %d beside it: that best (%s=%.4f) is forgotten and best.pt "
                    "is chosen among the epochs trained from here", path, self.best_epoch, self.optimized_metric,
                    self.best_value)
        self.best_value = math.inf if self.optimized_mode == "min" else -math.inf
        self.best_val, self.best_epoch = {}, -1

    def load_best(self) -> None:
        """Put best.pt's weights (the average's, with weight averaging) into the model; training is over."""
        path = self.run_dir / "checkpoints" / "best.pt"
        state = load_checkpoint(path, map_location=self.device)
        check_belongs(state, path, self.run_dir, "it replaced the run's own best.pt while the run trained; retrain")
        load_model_state(self.model, state, path)
