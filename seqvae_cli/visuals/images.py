"""What image models show: during training (TensorBoard), at its end and for `seqvae sample`.

Each function draws its own noise from a fixed generator, so figures are comparable from one
validation to the next and drawing them never shifts the training RNG.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid, save_image

from seqvae_cli.config.rules import number, optional_positive_int
from seqvae_cli.data.base import DataModule
from seqvae_cli.models.base import LatentModel, eval_mode

# `seqvae sample`'s keys that only the image figures read (sample() below).
RULES = {
    "traversal_steps": number(2, integer=True),
    "traversal_range": number(0, lo_open=True),
    "traversal_dims": optional_positive_int("every dimension"),
    "manifold_size": number(2, integer=True),
    "scatter_points": number(1, integer=True),
}


def _first_batch(dm: DataModule, split: str, n: int) -> dict:
    return next(iter(dm.eval_batches(split, batch_size=n)))


def _as_images(x: torch.Tensor, dm: DataModule) -> torch.Tensor:
    return x.reshape(-1, *dm.image_shape).clamp(0, 1)


@torch.no_grad()
def image_prior_samples(model: LatentModel, dm: DataModule, n: int = 64, seed: int = 1234) -> torch.Tensor:
    z = model.prior.sample(n, torch.Generator().manual_seed(seed), dm.device)
    return _as_images(model.decode_mean(z), dm)


@torch.no_grad()
def image_reconstructions(model: LatentModel, dm: DataModule, n: int = 16, split: str = "val") -> torch.Tensor:
    """Rows of 8: inputs, then their reconstructions (decoder mean at the posterior mean)."""
    x = _first_batch(dm, split, n)["x"]
    mu = model.posterior({"x": x}).mean
    rec = model.decode_mean(mu)
    rows = []
    for i in range(0, n, 8):
        rows += [x[i:i + 8], rec[i:i + 8]]
    return _as_images(torch.cat(rows), dm)


@torch.no_grad()
def image_interpolation(model: LatentModel, dm: DataModule, steps: int = 10, split: str = "test") -> torch.Tensor:
    """Linear paths in latent space between pairs of test images (one row per pair, endpoints included)."""
    x = _first_batch(dm, split, 16)["x"]
    mu = model.posterior({"x": x}).mean
    alphas = torch.linspace(0, 1, steps, device=mu.device).view(1, steps, 1)
    starts, ends = mu[0:16:2].unsqueeze(1), mu[1:16:2].unsqueeze(1)
    z = (1 - alphas) * starts + alphas * ends
    return _as_images(model.decode_mean(z.reshape(-1, mu.shape[1])), dm)


@torch.no_grad()
def image_traversal(model: LatentModel, dm: DataModule, span: float = 3.0, steps: int = 9,
                    split: str = "test", max_dims: int | None = None) -> torch.Tensor:
    """One row per latent dimension: vary it over [-span, span] around the code of `split`'s first image, the
    others fixed. Rows go from the dimension with the largest mean KL over the split's first batch down (the
    inactive ones, whose rows barely change, come last); max_dims keeps only that many rows (None = all)."""
    batch = _first_batch(dm, split, dm.eval_batch_size)
    q = model.posterior(batch)
    mu = q.mean
    per_dim = q.kl_per_dim(model.prior)   # without a closed form, the spread of the codes ranks the dimensions
    order = (per_dim.mean(0) if per_dim is not None else mu.var(0)).argsort(descending=True)[:max_dims]
    values = torch.linspace(-span, span, steps, device=mu.device)
    z = mu[:1].repeat(len(order) * steps, 1).view(len(order), steps, -1)
    for row, d in enumerate(order.tolist()):
        z[row, :, d] = values
    return _as_images(model.decode_mean(z.reshape(len(order) * steps, -1)), dm)


@torch.no_grad()
def image_manifold(model: LatentModel, dm: DataModule, size: int = 20) -> torch.Tensor:
    """For a 2-d latent: decoder means on a grid of prior quantiles (Kingma & Welling 2014, fig. 4)."""
    q = torch.linspace(0.05, 0.95, size)
    grid = torch.distributions.Normal(0.0, 1.0).icdf(q)
    zy, zx = torch.meshgrid(grid.flip(0), grid, indexing="ij")
    z = torch.stack([zx.reshape(-1), zy.reshape(-1)], 1).to(dm.device)
    return _as_images(model.decode_mean(z), dm)


@torch.no_grad()
def latent_scatter(model: LatentModel, dm: DataModule, path: Path, split: str = "test", points: int = 5000) -> Path:
    """Posterior means of test images coloured by digit; the first two principal components when D > 2."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mus, labels, n = [], [], 0
    for batch in dm.eval_batches(split):
        mus.append(model.posterior(batch).mean), labels.append(batch["y"])
        n += batch["x"].shape[0]
        if n >= points:
            break
    mu, y = torch.cat(mus)[:points].cpu(), torch.cat(labels)[:points].cpu()
    if mu.shape[1] > 2:
        centred = mu - mu.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        mu, axes = centred @ v[:2].T, ("PC 1", "PC 2")
    elif mu.shape[1] == 1:
        mu, axes = torch.cat([mu, torch.zeros_like(mu)], 1), ("z 1", "")
    else:
        axes = ("z 1", "z 2")
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(mu[:, 0], mu[:, 1], c=y, cmap="tab10", s=3, alpha=0.7)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel(axes[0]), ax.set_ylabel(axes[1])
    ax.set_title(f"posterior means of {len(y)} {split} images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _save_and_log(images: torch.Tensor, nrow: int, path: Path | None, writer: SummaryWriter | None,
                  tag: str, step: int) -> None:
    grid = make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
    if writer is not None:
        writer.add_image(tag, grid, step)


# ------------------------------------------------------------------------------- entry points (visuals/__init__.py)

def during_training(model: LatentModel, dm: DataModule, writer: SummaryWriter, step: int) -> None:
    if model.latent_dim == 0:
        return
    with eval_mode(model):
        _save_and_log(image_reconstructions(model, dm), 8, None, writer, "visuals/reconstructions", step)
        _save_and_log(image_prior_samples(model, dm), 8, None, writer, "visuals/prior_samples", step)


def end_of_training(model: LatentModel, dm: DataModule, out_dir: Path, writer: SummaryWriter, step: int) -> None:
    if model.latent_dim == 0:
        return
    model.eval()
    _save_and_log(image_prior_samples(model, dm), 8, out_dir / "prior_samples.png", None, "", step)
    _save_and_log(image_reconstructions(model, dm, split="test"), 8, out_dir / "reconstructions.png", None, "", step)


def sample(model: LatentModel, dm: DataModule, cfg, out_dir: Path, writer: SummaryWriter,
                  step: int) -> list[Path]:
    """Everything `seqvae sample` draws for an image model; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    figures = [("prior_samples", image_prior_samples(model, dm, cfg.num_samples, seed=cfg.seed), 8)]
    with_data = dm.has_split(cfg.split)   # without the images (a checkpoint on its own): the prior's pictures only
    if with_data:
        figures += [
            ("reconstructions", image_reconstructions(model, dm, cfg.num_reconstructions, cfg.split), 8),
            ("interpolation", image_interpolation(model, dm, cfg.interpolation_steps, cfg.split),
             cfg.interpolation_steps),
            ("traversal", image_traversal(model, dm, cfg.traversal_range, cfg.traversal_steps, cfg.split,
                                          cfg.traversal_dims),
             cfg.traversal_steps),
        ]
    if model.latent_dim == 2:
        figures.append(("manifold", image_manifold(model, dm, cfg.manifold_size), cfg.manifold_size))
    for name, images, nrow in figures:
        path = out_dir / f"{name}.png"
        _save_and_log(images, nrow, path, writer, f"visuals/sample/{name}", step)
        written.append(path)
    if not with_data:
        return written
    scatter = latent_scatter(model, dm, out_dir / "latent_scatter.png", cfg.split, cfg.scatter_points)
    from PIL import Image
    import numpy as np
    writer.add_image("visuals/sample/latent_scatter", np.asarray(Image.open(scatter).convert("RGB")), step, dataformats="HWC")
    written.append(scatter)
    return written
