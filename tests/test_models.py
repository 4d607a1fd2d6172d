"""Layer 2: the MNIST models, instantiated from their configs as the trainer does."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from seqvae_cli.config import register_resolvers
from seqvae_cli.models import MLPAutoencoder, MLPVAE

from conftest import CONF_DIR

S, B, D = 3, 5, 20


def model_from_config(option: str, *overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={option}", *overrides])
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="all", input_dim=784)


@pytest.mark.parametrize("option,cls", [("mlp_vae", MLPVAE), ("ae", MLPAutoencoder)])
def test_instantiate_and_forward_shapes(option, cls):
    model = model_from_config(option)
    assert type(model) is cls
    assert model.latent_dim == D and model.variational == (option == "mlp_vae")
    x = torch.bernoulli(torch.full((B, 784), 0.3))
    mu, logvar = model.encode({"x": x})
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
    assert model.mu_head.out_features == 3 and model.logvar_head.out_features == 3
    dec = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dec] == [(3, 16), (16, 32), (32, 784)]
    assert any(isinstance(m, torch.nn.Tanh) for m in model.modules())
    assert not isinstance(list(model.decoder)[-1], torch.nn.Tanh)   # logits: no activation at the end
