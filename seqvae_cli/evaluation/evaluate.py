"""Scoring a split: -ELBO, reconstruction, KL, IW-NLL, active units, mutual information (and, for time series,
anomaly metrics), in one pass of the model over the split. The result is an Evaluation."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from seqvae_cli.data.base import Batch, DataModule, batch_limit
from seqvae_cli.latent.posterior import Posterior
from seqvae_cli.models.base import LatentModel, eval_mode
from seqvae_cli.training import distributed


@dataclass
class Evaluation:
    """What evaluate() measured on a split.

    metrics: the JSON-able numbers (what metrics.json, the log and TensorBoard show).
    per_example: each example's rec / kl / neg_elbo / iw_nll in nats [N] (CPU, in eval_batches order).
    posterior_means: [N, D] the posterior means (None for a model without a latent), for active units and histograms.
    kl_per_dim: [D] the KL of each dimension, averaged over the split (variational models).
    columns: per-example values of series windows (mse, label, start, series), for anomaly scoring.
    """

    metrics: dict
    per_example: dict[str, torch.Tensor] = field(default_factory=dict)
    posterior_means: torch.Tensor | None = None
    kl_per_dim: torch.Tensor | None = None
    columns: dict[str, torch.Tensor] = field(default_factory=dict)


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
                      posterior: Posterior | None = None, bf16: bool = False, progress: bool = False,
                      first_chunk: Callable[[float, int], None] | None = None) -> torch.Tensor:
    """log p(x) ≈ log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x); returns [B].
    bf16: the decoder passes under bfloat16 autocast (the densities and log-sum-exp stay float32).
    progress: a bar over the samples once the pass has run IW_PROGRESS_AFTER_S seconds.
    first_chunk: called with (seconds, samples) after the first chunk of samples, to estimate the whole pass."""
    q = model.posterior(batch) if posterior is None else posterior
    device_type = q.base.mu.device.type
    per_chunk = max(1, rows_per_chunk // q.base.mu.shape[0])
    chunks, done, started = [], 0, time.perf_counter()
    with tqdm(total=num_samples, desc="importance samples", unit="sample", delay=IW_PROGRESS_AFTER_S,
              leave=False, disable=not progress) as bar:
        while done < num_samples:
            s = min(per_chunk, num_samples - done)
            z, log_q = q.rsample_and_log_prob(s)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                log_px = model.log_likelihood(batch, z).float()
            log_w = log_px + model.prior.log_prob(z) - log_q
            chunks.append(torch.logsumexp(log_w, 0))
            if first_chunk is not None and done == 0:
                first_chunk(time.perf_counter() - started, s)
            if len(chunks) == MAX_PENDING_CHUNKS:
                chunks = [torch.logsumexp(torch.stack(chunks), 0)]
            done += s
            bar.update(s)
    return torch.logsumexp(torch.stack(chunks), 0) - math.log(num_samples)


@torch.no_grad()
def split_mutual_information(model: LatentModel, dm: DataModule, split: str,
                             limit: int | float | None = None) -> float:
    """I(x;z) over `split` (Posterior.mutual_information) from an encoder-only pass: no decoder, no other metric."""
    with eval_mode(model):
        posteriors = [model.posterior(batch).base for batch in dm.eval_batches(split, None, limit)]
    return type(posteriors[0]).cat(posteriors).mutual_information()


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Dimensions whose posterior mean varies across the data: Var_x(E_q[z_d]) > threshold (Burda et al.)."""
    if mu.shape[0] < 2:
        return 0
    return int((mu.var(0) > threshold).sum())


@torch.no_grad()
def evaluate(model: LatentModel, dm: DataModule, split: str, iw_samples: int = 0, limit: int | float | None = None,
             batch_size: int | None = None, rows_per_chunk: int | None = None, with_mutual_info: bool = True,
             progress: bool = False, score: str = "neg_elbo", out_dir: Path | None = None,
             iw_bf16: bool = False, seed: int | None = None, sharded: bool = False, announce: bool = False
             ) -> Evaluation:
    """Score `split`: -ELBO, reconstruction, KL, IW-NLL (k=iw_samples, 0 = skip), active units, MI.

    Time series (dm.kind == "series") add evaluation.series's metrics: reconstruction MSE, and AUROC/AUPRC/best F1
    of the per-example `score` (neg_elbo | rec | iw_nll); with out_dir, its CSV files.
    iw_bf16: the IW-NLL's decoder passes in bfloat16 autocast (`seqvae eval iw_precision=bf16-mixed`).
    seed: each batch's samples are drawn from the global RNG seeded with (seed, batch index), and the caller's RNG
    state is put back afterwards: the numbers then depend neither on what ran before nor on how the batches are
    shared among processes. sharded: under DDP each rank scores every W-th batch and the results are gathered, so
    every rank returns what one process would (to float rounding); every rank must call it.
    progress: a bar once the pass has run a few seconds. announce: a pass estimated (after its first batch) to take
    over ANNOUNCE_AFTER_S says so in the log, bar or not (`seqvae eval` and the test pass; not every validation)."""
    device = model_device(model)
    devices = [device] if device.type in ("cuda", "mps") else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None,
                               device_type=device.type if devices else "cuda"):
        return _evaluate(model, dm, split, iw_samples, limit, batch_size, rows_per_chunk, with_mutual_info,
                         progress, score, out_dir, iw_bf16, seed, sharded, announce)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# Per-example columns a series batch carries, kept for anomaly scoring (with each window's reconstruction MSE).
SERIES_COLUMNS = ("label", "start", "series")


def _evaluate(model, dm, split, iw_samples, limit, batch_size, rows_per_chunk, with_mutual_info, progress, score,
              out_dir, iw_bf16, seed, sharded, announce) -> Evaluation:
    rows_per_chunk = rows_per_chunk or dm.iw_rows_per_chunk
    world, me = (distributed.world_size(), distributed.rank()) if sharded else (1, 0)
    series = getattr(dm, "kind", None) == "series"
    sums = {"rec": 0.0, "kl": 0.0, "iw_ll": 0.0}
    n, tokens = 0, 0
    posteriors, kl_dims = [], []
    per: dict[str, list[torch.Tensor]] = {"rec": [], "kl": [], "iw_nll": []}   # per-example nats
    columns: dict[str, list[torch.Tensor]] = {}
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
        started, pending = time.perf_counter(), announce and me == 0
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
            q = model.posterior(batch)
            posteriors.append(q.base)     # active units and MI are measured on the (base) Gaussian
            if model.variational:
                closed = q.kl_per_dim(model.prior)
                if closed is not None:
                    z = q.rsample(1)
                    kl, kl_sum = closed.sum(1), closed.sum()
                    kl_dims.append(closed.sum(0))
                else:   # Monte Carlo at the sample the decoder scores: per-example -ELBO stays an unbiased estimate
                    z, log_q = q.rsample_and_log_prob(1)
                    kl = (log_q - model.prior.log_prob(z))[0]
                    kl_sum = kl.sum()
                sums["kl"] += float(kl_sum)
                per["kl"].append(kl)
                if iw_samples > 0:
                    first = (lambda t, k, batch=batch: estimate(t, k, batch)) if pending and index == 0 else None
                    iw_ll = iw_log_likelihood(model, batch, iw_samples, rows_per_chunk, q, iw_bf16,
                                              progress=progress and me == 0, first_chunk=first)
                    sums["iw_ll"] += float(iw_ll.sum())
                    per["iw_nll"].append(-iw_ll)
            else:
                z = q.mean.unsqueeze(0)
            ll = model.log_likelihood(batch, z)[0]
            sums["rec"] += float(ll.sum())
            per["rec"].append(-ll)
            if series:   # the window's reconstruction error: decoder mean at the posterior mean (no sampling)
                mse = (model.decode_mean(q.mean) - batch["x"]).pow(2).mean((-2, -1))
                for key, value in [("mse", mse)] + [(k, batch[k]) for k in SERIES_COLUMNS]:
                    columns.setdefault(key, []).append(value)
    if world > 1:
        n, tokens, sums, per, posteriors, kl_dims, columns = _gather_ranks(
            world, n, tokens, sums, per, posteriors, kl_dims, columns, model_device(model))
    out: dict = {"split": split, "num_examples": n, "rec": -sums["rec"] / n}
    result = Evaluation(out, {k: torch.cat(v).cpu() for k, v in per.items() if v},
                        columns={k: torch.cat(v).cpu() for k, v in columns.items()})
    if "kl" in result.per_example:
        result.per_example["neg_elbo"] = result.per_example["rec"] + result.per_example["kl"]
    if tokens:
        out["num_tokens"] = tokens
    if model.latent_dim == 0:
        out["nll"] = out["neg_elbo"] = -sums["rec"] / n
        if tokens:
            out["ppl"] = math.exp(-sums["rec"] / tokens)
        return result
    posterior = type(posteriors[0]).cat(posteriors)
    out["active_units"] = active_units(posterior.mean)
    result.posterior_means = posterior.mean
    if not model.variational:  # an autoencoder has no likelihood bound: report reconstruction only
        return result
    out["kl"] = sums["kl"] / n
    out["neg_elbo"] = out["rec"] + out["kl"]
    result.kl_per_dim = torch.stack(kl_dims).sum(0) / n if kl_dims else None
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
        out["mutual_info"] = posterior.mutual_information()
    if series:   # time series: anomaly scores and metrics
        from seqvae_cli.evaluation.series import series_evaluation
        out.update(series_evaluation(dm, split, result, score=score, out_dir=out_dir))
    return result


def _gather_ranks(world: int, n: int, tokens: int, sums: dict, per: dict, posteriors: list, kl_dims: list,
                  columns: dict, device: torch.device) -> tuple:
    """Put together what each rank scored (every W-th batch) in the order one process would have scored it."""
    totals = distributed.all_reduce_sum(torch.tensor([n, tokens, sums["rec"], sums["kl"], sums["iw_ll"]],
                                                     dtype=torch.float64, device=device)).tolist()
    mine = {"per": {k: [t.cpu() for t in v] for k, v in per.items()}, "posterior": [p.to("cpu") for p in posteriors],
            "kl_dims": [t.cpu() for t in kl_dims], "columns": {k: [t.cpu() for t in v] for k, v in columns.items()}}
    ranks = distributed.all_gather(mine)

    def interleave(get) -> list:
        lists = [get(r) for r in ranks]   # rank r holds batches r, r + W, ...: deal them back in turn
        return [lists[i % world][i // world] for i in range(sum(map(len, lists)))]
    merged_per = {k: [t.to(device) for t in interleave(lambda r, k=k: r["per"][k])] for k in per}
    merged_columns = {k: interleave(lambda r, k=k: r["columns"][k]) for k in columns}
    merged_posteriors = [p.to(device) for p in interleave(lambda r: r["posterior"])]
    merged_kl = [t.to(device) for t in interleave(lambda r: r["kl_dims"])]
    sums = {"rec": totals[2], "kl": totals[3], "iw_ll": totals[4]}
    return int(totals[0]), int(totals[1]), sums, merged_per, merged_posteriors, merged_kl, merged_columns
