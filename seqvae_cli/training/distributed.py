"""Several processes, one run: PyTorch's DistributedDataParallel under torchrun.

`torchrun --nproc_per_node=N -m seqvae_cli train ...` (or `seqvae train trainer.devices=N`, which starts
torchrun for you) runs one seqvae process per device: NCCL between GPUs, gloo between CPU processes. Every
process composes the same config and trains the same model; each takes its own rows of every global batch, and
DDP averages the gradients. Rank 0 alone writes the run directory, checkpoints, TensorBoard and the console.

Everything here is a no-op in a plain single process (world size 1), so the trainer calls it unconditionally.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from seqvae_cli.data.base import Batch

# Set on every rank by main() before Hydra composes: rank 0's clock, so all ranks name the same run folder.
RUN_STAMP_ENV = "SEQVAE_RUN_STAMP"


# A rank whose collective failed because another rank died exits with this code and says nothing: the rank that
# died is the news, and cli/launch.py reports it in one line.
PEER_LOST_EXIT = 3
_PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted")


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another process of the group went away."""
    return world_size() > 1 and (isinstance(exc, dist.DistNetworkError) or
                                 (isinstance(exc, RuntimeError) and any(s in str(exc) for s in _PEER_LOST)))


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets these for every worker it starts."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ and "RANK" in os.environ


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_torchrun() -> None:
    """Join torchrun's process group (env:// rendezvous: MASTER_ADDR/PORT, RANK, WORLD_SIZE) and agree on one run
    folder. GPUs: each process takes cuda:LOCAL_RANK, NCCL carries CUDA tensors and gloo the CPU ones (the run
    folder's name, checkpoint RNG states); without CUDA, gloo carries everything."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend="cpu:gloo,cuda:nccl", timeout=datetime.timedelta(minutes=30))
    else:
        dist.init_process_group(backend="gloo", timeout=datetime.timedelta(minutes=30))
    now = datetime.datetime.now()
    stamp = [f"{now:%Y-%m-%d}/{now:%H-%M-%S}"]
    dist.broadcast_object_list(stamp, src=0, device=torch.device("cpu"))
    os.environ[RUN_STAMP_ENV] = stamp[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """The device of this process: cuda:LOCAL_RANK under torchrun (set by init_from_torchrun), else `device`."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def shard(batch: Batch, batch_size: int | None = None) -> Batch:
    """This rank's rows of a global batch: rows rank, rank + W, rank + 2W, ... (strided rather than contiguous,
    so that length-sorted text batches give every rank sentences of every length). Tensors whose first
    dimension is not the batch's are passed whole."""
    w = world_size()
    if w == 1:
        return batch
    b = batch_size or batch["x"].shape[0]
    r = rank()
    return {k: v[r::w] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b else v
            for k, v in batch.items()}


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `values` over ranks (in place, and returned)."""
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable; tensors should be on the CPU), in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank's weights rank 0's (after an in-place re-initialisation drawn from per-rank RNG streams)."""
    if world_size() > 1:
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
