"""The networks of issue 22, in-process: the convolutional VAE (nn/conv.py, models/conv_vae.py) and the Transformer
encoder of the sequence VAEs (nn/transformer.py, models/encoders.py). Shapes, padding masks, the configs that
choose them, and the one-line errors of bad values. The CLI runs are in test_networks_cli.py."""
from __future__ import annotations

import pytest
import torch

from conftest import compose_train_config as compose_train
from seqvae_cli.config.rules import validate
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.conv_vae import ConvVAE
from seqvae_cli.models.lstm_vae import lstm_vae
from seqvae_cli.models.sentence_vae import LSTMVAE
from seqvae_cli.models.series_vae import SeriesLSTMVAE
from seqvae_cli.nn.rnn import RNNEncoder
from seqvae_cli.nn.transformer import TransformerEncoder
from seqvae_cli.parts import build_part

TEXT = {"vocab_size": 50, "pad_id": 0, "unk_id": 1, "sos_id": 2, "eos_id": 3}
SMALL_TEXT = {**TEXT, "embed_dim": 16, "hidden_size": 16, "latent_dim": 4}


def conv(**kw) -> ConvVAE:
    return ConvVAE(input_dim=784, **{"channels": [4, 8], "latent_dim": 3, "hidden_size": 16, **kw})


def tiny_transformer(**kw) -> dict:
    return {"layers": 2, "heads": 2, "ffn_size": 32, "dropout": 0.0, **kw}


# ------------------------------------------------------------------------------------------ the conv VAE

@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
@pytest.mark.parametrize("channels, per_stage", [([4], 1), ([4, 8], 2), ([4, 8, 8], 1), ([4, 4, 4, 4], 1)])
def test_conv_decoder_lands_on_the_28x28_grid(kernel, channels, per_stage):
    model = conv(channels=channels, kernel_size=kernel, layers_per_stage=per_stage)
    assert model.encoder.grids[0] == (28, 28) and len(model.encoder.grids) == len(channels) + 1
    images = model.decoder(torch.zeros(2, 3))
    assert images.shape == (2, 1, 28, 28)
    assert model.posterior({"x": torch.rand(2, 784)}).mean.shape == (2, 3)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_conv_likelihood_shapes_means_and_chunking(likelihood):
    torch.manual_seed(0)
    model = conv(likelihood=likelihood).eval()
    x = torch.rand(3, 784).bernoulli() if likelihood == "bernoulli" else torch.rand(3, 784)
    z = torch.randn(5, 3, 3)
    ll = model.log_likelihood({"x": x}, z)
    assert ll.shape == (5, 3) and torch.isfinite(ll).all()
    mean = model.decode_mean(z)
    assert mean.shape == (5, 3, 784) and 0.0 <= float(mean.detach().min()) and float(mean.detach().max()) <= 1.0
    # Without gradients, many samples are decoded in passes of max_rows_per_pass images: same numbers.
    model.max_rows_per_pass = 4
    with torch.no_grad():
        assert torch.allclose(model.log_likelihood({"x": x}, z), ll.detach(), atol=1e-4)


def test_conv_bernoulli_likelihood_is_the_library_bce():
    model = conv().eval()
    x, z = torch.rand(2, 784).bernoulli(), torch.randn(1, 2, 3)
    logits = model.decoder(z[0]).view(1, 2, 784)
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x[None], reduction="none").sum(-1)
    assert torch.allclose(model.log_likelihood({"x": x}, z), expected, atol=1e-3)


def test_conv_gradients_reach_encoder_and_decoder_and_bf16_runs():
    model = conv()
    x = torch.rand(4, 784).bernoulli()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = model.posterior({"x": x})
        loss = -model.log_likelihood({"x": x}, q.rsample(1)).sum() + q.float().kl(model.prior).sum()
    loss.backward()
    assert loss.dtype == torch.float32
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kwargs, needle", [
    ({"channels": [4] * 8, "kernel_size": 4}, "model.channels"),
    ({"channels": []}, "model.channels"),
    ({"kernel_size": 1}, "model.kernel_size"),
    ({"activation": "swish"}, "model.activation"),
    ({"likelihood": "poisson"}, "model.likelihood"),
])
def test_conv_bad_settings_are_one_line(kwargs, needle):
    with pytest.raises(SeqvaeError, match=needle) as err:
        conv(**kwargs)
    assert "\n" not in str(err.value)


def test_conv_needs_square_images():
    with pytest.raises(SeqvaeError, match="square"):
        ConvVAE(input_dim=780, channels=[4], latent_dim=2)


def test_conv_vae_config_composes_and_builds():
    for overrides in (["model=conv_vae"], ["experiment=mnist_conv"], ["model=conv_vae", "model.likelihood=gaussian",
                                                                       "data.binarize=none"]):
        cfg = compose_train(*overrides)
        validate(cfg)
        model = build_part(cfg.model, "model", input_dim=784)
        assert isinstance(model, ConvVAE) and model.latent_dim == cfg.model.latent_dim


# ------------------------------------------------------------------------------------ the Transformer encoder

@pytest.mark.parametrize("pooling", ["mean", "token"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_a_padded_sentence_gets_the_posterior_it_gets_alone(pooling, positions):
    torch.manual_seed(0)
    model = LSTMVAE(**SMALL_TEXT, encoder="transformer",
                    transformer=tiny_transformer(pooling=pooling, positions=positions)).eval()
    sentence = torch.randint(4, 50, (1, 6))
    alone = model.posterior({"x": sentence, "lengths": torch.tensor([6])})
    # The same sentence padded to 11 beside a longer one, with garbage ids (not <pad>) in its padding.
    padded = torch.cat([sentence, torch.randint(4, 50, (1, 5))], 1)
    batch = {"x": torch.cat([padded, torch.randint(4, 50, (1, 11))]), "lengths": torch.tensor([6, 11])}
    together = model.posterior(batch)
    assert torch.allclose(together.mu[:1], alone.mu, atol=1e-5)
    assert torch.allclose(together.logvar[:1], alone.logvar, atol=1e-5)
    # ...and the padding is really read where it is not padding: a longer length changes the posterior.
    longer = model.posterior({"x": padded, "lengths": torch.tensor([11])})
    assert not torch.allclose(longer.mu, alone.mu, atol=1e-3)


def test_transformer_encoder_shapes_and_projection():
    enc = TransformerEncoder(8, 16, layers=1, heads=4, ffn_size=32, pooling="token")
    assert enc.output_size == 16 and isinstance(enc.proj, torch.nn.Linear)
    assert enc.forward_full(torch.randn(3, 7, 8)).shape == (3, 16)
    assert enc(torch.randn(3, 7, 8), torch.tensor([7, 1, 4])).shape == (3, 16)
    with pytest.raises(SeqvaeError, match="model.transformer.max_len=5"):
        TransformerEncoder(8, 16, max_len=5).forward_full(torch.randn(1, 6, 8))
    assert TransformerEncoder(8, 16, positions="sinusoidal", max_len=5).forward_full(torch.randn(1, 6, 8)).shape \
        == (1, 16)


def test_series_model_takes_the_transformer_encoder():
    torch.manual_seed(0)
    model = SeriesLSTMVAE(num_channels=2, seq_len=12, embed_dim=8, hidden_size=16, latent_dim=4,
                          encoder="transformer", transformer=tiny_transformer())
    assert isinstance(model.encoder, TransformerEncoder)
    x = torch.randn(5, 12, 2)
    q = model.posterior({"x": x})
    loss = -model.log_likelihood({"x": x}, q.rsample(2)).mean() + q.kl(model.prior).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert model.forecast(x[:, :6], horizon=4, num_samples=3).shape == (3, 5, 4, 2)   # encodes a shorter prefix


def test_the_default_encoder_is_the_rnn_with_the_same_weights():
    """model.encoder=rnn (the default) builds the RNNEncoder as before the choice existed: same random draws."""
    torch.manual_seed(3)
    old = lstm_vae(**SMALL_TEXT)
    torch.manual_seed(3)
    new = lstm_vae(**SMALL_TEXT, encoder="rnn", transformer=tiny_transformer())
    assert isinstance(new.encoder, RNNEncoder)
    assert old.state_dict().keys() == new.state_dict().keys()
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())


@pytest.mark.parametrize("data, kwargs", [("ptb", TEXT), ("ecg5000", {"num_channels": 1, "seq_len": 140})])
def test_transformer_is_one_override(data, kwargs):
    cfg = compose_train("model=lstm_vae", f"data={data}", "model.encoder=transformer")
    validate(cfg)
    assert cfg.model.encoder == "transformer" and cfg.model.transformer.layers >= 1
    model = build_part(cfg.model, "model", **kwargs)
    assert isinstance(model.encoder, TransformerEncoder)
    assert compose_train("model=lstm_vae", f"data={data}").model.encoder == "rnn"


@pytest.mark.parametrize("override, key", [
    ("model.encoder=cnn", "model.encoder"),
    ("model.transformer.heads=0", "model.transformer.heads"),
    ("model.transformer.dropout=1.0", "model.transformer.dropout"),
    ("model.transformer.positions=rotary", "model.transformer.positions"),
    ("model.transformer.pooling=max", "model.transformer.pooling"),
    ("model.transformer.layers=2.0", "model.transformer.layers=2"),
])
def test_rules_refuse_bad_transformer_values(override, key):
    with pytest.raises(SeqvaeError, match=key.replace(".", r"\.")):
        validate(compose_train("model=lstm_vae", "data=ptb", override))


def test_heads_must_divide_the_width():
    with pytest.raises(SeqvaeError, match=r"model\.transformer\.heads=3 does not divide .*model\.hidden_size=16"):
        LSTMVAE(**SMALL_TEXT, encoder="transformer", transformer=tiny_transformer(heads=3))
    with pytest.raises(SeqvaeError, match="model.transformer.depth is not a key"):
        LSTMVAE(**SMALL_TEXT, encoder="transformer", transformer={"depth": 2})
