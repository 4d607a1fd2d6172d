"""model=lstm_vae: the data decides which sequence VAE is built (text -> sentence VAE, series -> series VAE)."""
from __future__ import annotations


from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.base import LatentModel
from seqvae_cli.models.sentence_vae import LSTMVAE
from seqvae_cli.models.series_vae import SeriesLSTMVAE


# ------------------------------------------------------------------------------------- the factory

# model=lstm_vae serves both data kinds: the data module's kwargs pick the model, and the config keys of the
# other kind are dropped here (conf/model/lstm_vae.yaml lists which keys are text-only and series-only).
TEXT_ONLY_KEYS = ("vocab_size", "pad_id", "unk_id", "sos_id", "eos_id", "word_dropout", "embed_dropout",
                  "output_dropout", "weight_drop", "tie_weights", "packed")


SERIES_ONLY_KEYS = ("num_channels", "seq_len", "project_input", "series_decoder", "output_std", "fixed_std")


def build_lstm_vae(**kwargs) -> LatentModel:
    """The sentence VAE (LSTMVAE) when the data gives vocab_size, the time-series SeriesLSTMVAE when it gives
    num_channels and seq_len."""
    if "vocab_size" in kwargs:
        return LSTMVAE(**{k: v for k, v in kwargs.items() if k not in SERIES_ONLY_KEYS})
    if "num_channels" in kwargs and "seq_len" in kwargs:
        return SeriesLSTMVAE(**{k: v for k, v in kwargs.items() if k not in TEXT_ONLY_KEYS})
    given = sorted(k for k in kwargs if k not in LSTMVAE_CONFIG_KEYS)
    raise SeqvaeError(f"model=lstm_vae needs text data (data=ptb|text: a vocabulary) or time-series data "
                      f"(data=sines|ecg5000|nab|csv: channels and a sequence length); this data gives "
                      f"{', '.join(given) or 'nothing'}. Use model=mlp_vae for images")


LSTMVAE_CONFIG_KEYS = frozenset({"name", "embed_dim", "hidden_size", "latent_dim", "rnn", "encoder_layers",
                                 "bidirectional", "decoder_layers", "z_conditioning", "encoder", "transformer"}
                                | set(TEXT_ONLY_KEYS) | set(SERIES_ONLY_KEYS))


class lstm_vae:  # noqa: N801 - named like the config option it serves
    """`_target_` of conf/model/lstm_vae.yaml: lstm_vae(**kwargs) returns build_lstm_vae(**kwargs), an LSTMVAE or a
    SeriesLSTMVAE, never an instance of this class. A class rather than a function only because config tooling
    (hydra.utils.get_class, e.g. in tests/test_compose.py) locates model targets as classes."""

    # Its config holds the keys of both models (each model checks its own when built); a key they share has one
    # rule (nn/rnn.RNN_RULES, LatentModel.RULES).
    RULES = {**LSTMVAE.RULES, **SeriesLSTMVAE.RULES}

    def __new__(cls, **kwargs) -> LatentModel:  # type: ignore[misc]
        return build_lstm_vae(**kwargs)
