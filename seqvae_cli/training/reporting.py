"""What the Trainer reports: training curves, validation (best.pt), the test pass and the HParams entry."""
from __future__ import annotations

import logging
import math

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard.summary import hparams as hparams_summary

from seqvae_cli import visuals
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.evaluation.evaluate import Evaluation, evaluate
from seqvae_cli.evaluation.table import markdown_table, metrics_table
from seqvae_cli.objective.elbo import Terms

log = logging.getLogger("seqvae")


# The tag prefix of the HParams metrics. TensorBoard's Time Series tab sorts cards by tag prefix and opens the first
# two groups only: this name sorts after train/, val/ and visuals/, so a run opens on its curves.
HPARAM_TAG = "z_hparams"


class NullWriter:
    """The TensorBoard writer of ranks other than 0: rank 0 alone writes the run directory."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


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


class Reporting:
    """The Trainer's reporting side: TensorBoard scalars, validation and best.pt, the test pass, hparams."""

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

    def validation_metrics(self) -> Evaluation:
        tc = self.cfg.trainer
        result = evaluate(self.eval_model(), self.dm, "val", iw_samples=tc.get("val_iw_samples", 0),
                          limit=tc.limit_val_batches, with_mutual_info=False, seed=tc.seed, sharded=True,
                          progress=bool(tc.progress_bar) and self.rank == 0)   # a bar after 2 s
        weight = self.objective.kl_weight(max(self.step - 1, 0))
        result.metrics["loss"] = result.metrics["rec"] + weight * result.metrics.get("kl", 0.0)
        return result

    def optimized_value(self, metrics: dict) -> float:
        key = self.optimized_metric.split("/", 1)[-1]
        numeric = sorted(f"val/{k}" for k, v in metrics.items() if isinstance(v, (int, float)))
        if f"val/{key}" not in numeric:
            raise SeqvaeError(f"optimized_metric={self.optimized_metric!r} is not a numeric validation metric of "
                              f"this model; choose one of {numeric}")
        return float(metrics[key])

    def check_optimized_metric(self) -> None:
        """Score the validation split once before training, so a wrong optimized_metric fails in seconds rather
        than after the first epoch. Training draws what it would without this: a seeded evaluation puts the RNG
        streams back."""
        self.optimized_value(self.validation_metrics().metrics)

    def validate(self) -> dict:
        tc = self.cfg.trainer
        result = self.validation_metrics()
        metrics = result.metrics
        # An update can turn the weights non-finite after a finite loss: stop before logging or checkpointing.
        checked = {k: float(metrics[k]) for k in ("rec", "kl", "neg_elbo") if k in metrics}
        if result.posterior_means is not None:
            checked["posterior_mean"] = math.nan if not bool(torch.isfinite(result.posterior_means).all()) else 0.0
        if not all(math.isfinite(v) for v in checked.values()):
            self.stop_non_finite("validation metrics became non-finite", max(self.epoch, 1), values=checked)
        w, s = self.writer, self.step
        weight = self.objective.kl_weight(max(s - 1, 0))
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key not in ("num_examples",):
                w.add_scalar(f"val/{key}", value, s)
        w.add_scalar("val/kl_weight", weight, s)
        w.add_scalar("val/lr", float(self.optimizer.param_groups[0]["lr"]), s)
        if result.posterior_means is not None:
            w.add_histogram("val/posterior_mean", result.posterior_means, s)
        if result.kl_per_dim is not None:
            w.add_histogram("val/kl_per_dim", result.kl_per_dim, s)
        if tc.log_visuals and self.rank == 0:
            visuals.during_training(self.eval_model(), self.dm, w, s)
        value = self.optimized_value(metrics)
        summary = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in metrics.items() if k not in ("split",))
        if self.rank == 0:
            log.info("epoch %d validation: %s", self.epoch, summary)
        # Checkpoints of the autoencoder pre-training phase (Li et al. 2019) are not candidates for best.pt.
        improved = value < self.best_value if self.optimized_mode == "min" else value > self.best_value
        if improved and self.step > self.objective.pretrain_steps:
            self.best_value, self.best_epoch = value, self.epoch
            self.best_val = dict(metrics)
            self.save("best.pt")
        return metrics

    def test(self) -> dict:
        """Score the test split with the model's current weights (fit() has loaded best.pt into it)."""
        tc = self.cfg.trainer
        metrics = evaluate(self.model, self.dm, "test", iw_samples=tc.test_iw_samples,
                           limit=tc.get("limit_test_batches"), seed=tc.seed, sharded=True,
                           progress=bool(tc.progress_bar) and self.rank == 0, announce=True).metrics
        # One table, as `seqvae eval` prints it; in TensorBoard the Text tab and the HParams metrics show it rather
        # than one single-point chart per metric above the training curves.
        self.writer.add_text("test", markdown_table(metrics), self.step)
        if self.rank == 0:
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
