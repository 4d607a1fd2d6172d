"""Posterior collapse, said at the end of training: a VAE whose decoder learned to ignore z trains without an error
and reports a fine-looking -ELBO, so the last lines of the run say it, with the numbers and the remedy."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from seqvae_cli.config.runtime import conf_dir

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
    return (f"the latent collapsed: {split} KL {kl:.4f} nats, {active} of {latent_dim} active units (the decoder "
            f"ignores z, so reconstructions do not follow their input); {remedy(cfg)}")


def remedy(cfg: DictConfig) -> str:
    """What to change: the cures this run lacks (KL annealing, free bits), else train longer or cure harder; and the
    measured recipe of this model on this data where one exists and this run did not train it."""
    get = lambda key, default: OmegaConf.select(cfg, key, default=default)
    annealed = get("objective.kl_anneal.schedule", "constant") != "constant"
    per_dim = float(get("objective.free_bits.per_dim", 0.0) or 0.0)
    cures = [] if annealed else ["objective.kl_anneal.schedule=cyclical"]
    if (get("objective.iw_samples", 1) or 1) <= 1:   # free bits are refused with the IWAE bound
        cures.append(f"objective.free_bits.per_dim={max(0.05, 2 * per_dim):g}")
    if "tokenizer" in cfg.data and not get("model.word_dropout", 0):   # text: Bowman et al.'s cure as well
        cures.append("model.word_dropout=0.25")
    said = "train again with " + " ".join(cures) if cures else "train again with a larger objective.free_bits.per_dim"
    if annealed or per_dim > 0:   # the cures are on: early in training z is often unused yet
        said = f"train longer (trainer.max_epochs), or {said}"
    recipe = f"{get('data.name', '')}_{get('model.name', '')}"
    if not (annealed or per_dim > 0) and (conf_dir() / "recipe" / f"{recipe}.yaml").is_file():
        said += f"; or train the measured recipe (conf/recipe/{recipe}.yaml), which this model and data get without " \
                f"recipe=none or an experiment preset"
    return said
