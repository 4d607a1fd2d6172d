"""Config at run time: resolvers, override keys, metric direction, the device."""
from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from seqvae_cli.config.rules import one_of, optional_positive_int
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.training.distributed import RUN_STAMP_ENV
from seqvae_cli.training.runfolder import is_seqvae_run, not_writable_reason


def conf_dir() -> Path:
    """The folder of seqvae's Hydra configs. conf/ lives at the top of the repository (the project's design card),
    which an installed wheel does not have around it: the wheel carries conf/ as seqvae_cli/conf (pyproject.toml's
    package-dir). So the installed copy comes first; a source checkout or an editable install has none, and uses
    the repository's own conf/."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


CONF_DIR = str(conf_dir())


def run_name(experiment: str | None, model: str | None, data: str | None) -> str:
    """What a run is, for its folder and TensorBoard: the experiment preset, else MODEL-DATA (mlp_vae-mnist)."""
    if experiment:
        return str(experiment).replace("/", "-")
    return "-".join(str(part) for part in (model, data) if part) or "run"


def sweep_name(experiment: str | None, model: str | None, data: str | None, overrides: list | None) -> str:
    """A sweep's folder name: run_name, where a group swept on the command line shows its options joined by '+'
    (`-m model=mlp_vae,ae` -> mlp_vae+ae-mnist): the sweep's own config holds only the first job's choices."""
    chosen = {"experiment": experiment, "model": model, "data": data}
    for item in overrides or []:
        key, _, value = str(item).partition("=")
        if key in chosen and "," in value:
            chosen[key] = re.sub(r"[^\w.+-]", "", value.replace(",", "+")) or chosen[key]
    return run_name(chosen["experiment"], chosen["model"], chosen["data"])


def _run_dir(task_name: str, run_dir: str | None, checkpoint: str | None, experiment: str | None = None,
             model: str | None = None, data: str | None = None) -> str:
    """Hydra's run directory: train -> run_dir or outputs/NAME/DATE/TIME (NAME: run_name); eval/sample ->
    RUN/logs/TASK_DATE_TIME when the run's folder is a seqvae run that can be written, else outputs/TASK/DATE/TIME."""
    now = datetime.datetime.now()
    if task_name == "train":
        # Under torchrun every rank names the folder by rank 0's clock (distributed.init_from_torchrun).
        stamp = os.environ.get(RUN_STAMP_ENV) or f"{now:%Y-%m-%d}/{now:%H-%M-%S}"
        return str(run_dir) if run_dir else f"outputs/{run_name(experiment, model, data)}/{stamp}"
    base = run_dir
    if not base and checkpoint and str(checkpoint).endswith(".pt"):
        ckpt = Path(str(checkpoint))
        base = str(ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)
    # Logs go into the run only when it is a seqvae run that can take them: a mistyped run_dir must not be created
    # just to hold them, and nothing may land in a folder that is not a run (run_dir=/etc) or cannot be written.
    if not base or not is_seqvae_run(Path(base)) or not_writable_reason(Path(base)) is not None:
        return f"outputs/{task_name}/{now:%Y-%m-%d}/{now:%H-%M-%S}"
    return f"{base}/logs/{task_name}_{now:%Y-%m-%d_%H-%M-%S}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("seqvae_run_dir"):
        OmegaConf.register_new_resolver("seqvae_run_dir", _run_dir, use_cache=True)
    if not OmegaConf.has_resolver("seqvae_sweep_name"):
        OmegaConf.register_new_resolver("seqvae_sweep_name", sweep_name, use_cache=True)


def override_keys(overrides: list[str]) -> list[str]:
    """The keys a command line set (`+a.b=1`, `~c`, `d=2` -> a.b, c, d)."""
    return [item.split("=", 1)[0].lstrip("+~") for item in overrides]


# Validation metrics where a higher value is the better model; every other metric is minimised.
HIGHER_IS_BETTER = ("auroc", "auprc", "best_f1", "active_units")


def metric_mode(metric: str) -> str:
    """'max' when a higher value of this metric (e.g. val/auroc, val/nab/x/auprc) is better, else 'min'."""
    return "max" if metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER else "min"


def check_sweep_direction(metric: str, direction: str) -> None:
    """An Optuna sweep must minimise what is better low and maximise what is better high."""
    wanted = {"min": "minimize", "max": "maximize"}[metric_mode(metric)]
    given = direction.lower()
    if given != wanted:
        raise SeqvaeError(f"config error: hydra.sweeper.direction={given} but optimized_metric={metric} is better "
                          f"{'higher' if wanted == 'maximize' else 'lower'}; set hydra.sweeper.direction={wanted}")


# The device group's keys, read by setup_device below (train, eval and sample).
RULES = {
    "device.type": one_of("auto", "cpu", "cuda", "mps"),
    "device.num_threads": optional_positive_int(),
}


def pick_device(kind: str) -> torch.device:
    """auto = cuda, else mps, else cpu; an explicit choice that is not present is an error, not a fallback."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise SeqvaeError("device=cuda was asked for but torch sees no CUDA device; use device=auto or device=cpu")
    if kind == "mps" and not has_mps:
        raise SeqvaeError("device=mps was asked for but this torch build has no MPS backend; "
                          "use device=auto or device=cpu")
    return torch.device(kind)


def setup_device(device_cfg: DictConfig, bf16: bool = False) -> torch.device:
    """The device to run on; bf16: bfloat16 autocast will run there (trainer.precision or eval's iw_precision)."""
    if device_cfg.get("num_threads"):
        torch.set_num_threads(int(device_cfg.num_threads))
    device = pick_device(device_cfg.type)
    if bf16 and device.type == "cpu":
        # With bfloat16 LSTMs the oneDNN primitive cache (1,024 entries by default) grew a PTB training run past
        # 8 GB; 256 entries held a 600-step test near 3 GB at no measured speed cost. oneDNN reads this when it
        # first runs, after this point; a user's own setting wins.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
    return device
