"""Checkpoints: written atomically, read with weights_only=True, and rebuilt into a runnable model.

A checkpoint carries everything needed to continue or score a run without the original command:
the resolved config, model/optimiser/scheduler state, step and epoch, every RNG state, and the
data module's state (e.g. a vocabulary).
"""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .data import DataModule, resolve_data_dir
from .errors import SeqvaeError
from .files import write_atomic
from .models import LatentModel

FORMAT = "seqvae-checkpoint-1"


def save_atomic(state: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a kill leaves the old file intact, and a
    full or read-only disk removes the temporary file and raises files.WriteFailed (one line)."""
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise SeqvaeError(f"checkpoint {path} does not exist; give a run directory with checkpoints/ "
                          f"(run_dir=outputs/DATE/TIME) or the path of a .pt file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch's loader raises many types on garbage (KeyError, IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SeqvaeError(f"checkpoint {path} is unreadable (truncated, corrupt or not a seqvae checkpoint: "
                          f"{first[:160]}); use the other file in checkpoints/ or retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SeqvaeError(f"{path} is not a seqvae checkpoint (no '{FORMAT}' marker); "
                          f"pass a file written by `seqvae train` (checkpoints/best.pt or last.pt)")
    return state


def resolve_checkpoint(run_dir: str | None, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        if not run_dir:
            raise SeqvaeError("no run given: pass run_dir=outputs/DATE/TIME (a `seqvae train` output folder) "
                              "or checkpoint=path/to/file.pt")
        return Path(run_dir) / "checkpoints" / f"{checkpoint}.pt"
    return Path(checkpoint)


def build(cfg: DictConfig, device: torch.device, data_state: dict | None = None) -> tuple[DataModule, LatentModel]:
    """Instantiate the data module (set up on `device`) and the model it shapes."""
    dm: DataModule = _instantiate(cfg.data)
    if data_state:
        dm.load_state_dict(data_state)
    dm.setup(device)
    model: LatentModel = _instantiate(cfg.model, **dm.model_kwargs())
    return dm, model.to(device)


def _instantiate(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, letting our own errors through unwrapped (Hydra would bury them in a traceback)."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, SeqvaeError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def load_model_state(model: LatentModel, state: dict, path: Path | str) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise SeqvaeError(f"checkpoint {path} holds weights of a different model than its config builds "
                          f"({lines[1][:160] if len(lines) > 1 else lines[0][:160]}); "
                          f"it was written by another version of the model: retrain") from None


def load_run(run_dir: str | None, checkpoint: str, device: torch.device, data_dir: str | None = None,
             data_dir_is_default: bool = False) -> tuple[DictConfig, DataModule, LatentModel, dict]:
    """Rebuild a trained run for eval/sample: its own config, data and weights.

    The data root is `data_dir` when the user chose it (paths.data_dir=... or $SEQVAE_DATA_DIR): data may have
    moved since training. When `data_dir` is only the ./data fallback, the root the run trained on is kept while
    it still exists, so a run scores from any working directory."""
    path = resolve_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path, map_location=device)
    cfg = OmegaConf.create(state["config"])
    trained_on = OmegaConf.select(cfg, "data.data_dir")    # what the data module read (runs store it absolute)
    keep_trained = data_dir_is_default and trained_on is not None and resolve_data_dir(trained_on).is_dir()
    if data_dir is not None and not keep_trained:
        cfg.paths.data_dir = data_dir
        if "data_dir" in cfg.data:
            cfg.data.data_dir = data_dir
    dm, model = build(cfg, device, state.get("data_state"))
    load_model_state(model, state, path)
    model.eval()
    return cfg, dm, model, state
