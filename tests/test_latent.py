"""The latent's families (latent/): priors standard | mog | vamp, posteriors gaussian | planar | iaf.

Units first (densities against torch.distributions and autograd's Jacobians), then the bounds for every
combination on a small model, then the CLI: a mixed run through train/eval/sample, kill-and-resume, bf16, a sweep.
"""
from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from conftest import SMOKE_ARGS, describe, run_seqvae, train
from seqvae_cli.evaluation.evaluate import evaluate, iw_log_likelihood
from seqvae_cli.latent.flow import IAFPosterior, PlanarPosterior
from seqvae_cli.latent.mog import MixturePrior
from seqvae_cli.latent.posterior import DiagonalGaussian
from seqvae_cli.latent.prior import StandardNormal
from seqvae_cli.latent.vamp import VampPrior
from seqvae_cli.models.mlp_vae import MLPVAE
from seqvae_cli.objective.elbo import Objective
from test_objective import TinyData, objective_cfg
from test_resume import kill_then_resume

PRIORS = {"standard": None, "mog": lambda latent_dim: MixturePrior(latent_dim, num_components=3),
          "vamp": lambda latent_dim, input_shape: VampPrior(latent_dim, input_shape, num_components=4)}
POSTERIORS = {"gaussian": None, "planar": lambda **kw: PlanarPosterior(**kw, num_flows=3),
              "iaf": lambda **kw: IAFPosterior(**kw, num_flows=2, hidden_size=16, context_size=4)}
VAMP = PRIORS["vamp"]
VAMP.needs_inputs = True   # what use_latent looks for on a factory (VampPrior's own class attribute)


def small_model(prior: str, posterior: str, seed: int = 0) -> MLPVAE:
    torch.manual_seed(seed)
    model = MLPVAE(input_dim=30, hidden_sizes=[16], latent_dim=3)
    if (prior, posterior) != ("standard", "gaussian"):
        model.use_latent(PRIORS[prior], POSTERIORS[posterior])
    return model


# ------------------------------------------------------------------------------------------ densities

def test_mixture_log_prob_equals_torch_mixture_same_family():
    torch.manual_seed(0)
    prior = MixturePrior(4, num_components=5)
    with torch.no_grad():
        prior.logvars.normal_(0, 0.5), prior.logits.normal_()
    z = torch.randn(7, 6, 4) * 2
    reference = MixtureSameFamily(Categorical(logits=prior.logits),
                                  Independent(Normal(prior.means, (0.5 * prior.logvars).exp()), 1))
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z), atol=1e-4, rtol=1e-5)


def test_vamp_log_prob_is_the_mean_of_the_pseudo_inputs_posteriors():
    model = small_model("vamp", "gaussian")
    z = torch.randn(5, 2, 3)
    q = model.posterior({"x": model.prior.inputs()})            # K pseudo-inputs' Gaussians [K, D]
    per_component = Normal(q.mu, (0.5 * q.logvar).exp()).log_prob(z.unsqueeze(-2)).sum(-1)   # [5, 2, K]
    direct = torch.logsumexp(per_component, -1) - math.log(q.mu.shape[0])
    torch.testing.assert_close(model.prior.log_prob(z), direct, atol=1e-4, rtol=1e-5)


def test_monte_carlo_kl_converges_to_the_closed_form():
    torch.manual_seed(0)
    q = DiagonalGaussian(torch.randn(4, 3), torch.randn(4, 3) * 0.3)
    prior = StandardNormal(3)
    z = q.rsample(200_000)
    monte_carlo = (q.log_prob(z) - prior.log_prob(z)).mean(0)
    torch.testing.assert_close(monte_carlo, q.kl(prior), atol=0.02, rtol=0.01)


@pytest.mark.parametrize("head", ["planar", "iaf"])
def test_flow_log_det_equals_autograd_jacobian(head):
    torch.manual_seed(1)
    posterior = POSTERIORS[head](in_features=5, latent_dim=3)
    with torch.no_grad():   # away from the identity start, so the test sees a real map
        for p in posterior.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    q = posterior(torch.randn(1, 5))
    for _ in range(3):
        z0 = torch.randn(1, 1, 3)
        _, log_det = q.push_with_log_det(z0)
        jac = torch.autograd.functional.jacobian(lambda v: q.push(v.view(1, 1, 3)).view(3), z0.view(3))
        sign, logabs = torch.linalg.slogdet(jac)
        # Planar steps keep orientation (1 + u'.psi > 0); IAF's steps do too, but the order flip between its two
        # steps is a permutation, whose determinant is -1 for D = 3.
        assert sign == (1 if head == "planar" else -1)
        torch.testing.assert_close(log_det.view(()), logabs, atol=1e-4, rtol=1e-4)


def test_iaf_steps_invert():
    torch.manual_seed(2)
    posterior = POSTERIORS["iaf"](in_features=5, latent_dim=4)
    c = posterior.context(torch.randn(3, 5))
    z = torch.randn(3, 4)
    for step in posterior.steps:
        y, _ = step(z, c)
        torch.testing.assert_close(step.inverse(y, c), z, atol=1e-5, rtol=1e-5)


def test_planar_steps_keep_w_dot_u_above_minus_one():
    """Rezende & Mohamed's condition for an invertible planar step, whatever the raw u and w."""
    torch.manual_seed(3)
    posterior = POSTERIORS["planar"](in_features=5, latent_dim=3)
    with torch.no_grad():
        posterior.steps.weight.normal_(0, 3.0)
    q = posterior(torch.randn(8, 5))
    u, w, _ = q.params
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (torch.nn.functional.softplus(wu) - 1 - wu) * w / w.pow(2).sum(-1, keepdim=True)
    assert ((w * u_hat).sum(-1) >= -1 - 1e-5).all()


# ------------------------------------------------------------------------ bounds, every combination

# Two combinations in the default run (the defaults, and a learned prior with a flow); the rest with -m slow.
FAST = {("standard", "gaussian"), ("vamp", "iaf")}
COMBINATIONS = [pytest.param(p, q, marks=() if (p, q) in FAST else pytest.mark.slow)
                for p in PRIORS for q in POSTERIORS]


class LatentData(TinyData):
    """Binary vectors from a latent-variable model, x ~ Bernoulli(sigmoid(3 W z)), z ~ N(0, I_3): a trained encoder
    then has something to infer, and importance sampling a gap to close."""

    def __init__(self, n: int = 300, dim: int = 30) -> None:
        gen = torch.Generator().manual_seed(4)
        z, w = torch.randn(n, 3, generator=gen), torch.randn(3, dim, generator=gen)
        self.x = torch.bernoulli(torch.sigmoid(3.0 * z @ w), generator=gen)


@functools.lru_cache(maxsize=None)
def trained(prior: str, posterior: str) -> tuple[MLPVAE, list[float]]:
    """The small model of this combination after 40 Adam steps on TinyData (its posterior then says something about
    x, so importance sampling has a gap to close), and the losses on the way."""
    model = small_model(prior, posterior)
    objective = Objective(objective_cfg(), 50, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(LatentData().eval_batches("train", 300)))
    losses = []
    for step in range(40):
        loss = objective(model, batch, step + 10).loss
        optimizer.zero_grad(), loss.backward(), optimizer.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


@pytest.mark.parametrize("prior, posterior", COMBINATIONS)
def test_iw_bound_is_above_the_elbo_and_tightens_with_k(prior, posterior):
    model, _ = trained(prior, posterior)
    batch = next(iter(LatentData().eval_batches("test", 200)))
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = -float(Objective(objective_cfg(), 10, 10)(model, batch, step=10).neg_elbo)
        # Each bound averaged over 3 draws of its samples: the expected bound grows with k (Burda et al.).
        by_k = [sum(float(iw_log_likelihood(model, batch, k).mean()) for _ in range(3)) / 3 for k in (1, 10, 100)]
    assert by_k[2] >= elbo
    assert by_k[0] < by_k[1] < by_k[2], by_k


@pytest.mark.parametrize("prior, posterior", COMBINATIONS)
def test_every_combination_trains_and_scores(prior, posterior):
    """Adam steps on the objective reduce the loss, the parameters of a learned prior or a flow move (they reach
    the optimiser), and evaluate() reports the same metrics as for the Gaussian."""
    before = {n: p.detach().clone() for n, p in small_model(prior, posterior).named_parameters()
              if n.startswith(("prior.", "posterior_head.steps", "posterior_head.context"))}
    model, losses = trained(prior, posterior)
    assert losses[-1] < losses[0]
    after = dict(model.named_parameters())
    assert all(not torch.equal(p, after[n]) for n, p in before.items())
    m = evaluate(model, LatentData(), "test", iw_samples=5).metrics
    assert {"kl", "neg_elbo", "iw_nll", "active_units", "mutual_info"} <= set(m)
    assert all(math.isfinite(m[k]) for k in ("kl", "neg_elbo", "iw_nll", "mutual_info"))


def test_a_learned_prior_reaches_the_checkpoint_state():
    model = small_model("mog", "iaf")
    keys = set(model.state_dict())
    assert {"prior.means", "prior.logvars", "prior.logits"} <= keys
    assert any(k.startswith("posterior_head.steps.0.") for k in keys)


def test_vamp_follows_a_deep_copy_of_the_model():
    """Weight averaging keeps a deep copy of the model: its VampPrior must read the copy's encoder."""
    import copy
    model = small_model("vamp", "gaussian")
    twin = copy.deepcopy(model)
    assert twin.prior._encode.__self__ is twin
    with torch.no_grad():
        twin.posterior_head.mu_head.bias.add_(1.0)
    z = torch.randn(2, 3)
    assert not torch.allclose(twin.prior.log_prob(z), model.prior.log_prob(z))


# ------------------------------------------------------------------------------------------------ CLI

LATENT_ARGS = [*SMOKE_ARGS, "model.hidden_sizes=[32]", "model.latent_dim=4", "prior.num_components=5"]


@pytest.mark.slow
def test_mog_with_iaf_through_train_eval_and_sample(tmp_path, mnist_data_dir):
    run = train(tmp_path, [*LATENT_ARGS, "prior=mog", "posterior=iaf", "posterior.hidden_size=16"])
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["test"]["iw_nll"] <= metrics["test"]["neg_elbo"] + 1.0
    proc = run_seqvae(["eval", f"run_dir={run.run_dir}", "iw_samples=5", "limit_examples=100"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    proc = run_seqvae(["sample", f"run_dir={run.run_dir}", "num_samples=8", "scatter_points=200"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    drawn = {p.name for p in (run.run_dir / "samples").iterdir()}
    assert {"prior_samples.png", "latent_components.png", "component_samples.png"} <= drawn


def test_vamp_is_refused_for_token_sequences_and_free_bits_without_a_closed_kl(tmp_path, mnist_data_dir):
    proc = run_seqvae(["train", *LATENT_ARGS, "prior=mog", "objective.free_bits.per_dim=0.1"], cwd=tmp_path)
    assert proc.returncode != 0 and "needs the KL in closed form" in proc.stderr
    from seqvae_cli.errors import SeqvaeError
    from seqvae_cli.models.sentence_vae import LSTMVAE
    model = LSTMVAE(vocab_size=20, embed_dim=4, hidden_size=4, latent_dim=2)
    with pytest.raises(SeqvaeError, match="prior=vamp learns pseudo-inputs"):
        model.use_latent(prior=VAMP)


@pytest.mark.slow
def test_kill_and_resume_with_a_learned_prior_and_a_flow(tmp_path, mnist_data_dir):
    args = [*LATENT_ARGS, "prior=mog", "posterior=planar", "trainer.max_epochs=3", "trainer.limit_train_batches=20"]
    full = train(tmp_path, args, name="full").run_dir
    killed, _, _ = kill_then_resume(tmp_path, args)
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (full, killed))
    assert a["val"] == b["val"] and a["test"] == b["test"]


@pytest.mark.slow
def test_bf16_and_a_sweep_over_the_combinations(tmp_path, mnist_data_dir):
    run = train(tmp_path, [*LATENT_ARGS, "prior=vamp", "posterior=iaf", "trainer.precision=bf16-mixed"], name="bf16")
    assert math.isfinite(json.loads((run.run_dir / "metrics.json").read_text())["test"]["neg_elbo"])
    sweep_args = [a for a in LATENT_ARGS if not a.startswith("prior.")]   # the standard normal has no keys
    proc = run_seqvae(["train", "-m", *sweep_args, "prior=standard,mog,vamp", "posterior=gaussian,iaf",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert len(list((tmp_path / "sweep").glob("*/metrics.json"))) == 6
