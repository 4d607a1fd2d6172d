"""The two hand-written elementwise kernels of the MNIST models against the library ops they replace.

  * models.bernoulli_log_prob  vs  -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
  * models.ELU                 vs  torch.nn.ELU()

Both replacements compute the same values (tests/test_models.py checks them against the library in
float64); they exist because the library's CPU kernels are built on log1p/expm1, which run several
times slower than exp/log on the CPUs we measured. This prints nanoseconds per element, forward and
forward+backward, at the shapes the models use (a training batch, an IWAE k=50 batch, ELU layers of
mnist_nll/mnist_iwae decoders), in float32 and bfloat16, and the speed-up of each, all in one run.
Each number is the best of several repeats, so a briefly busy machine affects it less.

Run (from the repository root):
    python benchmarks/mnist_kernels.py [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from torch.nn import functional as F

from seqvae_cli.nn.kernels import ELU, bernoulli_log_prob


def ns_per_element(fn: Callable[[], object], numel: int, repeats: int, calls: int = 10) -> float:
    fn()  # warm-up: allocator, thread pool
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best / numel * 1e9


def forward_backward(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        leaf = x.detach().requires_grad_()
        op(leaf).sum().backward()
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    library_elu = torch.nn.ELU()
    ours_elu = ELU()
    print(f"CPU, {torch.get_num_threads()} torch thread(s); ns per element, best of {args.repeats}")
    print(f"{'kernel':<22} {'shape':<16} {'dtype':<9} {'pass':<9} {'library':>8} {'seqvae':>8} {'speed-up':>9}")
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((128, 784), (50, 128, 784)):
            logits = (torch.randn(shape, generator=gen) * 4).to(dtype)
            x = torch.bernoulli(torch.full(shape[-2:], 0.13), generator=gen).expand(shape)
            # Both take float32 logits under the hood for bfloat16 input, as the model does (log-likelihoods are
            # summed over 784 pixels in float32).
            library = lambda l, x=x: -F.binary_cross_entropy_with_logits(l.float(), x, reduction="none").sum(-1)
            ours = lambda l, x=x: bernoulli_log_prob(l, x)
            rows.append(("bernoulli log-prob", shape, dtype, library, ours, logits))
        h = torch.randn((50 * 128, 512), generator=gen).to(dtype)
        rows.append(("ELU", (50 * 128, 512), dtype, library_elu, ours_elu, h))
    for name, shape, dtype, library, ours, inp in rows:
        for label, wrap in (("forward", lambda op, t: (lambda: op(t))), ("fwd+bwd", forward_backward)):
            lib = ns_per_element(wrap(library, inp), inp.numel(), args.repeats)
            our = ns_per_element(wrap(ours, inp), inp.numel(), args.repeats)
            dims = "x".join(map(str, shape))
            print(f"{name:<22} {dims:<16} {str(dtype).replace('torch.', ''):<9} {label:<9} {lib:>8.2f} {our:>8.2f} "
                  f"{lib / our:>8.2f}x")


if __name__ == "__main__":
    main()
