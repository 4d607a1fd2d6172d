"""The one objective: the ELBO and its variants (beta, KL annealing, free bits, IWAE), for every model.

All quantities are in nats per example (per image, sentence or sequence)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seqvae_cli.config.rules import BOOLEAN, number
from seqvae_cli.data.base import Batch
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.latent.posterior import DiagonalGaussian
from seqvae_cli.models.base import LatentModel
from seqvae_cli.objective.schedule import KLSchedule

# ------------------------------------------------------------------------------ the objective's keys

# Read by Objective below (beta and kl_anneal.* by objective/schedule.py); ae_pretrain_epochs and aggressive.* also
# by the trainer (training/loop.py, training/extras.py: Li et al. 2019's pre-training, He et al. 2019's updates).
RULES = {
    "objective.iw_samples": number(1, integer=True),
    "objective.free_bits.per_dim": number(0),
    "objective.free_bits.total": number(0),
    "objective.bow_weight": number(0),
    "objective.ae_pretrain_epochs": number(0, integer=True),
    "objective.aggressive.enabled": BOOLEAN,
    "objective.aggressive.max_inner_steps": number(1, integer=True),
    "objective.aggressive.check_every": number(1, integer=True),
}


def check_free_bits(cfg: DictConfig) -> None:
    """Free bits floor the ELBO's KL term, which the IWAE bound does not have."""
    iw_samples = OmegaConf.select(cfg, "objective.iw_samples", default=1) or 1
    free_bits = {k: OmegaConf.select(cfg, f"objective.free_bits.{k}", default=0) or 0 for k in ("per_dim", "total")}
    if iw_samples > 1 and any(free_bits.values()):
        key = next(k for k, v in free_bits.items() if v)
        raise SeqvaeError(f"config error: objective.free_bits.{key}={free_bits[key]} has no meaning for the IWAE "
                          f"bound (objective.iw_samples={iw_samples}): free bits floor the KL term of the ELBO, "
                          f"which the importance-weighted bound does not have; set objective.free_bits.{key}=0 "
                          f"or objective.iw_samples=1")


def check_pretraining(cfg: DictConfig) -> None:
    """AE pre-training must leave a VAE epoch, and is not combined with aggressive encoder updates. Checked here,
    before any data loads; the trainer re-checks against trainer.max_steps once batch counts are known."""
    pretrain = OmegaConf.select(cfg, "objective.ae_pretrain_epochs", default=0) or 0
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if epochs is not None and pretrain >= epochs:
        raise SeqvaeError(f"config error: objective.ae_pretrain_epochs={pretrain} leaves no VAE epoch within "
                          f"trainer.max_epochs={epochs}; lower the first or raise the second")
    if pretrain and OmegaConf.select(cfg, "objective.aggressive.enabled", default=False):
        raise SeqvaeError(f"config error: objective.aggressive.enabled=true (He et al. 2019) and "
                          f"objective.ae_pretrain_epochs={pretrain} (Li et al. 2019) are two different cures for "
                          f"posterior collapse; choose one (set objective.ae_pretrain_epochs=0 or "
                          f"objective.aggressive.enabled=false)")


# ------------------------------------------------------------------------------------- the objective

@dataclass
class Terms:
    """One minibatch's objective. `loss` is what is minimised; the rest are batch means in nats."""

    loss: torch.Tensor
    rec: torch.Tensor          # E_q[log p(x|z)]
    kl: torch.Tensor           # KL(q||p), summed over dims
    kl_per_dim: torch.Tensor   # [D]
    neg_elbo: torch.Tensor
    aux: torch.Tensor
    mu: torch.Tensor | None

    def __post_init__(self) -> None:
        # Everything but the loss is for reporting: keep it out of the autograd graph.
        for name in ("rec", "kl", "kl_per_dim", "neg_elbo", "aux", "mu"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.detach())


class Objective:
    def __init__(self, cfg: DictConfig, total_steps: int, steps_per_epoch: int) -> None:
        self.iw_samples = int(cfg.iw_samples)
        self.free_bits_per_dim = float(cfg.free_bits.per_dim)
        self.free_bits_total = float(cfg.free_bits.total)
        # Li et al. 2019: train as a plain autoencoder first, then reset the decoder (training/loop.py) and anneal.
        self.pretrain_steps = int(cfg.get("ae_pretrain_epochs", 0)) * steps_per_epoch
        self.schedule = KLSchedule.from_config(cfg, total_steps - self.pretrain_steps, steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.bow_weight = float(cfg.get("bow_weight", 0.0))

    def aux_loss(self, model: LatentModel, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """Auxiliary per-example loss: the bag-of-words term of Zhao et al. 2017 when bow_weight > 0."""
        if self.bow_weight <= 0:
            return z.new_zeros(z.shape[0])
        if not hasattr(model, "bag_of_words_nll"):
            raise SeqvaeError(f"objective.bow_weight={self.bow_weight} needs a model with a bag-of-words head "
                              f"(model=lstm_vae); set objective.bow_weight=0 for {type(model).__name__}")
        return self.bow_weight * model.bag_of_words_nll(batch, z)

    def kl_weight(self, step: int) -> float:
        if step < self.pretrain_steps:
            return 0.0
        return self.schedule(step - self.pretrain_steps, self.steps_per_epoch)

    def __call__(self, model: LatentModel, batch: Batch, step: int,
                 weight: float | torch.Tensor | None = None) -> Terms:
        """The terms at training step `step`; `weight` (the KL weight) defaults to the schedule's at that step, and
        may be a device tensor (a CUDA-graph step reads the weight the trainer fills in before each replay)."""
        weight = self.kl_weight(step) if weight is None else weight
        if model.latent_dim == 0:  # a plain autoregressive model: the exact likelihood
            rec = model.log_likelihood(batch, None)[0]
            zero = rec.new_zeros(())
            return Terms(-rec.mean(), rec.mean(), zero, rec.new_zeros(0), -rec.mean(), zero, None)
        # Under bf16-mixed autocast the heads' outputs are bfloat16: the KL and the bounds are summed in float32.
        q, prior = model.posterior(batch).float(), model.prior
        mu = q.mean
        closed = q.kl_per_dim(prior)       # [B, D]; None where the KL has no closed form (mog, vamp, flows)
        if not model.variational or step < self.pretrain_steps:
            z = mu.unsqueeze(0)
            rec = model.log_likelihood(batch, z)[0]
            aux = self.aux_loss(model, batch, mu)
            zero = rec.new_zeros(())
            if model.variational:  # autoencoder pre-training of a VAE: report its KL, do not train on it
                kl = (closed.sum(1) if closed is not None else q.kl(prior)).detach()
                kl_per_dim = closed.mean(0).detach() if closed is not None else kl.new_zeros(0)
                return Terms((-rec + aux).mean(), rec.mean(), kl.mean(), kl_per_dim, (kl - rec).mean(), aux.mean(),
                             mu.detach())
            return Terms((-rec + aux).mean(), rec.mean(), zero, mu.new_zeros(mu.shape[1]), -rec.mean(),
                         aux.mean(), mu.detach())
        if self.iw_samples > 1:
            if isinstance(q, DiagonalGaussian):   # the densities after the decoder, as before flows: the same
                z = q.rsample(self.iw_samples)      # gradient accumulation order, so IWAE runs replay bit for bit
                log_px = model.log_likelihood(batch, z)       # [k, B]
                log_pz, log_q = prior.log_prob(z), q.log_prob(z)
            else:   # a flow's density is known at its own samples only
                z, log_q = q.rsample_and_log_prob(self.iw_samples)
                log_px = model.log_likelihood(batch, z)
                log_pz = prior.log_prob(z)
            # The annealing weight scales log p(z) - log q(z|x) inside the importance weights.
            log_w = log_px + weight * (log_pz - log_q)
            bound = torch.logsumexp(log_w, 0) - math.log(self.iw_samples)
            rec = log_px.mean(0)
            kl = closed.sum(1) if closed is not None else (log_q - log_pz).mean(0)   # reported: MC over the k draws
            aux = self.aux_loss(model, batch, z[0])
            loss = (-bound + aux).mean()
        else:
            if closed is not None:
                z = q.rsample(1)
                kl = closed.sum(1)                            # [B]
            else:   # the Monte Carlo KL at the sample the decoder scores: the ELBO's own single-sample estimate
                z, log_q = q.rsample_and_log_prob(1)
                kl = (log_q - prior.log_prob(z))[0]
            rec = model.log_likelihood(batch, z)[0]
            aux = self.aux_loss(model, batch, z[0])
            kl_term = kl.mean()
            if self.free_bits_per_dim > 0:     # config rules refuse free bits without a closed-form KL
                kl_term = closed.mean(0).clamp(min=self.free_bits_per_dim).sum()
            if self.free_bits_total > 0:
                kl_term = kl_term.clamp(min=self.free_bits_total)
            loss = -rec.mean() + weight * kl_term + aux.mean()
        neg_elbo = (kl - rec).mean()
        kl_per_dim = closed.mean(0) if closed is not None else kl.new_zeros(0)
        return Terms(loss, rec.mean(), kl.mean(), kl_per_dim.detach(), neg_elbo, aux.mean(), mu.detach())


class TrainingLoss(nn.Module):
    """A model and its objective as one module whose forward is a training step's loss: DistributedDataParallel
    averages the gradients of what a module's forward reached, and the objective calls the model's encode and
    log_likelihood rather than its forward."""

    def __init__(self, model: LatentModel, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Batch, step: int, weight: float | torch.Tensor | None = None) -> tuple[torch.Tensor, Terms]:
        terms = self.objective(self.model, batch, step, weight)
        return terms.loss, terms
