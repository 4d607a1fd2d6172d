"""The training step recorded once as a CUDA graph and replayed (trainer.cuda_graphs).

On a GPU, the step of a small VAE is a few hundred small kernels (forward, backward, gradient clipping, Adam),
each far shorter than the ~5 us the CPU needs to launch it: an MNIST epoch ran 100x slower than the arithmetic
allows. A CUDA graph records those launches once and replays them with one call (PyTorch's "whole-network
capture": https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs).

What stays live in the replayed step:
* the batch: copied into the graph's input buffers before each replay (dynamic binarisation is drawn as the batch
  is gathered, from the data generator, exactly as in the eager step);
* dropout and the reparameterisation noise: drawn from the default CUDA generator, which the graph advances on
  every replay, so each replay draws new numbers;
* the KL weight and the learning rate: device tensors filled before each replay (the optimiser is built with
  capturable=True and a tensor lr, which the lr scheduler fills in place).
What the graph cannot do, the trainer keeps out of it: a batch of another shape (the last, smaller batch of an
epoch, or text batches of other lengths) runs eagerly, on the same weights and optimiser state; host reads happen
only every trainer.log_every steps.

The first WARMUP_STEPS steps run eagerly on a side stream (real training steps, not extra ones), so that lazy
initialisations (cuBLAS workspaces, the optimiser's state) happen outside the graph's memory pool.
"""
from __future__ import annotations

from typing import Callable

import torch

from seqvae_cli.errors import SeqvaeError

from seqvae_cli.data.base import Batch

WARMUP_STEPS = 3


def batch_shapes(batch: Batch) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items()))


class CapturedStep:
    """Calls `step(batch, kl_weight)` (forward, backward, clip, optimiser update, returning the step's outputs)
    through a CUDA graph for batches of the first full batch's shapes, eagerly for any other."""

    def __init__(self, step: Callable[[Batch, torch.Tensor], object], device: torch.device) -> None:
        self.step, self.device = step, device
        self.kl_weight = torch.zeros((), device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: Batch = {}
        self.outputs: object = None
        self.shapes: tuple | None = None
        self.eager_steps = 0
        self.side = torch.cuda.Stream(device)

    def __call__(self, batch: Batch, kl_weight: float) -> object:
        self.kl_weight.fill_(kl_weight)
        shapes = batch_shapes(batch)
        if self.shapes is None:
            self.shapes = shapes
        if shapes != self.shapes:
            return self.step(batch, self.kl_weight)
        if self.graph is None:
            if self.eager_steps < WARMUP_STEPS:
                self.eager_steps += 1
                self.side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.side):
                    out = self.step(batch, self.kl_weight)
                torch.cuda.current_stream(self.device).wait_stream(self.side)
                return out
            self.capture(batch)
        for key, value in batch.items():
            self.inputs[key].copy_(value, non_blocking=True)
        self.graph.replay()
        return self.outputs

    def capture(self, batch: Batch) -> None:
        """Record one step on buffers shaped like `batch` (recording runs nothing: the replay that follows does)."""
        self.inputs = {key: value.clone() for key, value in batch.items()}
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        # The warm-up's stream: libraries that cache handles per stream (cuBLAS workspaces) found theirs there.
        with torch.cuda.graph(self.graph, stream=self.side):
            self.outputs = self.step(self.inputs, self.kl_weight)


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
