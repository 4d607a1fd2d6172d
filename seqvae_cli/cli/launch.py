"""`seqvae train trainer.devices=N`: the same command, as N DDP processes started by PyTorch's own launcher.

This is what `torchrun --standalone --nproc_per_node=N -m seqvae_cli train ...` does (torchrun is a thin command
line over the same elastic_launch), with two differences: the processes write into this job's run folder (so a
sweep job or a SLURM job that asks for N devices gets one folder), and a process that dies becomes one error line
rather than torchrun's report.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from pathlib import Path

from seqvae_cli.training import distributed
from seqvae_cli.config.runtime import override_keys
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.training.runfolder import LOCKED_BY_PARENT_ENV

log = logging.getLogger("seqvae")


def train_with_torchrun(devices: int, overrides: list[str], run_dir: Path) -> float:
    """Run this job's training as `devices` processes; returns the optimised validation value they reached."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    kept = [o for o, key in zip(overrides, override_keys(overrides)) if key != "run_dir"]
    args = ["-m", "seqvae_cli", "train", *kept, f"run_dir={run_dir}", "hydra.output_subdir=null"]
    # torchrun's default: one thread per process, unless the user chose (N processes share this machine's cores).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)   # failures: our line below
    log.info("starting %d DDP processes (torch.distributed elastic launch, as torchrun --standalone): %s",
             devices, " ".join(["python", *args]))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    # This process holds the run folder's lock and has checked the folder: the ranks write into it without either.
    os.environ[LOCKED_BY_PARENT_ENV] = str(run_dir)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*args)
    except ChildFailedError as exc:
        # The cause, not its echoes: ranks whose collectives lost a peer (PEER_LOST_EXIT), or that the launcher
        # stopped (SIGTERM) after the first failure, come last.
        rank, failure = min(exc.failures.items(), key=lambda item: (
            item[1].exitcode == distributed.PEER_LOST_EXIT, item[1].signal_name() == "SIGTERM", item[1].timestamp))
        resume = f"continue it with: seqvae train run_dir={run_dir} trainer.resume=true trainer.devices={devices}"
        if failure.exitcode == 2:
            # A seqvae error: that process has printed its own line; the others were stopped after it.
            raise SeqvaeError(f"training process {rank} of {devices} stopped on the error above") from None
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with code {failure.exitcode}")
        raise SeqvaeError(f"training process {rank} of {devices} {how}, so the run stopped; {resume}") from None
    finally:
        del os.environ[LOCKED_BY_PARENT_ENV]   # the next job of a sweep takes its own folder's lock
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise SeqvaeError(f"the {devices} training processes finished but wrote no {metrics}; see the log above")
    return float(json.loads(metrics.read_text())["optimized_value"])
