"""A trained run in Python (notebooks): encode, decode, sample and score it with the numbers `seqvae eval` gives.

    import seqvae_cli
    run = seqvae_cli.load("outputs/mlp_vae-mnist/2026-12-04/10-00-00")
    z = run.encode(run.batch("test", 8))

docs/api.md describes every method. The run is rebuilt exactly as `seqvae eval` and `seqvae sample` rebuild it
(training.checkpoint.load_run: the checksummed checkpoint, its config checked against the registered parts).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig

from seqvae_cli.config.rules import is_bf16
from seqvae_cli.config.runtime import pick_device
from seqvae_cli.data.base import Batch, DataModule
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.latent.posterior import Posterior
from seqvae_cli.models.base import LatentModel, eval_mode

SPLITS = ("train", "val", "test")


def load(run: str | Path, checkpoint: str = "best", device: str | torch.device = "auto",
         data_dir: str | None = None) -> Run:
    """A trained run: `run` is a run folder (outputs/NAME/DATE/TIME; `checkpoint` = best | last | a .pt path) or the path
    of a .pt file. device: auto | cpu | cuda | mps. data_dir: the data root, when the data moved since training;
    else $SEQVAE_DATA_DIR, else the root the run trained on (the rule of `seqvae eval`)."""
    from seqvae_cli.training.checkpoint import load_run, resolve_checkpoint
    run_dir, chosen = (None, str(run)) if str(run).endswith(".pt") else (str(run), str(checkpoint))
    root = data_dir or os.environ.get("SEQVAE_DATA_DIR")
    torch_device = device if isinstance(device, torch.device) else pick_device(str(device))
    cfg, dm, model, state = load_run(run_dir, chosen, torch_device, root or "./data", data_dir_is_default=not root)
    return Run(cfg, dm, model, resolve_checkpoint(run_dir, chosen), int(state["epoch"]), int(state["step"]))


class Run:
    """A trained run: `cfg` (its resolved config), `data` (the data module, set up), `model` (in eval mode, on
    `device`), `checkpoint` (the file read), `epoch` and `step` (where training was when it was written)."""

    def __init__(self, cfg: DictConfig, data: DataModule, model: LatentModel, checkpoint: Path, epoch: int,
                 step: int) -> None:
        self.cfg, self.data, self.model, self.checkpoint = cfg, data, model, checkpoint
        self.epoch, self.step = epoch, step
        self.device = next(model.parameters()).device

    def __repr__(self) -> str:
        return (f"Run({self.checkpoint}: {type(self.model).__name__} on {self.cfg.data.get('name', self.data.kind)}, "
                f"latent_dim={self.model.latent_dim}, epoch {self.epoch})")

    # ---------------------------------------------------------------------------------------------- data
    def batch(self, split: str = "test", n: int = 8) -> Batch:
        """The first batch of n examples of a split, as `seqvae eval` reads it (text: sentences of similar length)."""
        self._check_split(split)
        return next(iter(self.data.eval_batches(split, batch_size=n)))

    # ------------------------------------------------------------------------------------------- encoder
    @torch.no_grad()
    def encode(self, x: Batch | torch.Tensor | str | Sequence[str], full: bool = False) -> torch.Tensor | Posterior:
        """The posterior means [B, D] of a batch (run.batch), of rows of data (images: [B, 784] or [B, 1, 28, 28];
        series: [B, T, C]) or, for text, of sentences (a string or a list of strings). full=True: the whole
        posterior (a latent.posterior.Posterior: .mean, .rsample(n), .log_prob(z), .kl(prior); the Gaussian's also
        .mu and .logvar)."""
        self._needs_latent("encode")
        posterior = self._posterior(self._as_batch(x))
        return posterior if full else posterior.mean

    def _posterior(self, batch: Batch) -> Posterior:
        with eval_mode(self.model):
            return self.model.posterior(batch)

    # ------------------------------------------------------------------------------------------- decoder
    @torch.no_grad()
    def decode(self, z: torch.Tensor, strategy: str = "greedy", max_len: int = 50, seed: int = 0,
               **options: Any) -> torch.Tensor | list[str]:
        """The decoder's output for latent codes z [B, D]: images [B, 1, 28, 28] and series [B, T, C] (in the
        model's normalised units) as the decoder mean; text as sentences, decoded by `strategy` (greedy | sample
        | beam; options: temperature, top_k, top_p, beam_width, length_penalty, allow_unk, min_len, no_repeat_ngram,
        with `seqvae sample`'s defaults; seed: the sampling stream)."""
        self._needs_latent("decode")
        z = torch.as_tensor(z, dtype=torch.float32).to(self.device)
        if self.data.kind == "text":
            return self._sentences(z, len(z), strategy, max_len, seed, **options)
        if options or strategy != "greedy":
            raise SeqvaeError(f"decoding options (strategy, {', '.join(options) or 'temperature, ...'}) apply to "
                              f"text models only; this run's data is {self.data.kind}")
        with eval_mode(self.model):
            out = self.model.decode_mean(z)
        shape = getattr(self.data, "image_shape", None)
        return out.reshape(-1, *shape) if self.data.kind == "image" and shape else out

    @torch.no_grad()
    def sample(self, n: int = 16, seed: int = 0, **decoding: Any) -> torch.Tensor | list[str]:
        """n samples from the prior, decoded (run.decode; text takes its decoding options). The same seed draws the
        same z as `seqvae sample seed=SEED` does for its prior samples."""
        if self.model.latent_dim == 0:
            if self.data.kind != "text":
                raise SeqvaeError("this run's model has no latent variable: there is nothing to sample from a prior")
            decoding.setdefault("strategy", "sample")   # a language model: greedy would give one sentence n times
            return self._sentences(None, n, seed=seed, **decoding)
        z = self.model.prior.sample(n, torch.Generator().manual_seed(seed), self.device)
        return self.decode(z, seed=seed, **decoding)

    def _sentences(self, z: torch.Tensor | None, n: int, strategy: str = "greedy", max_len: int = 50,
                   seed: int = 0, length_penalty: float = 1.0, allow_unk: bool = False, min_len: int = 1,
                   no_repeat_ngram: int = 3, **options: Any) -> list[str]:
        """Decoded with `seqvae sample`'s defaults (conf/sample.yaml; tests/test_api.py holds them equal): beams
        ranked per token, and the decoding rules (no <unk>, no empty sentence, no repeated 3-gram)."""
        from seqvae_cli.models.decoding import Rules, decode, to_text
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = decode(self.model, z, n=None if z is not None else n, strategy=strategy, max_len=max_len,
                     generator=generator, length_penalty=length_penalty,
                     rules=Rules(allow_unk, min_len, no_repeat_ngram), **options)
        return to_text(self.data, out)

    # ------------------------------------------------------------------------------------------ scoring
    def evaluate(self, split: str = "test", iw_samples: int | None = None, limit: int | None = None,
                 batch_size: int = 500, seed: int = 0, iw_precision: str = "32", score: str = "neg_elbo",
                 rows_per_chunk: int | None = None) -> dict:
        """The metrics `seqvae eval split=SPLIT iw_samples=K limit_examples=LIMIT batch_size=... seed=...` prints
        (same defaults: iw_samples None = the dataset's data.eval_iw_samples; limit None = the whole split), from
        the same code, so the numbers are the same. Time series write no CSV files from here."""
        from seqvae_cli.evaluation.evaluate import evaluate
        self._check_split(split)
        data = self.data.subset(split, limit, seed) if limit else self.data   # as eval_app: `limit` drawn examples
        metrics = evaluate(self.model, data, split, iw_samples=iw_samples or self.data.eval_iw_samples,
                           batch_size=batch_size, rows_per_chunk=rows_per_chunk, seed=seed,
                           iw_bf16=is_bf16(iw_precision), score=score).metrics
        if "iw_nll" in metrics:
            metrics["iw_precision"] = str(iw_precision)
        return metrics

    # ---------------------------------------------------------------------------------------------- help
    def _as_batch(self, x: Batch | torch.Tensor | str | Sequence[str]) -> Batch:
        if isinstance(x, dict):
            return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
        if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and all(isinstance(s, str) for s in x)):
            if self.data.kind != "text":
                raise SeqvaeError(f"sentences can only be encoded by a text model; this run's data is "
                                  f"{self.data.kind}: pass a batch (run.batch) or a tensor of rows")
            return self.data.batch_from_sentences([x] if isinstance(x, str) else list(x))
        if self.data.kind == "text":
            raise SeqvaeError("a text model encodes sentences (a string or a list of strings) or a batch "
                              "(run.batch), not a bare tensor: a batch also carries each sentence's length")
        rows = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        if self.data.kind == "image":
            rows = rows.reshape(rows.shape[0], -1)     # [B, 1, 28, 28] (what decode returns) -> [B, 784]
        return {"x": rows}

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise SeqvaeError(f"split={split!r} is not a split; choose one of {', '.join(SPLITS)}")

    def _needs_latent(self, what: str) -> None:
        if self.model.latent_dim == 0:
            raise SeqvaeError(f"this run's model has no latent variable: there is nothing to {what}; "
                              f"run.sample(n) draws sentences from it")
