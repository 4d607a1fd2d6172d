"""The verbs' Hydra apps: train, eval and sample, each building its objects once and handing them on."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from seqvae_cli.training import distributed, runfolder
from seqvae_cli.config.rules import (is_bf16, number, one_of, optional_positive_int, precision_rule, seed_rule,
                                     validate)
from seqvae_cli.config.runtime import CONF_DIR, check_sweep_direction, metric_mode, override_keys, setup_device
from seqvae_cli.data.base import resolve_data_dir
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.files import read_json, write_json_atomic

log = logging.getLogger("seqvae")

# ------------------------------------------------------------------------------ eval's and sample's keys

# The run to read and the split and seed to use: read by eval_app and sample_app below (and the sampler's figures).
RUN_RULES = {
    "checkpoint": (lambda v: v in ("best", "last") or (isinstance(v, str) and v.endswith(".pt")),
                   "best, last or a path to a .pt file"),
    "split": one_of("train", "val", "test"),
    "seed": seed_rule(),
}


# eval_app's own keys (score: evaluation/series.py).
EVAL_RULES = {
    "iw_samples": optional_positive_int(),
    "iw_rows_per_chunk": optional_positive_int(),
    "limit_examples": optional_positive_int("the whole split"),
    "batch_size": number(1, integer=True),
    "iw_precision": precision_rule(),
}


# sample_app's own key: the folder inside the run that this call writes into.
SAMPLE_RULES = {
    "samples_dir": (lambda v: isinstance(v, str) and v not in ("", ".") and not Path(v).is_absolute()
                    and ".." not in Path(v).parts, "a folder name inside the run, e.g. samples_dir=samples_2"),
}


def _fail(exc: SeqvaeError, minimising: bool = True) -> float:
    """One error line; in a sweep, score the job as the worst value (+inf when minimising) so the other jobs
    (and Optuna) carry on. A stop asked for by a signal (exit_code 130/143) ends the sweep too."""
    exit_code = getattr(exc, "exit_code", 2)
    if HydraConfig.initialized():
        _discard_unused_folder(str(HydraConfig.get().job.name))
    if exit_code == 2 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        log.error("seqvae: error: %s", exc)
        return math.inf if minimising else -math.inf
    print(f"seqvae: error: {exc}", file=sys.stderr)
    sys.exit(exit_code)


def _discard_unused_folder(task: str) -> None:
    """After an error before any work (a config value, missing data): no empty outputs/... folder is left behind.
    Single runs only: a failed sweep job keeps its folder, which `seqvae report` lists as failed."""
    if not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.MULTIRUN or distributed.rank() > 0:
        return
    runfolder.discard_unused(Path(HydraConfig.get().runtime.output_dir), task)


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _data_dir_is_default() -> bool:
    """paths.data_dir is only the ./data fallback: neither $SEQVAE_DATA_DIR nor an override chose it."""
    chosen = any(key in ("paths", "paths.data_dir") for key in override_keys(_overrides()))
    return not chosen and not os.environ.get("SEQVAE_DATA_DIR")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_app(cfg: DictConfig) -> float:
    from seqvae_cli.training.loop import Trainer
    direction = HydraConfig.get().sweeper.get("direction")
    direction = getattr(direction, "name", direction)    # the sweeper's default is its Direction enum
    sweeping = isinstance(direction, str)  # the Optuna sweeper (a list would be a multi-objective study)
    # A failed job scores worst in the direction the study (else the metric) is optimised.
    minimising = (str(direction).lower() == "minimize" if sweeping
                  else metric_mode(str(cfg.get("optimized_metric", "val/neg_elbo"))) == "min")
    try:
        validate(cfg, "train")
        if sweeping:
            check_sweep_direction(str(cfg.optimized_metric), direction)
        # Stored absolute in checkpoints, so eval/sample find the data from any working directory.
        cfg.paths.data_dir = str(resolve_data_dir(cfg.paths.data_dir))
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        # One process writes the folder: rank 0, or the process that started the ranks (they inherit its lock).
        writes_folder = distributed.rank() == 0 and not runfolder.locked_by_parent()
        with runfolder.run_lock(run_dir) if writes_folder else contextlib.nullcontext():
            if writes_folder:
                runfolder.log_takeovers()
                overwrite = bool(cfg.trainer.get("overwrite", False))
                runfolder.check_run_folder(run_dir, cfg.trainer.resume, overwrite)
                if overwrite:
                    runfolder.clear_previous_run(run_dir)
            if cfg.trainer.get("devices", 1) > 1 and not distributed.launched_by_torchrun():
                from seqvae_cli.cli.launch import train_with_torchrun
                return train_with_torchrun(cfg.trainer.devices, _overrides(), run_dir)
            result = Trainer(cfg, run_dir, _overrides()).fit()
    except SeqvaeError as exc:
        return _fail(exc, minimising)
    except Exception as exc:
        if distributed.peer_lost(exc):
            sys.exit(distributed.PEER_LOST_EXIT)
        raise
    if distributed.is_main():
        log.info("run directory: %s", run_dir)
    return float(result["optimized_value"])


def _run_dir_of(cfg: DictConfig) -> Path:
    from seqvae_cli.training.checkpoint import run_folder_of
    return run_folder_of(cfg.run_dir, Path(cfg.checkpoint))


def _output_folder(cfg: DictConfig) -> Path:
    """Where eval and sample write (eval.json, samples/, tb/, CSV files): the run's folder when Hydra put this
    command's logs inside it (config._run_dir does when it is a seqvae run that can be written), else this
    command's own outputs/VERB/DATE/TIME: nothing lands in a folder that is not a run."""
    run, own = _run_dir_of(cfg), Path(HydraConfig.get().runtime.output_dir)
    if runfolder.is_inside(own, run):
        return run
    log.warning("%s is not a seqvae run folder that can be written: this command writes into %s instead", run, own)
    return own


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def eval_app(cfg: DictConfig) -> dict | float:
    from seqvae_cli.training.checkpoint import load_run, resolve_checkpoint
    from seqvae_cli.evaluation.evaluate import evaluate
    from seqvae_cli.evaluation.table import metrics_table
    try:
        validate(cfg, "eval")
        device = setup_device(cfg.device, bf16=is_bf16(cfg.iw_precision))
        # Only the split it scores: the checkpoint carries the rest (a vocabulary, normalisation statistics).
        _, dm, model, state = load_run(cfg.run_dir, cfg.checkpoint, device, cfg.paths.data_dir,
                                       _data_dir_is_default(), splits=(str(cfg.split),))
        k = cfg.iw_samples or dm.eval_iw_samples
        if cfg.limit_examples:  # exactly that many, drawn across the split (its batches may be sorted by length)
            dm = dm.subset(cfg.split, cfg.limit_examples, cfg.seed)
        out_dir, started = _output_folder(cfg), time.time()
        metrics = evaluate(model, dm, cfg.split, iw_samples=k, batch_size=cfg.batch_size,
                           rows_per_chunk=cfg.iw_rows_per_chunk, progress=True, announce=True, seed=cfg.seed,
                           iw_bf16=is_bf16(cfg.iw_precision),
                           # time series: the anomaly score, and where its CSV files go
                           score=cfg.score, out_dir=out_dir).metrics
        check_finite_metrics(metrics, resolve_checkpoint(cfg.run_dir, cfg.checkpoint))
        metrics.update(seconds=round(time.time() - started, 1), checkpoint=str(cfg.checkpoint),
                       checkpoint_epoch=state["epoch"])
        if "iw_nll" in metrics:
            metrics["iw_precision"] = str(cfg.iw_precision)
        print(metrics_table(metrics))   # the table first: it is on the screen even if the disk refuses eval.json
        out = out_dir / "eval.json"
        results = _earlier_results(out)
        results[cfg.split] = metrics
        write_json_atomic(out, results)
    except SeqvaeError as exc:
        return _fail(exc)
    print(f"written: {out}")
    return metrics


# The likelihood metrics: non-finite means the weights (or the data) overflow. AUROC-like metrics are left out:
# they are NaN by definition when a split holds one class only.
FINITE_METRICS = ("rec", "kl", "neg_elbo", "iw_nll", "nll", "ppl", "ppl_elbo", "mutual_info")


def check_finite_metrics(metrics: dict, checkpoint: Path) -> None:
    """A table of inf/NaN with exit 0 would pass for a result: it is an error, and eval.json is not written."""
    bad = {k: metrics[k] for k in FINITE_METRICS if k in metrics and not math.isfinite(metrics[k])}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise SeqvaeError(f"evaluating {checkpoint} gave non-finite metrics ({shown}): its weights overflow on this "
                          f"data, and eval.json was not written; score the other checkpoint (checkpoint=last or "
                          f"best) or retrain")


def _earlier_results(out: Path) -> dict:
    """eval.json's results of the other splits; one left unreadable (e.g. truncated by an older version) is kept
    aside as eval.json.broken, with a warning, rather than failing the evaluation that just finished."""
    if not out.exists():
        return {}
    try:
        results = read_json(out)
        if isinstance(results, dict):
            return results
    except SeqvaeError:
        pass
    broken = out.with_name(out.name + ".broken")
    os.replace(out, broken)
    log.warning("%s was unreadable: moved to %s; eval.json now holds this split's results only", out, broken)
    return {}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def sample_app(cfg: DictConfig) -> None:
    from seqvae_cli import visuals
    try:
        validate(cfg, "sample")
        device = setup_device(cfg.device)
        _, dm, model, state = _load_for_sampling(cfg, device)
        if model.latent_dim == 0 and dm.kind != "text":
            raise SeqvaeError("this run's model has no latent variable: there is nothing to sample from a prior")
        run_dir = _output_folder(cfg)
        out = _samples_folder(run_dir, cfg.samples_dir)
        torch.manual_seed(cfg.seed)
        writer = LazyWriter(str(run_dir / "tb"))
        written = visuals.sample(model, dm, cfg, out, writer, state["step"])
        writer.close()
        out.mkdir(parents=True, exist_ok=True)
        (out / DRAWN_LIST).write_text("".join(f"{p.relative_to(out)}\n" for p in written if p.is_relative_to(out)))
    except SeqvaeError as exc:
        _fail(exc)
        return
    for path in written:
        print(f"written: {path}")


def _load_for_sampling(cfg: DictConfig, device: torch.device) -> tuple:
    """The run, with its `split` when the data is there: without it (a checkpoint shared on its own, data not yet
    downloaded), what needs only the checkpoint is drawn (prior samples; your sentences, for text) and a warning
    says what the rest needs. Sentences of your own need no split at all (one alone: no homotopy)."""
    from seqvae_cli.training.checkpoint import load_run
    from seqvae_cli.visuals.text import given_sentences
    args = (cfg.run_dir, cfg.checkpoint, device, cfg.paths.data_dir, _data_dir_is_default())
    if given_sentences(cfg):
        return load_run(*args, splits=())
    try:
        return load_run(*args, splits=(str(cfg.split),))
    except SeqvaeError as missing:
        try:
            found = load_run(*args, splits=())
        except SeqvaeError:
            raise missing from None
        if found[1].has_split(str(cfg.split)):   # the failure was not about the data
            raise missing from None
        log.warning("drawing only what the checkpoint alone gives (prior samples): the figures of the %s split "
                    "need its data, which failed to load: %s", cfg.split, missing)
        return found


# The files an earlier `seqvae sample` wrote into its folder (the pictures of the end of training are not listed:
# replacing them with the same drawings from best.pt is no news).
DRAWN_LIST = ".seqvae_sample_files"


def _samples_folder(run_dir: Path, name: str) -> Path:
    """RUN/NAME, where this call's files go; when an earlier call wrote there, its files are said to be replaced,
    with the setting that keeps both (nothing is overwritten silently)."""
    out = run_dir / name
    listed = (out / DRAWN_LIST).read_text().splitlines() if (out / DRAWN_LIST).is_file() else []
    earlier = sorted(n for n in listed if (out / n).exists())
    if earlier:
        shown = ", ".join(earlier[:4]) + (f" and {len(earlier) - 4} more" if len(earlier) > 4 else "")
        log.warning("%s already holds %d files (%s): the ones this call draws again are replaced; samples_dir=NAME "
                    "writes RUN/NAME instead and keeps them", out, len(earlier), shown)
    return out


class LazyWriter:
    """A SummaryWriter created on first use, so a sampler that fails its input checks leaves no empty event file."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.writer = log_dir, None

    def __getattr__(self, name: str):
        if self.writer is None:
            self.writer = SummaryWriter(self.log_dir)
        return getattr(self.writer, name)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
