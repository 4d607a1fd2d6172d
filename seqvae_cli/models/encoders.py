"""model.encoder of the sequence VAEs (model=lstm_vae, text and series alike): the RNN of model.rnn, or a
Transformer (nn/transformer.py) configured by the model.transformer.* keys. Both read [B, T, F] features and
return a summary [B, output_size] that the posterior head turns into q(z|x); the decoders are unchanged."""
from __future__ import annotations

from typing import Any

from torch import nn

from seqvae_cli.errors import SeqvaeError
from seqvae_cli.config.rules import Rule, check_value, number, one_of, probability
from seqvae_cli.nn.rnn import RNNEncoder
from seqvae_cli.nn.transformer import POOLINGS, POSITIONS, TransformerEncoder

ENCODERS = ("rnn", "transformer")

# model.transformer's keys and their defaults (conf/model/lstm_vae.yaml holds the same values). A checkpoint
# written before the Transformer existed has no model.transformer: it was an RNN encoder, and never reads these.
TRANSFORMER_DEFAULTS: dict[str, Any] = {"layers": 2, "heads": 4, "ffn_size": 1024, "dropout": 0.1,
                                        "positions": "learned", "pooling": "mean", "max_len": 512}

# The rules of model.encoder and model.transformer.* (in the model's RULES: the sentence and the series VAE share
# these objects). validate() applies them to the config, transformer_settings/build_encoder to the arguments.
ENCODER_RULES: dict[str, Rule] = {
    "encoder": one_of(*ENCODERS),
    "transformer.layers": number(1, integer=True),
    "transformer.heads": number(1, integer=True),
    "transformer.ffn_size": number(1, integer=True),
    "transformer.dropout": probability(),
    "transformer.positions": one_of(*POSITIONS),
    "transformer.pooling": one_of(*POOLINGS),
    "transformer.max_len": number(1, integer=True),
}


def transformer_settings(given: dict | None, width: int, encoder: str) -> dict[str, Any]:
    """model.transformer with its defaults filled in, each value checked (one config-error line naming the key),
    whichever encoder is chosen: a part rebuilt from a checkpoint is held to the rules validate() applies."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(TRANSFORMER_DEFAULTS))
    if unknown:
        raise SeqvaeError(f"config error: model.transformer.{unknown[0]} is not a key of the Transformer encoder; "
                          f"its keys are {', '.join(TRANSFORMER_DEFAULTS)}")
    s = {**TRANSFORMER_DEFAULTS, **given}
    for key, value in s.items():
        check_value(f"model.transformer.{key}", value, ENCODER_RULES[f"transformer.{key}"])
    if encoder == "transformer" and width % s["heads"]:
        raise SeqvaeError(f"config error: model.transformer.heads={s['heads']} does not divide the Transformer's "
                          f"width model.hidden_size={width}; choose heads that divide it (e.g. "
                          f"model.transformer.heads={_divisor_near(width, s['heads'])})")
    return s


def _divisor_near(width: int, heads: int) -> int:
    return max(d for d in range(1, heads + 1) if width % d == 0)


def build_encoder(encoder: str, input_size: int, hidden_size: int, encoder_layers: int, bidirectional: bool,
                  rnn: str, packed: bool | None, transformer: dict | None, input_scale: float = 1.0) -> nn.Module:
    """The encoder model.encoder names. `rnn` builds exactly the RNNEncoder the models always built (same layers,
    same random draws); `transformer` a TransformerEncoder of width hidden_size (encoder_layers, bidirectional and
    packed are RNN keys and do not apply to it)."""
    check_value("model.encoder", encoder, ENCODER_RULES["encoder"])
    s = transformer_settings(transformer, hidden_size, encoder)
    if encoder == "rnn":
        return RNNEncoder(input_size, hidden_size, encoder_layers, bidirectional, rnn, packed)
    return TransformerEncoder(input_size, hidden_size, s["layers"], s["heads"], s["ffn_size"], float(s["dropout"]),
                              s["positions"], s["pooling"], s["max_len"], input_scale)
