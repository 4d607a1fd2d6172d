"""Layer 2: the MNIST models, instantiated from their configs as the trainer does."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from hydra import compose, initialize_config_dir

from seqvae_cli.latent.posterior import DiagonalGaussian
from seqvae_cli.latent.prior import StandardNormal
from seqvae_cli.config.runtime import register_resolvers
from seqvae_cli.models.base import eval_mode
from seqvae_cli.models.mlp_vae import MLPAutoencoder, MLPVAE
from seqvae_cli.nn.kernels import ELU, bernoulli_log_prob
from seqvae_cli.parts import build_part

from conftest import CONF_DIR

S, B, D = 3, 5, 20


def model_from_config(option: str, *overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={option}", *overrides])
    torch.manual_seed(0)
    return build_part(cfg.model, "model", input_dim=784)


@pytest.mark.parametrize("option,cls", [("mlp_vae", MLPVAE), ("ae", MLPAutoencoder)])
def test_instantiate_and_forward_shapes(option, cls):
    model = model_from_config(option)
    assert type(model) is cls
    assert model.latent_dim == D and model.variational == (option == "mlp_vae")
    x = torch.bernoulli(torch.full((B, 784), 0.3))
    mu, logvar = model.posterior({"x": x}).tensors()
    assert mu.shape == (B, D) and logvar.shape == (B, D)
    z = torch.randn(S, B, D)
    ll = model.log_likelihood({"x": x}, z)
    assert ll.shape == (S, B)
    assert torch.isfinite(ll).all() and (ll <= 0).all()   # log of a probability of binary pixels
    mean = model.decode_mean(z[0])
    assert mean.shape == (B, 784) and (mean >= 0).all() and (mean <= 1).all()


def test_bernoulli_log_likelihood_is_the_bernoulli_log_prob():
    model = model_from_config("mlp_vae")
    x = torch.bernoulli(torch.full((B, 784), 0.5))
    z = torch.randn(S, B, D)
    logits = model.decoder(z)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    torch.testing.assert_close(model.log_likelihood({"x": x}, z), expected)


def test_gaussian_likelihood_is_a_normal_log_prob():
    model = model_from_config("mlp_vae", "model.likelihood=gaussian")
    with torch.no_grad():
        model.log_std.fill_(-1.0)
    x = torch.rand(B, 784)
    z = torch.randn(S, B, D)
    out = model.decoder(z)
    expected = torch.distributions.Normal(out, torch.exp(torch.tensor(-1.0))).log_prob(x.expand_as(out)).sum(-1)
    torch.testing.assert_close(model.log_likelihood({"x": x}, z), expected)


def test_config_architecture_is_built():
    model = model_from_config("mlp_vae", "model.hidden_sizes=[32,16]", "model.latent_dim=3", "model.activation=tanh")
    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 16)]
    assert model.posterior_head.mu_head.out_features == 3 and model.posterior_head.logvar_head.out_features == 3
    dec = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dec] == [(3, 16), (16, 32), (32, 784)]
    assert any(isinstance(m, torch.nn.Tanh) for m in model.modules())
    assert not isinstance(list(model.decoder)[-1], torch.nn.Tanh)   # logits: no activation at the end


def test_bernoulli_log_prob_matches_the_library_cross_entropy_in_value_and_gradient():
    """The hand-written Bernoulli likelihood replaces -F.binary_cross_entropy_with_logits(...).sum(-1) for
    speed; in float64 the two must agree to rounding, for binary and grey-level targets, with x broadcast
    over importance samples as the model does, and for gradients with respect to both arguments."""
    torch.manual_seed(0)
    logits = (torch.randn(4, 6, 784, dtype=torch.float64) * 6).requires_grad_()
    for x in (torch.bernoulli(torch.full((6, 784), 0.3, dtype=torch.float64)),
              torch.rand(6, 784, dtype=torch.float64)):
        x = x.requires_grad_()
        ours = bernoulli_log_prob(logits, x.expand_as(logits))
        ref = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        assert ours.shape == (4, 6)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)
        weights = torch.randn(4, 6, dtype=torch.float64)
        g_ours = torch.autograd.grad((ours * weights).sum(), (logits, x))
        g_ref = torch.autograd.grad((ref * weights).sum(), (logits, x))
        for a, b in zip(g_ours, g_ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    small = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bernoulli_log_prob, (small, target))
    # Broadcasting either way: one image against k samples' logits, and k targets against one set of logits.
    one = (torch.randn(6, 784, dtype=torch.float64) * 3).requires_grad_()
    many = torch.rand(4, 6, 784, dtype=torch.float64)
    for lg, tg in ((logits, many[0]), (one, many)):
        shape = torch.broadcast_shapes(lg.shape, tg.shape)
        ours = bernoulli_log_prob(lg, tg)
        ref = -F.binary_cross_entropy_with_logits(lg.expand(shape), tg.expand(shape), reduction="none").sum(-1)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)
        torch.testing.assert_close(torch.autograd.grad(ours.sum(), lg)[0], torch.autograd.grad(ref.sum(), lg)[0],
                                   rtol=0, atol=1e-9)


def test_bernoulli_log_prob_is_float32_under_bf16_autocast_and_close_to_the_float64_value():
    torch.manual_seed(1)
    decoder = torch.nn.Linear(20, 784)
    with torch.no_grad():
        decoder.weight.mul_(20.0)                                         # logits of a few units, as trained
    z = torch.randn(50, 20)
    x = torch.bernoulli(torch.full((50, 784), 0.2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = decoder(z)                                               # bfloat16, as in bf16-mixed training
        out = bernoulli_log_prob(logits, x)
    assert logits.dtype == torch.bfloat16 and out.dtype == torch.float32
    exact = -F.binary_cross_entropy_with_logits(logits.double(), x.double(), reduction="none").sum(-1)
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-3)   # float32 sums of 784 terms
    # Logits far from zero, where exp(-|l|) < 6e-8 makes log(1 + e) round to 0: right pixels cost ~0 nats,
    # wrong ones |l| nats, nothing overflows.
    big = torch.tensor([30.0, -30.0])
    assert abs(bernoulli_log_prob(big, torch.tensor([1.0, 0.0])).item()) < 1e-6
    assert bernoulli_log_prob(big, torch.tensor([0.0, 1.0])).item() == pytest.approx(-60.0, abs=1e-5)
    assert bernoulli_log_prob(torch.tensor([1e4, -1e4]), torch.tensor([0.0, 1.0])).item() == pytest.approx(-2e4)


def test_elu_matches_the_library_elu_in_value_and_gradient():
    """models.ELU replaces nn.ELU for speed on the CPU: in float64 it agrees with F.elu to rounding in value
    and gradient; in float32 within float32 rounding of 1; special values pass through as F.elu's do."""
    torch.manual_seed(2)
    x = (torch.randn(64, 300, dtype=torch.float64) * 5).requires_grad_()
    ours, ref = ELU()(x), F.elu(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-15)
    weights = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad((ours * weights).sum(), x)[0],
                               torch.autograd.grad((ref * weights).sum(), x)[0], rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(ELU(), (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),))
    x32 = torch.linspace(-20, 20, 100_001)
    torch.testing.assert_close(ELU()(x32).double(), F.elu(x32.double()), rtol=0, atol=1e-7)
    positive = x32[x32 > 0]
    assert torch.equal(ELU()(positive), positive)                         # exact where x > 0
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0])
    torch.testing.assert_close(ELU()(special), F.elu(special), equal_nan=True)
    # bfloat16 (bf16-mixed training): the exp runs in float32 and rounds once, so small negative inputs keep
    # their value instead of rounding to 0 (exp(-0.001) is 1 in bfloat16); the result is F.elu's, bit for bit.
    h16 = torch.cat([torch.linspace(-0.01, 0.01, 2001), torch.randn(100_000) * 4]).bfloat16()
    assert torch.equal(ELU()(h16), F.elu(h16))
    assert ELU()(torch.tensor([-0.001]).bfloat16()).item() == pytest.approx(-0.001, rel=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.Linear(8, 8)(torch.randn(3, 8))
        assert ELU()(h).dtype == F.elu(h).dtype == torch.bfloat16


def test_elu_models_use_the_fast_elu():
    model = model_from_config("mlp_vae", "model.hidden_sizes=[16]", "model.latent_dim=2", "model.activation=elu")
    assert any(isinstance(m, ELU) for m in model.encoder.modules())
    assert any(isinstance(m, ELU) for m in model.decoder.modules())
    assert not any(isinstance(m, torch.nn.ELU) for m in model.modules())


@pytest.mark.parametrize("was_training", [True, False])
def test_eval_mode_turns_dropout_off_and_gives_the_mode_back_even_after_an_error(was_training):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    model.train(was_training)
    x = torch.ones(64, 4)
    with eval_mode(model):
        assert not model.training and not model[1].training
        assert torch.equal(model(x), model(x))  # no dropout mask drawn
    assert model.training == was_training and model[1].training == was_training
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert model.training == was_training and model[1].training == was_training


class _CodeImages:
    """A stand-in image model whose 'image' is its code: shows which latent dimension each traversal row moves."""
    latent_dim = 3
    prior = StandardNormal(3)

    def posterior(self, batch):
        mu = torch.tensor([[0.1, 2.0, 0.5]]).expand(batch["x"].shape[0], 3)   # KL per dim: 0.005, 2, 0.125
        return DiagonalGaussian(mu, torch.zeros_like(mu))

    def decode_mean(self, z):
        return 0.5 + 0.1 * z


class _OneBatch:
    eval_batch_size = 4
    image_shape = (1, 1, 3)

    def eval_batches(self, split, batch_size=None, limit=None):
        yield {"x": torch.zeros(batch_size or self.eval_batch_size, 3)}


@pytest.mark.parametrize("max_dims,rows", [(None, [1, 2, 0]), (2, [1, 2])])
def test_traversal_rows_go_from_the_most_informative_dimension_down(max_dims, rows):
    from seqvae_cli.visuals.images import image_traversal
    steps = 5
    images = image_traversal(_CodeImages(), _OneBatch(), span=1.0, steps=steps, max_dims=max_dims)
    assert images.shape == (len(rows) * steps, 1, 1, 3)
    codes = images.reshape(len(rows), steps, 3)
    for row, dim in enumerate(rows):
        moving = (codes[row].amax(0) - codes[row].amin(0)) > 1e-6
        assert moving.tolist() == [d == dim for d in range(3)]
        assert torch.allclose(codes[row, :, dim], 0.5 + 0.1 * torch.linspace(-1, 1, steps))
