"""`seqvae VERB [hydra overrides]`: a thin dispatcher over one Hydra app per verb."""
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

from . import distributed, runfolder
from .config import (check_sweep_direction, is_bf16, metric_mode, override_keys, register_resolvers,
                     setup_device, validate)
from .data import resolve_data_dir
from .errors import SeqvaeError
from .files import read_json, write_json_atomic

log = logging.getLogger("seqvae")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_resolvers()

USAGE = """usage: seqvae VERB [hydra overrides]

verbs:
  train    train a model (default: MLP-VAE on MNIST); returns the validation metric for sweeps
           e.g. seqvae train model.latent_dim=2 trainer.max_epochs=5 | seqvae train -m model.latent_dim=2,10
  eval     score a trained run: -ELBO, reconstruction, KL, IW-NLL, active units, mutual information
           e.g. seqvae eval run_dir=outputs/2026-11-21/10-00-00 split=test iw_samples=5000
  sample   write pictures (samples, reconstructions, interpolations, traversals, latent scatter)
           e.g. seqvae sample run_dir=outputs/2026-11-21/10-00-00
  report   one row per job of a multirun folder, sorted by the optimised metric (also written as CSV)
           e.g. seqvae report multirun/2026-11-21/10-00-00

`seqvae VERB --help` lists that verb's config groups and options; `seqvae VERB --cfg job` prints the config."""


def _fail(exc: SeqvaeError, minimising: bool = True) -> float:
    """One error line; in a sweep, score the job as the worst value (+inf when minimising) so the other jobs
    (and Optuna) carry on. A stop asked for by a signal (exit_code 130/143) ends the sweep too."""
    exit_code = getattr(exc, "exit_code", 2)
    if exit_code == 2 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        log.error("seqvae: error: %s", exc)
        return math.inf if minimising else -math.inf
    print(f"seqvae: error: {exc}", file=sys.stderr)
    sys.exit(exit_code)


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _data_dir_is_default() -> bool:
    """paths.data_dir is only the ./data fallback: neither $SEQVAE_DATA_DIR nor an override chose it."""
    chosen = any(key in ("paths", "paths.data_dir") for key in override_keys(_overrides()))
    return not chosen and not os.environ.get("SEQVAE_DATA_DIR")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_app(cfg: DictConfig) -> float:
    from .trainer import Trainer
    direction = HydraConfig.get().sweeper.get("direction")
    direction = getattr(direction, "name", direction)    # the sweeper's default is its Direction enum
    sweeping = isinstance(direction, str)  # the Optuna sweeper (a list would be a multi-objective study)
    # A failed job scores worst in the direction the study (else the metric) is optimised.
    minimising = (str(direction).lower() == "minimize" if sweeping
                  else metric_mode(str(cfg.get("optimized_metric", "val/neg_elbo"))) == "min")
    try:
        validate(cfg)
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
                from .launch import train_with_torchrun
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
    from .checkpoint import run_folder_of
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
    from .checkpoint import load_run, resolve_checkpoint
    from .evaluate import evaluate, public
    try:
        validate(cfg)
        device = setup_device(cfg.device, bf16=is_bf16(cfg.iw_precision))
        _, dm, model, state = load_run(cfg.run_dir, cfg.checkpoint, device, cfg.paths.data_dir,
                                          _data_dir_is_default())
        k = cfg.iw_samples or dm.eval_iw_samples
        batch_size, limit = cfg.batch_size, None
        if cfg.limit_examples:  # equal batches that add up to limit_examples (exactly, when it divides evenly)
            limit = math.ceil(cfg.limit_examples / cfg.batch_size)
            batch_size = math.ceil(cfg.limit_examples / limit)
        out_dir, started = _output_folder(cfg), time.time()
        metrics = public(evaluate(model, dm, cfg.split, iw_samples=k, limit=limit, batch_size=batch_size,
                                  rows_per_chunk=cfg.iw_rows_per_chunk, progress=True, seed=cfg.seed,
                                  iw_bf16=is_bf16(cfg.iw_precision),
                                  # time series: the anomaly score, and where its CSV files go
                                  score=cfg.score, out_dir=out_dir))
        check_finite_metrics(metrics, resolve_checkpoint(cfg.run_dir, cfg.checkpoint))
        metrics.update(seconds=round(time.time() - started, 1), checkpoint=str(cfg.checkpoint),
                       checkpoint_epoch=state["epoch"])
        if "iw_nll" in metrics:
            metrics["iw_precision"] = str(cfg.iw_precision)
        width = max(map(len, metrics))   # the table first: it is on the screen even if the disk refuses eval.json
        print(f"{'metric':<{width}}  value")
        for key, value in metrics.items():
            print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
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
    from . import visuals
    from .checkpoint import load_run
    try:
        validate(cfg)
        device = setup_device(cfg.device)
        _, dm, model, state = load_run(cfg.run_dir, cfg.checkpoint, device, cfg.paths.data_dir,
                                          _data_dir_is_default())
        if model.latent_dim == 0 and dm.kind != "text":
            raise SeqvaeError("this run's model has no latent variable: there is nothing to sample from a prior")
        run_dir = _output_folder(cfg)
        torch.manual_seed(cfg.seed)
        writer = LazyWriter(str(run_dir / "tb"))
        written = visuals.SAMPLERS[dm.kind](model, dm, cfg, run_dir / "samples", writer, state["step"])
        writer.close()
    except SeqvaeError as exc:
        _fail(exc)
        return
    for path in written:
        print(f"written: {path}")


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


APPS = {"train": train_app, "eval": eval_app, "sample": sample_app}

# Flags that change which config Hydra composes, or print help instead: the pre-check below stands aside.
_CONFIG_FLAGS = ("-h", "--help", "--hydra-help", "-cn", "--config-name", "-cp", "--config-path", "-cd",
                 "--config-dir", "--info", "--shell-completion", "-sc", "--experimental-rerun")
_MAX_JOBS_CHECKED = 64


def check_overrides(verb: str, args: list[str]) -> None:
    """Compose the config as Hydra is about to, each job of a sweep too, and turn an unknown group option or key
    into one SeqvaeError line that lists what exists (Hydra's own report spans lines and suggests `+key=`, which
    adds a key nothing reads). Anything this check cannot judge (optuna ranges, other failures) is left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException

    if any(a.split("=", 1)[0] in _CONFIG_FLAGS for a in args):
        return
    overrides, skip_next = [], False
    for a in args:
        if skip_next:
            skip_next = False
        elif a in ("-c", "--cfg", "-p", "--package"):
            skip_next = True   # the flag's value
        elif not a.startswith("-"):
            overrides.append(a)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        discrete = [o for o in parsed if not o.is_sweep_override() or o.is_discrete_sweep()]
        jobs = BasicSweeper.split_arguments(discrete, None)[0] if discrete else [[]]
    except HydraException:
        return   # a syntax error: Hydra reports it with its position
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for job in jobs[:_MAX_JOBS_CHECKED]:
            try:
                compose(verb, overrides=job, return_hydra_config=True)
            except MissingConfigException as exc:
                group, _, option = (exc.missing_cfg_file or "").rpartition("/")
                if not exc.options:
                    return
                raise SeqvaeError(f"{group}={option}: no such option in config group '{group}'; choose one of "
                                  f"{', '.join(exc.options)}") from None
            except ConfigCompositionException as exc:
                key = next((o.key_or_group for o in parsed if f"'{o.key_or_group}'" in str(exc)), None)
                if key is None:
                    return
                rest = [o for o in job if o.split("=", 1)[0].lstrip("+~") != key]
                parent = key.rpartition(".")[0]
                try:
                    node = compose(verb, overrides=rest).get(parent) if parent else compose(verb, overrides=rest)
                except Exception:
                    return
                known = ", ".join(sorted(str(k) for k in node.keys())) if hasattr(node, "keys") else ""
                where = f"in '{parent}'" if parent else "at the top level"
                raise SeqvaeError(f"{key}: no such key{' ' + where if known else ''}"
                                  f"{'; its keys are ' + known if known else ''} (check the spelling; "
                                  f"`seqvae {verb} --cfg job` prints the whole config)") from None


def claim_run_folder(args: list[str]) -> Path | None:
    """`seqvae train`, before Hydra writes into the run folder (.hydra/, train.log): refuse a folder that cannot be
    written, that another training holds, or that holds another run without trainer.resume or trainer.overwrite,
    and lock it for this process. Returns the folder locked, or None where the command line does not name one
    plainly (a sweep, the default outputs/DATE/TIME, an interpolation): train_app checks those after Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    multirun = any(a in ("-m", "--multirun") for a in args)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return None   # --cfg, --info, -cn ...: Hydra prints or composes something else
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except HydraException:
        return None   # Hydra reports the syntax error
    if multirun or any(o.is_sweep_override() for o in parsed):
        runfolder.check_writable(Path("multirun"), "sweep folder")
        return None
    values = {o.key_or_group: o.value() for o in parsed if not o.is_delete()}
    run_dir = values.get("run_dir")
    if any(k.startswith("hydra.") for k in values) or "${" in str(run_dir):
        return None
    if run_dir is None:
        runfolder.check_writable(Path("outputs"), "outputs folder")
        return None
    target = Path(str(run_dir))
    runfolder.check_writable(target)
    runfolder.acquire_lock(target)
    try:
        runfolder.check_run_folder(target, values.get("trainer.resume", False),
                                   bool(values.get("trainer.overwrite", False)))
    except SeqvaeError:
        runfolder.release_lock(target)
        raise
    return target


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    verb, rest = args[0], args[1:]
    if verb == "report":
        from .report import main as report_main
        sys.exit(report_main(rest))
    if verb not in APPS:
        print(f"seqvae: error: unknown verb {verb!r}; expected one of train, eval, sample, report "
              f"(seqvae --help lists them)", file=sys.stderr)
        sys.exit(2)
    claimed = None
    try:
        check_overrides(verb, rest)
        if verb == "train" and not distributed.launched_by_torchrun():
            claimed = claim_run_folder(rest)
    except SeqvaeError as exc:
        print(f"seqvae: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if verb == "train" and distributed.launched_by_torchrun():
        distributed.init_from_torchrun()
        if distributed.rank() > 0:  # rank 0 alone writes the run folder's .hydra/ and train.log
            rest = rest + ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    sys.argv = [f"seqvae-{verb}"] + rest
    try:
        APPS[verb]()
    except KeyboardInterrupt:   # outside the training loop, which stops on Ctrl-C with its own line
        print(f"seqvae: error: {verb} stopped by Ctrl-C (SIGINT) before it finished", file=sys.stderr)
        sys.exit(130)
    finally:
        if claimed is not None:
            runfolder.release_lock(claimed)
        distributed.shutdown()


if __name__ == "__main__":
    main()
