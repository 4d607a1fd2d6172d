"""The one trainer, used by every model and data type.

Per epoch: shuffle, step through batches, log to TensorBoard, validate, checkpoint. Checkpoints hold
every RNG state, so a killed run continued with trainer.resume=true reproduces the uninterrupted
run exactly on CPU.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from seqvae_cli import visuals
from seqvae_cli.training import distributed, non_finite
from seqvae_cli.config.rules import is_bf16
from seqvae_cli.config.runtime import metric_mode, setup_device
from seqvae_cli.data.base import Batch
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.files import DISK_ERRORS, WriteFailed, as_write_failure, write_json_atomic
from seqvae_cli.models.base import LatentModel
from seqvae_cli.objective.elbo import Objective, Terms, TrainingLoss
from seqvae_cli.training.captured_step import CapturedStep, WARMUP_STEPS, cuda_graph_choice
from seqvae_cli.training.checkpoint import build, recorded_run_id
from seqvae_cli.training.collapse import collapse_warning
from seqvae_cli.training.extras import AggressiveEncoder, AggressiveSteps, WeightAverage, frozen
from seqvae_cli.training.interrupt import StopRequests, Stopped, stop_message
from seqvae_cli.training.optim import lr_factor, make_optimizer
from seqvae_cli.training.reporting import NullWriter, Reporting
from seqvae_cli.training.resume import CheckpointState, find_resume_state, merge_resumed_config

log = logging.getLogger("seqvae")


# The training sums kept on the device per epoch (Terms: loss, neg_elbo, rec = the log-likelihood, kl, aux).
SUMMED_TERMS = ("loss", "neg_elbo", "log_likelihood", "kl", "aux")


class Trainer(CheckpointState, Reporting, AggressiveSteps):
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
                         global_size: int | None = None, summed: bool = True) -> Terms:
        """One optimiser update on `batch` (of the parameters that require a gradient); returns the objective's
        terms and, when `summed` (a training step's update, not one of the aggressive encoder's inner updates), adds
        them (SUMMED_TERMS), times the batch size, to self.train_sums. No host read on CUDA, so that
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
        if summed:
            self.train_sums.add_(torch.stack((terms.loss.detach(), terms.neg_elbo, terms.rec, terms.kl, terms.aux))
                                 .double().mul_(b))
        return terms

    # ------------------------------------------------------------- aggressive encoder training (He et al. 2019)
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


