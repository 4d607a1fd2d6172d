"""What time-series models show, as PNG line plots and the same figures in TensorBoard (writer.add_figure):
prior samples, reconstructions, an interpolation, forecasts by sampling (against the last-value and
seasonal-naive baselines) and, for windowed data (NAB/CSV), the test series with its anomaly score.

Curves are drawn in the data's own units (dm.denormalize); MSEs in titles are in normalised units, like the
`mse` of `seqvae eval`. Every random draw comes from a generator seeded with sample.seed (1234 during
training), so figures are comparable from one run or validation to the next.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from seqvae_cli.config.rules import number, optional_positive_int
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.evaluation.baselines import dominant_period, last_value_forecast, seasonal_naive_forecast
from seqvae_cli.evaluation.series import pick_score
from seqvae_cli.files import write_json_atomic
from seqvae_cli.memory import check_fits, forecast_sample_bytes
from seqvae_cli.models.base import eval_mode

# `seqvae sample`'s keys that only the time-series figures read (sample() below; score: evaluation/series.py).
RULES = {
    "forecast_prefix": number(0, 1, lo_open=True),
    "num_forecasts": number(1, integer=True),
    "forecast_windows": number(1, integer=True),
    "season": optional_positive_int("estimated"),
}


MAX_SERIES_PLOTS = 4      # windowed data: at most this many series in anomaly_scores.png
MAX_FORECAST_PLOTS = 3    # forecasts: windows drawn (all `forecast_windows` are scored)
DRAWN_SAMPLES = 20        # forecasts: thin lines of this many sampled continuations (all enter median/band)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(n: int) -> list:
    return [_pyplot().get_cmap("tab10")(i % 10) for i in range(n)]


def _units(dm, x: torch.Tensor, series: torch.Tensor | None = None) -> np.ndarray:
    """Normalised [B, T, C] -> numpy in the data's units; without series ids, the statistics of series 0."""
    if series is None:
        series = torch.zeros(x.shape[0], dtype=torch.long)
    return dm.denormalize(x.detach().cpu(), series.detach().cpu()).float().numpy()


def _rows(dm, split: str, idx: torch.Tensor) -> dict:
    """Rows `idx` of a split as a batch (SeriesData keeps each split as tensors)."""
    tensors = dm.splits[split]
    idx = idx.to(tensors["x"].device)
    return {k: v[idx] for k, v in tensors.items()}


def _first(dm, split: str, n: int) -> dict:
    return next(iter(dm.eval_batches(split, batch_size=max(1, n))))


def _cell_grid(seqs: np.ndarray, overlay: np.ndarray | None = None, titles: list[str] | None = None,
               title_colors: list[str] | None = None, cols: int = 8, cell_inches: float = 2.0):
    """Sequences [N, T, C] in a grid of cells drawn on ONE axes (one axes per sequence is slow in matplotlib):
    cell i holds sequence i (a colour per channel); `overlay` [N, T, C] is drawn under it in black. All cells
    share one y-scale, given by the axis on the left of the first column."""
    plt = _pyplot()
    n, t, c_count = seqs.shape
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    both = seqs if overlay is None else np.concatenate([seqs, overlay])
    lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
    span = max(hi - lo, 1e-6)
    height, width = span * 1.25, t * 1.08
    fig, ax = plt.subplots(figsize=(min(cell_inches * cols, 18), 1.35 * rows + 0.6))
    colors = _colors(c_count)
    steps = np.arange(t)
    for i in range(n):
        r, col = divmod(i, cols)
        x0, y0 = col * width, -r * height
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 + lo - 0.1 * span), t, span * 1.2, fill=False, lw=0.4,
                                   ec="lightgrey"))
        if overlay is not None:
            for c in range(c_count):
                ax.plot(x0 + steps, y0 + overlay[i, :, c], color="black", lw=0.7, alpha=0.6)
        for c in range(c_count):
            ax.plot(x0 + steps, y0 + seqs[i, :, c], color=colors[c], lw=0.9)
        if titles:
            ax.text(x0, y0 + hi + 0.08 * span, titles[i], fontsize=6, va="bottom",
                    color=(title_colors or ["black"] * n)[i])
    ax.set_xlim(-1, cols * width)
    ax.set_ylim(-(rows - 1) * height + lo - 0.15 * span, hi + 0.2 * span)
    ax.set_xticks([])
    ax.set_yticks(np.linspace(lo, hi, 3))
    ax.tick_params(labelsize=6)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _label_text(label: int) -> str:
    return {1: "anomalous", 0: "normal"}.get(int(label), "")


def _channel_legend(fig, dm) -> None:
    if dm.num_channels > 1:
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], color=c) for c in _colors(dm.num_channels)]
        fig.legend(handles, dm.channel_names or [f"channel {i}" for i in range(dm.num_channels)],
                   loc="upper right", fontsize=7)


# ------------------------------------------------------------------------------------------ figures

@torch.no_grad()
def prior_samples_figure(model, dm, n: int = 16, seed: int = 1234):
    """Decoder means of n draws from the prior."""
    z = model.prior.sample(n, torch.Generator().manual_seed(seed), dm.device)
    x = _units(dm, model.decode_mean(z))
    fig, ax = _cell_grid(x)
    units = " (units of series 0)" if len(getattr(dm, "series_names", [])) > 1 else ""
    ax.set_title(f"{n} sequences from the prior: decoder mean of z ~ N(0, I){units}", fontsize=10)
    _channel_legend(fig, dm)
    fig.tight_layout()
    return fig


def reconstruction_caption(model) -> str:
    """Why the reconstructions' MSEs are what they are: the autoregressive decoder draws them as free runs."""
    if getattr(model, "series_decoder", "repeat") == "autoregressive":
        return ("Each reconstruction is the decoder's free run from the posterior mean: after z it sees none of the "
                "input, so it keeps the input's frequency band and shape but drifts in phase; half a period of drift "
                "doubles the error, so MSEs of 1-3 in normalised units (where predicting 0 scores 1) are normal here. "
                "Forecasts observe their prefix and are the sharper test (forecasts.png).")
    return ("Each reconstruction is the decoder mean at the posterior mean (the repeat decoder reads only z). MSE in "
            "normalised units: predicting 0 everywhere scores 1.")


@torch.no_grad()
def reconstruction_figure(model, dm, split: str = "val", n: int = 16):
    """Inputs (black) and their reconstructions (decoder mean at the posterior mean, colour), two per row, with a
    caption that says how to read the MSEs."""
    batch = _first(dm, split, n)
    mu = model.posterior(batch).mean
    rec = model.decode_mean(mu)
    mse = (rec - batch["x"]).pow(2).mean((-2, -1)).cpu()
    x, r = _units(dm, batch["x"], batch["series"]), _units(dm, rec, batch["series"])
    labels = batch["label"].tolist()
    titles = [f"{_label_text(lab)} mse {float(e):.3f}".strip() for lab, e in zip(labels, mse)]
    fig, ax = _cell_grid(r, overlay=x, titles=titles, cols=2, cell_inches=5.0,
                         title_colors=["tab:red" if lab == 1 else "black" for lab in labels])
    ax.set_title(f"{split} sequences (black) and their reconstructions (colour; mse in normalised units)",
                 fontsize=10)
    _channel_legend(fig, dm)
    import textwrap
    caption = textwrap.fill(reconstruction_caption(model), 150)
    fig.text(0.01, 0.005, caption, fontsize=7, va="bottom", ha="left")
    lines = caption.count("\n") + 1   # 7-point lines are ~0.13 inch high
    fig.tight_layout(rect=(0, (0.13 * lines + 0.1) / fig.get_size_inches()[1], 1, 1))
    return fig


@torch.no_grad()
def interpolation_figure(model, dm, split: str = "test", steps: int = 10):
    """Decoder means along the straight line between the posterior means of two sequences of `split`."""
    plt = _pyplot()
    batch = _first(dm, split, 2)
    if batch["x"].shape[0] < 2:
        raise SeqvaeError(f"the {split} split holds fewer than 2 sequences: nothing to interpolate between")
    mu = model.posterior(batch).mean
    alphas = torch.linspace(0, 1, steps, device=mu.device).unsqueeze(1)
    path = model.decode_mean((1 - alphas) * mu[0] + alphas * mu[1])
    series = batch["series"][:1].expand(steps)
    curves, ends = _units(dm, path, series), _units(dm, batch["x"], batch["series"])
    c_count = dm.num_channels
    fig, axes = plt.subplots(c_count, 1, figsize=(9, 2.6 * c_count), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for c in range(c_count):
        ax = axes[c, 0]
        for k in range(steps):
            ax.plot(curves[k, :, c], color=cmap(k / max(steps - 1, 1)), lw=1.0)
        ax.plot(ends[0, :, c], color=cmap(0.0), ls="--", lw=1.2, label="sequence A (input)")
        ax.plot(ends[1, :, c], color=cmap(1.0), ls="--", lw=1.2, label="sequence B (input)")
        ax.set_ylabel(dm.channel_names[c] if dm.channel_names else f"channel {c}", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    axes[0, 0].set_title(f"interpolation A -> B in latent space ({steps} steps, colour = position; "
                         f"dashed = the two inputs)", fontsize=10)
    fig.tight_layout()
    return fig


def forecast_windows(dm, split: str, count: int) -> torch.Tensor:
    """`count` rows of `split` spread evenly over it, taken among the normal (non-anomalous) rows if any."""
    labels = dm.splits[split]["label"].cpu()
    pool = torch.nonzero(labels != 1).squeeze(1)
    if pool.numel() == 0:
        pool = torch.arange(labels.numel())
    pick = torch.linspace(0, pool.numel() - 1, min(count, pool.numel())).round().long()
    return pool[pick]


@torch.no_grad()
def forecast_figure(model, dm, split: str = "test", prefix_fraction: float = 0.75, num_forecasts: int = 100,
                    windows: int = 3, season: int | None = None, seed: int = 1234):
    """For a few windows of `split`: observe the first prefix_fraction of the window, sample num_forecasts
    continuations (model.forecast), and draw their median and 5-95% band against the truth, with the
    last-value and seasonal-naive baselines. Returns (figure, {"model"|"last_value"|"seasonal_naive": mean MSE})."""
    plt = _pyplot()
    t = dm.seq_len
    p = min(t - 1, max(1, int(round(prefix_fraction * t))))
    h = t - p
    batch = _rows(dm, split, forecast_windows(dm, split, windows))
    x, series = batch["x"], batch["series"]
    prefix, truth = x[:, :p], x[:, p:]
    gen = torch.Generator(device=dm.device).manual_seed(seed)
    samples = model.forecast(prefix, h, num_forecasts, generator=gen)             # [N, B, H, C]
    median = samples.median(0).values
    lo, hi = torch.quantile(samples, torch.tensor([0.05, 0.95], device=samples.device), dim=0)
    last = last_value_forecast(prefix, h)
    # one season per window and channel: given, or estimated from that channel's observed prefix
    seasons = [[min(p, season if season is not None else dominant_period(prefix[i, :, c].cpu()))
                for c in range(prefix.shape[2])] for i in range(prefix.shape[0])]
    naive = torch.stack([torch.cat([seasonal_naive_forecast(prefix[i, :, c:c + 1], h, s) for c, s in enumerate(row)],
                                   dim=1) for i, row in enumerate(seasons)])
    mse = {name: (f - truth).pow(2).mean((-2, -1)) for name, f in
           (("model", median), ("last_value", last), ("seasonal_naive", naive))}
    # Every window enters the MSEs; only the first few are drawn.
    b, c_count = min(x.shape[0], MAX_FORECAST_PLOTS), dm.num_channels
    fig, axes = plt.subplots(b, c_count, figsize=(8 * c_count, 2.8 * b), squeeze=False)
    steps_p, steps_h = np.arange(p), np.arange(p, t)
    units = lambda v: _units(dm, v, series)   # noqa: E731
    px, tx, mx, lx, hx = units(prefix), units(truth), units(median), units(lo), units(hi)
    lastx, naivex = units(last), units(naive)
    drawn = [units(samples[k]) for k in range(min(DRAWN_SAMPLES, num_forecasts))]
    for i in range(b):
        for c in range(c_count):
            ax = axes[i, c]
            for d in drawn:
                ax.plot(steps_h, d[i, :, c], color="tab:blue", lw=0.4, alpha=0.25)
            ax.fill_between(steps_h, lx[i, :, c], hx[i, :, c], color="tab:blue", alpha=0.2, label="90% band")
            ax.plot(steps_p, px[i, :, c], color="black", lw=1.2, label="observed")
            ax.plot(steps_h, tx[i, :, c], color="black", lw=1.2, ls="--", label="truth")
            ax.plot(steps_h, mx[i, :, c], color="tab:blue", lw=1.6,
                    label=f"median of {num_forecasts} ({float(mse['model'][i]):.3f})")
            ax.plot(steps_h, lastx[i, :, c], color="tab:orange", lw=1.0, ls=":",
                    label=f"last value ({float(mse['last_value'][i]):.3f})")
            ax.plot(steps_h, naivex[i, :, c], color="tab:green", lw=1.0, ls=":",
                    label=f"seasonal naive, s={'/'.join(map(str, seasons[i]))} "
                          f"({float(mse['seasonal_naive'][i]):.3f})")
            ax.axvline(p - 0.5, color="grey", lw=0.6)
            ax.tick_params(labelsize=7)
            if c == 0:
                start, sid = int(batch["start"][i]), int(series[i])
                names = getattr(dm, "series_names", [])
                what = (f"{split} window at step {start} of {names[sid] if sid < len(names) else sid}" if start >= 0
                        else f"{split} sequence {sid}")
                ax.set_title(f"{what}: forecast from step {p} (legend: the window's MSE over all channels, "
                             f"normalised units)", fontsize=8)
                ax.legend(fontsize=6, loc="upper left", ncol=2)
    fig.tight_layout()
    return fig, {k: float(v.mean()) for k, v in mse.items()}


def _shade_labels(ax, x: np.ndarray, labels: np.ndarray) -> None:
    """Shade the runs of labelled (1) timestamps."""
    on = np.r_[False, labels == 1, False]
    edges = np.flatnonzero(on[1:] != on[:-1])
    for a, b in zip(edges[::2], edges[1::2]):
        ax.axvspan(x[a] - 0.5, x[b - 1] + 0.5, color="tab:red", alpha=0.15, lw=0)


@torch.no_grad()
def anomaly_score_figure(model, dm, split: str = "test", score: str = "neg_elbo"):
    """Windowed data: each series of `split` (raw values, labelled windows shaded) above its per-timestamp score."""
    from seqvae_cli.evaluation.ranking import auroc
    from seqvae_cli.evaluation.evaluate import evaluate
    plt = _pyplot()
    iw = dm.eval_iw_samples if score == "iw_nll" else 0
    result = evaluate(model, dm, split, iw_samples=iw, with_mutual_info=False)
    scores = pick_score(result.per_example, score)
    parts = dm.split_series(split)
    per_timestamp = dm.timestamp_scores(scores, split)
    shown = list(zip(parts, per_timestamp))[:MAX_SERIES_PLOTS]
    fig, axes = plt.subplots(2 * len(shown), 1, figsize=(12, 3.2 * len(shown)), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1] * len(shown)})
    for k, (part, ts) in enumerate(shown):
        top, bottom = axes[2 * k, 0], axes[2 * k + 1, 0]
        x = part.offset + np.arange(len(part))
        values = np.asarray(part.values).reshape(len(part), -1)
        for c, color in zip(range(values.shape[1]), _colors(values.shape[1])):
            top.plot(x, values[:, c], color=color, lw=0.7)
        bottom.plot(x, ts, color="tab:purple", lw=0.7)
        for ax in (top, bottom):
            _shade_labels(ax, x, np.asarray(part.labels))
            ax.tick_params(labelsize=7)
            ax.set_xlim(x[0], x[-1])
        value = auroc(ts, part.labels)
        top.set_title(f"{part.name} ({split} part; labelled anomaly windows shaded)"
                      + (f": per-timestamp AUROC {value:.3f}" if value == value else ""), fontsize=9)
        bottom.set_ylabel(score, fontsize=8)
    bottom.set_xlabel("timestamp index in the series", fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- entry points

def _save(fig, path: Path | None, writer: SummaryWriter | None, tag: str, step: int) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    if writer is not None:
        writer.add_figure(tag, fig, step, close=False)
    _pyplot().close(fig)


def during_training(model, dm, writer: SummaryWriter, step: int) -> None:
    """At each validation: inputs and reconstructions of 8 validation sequences, to TensorBoard."""
    if model.latent_dim == 0:
        return
    with eval_mode(model):
        _save(reconstruction_figure(model, dm, "val", 8), None, writer, "visuals/reconstructions", step)


def forecast_with_scores(model, dm, cfg, out_dir: Path):
    """The forecast figure; its MSEs (model median, last value, seasonal naive) go to forecast_mse.json."""
    fig, mse = forecast_figure(model, dm, cfg.split, cfg.forecast_prefix, cfg.num_forecasts, cfg.forecast_windows,
                               cfg.season, cfg.seed)
    scores = {"split": cfg.split, "windows": cfg.forecast_windows, "prefix_fraction": cfg.forecast_prefix,
              "num_forecasts": cfg.num_forecasts, "mse_normalised_units": mse}
    write_json_atomic(out_dir / "forecast_mse.json", scores)
    return fig


def sample(model, dm, cfg, out_dir: Path, writer: SummaryWriter, step: int) -> list[Path]:
    """Everything `seqvae sample` draws for a time-series model; returns the files written."""
    if not dm.has_split(cfg.split):   # a checkpoint on its own: the prior's sequences, in the data's units
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "prior_samples.png"
        _save(prior_samples_figure(model, dm, cfg.num_samples, cfg.seed), path, writer, "visuals/sample/prior_samples",
              step)
        return [path]
    windows = len(forecast_windows(dm, cfg.split, cfg.forecast_windows))
    check_fits("num_forecasts", cfg.num_forecasts, forecast_sample_bytes(model, windows), 0,
               f"{cfg.num_forecasts} forecasts of each of {windows} windows at once", dm.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    figures = [
        ("prior_samples", lambda: prior_samples_figure(model, dm, cfg.num_samples, cfg.seed)),
        ("reconstructions", lambda: reconstruction_figure(model, dm, cfg.split, cfg.num_reconstructions)),
        ("interpolation", lambda: interpolation_figure(model, dm, cfg.split, cfg.interpolation_steps)),
        ("forecasts", lambda: forecast_with_scores(model, dm, cfg, out_dir)),
    ]
    if getattr(dm, "windowed", False):
        figures.append(("anomaly_scores", lambda: anomaly_score_figure(model, dm, cfg.split, cfg.score)))
    written = []
    for name, draw in figures:
        path = out_dir / f"{name}.png"
        _save(draw(), path, writer, f"visuals/sample/{name}", step)
        written.append(path)
    return written
