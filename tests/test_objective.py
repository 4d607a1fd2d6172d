"""Layer 3: units of the objective (objective.py), the metrics (evaluate.py) and the lr schedule (trainer.py)."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.distributions import Normal, kl_divergence

from seqvae_cli.data.base import DataModule
from seqvae_cli.evaluation.evaluate import active_units, evaluate, iw_log_likelihood
from seqvae_cli.models.base import LatentModel
from seqvae_cli.models.mlp_vae import MLPAutoencoder, MLPVAE
from seqvae_cli.latent.posterior import DiagonalGaussian
from seqvae_cli.latent.prior import StandardNormal


# The Gaussian posterior's and the standard prior's math, as the objective and evaluation reach it.
def gaussian_kl(mu, logvar):
    return DiagonalGaussian(mu, logvar).kl_per_dim(StandardNormal(mu.shape[-1]))


def gaussian_log_density(z, mu, logvar):
    return DiagonalGaussian(mu, logvar).log_prob(z)


def standard_normal_log_density(z):
    return StandardNormal(z.shape[-1]).log_prob(z)


def sample_posterior(mu, logvar, num_samples):
    return DiagonalGaussian(mu, logvar).rsample(num_samples)


def mutual_information(mu, logvar):
    return DiagonalGaussian(mu, logvar).mutual_information()
from seqvae_cli.objective.elbo import Objective
from seqvae_cli.objective.schedule import KLSchedule
from seqvae_cli.training.loop import Trainer
from seqvae_cli.training.optim import lr_factor

from conftest import CONF_DIR, compose_train_config


def group_cfg(group: str, option: str, **changes):
    """conf/GROUP/OPTION.yaml with `changes` (dotted keys) applied."""
    cfg = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def objective_cfg(**changes):
    return group_cfg("objective", "elbo", **changes)


# ------------------------------------------------------------------------------------ densities

def test_gaussian_kl_matches_torch_elementwise():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(7, 5, generator=gen) * 2, torch.randn(7, 5, generator=gen)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    out = gaussian_kl(mu, logvar)
    assert out.shape == (7, 5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(gaussian_kl(torch.zeros(3), torch.zeros(3)) == 0)


def test_gaussian_log_density_matches_torch_summed():
    gen = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    z = torch.randn(3, 4, 6, generator=gen)            # [S, B, D], broadcast against [B, D]
    expected = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    out = gaussian_log_density(z, mu, logvar)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(standard_normal_log_density(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_sample_posterior_shape_and_moments():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(4.0)]])
    z = sample_posterior(mu, logvar, 20000)
    assert z.shape == (20000, 1, 2)
    torch.testing.assert_close(z.mean(0), mu, atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([[1.0, 2.0]]), atol=0.05, rtol=0)


# ------------------------------------------------------------------------------- IW bound vs ELBO

@pytest.fixture(scope="module")
def small_model_and_data():
    torch.manual_seed(0)
    model = MLPVAE(input_dim=30, hidden_sizes=[16], latent_dim=3).eval()
    x = torch.bernoulli(torch.full((4000, 30), 0.3))
    return model, {"x": x}


@torch.no_grad()
def elbo_per_example(model, batch, samples=200):
    mu, logvar = model.posterior(batch).tensors()
    rec = model.log_likelihood(batch, sample_posterior(mu, logvar, samples)).mean(0)
    return rec - gaussian_kl(mu, logvar).sum(-1)


def test_iw_bound_orders_with_k(small_model_and_data):
    model, batch = small_model_and_data
    torch.manual_seed(123)
    elbo = elbo_per_example(model, batch).mean().item()
    iw = {k: iw_log_likelihood(model, batch, k).mean().item() for k in (1, 10, 100)}
    assert abs(iw[1] - elbo) < 0.3, (iw, elbo)      # k=1 is an unbiased estimate of the ELBO
    assert iw[10] > elbo + 0.1, (iw, elbo)          # a random model's posterior is poor: a clear gap
    assert iw[100] >= iw[10] - 0.02, iw
    assert iw[100] > iw[1]


def test_iw_bound_chunking_does_not_change_the_estimator(small_model_and_data):
    model, batch = small_model_and_data
    part = {"x": batch["x"][:50]}
    torch.manual_seed(5)
    whole = iw_log_likelihood(model, part, 40)
    torch.manual_seed(5)
    chunked = iw_log_likelihood(model, part, 40, rows_per_chunk=50 * 7)   # 7 samples per chunk: 6 chunks
    assert whole.shape == (50,)
    # Same k, same estimator: agree up to Monte-Carlo noise per example (different draws per chunk).
    assert abs(whole.mean().item() - chunked.mean().item()) < 0.5


# ---------------------------------------------------------------------------------- the objective

def test_default_objective_loss_is_the_negative_elbo(small_model_and_data):
    model, batch = small_model_and_data
    part = {"x": batch["x"][:64]}
    obj = Objective(objective_cfg(), total_steps=100, steps_per_epoch=10)
    torch.manual_seed(0)
    terms = obj(model, part, step=0)
    torch.testing.assert_close(terms.loss, terms.neg_elbo)
    torch.testing.assert_close(terms.neg_elbo, terms.kl - terms.rec)
    assert terms.kl_per_dim.shape == (3,)
    torch.testing.assert_close(terms.kl_per_dim.sum(), terms.kl)


def test_beta_scales_the_kl_term(small_model_and_data):
    model, batch = small_model_and_data
    part = {"x": batch["x"][:64]}
    obj = Objective(objective_cfg(beta=0.25), total_steps=100, steps_per_epoch=10)
    torch.manual_seed(0)
    terms = obj(model, part, step=0)
    torch.testing.assert_close(terms.loss, -terms.rec + 0.25 * terms.kl)
    torch.testing.assert_close(terms.neg_elbo, terms.kl - terms.rec)    # the reported bound is unweighted


def test_iwae_objective_is_the_iw_bound(small_model_and_data):
    model, batch = small_model_and_data
    part = {"x": batch["x"][:64]}
    obj = Objective(objective_cfg(iw_samples=20), total_steps=100, steps_per_epoch=10)
    torch.manual_seed(7)
    terms = obj(model, part, step=0)
    torch.manual_seed(7)
    mu, logvar = model.posterior(part).tensors()                       # same draws as the objective's
    z = sample_posterior(mu, logvar, 20)
    log_w = model.log_likelihood(part, z) + standard_normal_log_density(z) - gaussian_log_density(z, mu, logvar)
    bound = torch.logsumexp(log_w, 0) - math.log(20)
    torch.testing.assert_close(terms.loss, -bound.mean())


class Posterior(LatentModel):
    """A 'model' whose posterior is the same pair of parameters for every example; p(x|z) is constant."""

    latent_dim = 4

    def __init__(self, mu, logvar):
        super().__init__()
        self.mu, self.logvar = torch.nn.Parameter(mu), torch.nn.Parameter(logvar)
        self.prior = StandardNormal(self.latent_dim)

    def posterior(self, batch):
        b = batch["x"].shape[0]
        return DiagonalGaussian(self.mu.expand(b, -1), self.logvar.expand(b, -1))

    def log_likelihood(self, batch, z):
        return torch.zeros(z.shape[:2])

    def decode_mean(self, z):
        return z


def test_free_bits_per_dim_stops_the_gradient_below_the_floor():
    lam = 0.5
    # KL per dim: 0.5*mu^2 here (logvar=0): dims 0,1 below lam (0.005, 0.125), dims 2,3 above (2.0, 4.5).
    model = Posterior(torch.tensor([0.1, 0.5, 2.0, 3.0]), torch.zeros(4))
    obj = Objective(objective_cfg(**{"free_bits.per_dim": lam}), total_steps=10, steps_per_epoch=10)
    terms = obj(model, {"x": torch.zeros(8, 1)}, step=0)
    terms.loss.backward()
    grad = model.mu.grad
    assert grad[0] == 0 and grad[1] == 0
    torch.testing.assert_close(grad[2:], torch.tensor([2.0, 3.0]))    # d(0.5 mu^2)/dmu = mu
    torch.testing.assert_close(terms.loss, torch.tensor(2 * lam + 2.0 + 4.5))
    torch.testing.assert_close(terms.kl, torch.tensor(0.005 + 0.125 + 2.0 + 4.5))  # the reported KL is the true one


def test_free_bits_total_floors_the_whole_kl():
    model = Posterior(torch.tensor([0.1, 0.2, 0.0, 0.0]), torch.zeros(4))     # KL = 0.025 < 1
    obj = Objective(objective_cfg(**{"free_bits.total": 1.0}), total_steps=10, steps_per_epoch=10)
    terms = obj(model, {"x": torch.zeros(8, 1)}, step=0)
    terms.loss.backward()
    assert torch.all(model.mu.grad == 0)
    torch.testing.assert_close(terms.loss, torch.tensor(1.0))


def test_autoencoder_objective_has_no_kl():
    torch.manual_seed(0)
    model = MLPAutoencoder(input_dim=30, hidden_sizes=[16], latent_dim=3)
    x = torch.bernoulli(torch.full((16, 30), 0.5))
    terms = Objective(objective_cfg(), 10, 10)(model, {"x": x}, step=0)
    assert float(terms.kl) == 0.0
    mu, _ = model.posterior({"x": x}).tensors()
    torch.testing.assert_close(terms.loss, -model.log_likelihood({"x": x}, mu.unsqueeze(0))[0].mean())


# ------------------------------------------------------------------------------------- KL schedule

def schedule(kind, warmup=100.0, start=0.0, end=1.0, beta=1.0, total=1000.0, unit="steps", n_cycles=4, ratio=0.5):
    return KLSchedule(beta, kind, unit, start, end, warmup, n_cycles, ratio, total)


def test_constant_schedule():
    s = schedule("constant", end=0.7)
    assert [s(step, 10) for step in (0, 50, 10 ** 6)] == [0.7, 0.7, 0.7]


def test_linear_schedule():
    s = schedule("linear", warmup=100, start=0.2, end=1.0)
    assert s(0, 10) == pytest.approx(0.2)
    assert s(50, 10) == pytest.approx(0.6)
    assert s(100, 10) == pytest.approx(1.0)
    assert s(5000, 10) == pytest.approx(1.0)


def test_sigmoid_schedule():
    s = schedule("sigmoid", warmup=1000)
    assert s(0, 10) < 0.01
    assert s(500, 10) == pytest.approx(0.5)
    assert s(1000, 10) > 0.99
    values = [s(t, 10) for t in range(0, 1001, 50)]
    assert values == sorted(values)


def test_cyclical_schedule_fu_et_al():
    total, cycles, ratio = 800, 4, 0.5
    s = schedule("cyclical", total=total, n_cycles=cycles, ratio=ratio)
    period = total // cycles
    for c in range(cycles):
        begin = c * period
        assert s(begin, 10) == pytest.approx(0.0), f"cycle {c} must start at 0"
        assert s(begin + period // 4, 10) == pytest.approx(0.5), f"cycle {c}: halfway up the ramp"
        for t in range(begin + int(period * ratio), begin + period):
            assert s(t, 10) == pytest.approx(1.0), f"cycle {c}: holds the end value from its middle, step {t}"
        ramp = [s(t, 10) for t in range(begin, begin + int(period * ratio))]
        assert ramp == sorted(ramp) and ramp[-1] < 1.0


def test_schedule_in_epochs():
    """unit=epochs: warmup counts epochs; t is fractional (step / steps_per_epoch)."""
    cfg = objective_cfg(**{"kl_anneal.schedule": "linear", "kl_anneal.unit": "epochs", "kl_anneal.warmup": 4})
    obj = Objective(cfg, total_steps=1000, steps_per_epoch=100)
    assert obj.kl_weight(0) == pytest.approx(0.0)
    assert obj.kl_weight(200) == pytest.approx(0.5)     # 2 of 4 epochs
    assert obj.kl_weight(50) == pytest.approx(0.125)    # half an epoch
    assert obj.kl_weight(400) == pytest.approx(1.0)
    cyc = objective_cfg(**{"kl_anneal.schedule": "cyclical", "kl_anneal.unit": "epochs", "kl_anneal.n_cycles": 2})
    obj = Objective(cyc, total_steps=1000, steps_per_epoch=100)     # 10 epochs, 2 cycles of 5 epochs
    assert obj.kl_weight(500) == pytest.approx(0.0)
    assert obj.kl_weight(125) == pytest.approx(0.5)     # 1.25 epochs of a 2.5-epoch ramp
    assert obj.kl_weight(300) == pytest.approx(1.0)


def test_beta_scales_the_schedule():
    assert schedule("linear", warmup=100, beta=4.0)(50, 10) == pytest.approx(2.0)
    assert schedule("constant", beta=0.5)(3, 10) == pytest.approx(0.5)
    cfg = objective_cfg(beta=2.0, **{"kl_anneal.schedule": "sigmoid", "kl_anneal.warmup": 100})
    assert Objective(cfg, 1000, 10).kl_weight(50) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------- lr schedule

def optim_cfg(**changes):
    return group_cfg("optim", "adam", **changes)


def test_lr_factor_constant_and_warmup():
    assert lr_factor(optim_cfg(), 0, 100, 10) == 1.0
    cfg = optim_cfg(warmup_steps=10)
    assert lr_factor(cfg, 0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(cfg, 4, 100, 10) == pytest.approx(0.5)
    assert lr_factor(cfg, 9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, 100, 10) == pytest.approx(1.0)


def test_lr_factor_cosine():
    cfg = optim_cfg(lr=1e-3, lr_min=1e-4, lr_schedule="cosine")
    assert lr_factor(cfg, 0, 100, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, 100, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 100, 100, 10) == pytest.approx(0.1)
    assert lr_factor(cfg, 500, 100, 10) == pytest.approx(0.1)
    values = [lr_factor(cfg, s, 100, 10) for s in range(101)]
    assert values == sorted(values, reverse=True)
    warm = optim_cfg(lr=1e-3, lr_min=0.0, lr_schedule="cosine", warmup_steps=4)
    assert lr_factor(warm, 1, 100, 10) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 1 / 100)))


def test_lr_factor_step_and_exponential():
    cfg = optim_cfg(lr_schedule="step", lr_gamma=0.5, lr_step_epochs=3)
    # steps_per_epoch=10: epochs 0-2 -> 1, 3-5 -> 0.5, 6-8 -> 0.25
    assert [lr_factor(cfg, s, 1000, 10) for s in (0, 29, 30, 59, 60)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    exp = optim_cfg(lr_schedule="exponential", lr_gamma=0.9)
    assert lr_factor(exp, 25, 1000, 10) == pytest.approx(0.81)


def test_training_sets_the_scheduled_lr_before_every_optimiser_step(tmp_path, mnist_data_dir):
    """The trainer reads the schedule's settings once, as plain values: each step must still use
    optim.lr * lr_factor(optim, step), with warm-up and cosine decay, across an epoch boundary."""
    overrides = ["debug=smoke", "trainer.progress_bar=false", "trainer.log_visuals=false", "trainer.test=false",
                 "device=cpu", "optim.lr=2e-3", "optim.lr_schedule=cosine", "optim.lr_min=1e-4",
                 "optim.warmup_steps=3", "trainer.limit_train_batches=4"]
    cfg = compose_train_config(*overrides)
    trainer = Trainer(cfg, tmp_path, [])
    used = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    for _ in range(2):
        trainer.train_epoch()
        trainer.epoch += 1
    expected = [2e-3 * lr_factor(cfg.optim, s, 8, 4) for s in range(8)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert used[0] == pytest.approx(2e-3 / 3)                                # warm-up: a third of the lr
    assert used[1] > used[0] and used[2:] == sorted(used[2:], reverse=True)  # then the cosine decay


# ------------------------------------------------------------------- active units, mutual information

def test_active_units_counts_varying_dimensions():
    gen = torch.Generator().manual_seed(0)
    mu = torch.zeros(1000, 10)
    mu[:, [1, 4, 7]] = torch.randn(1000, 3, generator=gen)
    mu[:, 0] = 0.001 * torch.randn(1000, generator=gen)      # varies, but below the 0.01 variance threshold
    mu += 5.0                                                # a constant offset is not activity
    assert active_units(mu) == 3
    assert active_units(torch.zeros(1000, 10)) == 0
    assert active_units(mu[:1]) == 0


def test_mutual_information_is_zero_for_identical_posteriors():
    torch.manual_seed(0)
    mu = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.5]).expand(3000, 5).contiguous()
    logvar = torch.tensor([0.0, -1.0, 0.5, -2.0, 0.1]).expand(3000, 5).contiguous()
    assert abs(mutual_information(mu, logvar)) < 0.1


def test_mutual_information_is_log_n_for_separated_posteriors():
    torch.manual_seed(0)
    n = 2048
    mu = torch.randn(n, 4) * 10.0            # means far apart compared with the posterior std (0.14)
    logvar = torch.full((n, 4), -4.0)
    mi = mutual_information(mu, logvar)
    assert mi == pytest.approx(math.log(n), abs=0.1)


# ------------------------------------------------------------------------------------ evaluate()

class TinyData(DataModule):
    """A small DataModule: random binary vectors, eval batches of 100."""

    kind = "image"
    eval_batch_size = 100

    def __init__(self, n=300, dim=30):
        self.x = torch.bernoulli(torch.full((n, dim), 0.3), generator=torch.Generator().manual_seed(3))

    def num_examples(self, split):
        return self.x.shape[0]

    def eval_batches(self, split, batch_size=None, limit=None):
        from seqvae_cli.data.base import batch_limit
        bs = batch_size or self.eval_batch_size
        for i in range(batch_limit(limit, math.ceil(self.x.shape[0] / bs))):
            yield {"x": self.x[i * bs:(i + 1) * bs]}


def test_evaluate_metrics_are_consistent(small_model_and_data):
    model, _ = small_model_and_data
    dm = TinyData()
    torch.manual_seed(0)
    result = evaluate(model, dm, "test", iw_samples=50)
    m = result.metrics
    assert m["num_examples"] == 300
    assert m["neg_elbo"] == pytest.approx(m["rec"] + m["kl"])
    assert m["iw_nll"] <= m["neg_elbo"] + 0.5
    assert m["kl"] > 0 and 0 <= m["active_units"] <= 3 and m["mutual_info"] >= -0.1
    assert result.posterior_means.shape == (300, 3) and result.kl_per_dim.shape == (3,)
    assert result.kl_per_dim.sum().item() == pytest.approx(m["kl"], rel=1e-4)
    limited = evaluate(model, dm, "test", limit=2).metrics
    assert limited["num_examples"] == 200 and "iw_nll" not in limited


def test_evaluate_autoencoder_reports_reconstruction_only():
    torch.manual_seed(0)
    model = MLPAutoencoder(input_dim=30, hidden_sizes=[16], latent_dim=3)
    m = evaluate(model, TinyData(), "test", iw_samples=10).metrics
    assert m["rec"] > 0 and "kl" not in m and "neg_elbo" not in m and "iw_nll" not in m
    assert "active_units" in m


# ------------------------------------------------------------- autoencoder pre-training (Li et al. 2019)

def test_ae_pretraining_has_no_kl_weight_then_starts_the_schedule():
    cfg = objective_cfg(ae_pretrain_epochs=2, **{"kl_anneal.schedule": "linear", "kl_anneal.warmup": 10})
    obj = Objective(cfg, total_steps=100, steps_per_epoch=10)
    assert [obj.kl_weight(s) for s in (0, 5, 19)] == [0.0, 0.0, 0.0]
    assert obj.kl_weight(20) == pytest.approx(0.0)         # the warm-up starts after pre-training
    assert obj.kl_weight(25) == pytest.approx(0.5)
    assert obj.kl_weight(30) == pytest.approx(1.0)
    cyc = objective_cfg(ae_pretrain_epochs=2, **{"kl_anneal.schedule": "cyclical", "kl_anneal.n_cycles": 2})
    obj = Objective(cyc, total_steps=100, steps_per_epoch=10)   # 80 VAE steps: cycles of 40 from step 20
    assert obj.kl_weight(20) == pytest.approx(0.0) and obj.kl_weight(60) == pytest.approx(0.0)
    assert obj.kl_weight(30) == pytest.approx(0.5) and obj.kl_weight(50) == pytest.approx(1.0)


def test_ae_pretraining_step_is_a_deterministic_autoencoder(small_model_and_data):
    model, batch = small_model_and_data
    part = {"x": batch["x"][:64]}
    obj = Objective(objective_cfg(ae_pretrain_epochs=1), total_steps=100, steps_per_epoch=10)
    torch.manual_seed(0)
    first = obj(model, part, step=3)
    torch.manual_seed(1)
    second = obj(model, part, step=3)
    torch.testing.assert_close(first.loss, second.loss)                 # z = posterior mean: no sampling
    mu, logvar = model.posterior(part).tensors()
    torch.testing.assert_close(first.loss, -model.log_likelihood(part, mu.unsqueeze(0))[0].mean())
    torch.testing.assert_close(first.kl, gaussian_kl(mu, logvar).sum(1).mean())   # reported, not trained on
    model.zero_grad()
    first.loss.backward()
    assert model.posterior_head.logvar_head.weight.grad is None or torch.all(model.posterior_head.logvar_head.weight.grad == 0)
    model.zero_grad()
    after = obj(model, part, step=10)                                   # pre-training over: the ELBO
    torch.testing.assert_close(after.loss, after.neg_elbo)
    model.zero_grad()


# ------------------------------------------------------------------------- trainer.precision=bf16-mixed

def bf16_cases():
    from seqvae_cli.models.lstm_lm import LSTMLM
    from seqvae_cli.models.sentence_vae import LSTMVAE
    from seqvae_cli.models.series_vae import SeriesLSTMVAE
    gen = torch.Generator().manual_seed(3)
    text = {"x": torch.tensor([[5, 6, 7, 8, 3], [9, 3, 0, 0, 0], [4, 10, 11, 3, 0]]),
            "lengths": torch.tensor([5, 2, 4])}
    torch.manual_seed(0)
    return [
        ("mlp_vae", MLPVAE(input_dim=30, hidden_sizes=[16], latent_dim=3), {"x": torch.rand(8, 30, generator=gen)}, {}),
        ("lstm_vae+bow", LSTMVAE(12, embed_dim=6, hidden_size=7, latent_dim=3), text, {"bow_weight": 1.0}),
        ("lstm_lm", LSTMLM(12, embed_dim=6, hidden_size=7), text, {}),
        ("series", SeriesLSTMVAE(num_channels=2, seq_len=9, embed_dim=4, hidden_size=5, latent_dim=3),
         {"x": torch.randn(4, 9, 2, generator=gen)}, {}),
    ]


@pytest.mark.parametrize("name,model,batch,changes", bf16_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_bf16_autocast_keeps_the_objective_in_float32(name, model, batch, changes):
    """What Trainer.train_epoch does with trainer.precision=bf16-mixed: the matmuls and RNNs run in bfloat16, but
    the loss, KL and bounds are summed in float32 and agree with the float32 objective to bfloat16 rounding."""
    model.train()
    obj = Objective(objective_cfg(**changes), total_steps=100, steps_per_epoch=10)
    torch.manual_seed(1)
    full = obj(model, batch, step=50)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = obj(model, batch, step=50)
    for field in ("loss", "rec", "kl", "neg_elbo", "aux"):
        assert getattr(mixed, field).dtype == torch.float32, field
        torch.testing.assert_close(getattr(mixed, field), getattr(full, field), rtol=3e-2, atol=3e-2)
    mixed.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_bf16_iw_pass_agrees_with_float32():
    """`seqvae eval iw_precision=bf16-mixed`: same samples, float32 result, the estimate moved by rounding only."""
    from seqvae_cli.models.sentence_vae import LSTMVAE
    torch.manual_seed(0)
    model = LSTMVAE(40, embed_dim=16, hidden_size=32, latent_dim=4).eval()
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 12, (16,), generator=gen)
    x = torch.randint(4, 40, (16, 12), generator=gen)
    x[torch.arange(12) >= lengths[:, None]] = 0
    x[torch.arange(16), lengths - 1] = 3                      # <eos> closes each sentence
    batch = {"x": x, "lengths": lengths}
    torch.manual_seed(2)
    full = iw_log_likelihood(model, batch, 20)
    torch.manual_seed(2)
    mixed = iw_log_likelihood(model, batch, 20, bf16=True)
    assert mixed.dtype == torch.float32 and mixed.shape == (16,)
    assert not torch.equal(mixed, full)                        # it did run in bfloat16
    torch.testing.assert_close(mixed, full, rtol=0, atol=0.1)  # ~40-60 nats per sentence here
