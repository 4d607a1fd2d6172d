"""Tests of the time-series LSTM-VAE (models/series_vae.py SeriesLSTMVAE behind model=lstm_vae), its anomaly scoring
(evaluate -> anomaly.series_evaluation) and pictures (visuals_series), then `seqvae train/eval/sample` on
real ECG5000 and on the synthetic sines.

Unit tests use tiny random models with fixed seeds (seconds on a CPU); the CLI tests train debug=smoke runs
of a tiny model and are skipped when $SEQVAE_DATA_DIR holds no ECG5000.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF_DIR, DATA_DIR, compose_train_config, describe, run_seqvae
from seqvae_cli.latent.posterior import DiagonalGaussian
from seqvae_cli.latent.prior import StandardNormal
from seqvae_cli.evaluation.baselines import rolling_zscore_scores
from seqvae_cli.evaluation.ranking import auprc, auroc
from seqvae_cli.data.series.csv import CSVData
from seqvae_cli.data.series.sines import SinesData
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.evaluation.evaluate import evaluate
from seqvae_cli.models.base import LatentModel
from seqvae_cli.models.lstm_vae import SERIES_ONLY_KEYS, TEXT_ONLY_KEYS, lstm_vae
from seqvae_cli.models.sentence_vae import LSTMVAE
from seqvae_cli.models.series_vae import SeriesLSTMVAE, gaussian_log_prob

CPU = torch.device("cpu")
YAML_KEYS = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "lstm_vae.yaml")).items()
             if k != "_target_"}
TINY = dict(embed_dim=4, hidden_size=6, latent_dim=3)
TEXT_DATA = dict(vocab_size=20, pad_id=0, unk_id=1, sos_id=2, eos_id=3)


def tiny_model(series_decoder="repeat", output_std="learned_channel", rnn="lstm", bidirectional=False,
               channels=2, seq_len=12, z_conditioning="init", seed=0, **kw) -> SeriesLSTMVAE:
    torch.manual_seed(seed)
    return SeriesLSTMVAE(channels, seq_len, series_decoder=series_decoder, output_std=output_std, rnn=rnn,
                         bidirectional=bidirectional, z_conditioning=z_conditioning, encoder_layers=2,
                         decoder_layers=2, **{**TINY, **kw}).eval()


VARIANTS = [("repeat", "learned_channel", "lstm", False, "init"), ("repeat", "learned_step", "gru", True, "concat"),
            ("autoregressive", "fixed", "lstm", True, "both"), ("autoregressive", "learned_step", "gru", False, "init"),
            ("autoregressive", "learned_channel", "lstm", False, "concat")]


# ------------------------------------------------------------------------------------------ factory

def test_factory_dispatches_on_what_the_data_gives():
    keys = {**YAML_KEYS, **TINY}
    assert set(TEXT_ONLY_KEYS) & set(SERIES_ONLY_KEYS) == set()
    assert set(keys) >= (set(TEXT_ONLY_KEYS) | set(SERIES_ONLY_KEYS)) - {"vocab_size", "pad_id", "unk_id", "sos_id",
                                                                         "eos_id", "num_channels", "seq_len"}
    text = lstm_vae(**keys, **TEXT_DATA)
    assert type(text) is LSTMVAE and text.latent_dim == 3 and text.vocab_size == 20
    series = lstm_vae(**keys, num_channels=2, seq_len=12)
    assert type(series) is SeriesLSTMVAE and series.latent_dim == 3
    assert (series.num_channels, series.seq_len, series.series_decoder) == (2, 12, YAML_KEYS["series_decoder"])
    with pytest.raises(SeqvaeError, match="model=lstm_vae needs text data .* this data gives input_dim"):
        lstm_vae(**keys, input_dim=784)
    with pytest.raises(SeqvaeError, match="model.series_decoder='sideways'"):
        lstm_vae(**{**keys, "series_decoder": "sideways"}, num_channels=1, seq_len=5)
    with pytest.raises(SeqvaeError, match="model.output_std"):
        lstm_vae(**{**keys, "output_std": "per_pixel"}, num_channels=1, seq_len=5)
    # A text-only setting that the series model could not take is simply not passed to it, and vice versa.
    assert type(lstm_vae(**{**keys, "tie_weights": True}, num_channels=1, seq_len=5)) is SeriesLSTMVAE
    assert type(lstm_vae(**{**keys, "fixed_std": -1.0}, **TEXT_DATA)) is LSTMVAE


def test_config_builds_the_series_model(tmp_path):
    from seqvae_cli.training.checkpoint import build
    from seqvae_cli.config.rules import validate

    cfg = compose_train_config("model=lstm_vae", "data=sines", f"paths.data_dir={tmp_path}",
                               "data.num_series.train=8", "data.num_series.val=4", "data.num_series.test=4",
                               "data.seq_len=10", "model.embed_dim=4", "model.hidden_size=5", "model.latent_dim=2")
    bad = compose_train_config("model=lstm_vae", "data=sines", "model.output_std=wide")
    validate(cfg)
    with pytest.raises(SeqvaeError, match="model.output_std='wide'"):
        validate(bad)
    dm, net = build(cfg, CPU)
    assert isinstance(net, SeriesLSTMVAE) and (net.num_channels, net.seq_len) == (2, 10)
    batch = next(dm.train_batches(torch.Generator().manual_seed(0)))
    assert torch.isfinite(net.log_likelihood(batch, torch.zeros(2, batch["x"].shape[0], 2))).all()


@pytest.mark.parametrize("experiment,data,decoder", [("sines", "sines", "autoregressive"),
                                                     ("ecg5000", "ecg5000", "repeat"), ("nab", "nab", "repeat")])
def test_series_presets_compose(experiment, data, decoder):
    from seqvae_cli.config.rules import validate

    cfg = compose_train_config(f"experiment={experiment}", "debug=smoke")
    validate(cfg)
    assert cfg.data.name == data and cfg.model._target_ == "seqvae_cli.models.lstm_vae.lstm_vae"
    assert cfg.model.series_decoder == decoder and cfg.model.output_std == "learned_channel"
    assert 64 <= cfg.model.hidden_size <= 128 and 8 <= cfg.model.latent_dim <= 16
    assert cfg.objective.kl_anneal.schedule == "linear" and cfg.optimized_metric == "val/neg_elbo"
    assert cfg.trainer.limit_train_batches == 5      # debug applies after the experiment


# ---------------------------------------------------------------------------------------- likelihood

def test_gaussian_log_prob_is_torch_normal():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(5, 7, 3, generator=g), torch.randn(5, 7, 3, generator=g)
    log_std = torch.randn(5, 7, 3, generator=g)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(x)
    assert torch.allclose(gaussian_log_prob(x, mean, log_std), expected, atol=1e-5)
    channel = torch.randn(3, generator=g)   # broadcasting a per-channel std
    assert torch.allclose(gaussian_log_prob(x, mean, channel),
                          torch.distributions.Normal(mean, channel.exp()).log_prob(x), atol=1e-5)


@pytest.mark.parametrize("decoder,std,rnn,bidir,cond", VARIANTS, ids=lambda v: str(v))
def test_log_likelihood_shapes_and_samples_are_independent(decoder, std, rnn, bidir, cond, monkeypatch):
    model = tiny_model(decoder, std, rnn, bidir, z_conditioning=cond)
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(4, 12, 2, generator=g)}
    mu, logvar = model.posterior(batch).tensors()
    assert mu.shape == logvar.shape == (4, 3)
    z = torch.randn(3, 4, 3, generator=g)
    ll = model.log_likelihood(batch, z)
    assert ll.shape == (3, 4) and torch.isfinite(ll).all()
    separate = torch.cat([model.log_likelihood(batch, z[i:i + 1]) for i in range(3)])
    assert torch.allclose(ll, separate, atol=1e-5)
    # each example's score depends on its own row only
    assert torch.allclose(model.log_likelihood({"x": batch["x"][1:2]}, z[:, 1:2])[:, 0], ll[:, 1], atol=1e-5)
    # chunked no-grad scoring (importance sampling) gives the same numbers
    monkeypatch.setattr(SeriesLSTMVAE, "max_rows_per_pass", 5)
    with torch.no_grad():
        assert torch.allclose(model.log_likelihood(batch, z), ll, atol=1e-5)
    assert model.decode_mean(z).shape == (3, 4, 12, 2) and model.decode_mean(z[0]).shape == (4, 12, 2)


@pytest.mark.parametrize("decoder", ["repeat", "autoregressive"])
def test_likelihood_of_the_decoder_mean_is_the_normalising_constant(decoder):
    """x = decode_mean(z) (the autoregressive one fed back its own means step by step) is scored by the
    teacher-forced full pass at exactly its mean: log p = -T*C*(log std + log(2 pi)/2) with a fixed std."""
    model = tiny_model(decoder, "fixed", fixed_std=0.1, z_conditioning="both")
    z = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = model.decode_mean(z[0])
        ll = model.log_likelihood({"x": x}, z)
    assert torch.allclose(ll, torch.full((1, 4), -12 * 2 * (math.log(0.1) + 0.5 * math.log(2 * math.pi))),
                          atol=1e-3)


def test_gradients_reach_encoder_and_decoder_and_reset_decoder():
    model = tiny_model("autoregressive", "learned_channel").train()
    batch = {"x": torch.randn(3, 12, 2)}
    mu, logvar = model.posterior(batch).tensors()
    loss = -model.log_likelihood(batch, (mu + logvar.exp()).unsqueeze(0)).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        model.head.log_std.fill_(0.7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_decoder()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert "head.log_std" in changed and "decoder.rnn.weight_hh_l0" in changed and "decoder_proj.weight" in changed
    assert not any(k.startswith(("encoder.", "input_proj.", "posterior_head.mu_head.", "posterior_head.logvar_head.")) for k in changed)
    assert torch.equal(model.head.log_std, torch.zeros(2))


# ----------------------------------------------------------------------------------------- forecasts

@pytest.mark.parametrize("decoder", ["repeat", "autoregressive"])
def test_forecast_shapes_and_reproducibility(decoder):
    model = tiny_model(decoder, "learned_step")
    prefix = torch.randn(4, 8, 2, generator=torch.Generator().manual_seed(3))
    a = model.forecast(prefix, 4, num_samples=5, generator=torch.Generator().manual_seed(7))
    b = model.forecast(prefix, 4, num_samples=5, generator=torch.Generator().manual_seed(7))
    c = model.forecast(prefix, 4, num_samples=5, generator=torch.Generator().manual_seed(8))
    assert a.shape == (5, 4, 4, 2) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    # noise=False: the spread left comes from z ~ q(z|prefix) only
    means = model.forecast(prefix, 4, num_samples=5, generator=torch.Generator().manual_seed(7), noise=False)
    assert means.shape == a.shape and not torch.equal(means, a)
    # the first prefix row's forecast does not depend on the other rows
    alone = model.forecast(prefix[:1], 4, num_samples=5, generator=torch.Generator().manual_seed(7))
    assert alone.shape == (5, 1, 4, 2)
    if decoder == "repeat":
        with pytest.raises(SeqvaeError, match="prefix 8 \\+ horizon 5 > seq_len 12"):
            model.forecast(prefix, 5, num_samples=2)
    else:   # the autoregressive decoder may run past the training window
        assert model.forecast(prefix, 20, num_samples=2).shape == (2, 4, 20, 2)


# -------------------------------------------------------------------------------- anomaly scoring

class Oracle(LatentModel):
    """A 'model' whose likelihood is N(0, 1) per value whatever z: windows far from 0 score as anomalous."""

    latent_dim = 1

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))
        self.prior = StandardNormal(1)

    def posterior(self, batch):
        zeros = batch["x"].new_zeros(batch["x"].shape[0], 1)
        return DiagonalGaussian(zeros, zeros)

    def log_likelihood(self, batch, z):
        ll = gaussian_log_prob(batch["x"], torch.zeros(()), torch.zeros(())).sum((-2, -1))
        return ll.unsqueeze(0).expand(z.shape[0], -1)

    def decode_mean(self, z):
        return z.new_zeros(*z.shape[:-1], self.seq_len, self.channels)

    def decoder_modules(self):
        return []


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("score", ["neg_elbo", "rec", "iw_nll"])
def test_separating_score_gives_auroc_one_and_writes_scores(tmp_path, score):
    dm = SinesData(num_series={"train": 40, "val": 10, "test": 60}, seq_len=20, channels=2, amplitude=[0.5, 1.0],
                   anomaly_fraction=0.25, anomaly_kind="spike", spike_size=30.0, seed=3, eval_batch_size=16)
    dm.setup(CPU)
    model = Oracle()
    model.seq_len, model.channels = 20, 2
    torch.manual_seed(0)
    result = evaluate(model, dm, "test", iw_samples=3, score=score, out_dir=tmp_path)
    m = result.metrics
    labels = dm.splits["test"]["label"]
    assert int(labels.sum()) == 15 and m["num_anomalous"] == 15 and m["score"] == score
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0 and m["best_f1"] == 1.0
    assert m["mse"] == pytest.approx(float(dm.splits["test"]["x"].pow(2).mean()), rel=1e-5)
    rows = read_csv(tmp_path / "scores_test.csv")
    assert len(rows) == 60 and list(rows[0])[:5] == ["index", "series", "start", "label", "score"]
    assert [int(r["label"]) for r in rows] == labels.tolist()
    assert [int(r["series"]) for r in rows] == dm.splits["test"]["series"].tolist()
    assert float(rows[0]["score"]) == pytest.approx(float(result.per_example[score][0]), rel=1e-6)
    # no timestamps for independent sequences; nothing is written without out_dir
    assert not (tmp_path / "timestamp_scores_test.csv").exists()
    val = evaluate(model, dm, "val").metrics
    assert "mse" in val and "auroc" not in val          # val holds no anomaly: AUROC undefined, left out


def test_score_iw_nll_needs_importance_samples():
    dm = SinesData(num_series={"train": 4, "val": 4, "test": 8}, seq_len=10, anomaly_fraction=0.5)
    dm.setup(CPU)
    model = Oracle()
    model.seq_len, model.channels = 10, 2
    with pytest.raises(SeqvaeError, match="score=iw_nll needs importance samples"):
        evaluate(model, dm, "test", iw_samples=0, score="iw_nll")


def spiky_csv(tmp_path: Path, n: int = 200, spike: int = 150) -> Path:
    t = np.arange(n)
    values = np.sin(2 * np.pi * t / 12.0) + 0.05 * np.random.default_rng(0).standard_normal(n)
    values[spike] += 8.0
    labels = ((t >= spike - 1) & (t <= spike + 1)).astype(int)
    lines = ["time,value,anomaly"] + [f"t{i},{v:.6f},{lab}" for i, (v, lab) in enumerate(zip(values, labels))]
    (tmp_path / "spiky.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "spiky.csv"


def test_windowed_data_gets_timestamp_scores_and_baseline(tmp_path):
    dm = CSVData(str(spiky_csv(tmp_path)), timestamp_column="time", label_column="anomaly", window=8,
                 train_fraction=0.5, val_fraction=0.25, eval_batch_size=64)
    dm.setup(CPU)
    model = Oracle()
    model.seq_len, model.channels = 8, 1
    m = evaluate(model, dm, "test", out_dir=tmp_path).metrics
    key = "csv/spiky.csv"
    for name in ("auroc", "auprc", "baseline_auroc", "baseline_auprc"):
        assert 0.0 <= m[f"{key}/{name}"] <= 1.0
    rows = read_csv(tmp_path / "timestamp_scores_test.csv")
    assert list(rows[0]) == ["series", "timestamp", "value", "label", "score", "baseline"]
    assert len(rows) == 100 and rows[0]["timestamp"] == "t100" and rows[0]["series"] == "spiky.csv"
    assert sum(int(r["label"]) for r in rows) == 3
    windows = read_csv(tmp_path / "scores_test.csv")
    assert len(windows) == dm.num_examples("test")
    # timestamp t gets the score of the window ending at t (test_context: the first one reaches back 7 steps)
    by_start = {int(w["start"]): float(w["score"]) for w in windows}
    assert [float(r["score"]) for r in rows] == pytest.approx([by_start[100 + j - 7] for j in range(100)])
    # the baseline: the rolling z-score over the whole series (history included), on the same timestamps
    values = np.array([float(line.split(",")[1]) for line in (tmp_path / "spiky.csv").read_text().split()[1:]])
    assert [float(r["baseline"]) for r in rows] == pytest.approx(rolling_zscore_scores(values, 8)[100:])
    labels = [int(r["label"]) for r in rows]
    assert m[f"{key}/auroc"] == pytest.approx(auroc([float(r["score"]) for r in rows], labels))
    assert m[f"{key}/baseline_auprc"] == pytest.approx(auprc([float(r["baseline"]) for r in rows], labels))
    assert m[f"{key}/auroc"] > 0.6                       # the spike's windows score high
    # a partial pass (limit) cannot be mapped back to timestamps: per-window metrics only
    partial = evaluate(model, dm, "test", limit=1, out_dir=tmp_path / "partial").metrics
    assert "mse" in partial and not any(k.startswith("csv/") for k in partial)
    # so is `seqvae eval limit_examples=N` (a drawn subset of the windows): scored, never mapped back
    cut = evaluate(model, dm.subset("test", 20, seed=0), "test", out_dir=tmp_path / "cut").metrics
    assert cut["num_examples"] == 20 and "auroc" in cut and not any(k.startswith("csv/") for k in cut)
    assert not (tmp_path / "cut" / "timestamp_scores_test.csv").exists()


def test_sample_series_draws_every_figure_for_windowed_data(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from seqvae_cli import visuals
    dm = CSVData(str(spiky_csv(tmp_path)), timestamp_column="time", label_column="anomaly", window=16,
                 train_fraction=0.5, val_fraction=0.25)
    dm.setup(CPU)
    model = tiny_model("autoregressive", "learned_channel", channels=1, seq_len=16)
    cfg = OmegaConf.create({"num_samples": 4, "num_reconstructions": 4, "interpolation_steps": 3, "split": "test",
                            "seed": 0, "forecast_prefix": 0.75, "num_forecasts": 10, "forecast_windows": 2,
                            "season": None, "score": "rec"})
    writer = SummaryWriter(str(tmp_path / "tb"))
    written = visuals.sample(model, dm, cfg, tmp_path / "samples", writer, 0)
    visuals.during_training(model, dm, writer, 1)
    writer.close()
    assert [p.name for p in written] == ["prior_samples.png", "reconstructions.png", "interpolation.png",
                                         "forecasts.png", "anomaly_scores.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert any((tmp_path / "tb").iterdir())


# --------------------------------------------------------------------------------------- the CLI

TINY_ARGS = ["debug=smoke", "trainer.progress_bar=false", "device.num_threads=1", "model.hidden_size=16",
             "model.embed_dim=8", "model.latent_dim=4"]


def check_eval(run_dir: Path, anomalies: bool = True) -> dict:
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert test["mse"] > 0 and math.isfinite(test["neg_elbo"]) and math.isfinite(test["iw_nll"])
    if anomalies:
        assert 0.0 <= test["auroc"] <= 1.0 and 0.0 <= test["auprc"] <= 1.0 and 0.0 <= test["best_f1"] <= 1.0
        assert test["score"] == "neg_elbo" and test["num_anomalous"] > 0
    rows = read_csv(run_dir / "scores_test.csv")
    assert len(rows) == test["num_examples"]
    return test


@pytest.mark.skipif(not (DATA_DIR / "ECG5000" / "ECG5000_TRAIN.tsv").is_file(),
                    reason="ECG5000 is not under $SEQVAE_DATA_DIR")
def test_cli_train_eval_sample_on_ecg5000(tmp_path):
    run_dir = tmp_path / "ecg"
    proc = run_seqvae(["train", "model=lstm_vae", "data=ecg5000", f"run_dir={run_dir}", *TINY_ARGS], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0 and "mse" in metrics["val"]
    proc = run_seqvae(["eval", f"run_dir={run_dir}", "iw_samples=5", "device.num_threads=1"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    test = check_eval(run_dir)
    assert test["num_examples"] == 2681 and test["num_anomalous"] == 2081
    proc = run_seqvae(["sample", f"run_dir={run_dir}", "device.num_threads=1", "num_samples=16",
                       "num_forecasts=20"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    for name in ("prior_samples.png", "reconstructions.png", "interpolation.png", "forecasts.png"):
        path = run_dir / "samples" / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert f"written: {path}" in proc.stdout


def test_cli_train_eval_on_sines(tmp_path):
    run_dir = tmp_path / "sines"
    sizes = ["data.num_series.train=320", "data.num_series.val=64", "data.num_series.test=200"]
    proc = run_seqvae(["train", "model=lstm_vae", "data=sines", f"run_dir={run_dir}", *TINY_ARGS, *sizes,
                       "model.series_decoder=autoregressive", "model.output_std=learned_step"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    proc = run_seqvae(["eval", f"run_dir={run_dir}", "iw_samples=5", "score=iw_nll", "device.num_threads=1"],
                      cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert test["score"] == "iw_nll" and test["num_anomalous"] == 20 and 0.0 <= test["auroc"] <= 1.0
    rows = read_csv(run_dir / "scores_test.csv")
    assert len(rows) == 200
    assert float(rows[0]["score"]) == pytest.approx(float(rows[0]["iw_nll"]))


def test_resume_equality_for_the_series_model(tmp_path):
    """Killed at its first checkpoint and resumed, a time-series run ends exactly as the uninterrupted one."""
    from test_resume import kill_then_resume
    args = ["model=lstm_vae", "data=sines", *TINY_ARGS, "trainer.max_epochs=3", "trainer.limit_train_batches=10",
            "data.num_series.train=640", "data.num_series.val=64", "data.num_series.test=100"]
    full = tmp_path / "full"
    proc = run_seqvae(["train", *args, f"run_dir={full}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    killed, _, proc = kill_then_resume(tmp_path, args)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["steps"] == b["steps"] == 30
    assert a["val"] == b["val"] and a["test"] == b["test"]      # exactly equal
