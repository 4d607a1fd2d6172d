"""Checkpoints: written atomically, sealed with a checksum, read with weights_only=True, and rebuilt into a
runnable model only through seqvae's own registered parts (parts.py).

A checkpoint carries everything needed to continue or score a run without the original command:
the resolved config, model/optimiser/scheduler state, step and epoch, every RNG state, the data
module's state (e.g. a vocabulary), the id of the run that wrote it, and a checksum. docs/checkpoints.md
describes the file and the rules for loading one.
"""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seqvae_cli.data.base import DataModule, resolve_data_dir
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.files import write_atomic
from seqvae_cli.models.base import LatentModel
from seqvae_cli.latent.posterior import GaussianPosterior
from seqvae_cli.latent.prior import StandardNormal
from seqvae_cli.parts import PARTS, build_part, check_parts, part_factory

FORMAT = "seqvae-checkpoint-1"
CHECKSUM = "sha256"


# The run folder's record of its run id: every checkpoint in RUN/checkpoints must carry the same one.
RUN_ID_FILE = "run_id"


def state_checksum(state: dict) -> str:
    """sha256 over every tensor's bytes (with its key path, dtype and shape) and every plain value of the state,
    in a fixed order, except the config (plain text that registry.check_parts and validation judge on their own,
    and that people edit, e.g. a data path) and the checksum itself. The zip reader checks no CRC: without this,
    flipped bytes in a weight or in Adam's state load as valid numbers."""
    digest = hashlib.sha256()
    for key in sorted((k for k in state if k not in ("config", "checksum")), key=str):
        _fold(digest, state[key], str(key))
    return f"{CHECKSUM}:{digest.hexdigest()}"


def _fold(digest: Any, value: Any, path: str) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{path}:{flat.dtype}:{tuple(value.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())   # the raw bytes, no copy (bfloat16 included)
    elif isinstance(value, dict):
        for key in sorted(value, key=lambda k: (str(k), type(k).__name__)):
            _fold(digest, value[key], f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        digest.update(f"{path}:[{len(value)}];".encode())
        for index, item in enumerate(value):
            _fold(digest, item, f"{path}[{index}]")
    else:   # what weights_only admits besides: numbers, strings, booleans, None, dtypes, devices
        digest.update(f"{path}={type(value).__name__}:{value!r};".encode())


def save_atomic(state: dict, path: Path) -> None:
    """Seal the state with its checksum, then write it to a temporary file in the same folder, fsync and rename: a
    kill leaves the old file intact, and a full or read-only disk removes the temporary file and raises
    files.WriteFailed (one line)."""
    sealed = {**state, "checksum": state_checksum(state)}
    write_atomic(path, lambda f: torch.save(sealed, f))


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise SeqvaeError(f"checkpoint {path} does not exist; give a run directory with checkpoints/ "
                          f"(run_dir=outputs/NAME/DATE/TIME) or the path of a .pt file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch's loader raises many types on garbage (KeyError, IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SeqvaeError(f"checkpoint {path} is unreadable (truncated, corrupt or not a seqvae checkpoint: "
                          f"{first[:160]}); use the other file in checkpoints/ or retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SeqvaeError(f"{path} is not a seqvae checkpoint (no '{FORMAT}' marker); "
                          f"pass a file written by `seqvae train` (checkpoints/best.pt or last.pt)")
    # Files written before checksums existed have none and load as before.
    if "checksum" in state and state["checksum"] != state_checksum(state):
        raise SeqvaeError(f"checkpoint {path} is corrupt: its weights or training state do not match the checksum "
                          f"written with them (damaged on disk or in a copy); use the other file in "
                          f"{path.parent} (last.pt or best.pt) or retrain")
    return state


def check_finite_weights(state: dict, path: Path | str, parts: tuple[str, ...] = ("model",)) -> None:
    """Refuse weights that hold NaN or inf: nothing scored or trained from them means anything, and the trainer
    never writes such a file. parts: the state's entries to look at (model, training_model)."""
    for part in parts:
        for name, tensor in _tensors(state.get(part), part):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise SeqvaeError(f"checkpoint {path} holds non-finite values ({bad} NaN/inf in {name}); it cannot "
                                  f"be used: take the other file in {Path(path).parent} (last.pt or best.pt) or "
                                  f"retrain")


def _tensors(value: Any, path: str):
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{path}[{index}]")


def recorded_run_id(run_dir: Path | str) -> str | None:
    """The run id `seqvae train` recorded in this folder, or None (no run trained here since run ids exist)."""
    record = Path(run_dir) / RUN_ID_FILE
    return (record.read_text().strip() or None) if record.is_file() else None


def record_run_id(run_dir: Path, run_id: str) -> None:
    if recorded_run_id(run_dir) != run_id:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_ID_FILE).write_text(run_id + "\n")


def check_belongs(state: dict, path: Path | str, run_dir: Path | str, fix: str) -> None:
    """A checkpoint used as this run folder's must carry the run id the folder records. Either side without one
    (a file or folder from before run ids) cannot be judged and passes."""
    mine, theirs = recorded_run_id(run_dir), state.get("run_id")
    if mine and theirs and mine != theirs:
        raise SeqvaeError(f"{path} belongs to another run (run id {theirs}; {run_dir} is run {mine}, recorded in "
                          f"{Path(run_dir) / RUN_ID_FILE}); {fix}")


def resolve_checkpoint(run_dir: str | None, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        if not run_dir:
            raise SeqvaeError("no run given: pass run_dir=outputs/NAME/DATE/TIME (a `seqvae train` output folder) "
                              "or checkpoint=path/to/file.pt")
        return Path(run_dir) / "checkpoints" / f"{checkpoint}.pt"
    return Path(checkpoint)


def run_folder_of(run_dir: str | None, checkpoint: Path) -> Path:
    """The folder eval/sample write into: run_dir, else the run folder holding the checkpoint (RUN/checkpoints/X.pt
    -> RUN), else the checkpoint's own folder."""
    if run_dir:
        return Path(run_dir)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def build(cfg: DictConfig, device: torch.device, data_state: dict | None = None,
          source: str = "the config", splits: tuple[str, ...] | None = None) -> tuple[DataModule, LatentModel]:
    """The data module (set up on `device`) and the model it shapes, built only from seqvae's registered parts:
    the whole config is checked before anything is built. source: where the config came from, for errors.
    splits: the splits to load (None = all; a checkpoint's data_state stands in for the others)."""
    check_parts(cfg, source)
    dm: DataModule = build_part(cfg.data, "data", source)
    if data_state:
        dm.load_state_dict(data_state)
    if splits is None or "splits" not in inspect.signature(dm.setup).parameters:   # a module that loads everything
        dm.setup(device)
    else:
        dm.setup(device, splits=splits)
    model: LatentModel = build_part(cfg.model, "model", source, **dm.model_kwargs())
    attach_latent(model, cfg, source)
    return dm, model.to(device)


# The families every model is built with; other prior=/posterior= choices replace them once the model is built.
DEFAULT_LATENT = {"prior": StandardNormal, "posterior": GaussianPosterior}


def attach_latent(model: LatentModel, cfg: DictConfig, source: str) -> None:
    """Give the model the prior and posterior its config names (runs from before the choice have neither node and
    keep the defaults). A default is left as built, so the same seed gives the same weights as always."""
    chosen = {}
    for slot, default in DEFAULT_LATENT.items():
        node = OmegaConf.select(cfg, slot)
        if node is None or PARTS[slot].get(node.get("_target_")) is default:
            continue
        chosen[slot] = part_factory(node, slot, source)
    if not chosen:
        return
    free_bits = {k: OmegaConf.select(cfg, f"objective.free_bits.{k}", default=0) or 0 for k in ("per_dim", "total")}
    if any(free_bits.values()):
        key = next(k for k, v in free_bits.items() if v)
        names = " ".join(f"{slot}={OmegaConf.select(cfg, slot).get('name', slot)}" for slot in chosen)
        raise SeqvaeError(f"config error: objective.free_bits.{key}={free_bits[key]} floors the KL of each latent "
                          f"dimension, which needs the KL in closed form; with {names} it is a Monte Carlo estimate "
                          f"of the whole KL; set objective.free_bits.{key}=0, or use prior=standard posterior=gaussian")
    model.use_latent(**chosen)


def load_model_state(model: LatentModel, state: dict, path: Path | str) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise SeqvaeError(f"checkpoint {path} holds weights of a different model than its config builds "
                          f"({lines[1][:160] if len(lines) > 1 else lines[0][:160]}); "
                          f"it was written by another version of the model: retrain") from None


def load_run(run_dir: str | None, checkpoint: str, device: torch.device, data_dir: str | None = None,
             data_dir_is_default: bool = False, splits: tuple[str, ...] | None = None
             ) -> tuple[DictConfig, DataModule, LatentModel, dict]:
    """Rebuild a trained run for eval/sample: its own config, the data `splits` it needs (None = all; () = none,
    the checkpoint alone) and its weights.

    The data root is `data_dir` when the user chose it (paths.data_dir=... or $SEQVAE_DATA_DIR): data may have
    moved since training. When `data_dir` is only the ./data fallback, the root the run trained on is kept while
    it still exists, so a run scores from any working directory."""
    path = resolve_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path, map_location=device)
    folder = run_folder_of(run_dir, path)
    check_belongs(state, path, folder, f"score this run's own checkpoint, or copy that file out of {folder} and "
                                       f"pass checkpoint=<the copy> to score it on its own")
    check_finite_weights(state, path)
    cfg = OmegaConf.create(state["config"])
    trained_on = OmegaConf.select(cfg, "data.data_dir")    # what the data module read (runs store it absolute)
    keep_trained = data_dir_is_default and trained_on is not None and resolve_data_dir(trained_on).is_dir()
    if data_dir is not None and not keep_trained:
        cfg.paths.data_dir = data_dir
        if "data_dir" in cfg.data:
            cfg.data.data_dir = data_dir
    dm, model = build(cfg, device, state.get("data_state"), source=f"checkpoint {path}", splits=splits)
    load_model_state(model, state, path)
    model.eval()
    return cfg, dm, model, state
