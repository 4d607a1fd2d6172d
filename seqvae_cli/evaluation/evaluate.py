"""Evaluation metrics shared by validation, the final test and `seqvae eval`.

All numbers are in nats per example. The IW-NLL batches over importance samples and chunks them
so memory stays bounded whatever k is (k=5000 on MNIST runs on a laptop CPU).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from seqvae_cli.training import distributed
from seqvae_cli.data.base import Batch, DataModule, batch_limit
from seqvae_cli.latent.gaussian import gaussian_kl, gaussian_log_density, sample_posterior, standard_normal_log_density
from seqvae_cli.models.base import LatentModel, eval_mode
from seqvae_cli.models.series_vae import LOG_2PI

log = logging.getLogger("seqvae")

# The IW pass keeps one log-sum-exp per chunk of samples; past this many they are folded into one, so the memory
# stays bounded for any k (1e8 samples made 760k chunks: 1.5 GB per MNIST batch). Below it, nothing changes.
MAX_PENDING_CHUNKS = 1024


# An IW pass over one batch that runs longer than this many seconds shows its own progress bar (with progress=True),
# and so does the pass over the batches.
IW_PROGRESS_AFTER_S = 2.0


# An IW-NLL pass estimated to take longer than this says what it computes and how long it will take, and how to
# make it quicker.
ANNOUNCE_AFTER_S = 60.0


def announce_iw_pass(split: str, k: int, examples: int, seconds: float) -> None:
    """The line before a long IW-NLL pass: what, how long, and the quick setting."""
    if seconds < ANNOUNCE_AFTER_S:
        return
    quick = max(1, int(k * ANNOUNCE_AFTER_S / 2 / seconds))
    log.warning("scoring the %s split: IW-NLL with k=%d importance samples over %d examples, estimated %s on this "
                "machine (k=%d would take ~30 s: iw_samples=%d for `seqvae eval`, trainer.test_iw_samples=%d for "
                "the test pass after training)", split, k, examples, _duration(seconds), quick, quick, quick)


def announce_pass(split: str, examples: int, seconds: float) -> None:
    """The line before any other long pass (e.g. the ELBO over a large training split)."""
    if seconds >= ANNOUNCE_AFTER_S:
        log.warning("scoring the %s split: %d examples, estimated %s on this machine", split, examples,
                    _duration(seconds))


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 \
        else f"{seconds:.0f} s"


@torch.no_grad()
def iw_log_likelihood(model: LatentModel, batch: Batch, num_samples: int, rows_per_chunk: int = 65536,
                      mu: torch.Tensor | None = None, logvar: torch.Tensor | None = None,
                      bf16: bool = False, progress: bool = False,
                      first_chunk: Callable[[float, int], None] | None = None) -> torch.Tensor:
    """log p(x) ≈ log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x); returns [B].
    bf16: the decoder passes under bfloat16 autocast (the densities and log-sum-exp stay float32).
    progress: a bar over the samples once the pass has run IW_PROGRESS_AFTER_S seconds.
    first_chunk: called with (seconds, samples) after the first chunk of samples, to estimate the whole pass."""
    if mu is None:
        mu, logvar = model.encode(batch)
    device_type = mu.device.type
    per_chunk = max(1, rows_per_chunk // mu.shape[0])
    chunks, done, started = [], 0, time.perf_counter()
    with tqdm(total=num_samples, desc="importance samples", unit="sample", delay=IW_PROGRESS_AFTER_S,
              leave=False, disable=not progress) as bar:
        while done < num_samples:
            s = min(per_chunk, num_samples - done)
            z = sample_posterior(mu, logvar, s)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                log_px = model.log_likelihood(batch, z).float()
            log_w = log_px + standard_normal_log_density(z) - gaussian_log_density(z, mu, logvar)
            chunks.append(torch.logsumexp(log_w, 0))
            if first_chunk is not None and done == 0:
                first_chunk(time.perf_counter() - started, s)
            if len(chunks) == MAX_PENDING_CHUNKS:
                chunks = [torch.logsumexp(torch.stack(chunks), 0)]
            done += s
            bar.update(s)
    return torch.logsumexp(torch.stack(chunks), 0) - math.log(num_samples)


@torch.no_grad()
def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, chunk: int = 1024) -> float:
    """I(x;z) under q(x,z) = p_data(x) q(z|x), the estimator of Hoffman & Johnson 2016 / He et al. 2019:
    E_x[-H(q(z|x))] - E_{x, z~q(z|x)}[log q(z)], with the aggregate posterior q(z) a mixture over the split."""
    mu, logvar = mu.double(), logvar.double()  # the expanded quadratic form below cancels badly in float32
    n, d = mu.shape
    neg_entropy = (-0.5 * d * LOG_2PI - 0.5 * (1.0 + logvar).sum(-1)).mean()
    z = sample_posterior(mu, logvar, 1)[0]
    # log N(z_i; mu_j, var_j) for all pairs as matrix products: the [N, N, D] tensor is never built.
    inv_var = (-logvar).exp()
    const = ((mu.pow(2) * inv_var).sum(1) + logvar.sum(1) + d * LOG_2PI)  # [N]
    log_qz = []
    for i in range(0, n, chunk):
        zi = z[i:i + chunk]
        quad = zi.pow(2) @ inv_var.T - 2.0 * zi @ (mu * inv_var).T + const   # [c, N]
        log_qz.append(torch.logsumexp(-0.5 * quad, 1) - math.log(n))
    return float(neg_entropy - torch.cat(log_qz).mean())


@torch.no_grad()
def split_mutual_information(model: LatentModel, dm: DataModule, split: str,
                             limit: int | float | None = None) -> float:
    """I(x;z) over `split` (mutual_information) from an encoder-only pass: no decoder, no other metric."""
    with eval_mode(model):
        posteriors = [model.encode(batch) for batch in dm.eval_batches(split, None, limit)]
    return mutual_information(torch.cat([mu for mu, _ in posteriors]), torch.cat([lv for _, lv in posteriors]))


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Dimensions whose posterior mean varies across the data: Var_x(E_q[z_d]) > threshold (Burda et al.)."""
    if mu.shape[0] < 2:
        return 0
    return int((mu.var(0) > threshold).sum())


@torch.no_grad()
def evaluate(model: LatentModel, dm: DataModule, split: str, iw_samples: int = 0, limit: int | float | None = None,
             batch_size: int | None = None, rows_per_chunk: int | None = None, with_mutual_info: bool = True,
             progress: bool = False, score: str = "neg_elbo", out_dir: Path | None = None,
             iw_bf16: bool = False, seed: int | None = None, sharded: bool = False) -> dict:
    """Score `split`: -ELBO, reconstruction, KL, IW-NLL (k=iw_samples, 0 = skip), active units, MI.

    Returns the metrics and, under "_mu"/"_kl_per_dim", tensors for histograms (not for JSON); under
    "_per_example", each example's rec/kl/neg_elbo/iw_nll in nats [N] (CPU, in eval_batches order).
    Time series (dm.kind == "series") add anomaly.series_evaluation's metrics: reconstruction MSE, and
    AUROC/AUPRC/best F1 of the per-example `score` (neg_elbo | rec | iw_nll); with out_dir, its CSV files.
    iw_bf16: the IW-NLL's decoder passes in bfloat16 autocast (`seqvae eval iw_precision=bf16-mixed`).
    seed: each batch's samples are drawn from the global RNG seeded with (seed, batch index), and the caller's RNG
    state is put back afterwards: the numbers then depend neither on what ran before nor on how the batches are
    shared among processes. sharded: under DDP each rank scores every W-th batch and the results are gathered, so
    every rank returns what one process would (to float rounding); every rank must call it."""
    device = model_device(model)
    devices = [device] if device.type in ("cuda", "mps") else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None,
                               device_type=device.type if devices else "cuda"):
        return _evaluate(model, dm, split, iw_samples, limit, batch_size, rows_per_chunk, with_mutual_info,
                         progress, score, out_dir, iw_bf16, seed, sharded)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _evaluate(model, dm, split, iw_samples, limit, batch_size, rows_per_chunk, with_mutual_info, progress, score,
              out_dir, iw_bf16, seed, sharded) -> dict:
    rows_per_chunk = rows_per_chunk or dm.iw_rows_per_chunk
    world, me = (distributed.world_size(), distributed.rank()) if sharded else (1, 0)
    sums = {"rec": 0.0, "kl": 0.0, "iw_ll": 0.0}
    n, tokens = 0, 0
    mus, logvars, kl_dims = [], [], []
    per: dict[str, list[torch.Tensor]] = {"rec": [], "kl": [], "iw_nll": []}   # per-example nats
    batches = dm.eval_batches(split, batch_size, limit)
    total = batch_limit(limit, math.ceil(dm.num_examples(split) / (batch_size or dm.eval_batch_size)))
    if progress and me == 0:
        batches = tqdm(batches, total=total, desc=f"scoring {split}", leave=False, delay=IW_PROGRESS_AFTER_S)
    announced: list = []

    def estimate(seconds: float, samples: int, batch: Batch) -> None:
        """From the first IW chunk's time: the pass costs ~ samples x tokens (rows for fixed-length data)."""
        done = int(batch["lengths"].sum()) if "lengths" in batch else batch["x"].shape[0]
        everything = dm.num_tokens(split) if "lengths" in batch and hasattr(dm, "num_tokens") \
            else dm.num_examples(split)
        rows = min(dm.num_examples(split), total * (batch_size or dm.eval_batch_size))
        scaled = everything * rows / dm.num_examples(split)
        announced.append(announce_iw_pass(split, iw_samples, rows, seconds * iw_samples / samples * scaled / done))
    with eval_mode(model):
        started, pending = time.perf_counter(), progress and me == 0
        for index, batch in enumerate(batches):
            if index % world != me:
                continue
            if pending and n > 0:   # one batch done: a long pass says so (an IW pass has said it already)
                pending = False
                if not announced:
                    announce_pass(split, dm.num_examples(split), (time.perf_counter() - started) * total / world)
            if seed is not None:
                torch.manual_seed(seed * 100_003 + index)
            n += batch["x"].shape[0]
            if "lengths" in batch:  # text: tokens counted for perplexity (each sentence's </eos>, never <sos>)
                tokens += int(batch["lengths"].sum())
            if model.latent_dim == 0:
                ll = model.log_likelihood(batch, None)[0]
                sums["rec"] += float(ll.sum())
                per["rec"].append(-ll)
                continue
            mu, logvar = model.encode(batch)
            if model.variational:
                z = sample_posterior(mu, logvar, 1)
                kl = gaussian_kl(mu, logvar)
                sums["kl"] += float(kl.sum())
                per["kl"].append(kl.sum(1))
                kl_dims.append(kl.sum(0))
                mus.append(mu), logvars.append(logvar)
                if iw_samples > 0:
                    first = (lambda t, k, batch=batch: estimate(t, k, batch)) if pending and index == 0 else None
                    iw_ll = iw_log_likelihood(model, batch, iw_samples, rows_per_chunk, mu, logvar, iw_bf16,
                                              progress=progress and me == 0, first_chunk=first)
                    sums["iw_ll"] += float(iw_ll.sum())
                    per["iw_nll"].append(-iw_ll)
            else:
                z = mu.unsqueeze(0)
                mus.append(mu)
            ll = model.log_likelihood(batch, z)[0]
            sums["rec"] += float(ll.sum())
            per["rec"].append(-ll)
    if world > 1:
        n, tokens, sums, per, mus, logvars, kl_dims = _gather_ranks(world, n, tokens, sums, per, mus, logvars,
                                                                    kl_dims, model_device(model))
    out: dict = {"split": split, "num_examples": n, "rec": -sums["rec"] / n}
    out["_per_example"] = {k: torch.cat(v).cpu() for k, v in per.items() if v}
    if "kl" in out["_per_example"]:
        out["_per_example"]["neg_elbo"] = out["_per_example"]["rec"] + out["_per_example"]["kl"]
    if tokens:
        out["num_tokens"] = tokens
    if model.latent_dim == 0:
        out["nll"] = out["neg_elbo"] = -sums["rec"] / n
        if tokens:
            out["ppl"] = math.exp(-sums["rec"] / tokens)
        return out
    mu_all = torch.cat(mus)
    out["active_units"] = active_units(mu_all)
    out["_mu"] = mu_all
    if not model.variational:  # an autoencoder has no likelihood bound: report reconstruction only
        return out
    out["kl"] = sums["kl"] / n
    out["neg_elbo"] = out["rec"] + out["kl"]
    out["_kl_per_dim"] = torch.stack(kl_dims).sum(0) / n
    if tokens:  # perplexity = exp(total NLL / total tokens); the ELBO gives an upper bound on it
        out["ppl_elbo"] = math.exp(out["neg_elbo"] * n / tokens)
    if iw_samples > 0:
        out["iw_nll"] = -sums["iw_ll"] / n
        out["iw_samples"] = iw_samples
        if tokens:
            out["ppl"] = math.exp(out["iw_nll"] * n / tokens)
    if seed is not None:  # the draws below must not depend on which rank scored the last batch
        torch.manual_seed(seed * 100_003 - 1)
    if with_mutual_info:
        out["mutual_info"] = mutual_information(mu_all, torch.cat(logvars))
    if getattr(dm, "kind", None) == "series":   # time series: anomaly scores and metrics (anomaly.py)
        from seqvae_cli.evaluation.series import series_evaluation
        out.update(series_evaluation(model, dm, split, out, score=score, out_dir=out_dir, limit=limit,
                                     batch_size=batch_size))
    return out


def _gather_ranks(world: int, n: int, tokens: int, sums: dict, per: dict, mus: list, logvars: list, kl_dims: list,
                  device: torch.device) -> tuple:
    """Put together what each rank scored (every W-th batch) in the order one process would have scored it."""
    totals = distributed.all_reduce_sum(torch.tensor([n, tokens, sums["rec"], sums["kl"], sums["iw_ll"]],
                                                     dtype=torch.float64, device=device)).tolist()
    mine = {"per": {k: [t.cpu() for t in v] for k, v in per.items()}, "mu": [t.cpu() for t in mus],
            "logvar": [t.cpu() for t in logvars], "kl_dims": [t.cpu() for t in kl_dims]}
    ranks = distributed.all_gather(mine)

    def interleave(get) -> list[torch.Tensor]:
        lists = [get(r) for r in ranks]   # rank r holds batches r, r + W, ...: deal them back in turn
        return [lists[i % world][i // world] for i in range(sum(map(len, lists)))]
    merged_per = {k: [t.to(device) for t in interleave(lambda r, k=k: r["per"][k])] for k in per}
    back = [[t.to(device) for t in interleave(lambda r, k=k: r[k])] for k in ("mu", "logvar", "kl_dims")]
    sums = {"rec": totals[2], "kl": totals[3], "iw_ll": totals[4]}
    return int(totals[0]), int(totals[1]), sums, merged_per, *back


def public(metrics: dict) -> dict:
    """The JSON-able part of evaluate()'s result."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}
