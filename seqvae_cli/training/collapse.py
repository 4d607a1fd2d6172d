"""Posterior collapse, said at the end of training: a VAE whose decoder learned to ignore z trains without an error
and reports a fine-looking -ELBO, so the last lines of the run say it, with the numbers and the remedy."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

# Below either, the latent carries (almost) nothing: the headline PTB run that collapsed had KL 0.0088 nats and 0
# active units; the recipes give KL 1.6-2 and all 32 units.
MIN_KL_NATS = 1.0
MIN_ACTIVE_UNITS = 5


def collapse_warning(metrics: dict, cfg: DictConfig, latent_dim: int, split: str) -> str | None:
    """One line when `metrics` (the test pass, else the best validation) show a collapsed latent, else None."""
    if "kl" not in metrics or "active_units" not in metrics or latent_dim == 0:
        return None
    kl, active = float(metrics["kl"]), int(metrics["active_units"])
    if kl >= MIN_KL_NATS and active >= min(MIN_ACTIVE_UNITS, latent_dim):
        return None
    get = lambda key, default: OmegaConf.select(cfg, key, default=default)
    annealed = get("objective.kl_anneal.schedule", "constant") != "constant"
    per_dim = float(get("objective.free_bits.per_dim", 0.0) or 0.0)
    cures = [] if annealed else ["objective.kl_anneal.schedule=cyclical"]
    if (get("objective.iw_samples", 1) or 1) <= 1:
        cures.append(f"objective.free_bits.per_dim={max(0.05, 2 * per_dim):g}")
    remedy = "train again with " + " ".join(cures) if cures else "train again with model.word_dropout=0.25 (text)"
    if annealed or per_dim > 0:   # the cures are on: early in training z is often unused yet
        remedy = f"train longer (trainer.max_epochs: the measured PTB recipes had 32 active units after 20 epochs), or {remedy}"
    else:
        remedy += f" (conf/recipe/{cfg.data.name}_{cfg.model.name}.yaml, where it exists, does: drop recipe=none)"
    return (f"the latent collapsed: {split} KL {kl:.4f} nats, {active} of {latent_dim} active units (the decoder "
            f"ignores z, so reconstructions do not follow their input); {remedy}")
