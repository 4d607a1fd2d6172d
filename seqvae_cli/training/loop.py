"""The one trainer, used by every model and data type.

Per epoch: shuffle, step through batches, log to TensorBoard, validate, checkpoint. Checkpoints hold
every RNG state, so a killed run continued with trainer.resume=true reproduces the uninterrupted
run exactly on CPU.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from tqdm import tqdm

from seqvae_cli import visuals
from seqvae_cli.training import distributed, non_finite
from seqvae_cli.config.rules import is_bf16
from seqvae_cli.config.runtime import metric_mode, override_keys, setup_device
from seqvae_cli.data.base import Batch
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.evaluation.evaluate import evaluate, public, split_mutual_information
from seqvae_cli.evaluation.table import markdown_table, metrics_table
from seqvae_cli.files import DISK_ERRORS, WriteFailed, as_write_failure, write_json_atomic
from seqvae_cli.models.base import LatentModel
from seqvae_cli.objective.elbo import Objective, Terms, TrainingLoss
from seqvae_cli.training.captured_step import CapturedStep, WARMUP_STEPS
from seqvae_cli.training.checkpoint import FORMAT, build, check_belongs, check_finite_weights, load_checkpoint, load_model_state, record_run_id, recorded_run_id, save_atomic
from seqvae_cli.training.collapse import collapse_warning
from seqvae_cli.training.extras import AggressiveEncoder, WeightAverage, frozen
from seqvae_cli.training.interrupt import StopRequests, Stopped, stop_message

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


# The tag prefix of the HParams metrics. TensorBoard's Time Series tab sorts cards by tag prefix and opens the first two
# groups only: this name sorts after train/, val/ and visuals/, so a run opens on its curves.
HPARAM_TAG = "z_hparams"


# The training sums kept on the device per epoch (Terms: loss, neg_elbo, rec = the log-likelihood, kl, aux).
SUMMED_TERMS = ("loss", "neg_elbo", "log_likelihood", "kl", "aux")


def _is_under(key: str, prefixes: tuple[str, ...]) -> bool:
    """key is one of prefixes or inside one (optim.lr matches optim.lr, not optim.lr_schedule)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


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


class NullWriter:
    """The TensorBoard writer of ranks other than 0: rank 0 alone writes the run directory."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def cuda_graph_choice(setting: object, device: torch.device, kind: str, why_not_eager: list[str]) -> bool:
    """Whether the training step is captured as a CUDA graph (trainer.cuda_graphs: auto | true | false).
    auto: on CUDA, for image data (fixed-shape batches), when nothing in why_not_eager rules it out;
    true: wherever it can run, else a config error naming why."""
    if setting is False or (setting == "auto" and (device.type != "cuda" or kind != "image")):
        return False
    reasons = ([] if device.type == "cuda" else [f"it needs a CUDA device (this run is on {device.type})"]) + \
        why_not_eager
    if reasons and setting is True:
        raise SeqvaeError(f"config error: trainer.cuda_graphs=true but {reasons[0]}; use trainer.cuda_graphs=auto")
    return not reasons


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


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> None:
        self.run_dir = run_dir
        state, path = find_resume_state(cfg, run_dir)
        if state is not None:
            cfg = merge_resumed_config(cfg, OmegaConf.create(state["config"]), overrides or [], path)
            log.info("resuming from %s (epoch %d, step %d)", path, state["epoch"], state["step"])
        self.cfg = cfg
        # The run's identity, in every checkpoint and in RUN/run_id, so that a checkpoint of another run found in a
        # run folder is told apart from the run's own. A resumed run keeps it, in place or in a new folder (a file
        # from before run ids continues under the folder's, else a new one).
        resumed_id = (state.get("run_id") or recorded_run_id(run_dir)) if state is not None else None
        self.run_id = resumed_id or uuid.uuid4().hex
        tc = cfg.trainer
        self.bf16 = is_bf16(tc.get("precision", 32))   # runs from before the setting trained in 32
        self.device = distributed.rank_device(setup_device(cfg.device, self.bf16))
        self.world, self.rank = distributed.world_size(), distributed.rank()
        torch.manual_seed(tc.seed)   # the same on every rank: every rank builds the same initial weights
        self.dm, self.model = build(cfg, self.device, state.get("data_state") if state else None,
                                    source=f"checkpoint {path}" if state is not None else "the config")
        self.steps_per_epoch = self.dm.num_train_batches(tc.limit_train_batches)
        by_epochs = tc.max_epochs * self.steps_per_epoch
        self.total_steps = min(by_epochs, tc.max_steps) if tc.max_steps > 0 else by_epochs
        self.objective = Objective(cfg.objective, self.total_steps, self.steps_per_epoch)
        # Runs from before the settings have no objective.aggressive or trainer.cuda_graphs.
        aggressive = OmegaConf.select(cfg, "objective.aggressive", default=None)
        aggressive_on = aggressive is not None and aggressive.enabled
        self.capture = cuda_graph_choice(
            OmegaConf.select(cfg, "trainer.cuda_graphs", default=False), self.device, self.dm.kind,
            [why for why, rules_out in (
                ("it does not run under DDP (trainer.devices > 1 or torchrun)", self.world > 1),
                ("objective.aggressive switches parameters on and off between steps", aggressive_on),
                ("objective.ae_pretrain_epochs re-initialises the decoder and Adam's state midway",
                 self.objective.pretrain_steps > 0)) if rules_out])
        self.optimizer = make_optimizer(self.model, cfg.optim, capturable=self.capture)
        # The schedule is called every step: read its settings from plain Python values, as each DictConfig
        # lookup costs ~10 us (50 us a step, ~1% of an MNIST step) and the config does not change during a run.
        lr_settings = SimpleNamespace(**OmegaConf.to_container(cfg.optim, resolve=True))
        self.lr_factor = lambda s: lr_factor(lr_settings, s, self.total_steps, self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        if self.capture and not isinstance(self.optimizer.param_groups[0]["lr"], torch.Tensor):
            # A graph reads the lr tensor it was captured with; a scheduler that swaps in a float would freeze it.
            raise SeqvaeError(f"config error: trainer.cuda_graphs needs an lr scheduler that updates a tensor lr in "
                              f"place, which torch {torch.__version__} lacks; set trainer.cuda_graphs=false or "
                              f"upgrade torch")
        if self.objective.pretrain_steps >= self.total_steps:
            raise SeqvaeError(f"config error: objective.ae_pretrain_epochs={cfg.objective.ae_pretrain_epochs} "
                              f"({self.objective.pretrain_steps} steps) leaves no VAE step within the "
                              f"{self.total_steps} steps trainer.max_epochs/max_steps allow; lower the first or "
                              f"raise the others")
        # Runs from before the setting have no trainer.weight_average: they trained without one.
        averaging = OmegaConf.select(cfg, "trainer.weight_average", default=None)
        self.average = None
        if averaging is not None and averaging.kind != "none":
            self.average = WeightAverage(self.model, averaging.kind, averaging.ema_decay,
                                         averaging.start_epoch * self.steps_per_epoch)
        self.aggressive = None
        if aggressive_on:
            if self.world > 1:
                raise SeqvaeError("config error: objective.aggressive.enabled=true does not run under DDP (it "
                                  "freezes parameters between steps, which DistributedDataParallel cannot follow); "
                                  "train it in one process (trainer.devices=1)")
            if not self.model.variational or self.model.latent_dim == 0:
                raise SeqvaeError(f"config error: objective.aggressive.enabled=true trains a VAE's encoder on its "
                                  f"own, but {cfg.model.name} has no posterior q(z|x); use model=mlp_vae or "
                                  f"model=lstm_vae, or set objective.aggressive.enabled=false")
            probe = next(iter(self.dm.eval_batches("val", None, 1)))
            self.aggressive = AggressiveEncoder(self.model, self.objective, probe, aggressive.max_inner_steps,
                                                aggressive.check_every, tc.seed + 3)
        self.grad_clip = float(cfg.optim.grad_clip)
        # CPU: reading the loss costs nothing, so a non-finite loss stops at its very step. CUDA: a read waits for
        # the GPU, so the step runs without one and the sums are checked every trainer.log_every steps.
        self.check_each_step = self.device.type != "cuda"
        # loss, -ELBO, log-likelihood, KL, aux; each x batch size. The last three name what went non-finite on CUDA.
        self.train_sums = torch.zeros(len(SUMMED_TERMS), dtype=torch.float64, device=self.device)
        self.ddp = self.wrap_ddp() if self.world > 1 else None
        self.captured = CapturedStep(self.optimizer_update, self.device) if self.capture else None
        self.shuffle_gen = torch.Generator().manual_seed(tc.seed + 1)
        self.data_gen = torch.Generator(device=self.device).manual_seed(tc.seed + 2)
        self.step, self.epoch = 0, 0
        self.optimized_metric = str(cfg.optimized_metric)
        self.optimized_mode = metric_mode(self.optimized_metric)
        self.best_value = math.inf if self.optimized_mode == "min" else -math.inf
        self.best_val, self.best_epoch = {}, -1
        if self.rank > 0:  # each rank its own noise (dropout, z samples); rank 0 continues one process's stream
            torch.manual_seed(tc.seed + 1_000_003 * self.rank)
        # The epoch checkpoints/last.pt of this run folder holds (None: none yet), for the line a stop ends with.
        last = run_dir / "checkpoints" / "last.pt"
        self.saved_epoch = state["epoch"] if state is not None and last.exists() and path.samefile(last) else None
        self.stop_requests = StopRequests()
        if state is not None:
            self.restore(state, path)
        self.writer = (SummaryWriter(str(run_dir / "tb"), purge_step=self.step if state is not None else None)
                       if self.rank == 0 else NullWriter())
        if self.capture:
            log.info("trainer.cuda_graphs: the training step is captured as a CUDA graph after %d eager steps",
                     WARMUP_STEPS)

    def wrap_ddp(self) -> torch.nn.Module:
        """The training loss as a DistributedDataParallel module: its forward runs the objective, so DDP
        all-reduces (averages) the gradients of every parameter it reached during backward."""
        from torch.nn.parallel import DistributedDataParallel
        loss_module = TrainingLoss(self.model, self.objective)
        # DDP must be told when a step leaves parameters without a gradient (the log-variance head during
        # autoencoder pre-training, a head the objective does not use): probe one batch to find out.
        unused = self.objective.pretrain_steps > 0
        if not unused:
            params = [p for p in self.model.parameters() if p.requires_grad]
            probe = next(iter(self.dm.eval_batches("val", None, 1)))
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                grads = torch.autograd.grad(loss_module(probe, 0)[0], params, allow_unused=True)
            unused = any(g is None for g in grads)
        log.info("DDP over %d processes (%s), %s", self.world, "NCCL" if self.device.type == "cuda" else "gloo",
                 "finding unused parameters each step" if unused else "every parameter used each step")
        return DistributedDataParallel(loss_module, device_ids=[self.device.index] if self.device.type == "cuda"
                                       else None, find_unused_parameters=unused)

    def eval_model(self) -> LatentModel:
        """The weights validation, best.pt, the test pass and the samples use: the average when there is one."""
        return self.average.eval_model(self.model) if self.average else self.model

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

    # ---------------------------------------------------------------------------------- training
    def fit(self) -> dict:
        """Train, validate and checkpoint until the last epoch, then test best.pt; returns metrics.json's content.
        One process: SIGINT/SIGTERM stop it at the next step boundary with a Stopped line (under DDP the launcher
        owns the signals). A disk that fills up or turns read-only stops it with one line too."""
        requests = self.stop_requests if self.world == 1 else contextlib.nullcontext()
        try:
            with requests:
                return self._fit()
        except KeyboardInterrupt:   # a second signal (or a Ctrl-C the handlers did not see)
            raise self.stopped(now=True) from None
        except WriteFailed as exc:
            raise self.write_failed(exc) from None
        except OSError as exc:      # a PNG or folder the trainer writes directly
            if exc.errno not in DISK_ERRORS:
                raise
            raise self.write_failed(as_write_failure(exc, Path(exc.filename or self.run_dir))) from None
        finally:
            self.writer.close()

    def stopped(self, now: bool = False, mid_epoch: bool = False) -> Stopped:
        """The Stopped error for a signal (now: a second one, or a KeyboardInterrupt, that cut short what ran)."""
        how = ("a second " if now and self.stop_requests.requested else "") + self.stop_requests.name()
        saved = self.saved_epoch
        finished = saved is not None and (saved >= self.cfg.trainer.max_epochs or
                                          (saved == self.epoch and self.step >= self.total_steps))
        return Stopped(stop_message(how, self.run_dir, self.step, saved, finished, mid_epoch),
                       self.stop_requests.signum or signal.SIGINT)

    def write_failed(self, exc: WriteFailed) -> SeqvaeError:
        last = self.run_dir / "checkpoints" / "last.pt"
        kept = f"; {last} still holds epoch {self.saved_epoch}" if self.saved_epoch is not None else ""
        carry_on = (f"then continue with seqvae train run_dir={self.run_dir} trainer.resume=true"
                    if self.saved_epoch is not None else "then start it again with trainer.overwrite=true")
        return SeqvaeError(f"{exc}, {carry_on} (nothing was left half-written{kept})")

    def _fit(self) -> dict:
        tc = self.cfg.trainer
        started = time.time()
        self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(self.cfg) + "\n```", 0)
        if self.epoch == 0 and self.step == 0:
            self.check_optimized_metric()
        while self.epoch < tc.max_epochs and self.step < self.total_steps:
            self.train_epoch()
            if self.stop_requests.requested:   # mid-epoch: last.pt keeps the end of the epoch before
                raise self.stopped(mid_epoch=True)
            self.epoch += 1
            if self.aggressive is not None and self.aggressive.on:
                self.end_aggressive_epoch()
            if self.step == self.objective.pretrain_steps and self.step > 0:
                self.model.reset_decoder()
                distributed.broadcast_module(self.model)  # each rank drew its own re-initialisation: take rank 0's
                self.optimizer.state.clear()  # Adam's moments belonged to the old decoder
                if self.average is not None:
                    self.average.restart()
                log.info("autoencoder pre-training done after epoch %d: decoder re-initialised", self.epoch)
            if self.epoch % tc.val_every == 0 or self.epoch >= tc.max_epochs or self.step >= self.total_steps:
                self.validate()
            else:   # no validation looked at the weights: never overwrite a good last.pt with non-finite ones
                bad = next(((name, p) for name, p in self.model.named_parameters()
                            if not bool(torch.isfinite(p).all())), None)
                if bad is not None:
                    value = float(bad[1].detach()[~torch.isfinite(bad[1].detach())].flatten()[0])
                    self.stop_non_finite(f"the weights became non-finite ({value} in {bad[0]})", self.epoch)
            self.save("last.pt")
            if self.stop_requests.requested:   # it came during validation or the checkpoint writes, which finished
                raise self.stopped()
        if self.best_epoch < 0:  # resumed a finished run, or no validation happened
            self.validate()
        result = {"optimized_metric": self.optimized_metric, "optimized_mode": self.optimized_mode,
                  "optimized_value": self.best_value,
                  "best_epoch": self.best_epoch, "epochs": self.epoch, "steps": self.step,
                  "train_seconds_this_session": round(time.time() - started, 1), "val": self.best_val}
        if tc.test or tc.log_visuals:  # both show what eval/sample would score: best.pt, not the last epoch
            self.load_best()
        if tc.test:
            result["test"] = self.test()
        if self.rank == 0:
            write_json_atomic(self.run_dir / "metrics.json", result)
            self.log_hparams(result)
            if tc.log_visuals:
                visuals.end_of_training(self.model, self.dm, self.run_dir / "samples", self.writer, self.step)
            # Last, where it is seen: a collapsed latent trains without any error.
            said = collapse_warning(result.get("test") or self.best_val, self.cfg, self.model.latent_dim,
                                    "test" if result.get("test") else "validation")
            if said and self.model.variational:
                log.warning(said)
        self.writer.close()
        distributed.barrier()  # no rank leaves (and tears the group down) while rank 0 still writes
        return result

    def train_epoch(self) -> dict:
        """One pass over the training batches; returns the epoch's mean loss and -ELBO per example (over every
        rank's examples under DDP)."""
        tc = self.cfg.trainer
        self.model.train()
        self.train_sums.zero_()
        n, encoder_updates, first_step, checked_step = 0, 0, self.step, self.step
        started = time.perf_counter()
        # Read once: config lookups cost ~10 us each, and the loop runs ~400 steps a second on MNIST.
        log_every, show_bar = tc.log_every, bool(tc.progress_bar) and self.rank == 0
        aggressive = self.aggressive if self.aggressive is not None and self.aggressive.on else None
        fresh = self.fresh_batches() if aggressive is not None else None
        bar = tqdm(self.dm.train_batches(self.shuffle_gen, self.data_gen, tc.limit_train_batches),
                   total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{tc.max_epochs}",
                   disable=not show_bar, leave=False, mininterval=0.5)
        for batch in bar:
            if self.step >= self.total_steps:
                break
            global_size = batch["x"].shape[0]
            if global_size < self.world:  # a last global batch too small to give every rank a row
                continue
            batch = distributed.shard(batch, global_size)
            weight = self.objective.kl_weight(self.step)
            if self.captured is not None:
                terms = self.captured(batch, weight)
            elif aggressive is None:
                terms = self.optimizer_update(batch, weight, global_size)
            else:  # He et al. 2019: the encoder catches up first, then this step moves only the decoder
                encoder_updates += self.catch_up_encoder(batch, fresh)
                with frozen(aggressive.encoder_params):
                    terms = self.optimizer_update(batch, weight, global_size)
            self.scheduler.step()
            if self.average is not None:
                self.average.update(self.step)
            n += batch["x"].shape[0]
            if self.step % log_every == 0:
                if not self.check_each_step:
                    self.check_finite_sums(checked_step)
                    checked_step = self.step
                if self.rank == 0:
                    self.log_train(terms)
            self.step += 1
            if show_bar and (self.check_each_step or self.step % log_every == 0):
                bar.set_postfix(loss=f"{float(self.train_sums[0]) / n:.3f}", refresh=False)
            if self.stop_requests.requested:   # SIGINT/SIGTERM: stop at this step boundary (fit says how to resume)
                break
        bar.close()
        if self.stop_requests.requested:
            return {}
        self.check_finite_sums(checked_step)
        totals = distributed.all_reduce_sum(torch.cat([self.train_sums[:2], self.train_sums.new_tensor([n])]))
        total = max(float(totals[2]), 1.0)
        means = {"loss": float(totals[0]) / total, "neg_elbo": float(totals[1]) / total}
        if n:   # the sums above were read from the device: the time includes all of the epoch's GPU work
            log.info("epoch %d: train loss %.4f, -elbo %.4f (%d steps, %.2f s)", self.epoch + 1, means["loss"],
                     means["neg_elbo"], self.step, time.perf_counter() - started)
        if aggressive is not None:
            means["encoder_updates_per_step"] = encoder_updates / max(self.step - first_step, 1)
            self.writer.add_scalar("train/encoder_updates_per_step", means["encoder_updates_per_step"], self.step)
            log.info("epoch %d: %.1f aggressive encoder updates per step", self.epoch + 1,
                     means["encoder_updates_per_step"])
        return means

    def check_finite_sums(self, since_step: int) -> None:
        """Without a per-step read (CUDA), the epoch's sums tell whether, and in which term, some step since the last
        check went non-finite."""
        if not self.check_each_step and not bool(torch.isfinite(self.train_sums).all()):
            sums = dict(zip(SUMMED_TERMS, self.train_sums.tolist()))
            self.stop_non_finite("the loss became non-finite", values=self.reported_terms(sums),
                                 at=f"between step {since_step} and step {self.step}")

    def optimizer_update(self, batch: Batch, kl_weight: float | torch.Tensor,
                         global_size: int | None = None) -> Terms:
        """One optimiser update on `batch` (of the parameters that require a gradient); returns the objective's
        terms and adds them (SUMMED_TERMS), times the batch size, to self.train_sums. No host read on CUDA, so that
        the step can be captured as a CUDA graph (captured_step.py). Under DDP, `batch` is this rank's shard of a
        global batch of `global_size` rows: the loss is scaled so that DDP's gradient average over ranks is the
        gradient of the global batch's mean loss."""
        b = batch["x"].shape[0]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16,
                            cache_enabled=not self.capture):   # the autocast cache does not survive a replay
            if self.ddp is not None:
                loss, terms = self.ddp(batch, self.step, kl_weight)
                loss = loss * (b * self.world / (global_size or b))
            else:
                terms = self.objective(self.model, batch, self.step, kl_weight)
                loss = terms.loss
        if self.check_each_step:
            value = float(terms.loss.detach())
            if not math.isfinite(value):
                self.stop_non_finite(f"the loss became {value}", values=self.reported_terms(
                    {"loss": value, "log_likelihood": float(terms.rec), "kl": float(terms.kl),
                     "aux": float(terms.aux)}))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        self.train_sums.add_(torch.stack((terms.loss.detach(), terms.neg_elbo, terms.rec, terms.kl, terms.aux))
                             .double().mul_(b))
        return terms

    # ------------------------------------------------------------- aggressive encoder training (He et al. 2019)
    def fresh_batches(self) -> Iterator[Batch]:
        """Endless shuffled training batches for the encoder's inner loop, from its own shuffle stream."""
        while True:
            yield from self.dm.train_batches(self.aggressive.shuffle_gen, self.data_gen,
                                             self.cfg.trainer.limit_train_batches)

    def catch_up_encoder(self, batch: Batch, fresh: Iterator[Batch]) -> int:
        """The inner loop: update the encoder alone (decoder held fixed), first on this step's batch, then on
        fresh ones, until the mean loss of a window of check_every updates is above the window before's, at
        most max_inner_steps updates. Losses are per token for text (as He et al.), else per example.
        Returns the number of updates made."""
        aggressive = self.aggressive
        window_loss, window_count, previous = 0.0, 0, math.inf
        with frozen(aggressive.decoder_params):
            for done in range(1, aggressive.max_inner_steps + 1):
                if done > 1:
                    batch = next(fresh)
                loss = float(self.optimizer_update(batch, self.objective.kl_weight(self.step)).loss.detach())
                window_loss += loss * batch["x"].shape[0]
                window_count += int(batch["lengths"].sum()) if "lengths" in batch else batch["x"].shape[0]
                if done % aggressive.check_every == 0:
                    current = window_loss / window_count
                    if current > previous:
                        break
                    previous, window_loss, window_count = current, 0.0, 0
        return done

    def end_aggressive_epoch(self) -> None:
        """He et al.'s switch: aggressive training stops after the first epoch whose validation I(x;z) falls."""
        before = self.aggressive.last_mutual_info
        mutual_info = split_mutual_information(self.model, self.dm, "val", self.cfg.trainer.limit_val_batches)
        self.writer.add_scalar("train/aggressive_val_mutual_info", mutual_info, self.step)
        if self.aggressive.end_epoch(mutual_info):
            log.info("epoch %d: validation I(x;z) %.4f; aggressive encoder training continues", self.epoch,
                     mutual_info)
        else:
            log.info("epoch %d: validation I(x;z) %.4f fell below %.4f; aggressive encoder training is off from "
                     "here", self.epoch, mutual_info, before)

    def reported_terms(self, values: dict[str, float]) -> dict[str, float]:
        """The terms a NaN stop names, as the README names them: rec = -log-likelihood (the reconstruction loss), kl,
        aux only when a bag-of-words loss is on, and the loss."""
        named = {"rec": -values["log_likelihood"], "kl": values["kl"]}
        if self.objective.bow_weight > 0:
            named["aux"] = values["aux"]
        return {**named, "loss": values["loss"]}

    def stop_non_finite(self, what: str, epoch: int | None = None, values: dict[str, float] | None = None,
                        at: str | None = None) -> None:
        """Stop with the step (`at`, default "at step N") and epoch (1-based; default the epoch in progress), what
        went non-finite (`values`: the terms or metrics concerned), the likely cause and how to carry on."""
        last = self.run_dir / "checkpoints" / "last.pt"
        updates_done = self.step > 0 or bool(self.optimizer.state)
        diagnosis = non_finite.diagnose(self.cfg, values, updates_done)
        cure = " ".join(diagnosis.cure)
        if not diagnosis.cure:
            keep = f"{last} keeps the last good state" if last.exists() else "no checkpoint was written yet"
        elif not last.exists():
            keep = f"no checkpoint was written yet: start again with {cure}"
        elif diagnosis.resumable:
            keep = (f"{last} keeps the last good state: continue it with seqvae train run_dir={self.run_dir} "
                    f"trainer.resume=true {cure}")
        else:   # a resumed run refuses to change anything but the lr and clipping
            keep = f"{last} keeps the last good state, but a resumed run keeps its settings: start a new run with {cure}"
        raise SeqvaeError(f"{what} {at or f'at step {self.step}'} (epoch {epoch or self.epoch + 1})"
                          f"{non_finite.describe(values or {})}: {diagnosis.why}; training stopped and {keep}")

    def log_train(self, terms: Terms) -> None:
        """This step's batch means (rank 0's shard under DDP; the epoch means in the log cover every rank)."""
        w, s = self.writer, self.step
        w.add_scalar("train/loss", float(terms.loss.detach()), s)
        w.add_scalar("train/rec", -float(terms.rec), s)
        w.add_scalar("train/kl", float(terms.kl), s)
        w.add_scalar("train/neg_elbo", float(terms.neg_elbo), s)
        w.add_scalar("train/kl_weight", self.objective.kl_weight(s), s)
        w.add_scalar("train/lr", float(self.optimizer.param_groups[0]["lr"]), s)
        if float(terms.aux) != 0.0:
            w.add_scalar("train/aux", float(terms.aux), s)

    def validation_metrics(self) -> dict:
        tc = self.cfg.trainer
        metrics = evaluate(self.eval_model(), self.dm, "val", iw_samples=tc.get("val_iw_samples", 0),
                           limit=tc.limit_val_batches, with_mutual_info=False, seed=tc.seed, sharded=True,
                           progress=bool(tc.progress_bar) and self.rank == 0)   # a bar after 2 s

        weight = self.objective.kl_weight(max(self.step - 1, 0))
        metrics["loss"] = metrics["rec"] + weight * metrics.get("kl", 0.0)
        return metrics

    def optimized_value(self, metrics: dict) -> float:
        key = self.optimized_metric.split("/", 1)[-1]
        numeric = sorted(f"val/{k}" for k, v in public(metrics).items() if isinstance(v, (int, float)))
        if f"val/{key}" not in numeric:
            raise SeqvaeError(f"optimized_metric={self.optimized_metric!r} is not a numeric validation metric of "
                              f"this model; choose one of {numeric}")
        return float(metrics[key])

    def check_optimized_metric(self) -> None:
        """Score the validation split once before training, so a wrong optimized_metric fails in seconds rather
        than after the first epoch. Training draws what it would without this: a seeded evaluation puts the RNG
        streams back."""
        self.optimized_value(self.validation_metrics())

    def validate(self) -> dict:
        tc = self.cfg.trainer
        metrics = self.validation_metrics()
        # An update can turn the weights non-finite after a finite loss: stop before logging or checkpointing.
        checked = {k: float(metrics[k]) for k in ("rec", "kl", "neg_elbo") if k in metrics}
        if "_mu" in metrics:
            checked["posterior_mean"] = math.nan if not bool(torch.isfinite(metrics["_mu"]).all()) else 0.0
        if not all(math.isfinite(v) for v in checked.values()):
            self.stop_non_finite("validation metrics became non-finite", max(self.epoch, 1), values=checked)
        w, s = self.writer, self.step
        weight = self.objective.kl_weight(max(s - 1, 0))
        for key, value in public(metrics).items():
            if isinstance(value, (int, float)) and key not in ("num_examples",):
                w.add_scalar(f"val/{key}", value, s)
        w.add_scalar("val/kl_weight", weight, s)
        w.add_scalar("val/lr", float(self.optimizer.param_groups[0]["lr"]), s)
        if "_mu" in metrics:
            w.add_histogram("val/posterior_mean", metrics["_mu"], s)
        if "_kl_per_dim" in metrics:
            w.add_histogram("val/kl_per_dim", metrics["_kl_per_dim"], s)
        if tc.log_visuals and self.rank == 0:
            visuals.during_training(self.eval_model(), self.dm, w, s)
        value = self.optimized_value(metrics)
        summary = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in public(metrics).items() if k not in ("split",))
        if self.rank == 0:
            log.info("epoch %d validation: %s", self.epoch, summary)
        # Checkpoints of the autoencoder pre-training phase (Li et al. 2019) are not candidates for best.pt.
        improved = value < self.best_value if self.optimized_mode == "min" else value > self.best_value
        if improved and self.step > self.objective.pretrain_steps:
            self.best_value, self.best_epoch = value, self.epoch
            self.best_val = {k: v for k, v in public(metrics).items()}
            self.save("best.pt")
        return metrics

    def load_best(self) -> None:
        """Put best.pt's weights (the average's, with weight averaging) into the model; training is over."""
        path = self.run_dir / "checkpoints" / "best.pt"
        state = load_checkpoint(path, map_location=self.device)
        check_belongs(state, path, self.run_dir, "it replaced the run's own best.pt while the run trained; retrain")
        load_model_state(self.model, state, path)

    def test(self) -> dict:
        """Score the test split with the model's current weights (fit() has loaded best.pt into it)."""
        tc = self.cfg.trainer
        metrics = public(evaluate(self.model, self.dm, "test", iw_samples=tc.test_iw_samples,
                                  limit=tc.get("limit_test_batches"), seed=tc.seed, sharded=True,
                                  progress=bool(tc.progress_bar) and self.rank == 0))
        # One table, as `seqvae eval` prints it; in TensorBoard the Text tab and the HParams metrics show it rather
        # than one single-point chart per metric above the training curves.
        self.writer.add_text("test", markdown_table(metrics), self.step)
        log.info("test (best checkpoint, epoch %d):\n%s", self.best_epoch, metrics_table(metrics))
        return metrics

    def log_hparams(self, result: dict) -> None:
        """One HParams entry per run, in the run's own event file, so sweeps compare side by side."""
        hp = {}
        for group in ("model", "data", "objective", "optim"):
            flat = _flatten(OmegaConf.to_container(self.cfg[group], resolve=True), group)
            hp.update({k: v for k, v in flat.items() if not k.endswith(("_target_", "data_dir"))})
        hp["trainer.seed"] = self.cfg.trainer.seed
        hp["trainer.weight_average.kind"] = OmegaConf.select(self.cfg, "trainer.weight_average.kind", default="none")
        # The HParams tab reads its metric values from scalars: HPARAM_TAG sorts them after the curves.
        metric_dict = {f"{HPARAM_TAG}/best_{self.optimized_metric.replace('/', '_')}": result["optimized_value"]}
        for key in ("neg_elbo", "iw_nll", "rec", "kl", "active_units", "mutual_info", "nll", "ppl"):
            if key in result.get("test", {}):
                metric_dict[f"{HPARAM_TAG}/test_{key}"] = result["test"][key]
        exp, ssi, sei = hparams_summary(hp, metric_dict)
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        for key, value in metric_dict.items():
            self.writer.add_scalar(key, value, self.step)


def _flatten(tree: dict, prefix: str) -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, (list, tuple)):
            out[name] = str(list(value))
        elif value is None:
            out[name] = "null"
        else:
            out[name] = value
    return out
