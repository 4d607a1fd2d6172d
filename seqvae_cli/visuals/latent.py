"""Pictures of a learned prior, for every data kind: which mixture component explains each code (prior=mog), the
samples of each component and the codes coloured by component (images), and the VampPrior's pseudo-inputs.

The standard normal has nothing of its own to show: these functions then draw nothing.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from seqvae_cli.data.base import DataModule
from seqvae_cli.latent.mog import MixturePrior
from seqvae_cli.latent.vamp import VampPrior
from seqvae_cli.models.base import LatentModel, eval_mode

SAMPLES_PER_COMPONENT = 8
MAX_COMPONENTS_DRAWN = 20     # rows of components_samples.png (the most used first)


@torch.no_grad()
def codes(model: LatentModel, dm: DataModule, split: str, points: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means of up to `points` examples of `split`, and their labels (zeros when the data has none)."""
    mus, labels, n = [], [], 0
    for batch in dm.eval_batches(split):
        mus.append(model.posterior(batch).mean)
        labels.append(batch.get("y", batch.get("label", torch.zeros(batch["x"].shape[0], dtype=torch.long))))
        n += batch["x"].shape[0]
        if n >= points:
            break
    return torch.cat(mus)[:points], torch.cat(labels)[:points].cpu()


@torch.no_grad()
def component_of(prior: MixturePrior, z: torch.Tensor) -> torch.Tensor:
    """The component with the highest responsibility for each code z [N, D] -> [N] (CPU)."""
    return prior.component_log_probs(z).argmax(-1).cpu()


def during_training(model: LatentModel, dm: DataModule, writer: SummaryWriter, step: int) -> None:
    prior = getattr(model, "prior", None)
    with eval_mode(model):
        if isinstance(prior, MixturePrior):
            used = component_of(prior, codes(model, dm, "val")[0])
            writer.add_histogram("val/prior_component", used.float(), step,
                                 bins=torch.arange(prior.num_components + 1).float() - 0.5)
            writer.add_scalar("val/prior_components_used", float(used.unique().numel()), step)
        if isinstance(prior, VampPrior) and dm.kind == "image":
            from seqvae_cli.visuals.images import _as_images, _save_and_log
            _save_and_log(_as_images(prior.inputs()[:64], dm), 8, None, writer, "visuals/pseudo_inputs", step)


@torch.no_grad()
def sample(model: LatentModel, dm: DataModule, cfg, out_dir: Path, writer: SummaryWriter, step: int) -> list[Path]:
    """What `seqvae sample` adds for a learned prior; returns the files written."""
    prior, written = getattr(model, "prior", None), []
    if dm.kind == "image" and isinstance(prior, VampPrior):
        from seqvae_cli.visuals.images import _as_images, _save_and_log
        path = out_dir / "pseudo_inputs.png"
        _save_and_log(_as_images(prior.inputs()[:100], dm), 10, path, writer, "visuals/sample/pseudo_inputs", step)
        written.append(path)
    if isinstance(prior, MixturePrior):
        mu, labels = codes(model, dm, cfg.split, cfg.scatter_points)
        used = component_of(prior, mu)
        written.append(_component_scatter(mu.cpu(), used, labels, out_dir / "latent_components.png", cfg.split))
        if dm.kind == "image":
            from seqvae_cli.visuals.images import _as_images, _save_and_log
            order = torch.bincount(used, minlength=prior.num_components).argsort(descending=True)
            gen = torch.Generator().manual_seed(cfg.seed)
            rows = [model.decode_mean(prior.sample(SAMPLES_PER_COMPONENT, gen, dm.device, component=int(k)))
                    for k in order[:MAX_COMPONENTS_DRAWN]]
            path = out_dir / "component_samples.png"
            _save_and_log(_as_images(torch.cat(rows), dm), SAMPLES_PER_COMPONENT, path, writer,
                          "visuals/sample/component_samples", step)
            written.append(path)
    return written


def _component_scatter(mu: torch.Tensor, component: torch.Tensor, labels: torch.Tensor, path: Path,
                       split: str) -> Path:
    """Codes (first two principal components when D > 2) coloured by mixture component, beside the data's labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if mu.shape[1] > 2:
        centred = mu - mu.mean(0)
        mu = centred @ torch.linalg.svd(centred, full_matrices=False)[2][:2].T
    elif mu.shape[1] == 1:
        mu = torch.cat([mu, torch.zeros_like(mu)], 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, colour, title in ((axes[0], component, "mixture component (highest responsibility)"),
                              (axes[1], labels, "label of the example")):
        ax.scatter(mu[:, 0], mu[:, 1], c=colour, cmap="tab20", s=3, alpha=0.7)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"posterior means of {len(mu)} {split} examples", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
