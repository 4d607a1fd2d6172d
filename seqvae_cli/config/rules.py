"""The config's rules: every key's check, in one table, and the one-line error a broken value gives."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from seqvae_cli.errors import SeqvaeError

# --------------------------------------------------------------------------------------- validation

def one_of(*allowed: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in allowed), "one of: " + ", ".join(map(str, allowed))


BOOLEAN = (lambda v: isinstance(v, bool)), "true or false"


def precision_rule() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in ("32", "bf16-mixed") or (isinstance(v, int) and not isinstance(v, bool) and v == 32)), \
        "32 or bf16-mixed"


def is_bf16(precision: Any) -> bool:
    """A checked precision setting (trainer.precision, eval's iw_precision) -> whether it asks for bf16 autocast."""
    return str(precision) == "bf16-mixed"


def number(lo: float | None = None, hi: float | None = None, integer: bool = False,
           lo_open: bool = False, hi_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    """A finite number within the bounds. NaN and +-inf are refused everywhere: no key gives them a meaning, and
    `x > 0` is False for NaN, so a NaN clip or floor would switch its feature off without a word. An integer key
    takes an integer only: Hydra reads `2.0` as a float, which torch sizes and seeds do not accept."""
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return False
        if integer and not isinstance(v, numbers.Integral):
            return False
        if not isinstance(v, numbers.Integral) and not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)
    kind = "an integer" if integer else "a finite number"
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        bounds.append(f"{'<' if hi_open else '<='} {hi}")
    return ok, kind + (" " + " and ".join(bounds) if bounds else "")


# Seeds reach torch's generators (which take [-2**63, 2**64 - 1]) after offsets and products: seed + 1_000_003 *
# rank in the trainer, seed * 100_003 + batch in evaluate, seed * 3 + split for the sines. 32 bits, the usual range
# of a seed, leaves room for all of them.
SEED_MAX = 2**32 - 1


def seed_rule() -> tuple[Callable[[Any], bool], str]:
    return number(0, SEED_MAX, integer=True)


def optional_positive_int(none_means: str = "") -> tuple[Callable[[Any], bool], str]:
    """null or an integer >= 1 (true and 1.0 are refused)."""
    return (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)), \
        f"null{f' ({none_means})' if none_means else ''} or a positive integer"


def number_pair() -> tuple[Callable[[Any], bool], str]:
    """A [low, high] range of two finite numbers."""
    is_number = number()[0]
    return (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(i) for i in v)
            and v[0] <= v[1]), "a list [low, high] of two finite numbers with low <= high"


def positive_int_list() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, (list, ListConfig)) and len(v) > 0
            and all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v)), \
        "a non-empty list of positive integers, e.g. [512,512]"


def batch_limit_rule() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0)
            or (isinstance(v, float) and 0 < v <= 1)), "null, a positive integer (batches) or a fraction in (0, 1]"


def resume_rule() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool) or (isinstance(v, str) and v.endswith(".pt"))), \
        "false, true (with run_dir=RUN) or a path to a .pt checkpoint"


# The longest decode `seqvae sample` runs (tokens per sentence): PTB's longest sentence has 83 tokens, and a model
# that never emits <eos> would otherwise decode for as long as asked, minutes for max_len=1000000.
MAX_DECODE_LEN = 1000


# key -> (check, description). Keys absent from a config (e.g. text-only keys on MNIST) are skipped.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "device.type": one_of("auto", "cpu", "cuda", "mps"),
    "device.num_threads": optional_positive_int(),
    "data.binarize": one_of("dynamic", "static", "none"),
    "data.batch_size": number(1, integer=True),
    "data.eval_batch_size": number(1, integer=True),
    "data.num_val": number(1, 59999, integer=True),
    "data.eval_iw_samples": number(1, integer=True),
    "data.static_seed": seed_rule(),
    "data.download": BOOLEAN,
    "model.hidden_sizes": positive_int_list(),
    "model.activation": one_of("relu", "elu", "tanh", "softplus", "gelu"),
    "model.latent_dim": number(1, integer=True),
    "model.likelihood": one_of("bernoulli", "gaussian"),
    "objective.beta": number(0),
    "objective.iw_samples": number(1, integer=True),
    "objective.kl_anneal.schedule": one_of("constant", "linear", "sigmoid", "cyclical"),
    "objective.kl_anneal.unit": one_of("steps", "epochs"),
    "objective.kl_anneal.start": number(0),
    "objective.kl_anneal.end": number(0),
    "objective.kl_anneal.warmup": number(0),
    "objective.kl_anneal.n_cycles": number(1, integer=True),
    "objective.kl_anneal.ratio": number(0, 1, lo_open=True),
    "objective.free_bits.per_dim": number(0),
    "objective.free_bits.total": number(0),
    "objective.bow_weight": number(0),
    "objective.ae_pretrain_epochs": number(0, integer=True),
    "objective.aggressive.enabled": BOOLEAN,
    "objective.aggressive.max_inner_steps": number(1, integer=True),
    "objective.aggressive.check_every": number(1, integer=True),
    "optim.name": one_of("adam", "adamw"),
    "optim.lr": number(0, lo_open=True),
    "optim.weight_decay": number(0),
    "optim.grad_clip": number(0),
    "optim.fused": BOOLEAN,
    "optim.betas": (lambda v: isinstance(v, list) and len(v) == 2
                    and all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1 for b in v),
                    "two numbers in [0, 1), e.g. [0.9,0.999]"),
    "optim.eps": number(0, lo_open=True),
    "optim.lr_schedule": one_of("constant", "cosine", "step", "exponential"),
    "optim.lr_min": number(0),
    "optim.lr_gamma": number(0, 1, lo_open=True),
    "optim.lr_step_epochs": number(1, integer=True),
    "optim.warmup_steps": number(0, integer=True),
    "trainer.max_epochs": number(1, integer=True),
    "trainer.max_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v > 0),
                          "-1 (no limit) or a positive integer"),
    "trainer.limit_train_batches": batch_limit_rule(),
    "trainer.limit_val_batches": batch_limit_rule(),
    "trainer.limit_test_batches": batch_limit_rule(),
    "trainer.val_every": number(1, integer=True),
    "trainer.log_every": number(1, integer=True),
    "trainer.seed": seed_rule(),
    "trainer.precision": precision_rule(),
    "iw_precision": precision_rule(),
    "trainer.resume": resume_rule(),
    "trainer.overwrite": BOOLEAN,
    "trainer.test": BOOLEAN,
    "trainer.test_iw_samples": number(0, integer=True),
    "trainer.val_iw_samples": number(0, integer=True),
    "trainer.weight_average.kind": one_of("none", "ema", "uniform"),
    "trainer.weight_average.ema_decay": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
                                         and 0 <= v < 1, "a number >= 0 and < 1, e.g. 0.999"),
    "trainer.weight_average.start_epoch": number(0, integer=True),
    "trainer.log_visuals": BOOLEAN,
    "trainer.devices": number(1, integer=True),
    "trainer.cuda_graphs": (lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    "trainer.progress_bar": BOOLEAN,
    "split": one_of("train", "val", "test"),
    "checkpoint": (lambda v: v in ("best", "last") or (isinstance(v, str) and v.endswith(".pt")),
                   "best, last or a path to a .pt file"),
    "iw_samples": optional_positive_int(),
    "iw_rows_per_chunk": optional_positive_int(),
    "limit_examples": optional_positive_int("the whole split"),
    "batch_size": number(1, integer=True),
    "seed": seed_rule(),
    # sample: how many pictures/sentences, and the grids' sizes
    "num_samples": number(1, integer=True),
    "num_reconstructions": number(1, integer=True),
    "interpolation_steps": number(2, integer=True),
    "traversal_steps": number(2, integer=True),
    "traversal_range": number(0, lo_open=True),
    "traversal_dims": optional_positive_int("every dimension"),
    "manifold_size": number(2, integer=True),
    "scatter_points": number(1, integer=True),
    "sentences": (lambda v: v is None or isinstance(v, (str, int, float)) or
                  (isinstance(v, list) and all(isinstance(s, (str, int, float)) for s in v)),
                  "a sentence or a list of sentences, e.g. 'sentences=[the market fell,prices rose]'"),
    "data.iw_rows_per_chunk": number(1, integer=True),
    # text
    "data.tokenizer": one_of("whitespace", "simple"),
    "data.relative_to": one_of("data_dir", "cwd"),
    "data.min_freq": number(1, integer=True),
    "data.bucket_size": number(1, integer=True),
    "data.max_size": optional_positive_int(),
    "data.max_train_len": optional_positive_int(),
    "data.lowercase": BOOLEAN,
    "model.rnn": one_of("lstm", "gru"),
    "model.z_conditioning": one_of("init", "concat", "both"),
    "model.embed_dim": number(1, integer=True),
    "model.hidden_size": number(1, integer=True),
    "model.encoder_layers": number(1, integer=True),
    "model.decoder_layers": number(1, integer=True),
    "model.word_dropout": number(0, 1),
    "model.embed_dropout": number(0, 1),
    "model.output_dropout": number(0, 1),
    "model.weight_drop": number(0, 1),
    "model.bidirectional": BOOLEAN,
    "model.tie_weights": BOOLEAN,
    "model.packed": (lambda v: v is None or isinstance(v, bool), "null (auto), true or false"),
    # sample (text decoding)
    "temperature": number(0),
    "top_k": number(0, integer=True),
    "top_p": number(0, 1, lo_open=True),
    "beam_width": number(1, integer=True),
    "length_penalty": number(0),
    "allow_unk": BOOLEAN,
    "min_len": number(0, integer=True),
    "no_repeat_ngram": number(0, integer=True),
    "max_len": number(1, MAX_DECODE_LEN, integer=True),
    # time series: the series LSTM-VAE's keys (model=lstm_vae), eval's anomaly score, sample's forecasts
    "model.series_decoder": one_of("repeat", "autoregressive"),
    "model.output_std": one_of("learned_channel", "learned_step", "fixed"),
    "model.fixed_std": number(0, lo_open=True),
    "model.project_input": BOOLEAN,
    "score": one_of("neg_elbo", "rec", "iw_nll"),
    "forecast_prefix": number(0, 1, lo_open=True),
    "num_forecasts": number(1, integer=True),
    "forecast_windows": number(1, integer=True),
    "season": optional_positive_int("estimated"),
    # time-series data (data_series.py checks its constructor arguments with these same rules)
    "data.seed": seed_rule(),
    "data.window": number(2, integer=True),
    "data.stride": number(1, integer=True),
    "data.test_stride": number(1, integer=True),
    "data.train_fraction": number(0, 1, lo_open=True, hi_open=True),
    "data.val_fraction": number(0, 1, lo_open=True, hi_open=True),
    "data.max_train_length": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 2),
                              "null or an integer >= 2"),
    "data.test_context": BOOLEAN,
    "data.num_val_normal": number(1, integer=True),
    "data.num_test_normal": number(1, integer=True),
    "data.ucr_num_val": number(1, integer=True),
    "data.num_series.train": number(1, integer=True),
    "data.num_series.val": number(1, integer=True),
    "data.num_series.test": number(1, integer=True),
    "data.seq_len": number(2, integer=True),
    "data.channels": number(1, integer=True),
    "data.frequency": number_pair(),
    "data.phase": number_pair(),
    "data.amplitude": number_pair(),
    "data.noise_std": number(0),
    "data.anomaly_fraction": number(0, 1),
    "data.spike_size": number(0),
    "data.frequency_factor": number(0, lo_open=True),
}


def value_error(key: str, value: Any, rule: tuple[Callable[[Any], bool], str]) -> SeqvaeError:
    """The one-line error for `key=value` outside `rule`. A whole number written as a float (2.0) for an integer key
    gets the override spelled as an integer."""
    ok, allowed = rule
    example = "..."
    if isinstance(value, float) and value.is_integer() and ok(int(value)):
        example = str(int(value))
    return SeqvaeError(f"config error: {key}={value!r} is not allowed; expected {allowed} "
                       f"(fix it with the override {key}={example})")


def validate(cfg: DictConfig, rules: dict = RULES) -> None:
    """Raise SeqvaeError on a required value left unset (???) or the first value outside what its key allows."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SeqvaeError(f"config error: {missing[0]} is required but not set (set it with {missing[0]}=...)")
    for key, (ok, allowed) in rules.items():
        if OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False) == "__absent__":
            continue
        value = OmegaConf.select(cfg, key)
        if isinstance(value, ListConfig):
            value = list(value)
        if not ok(value):
            raise value_error(key, value, (ok, allowed))
    if OmegaConf.select(cfg, "trainer.overwrite", default=False) and \
            OmegaConf.select(cfg, "trainer.resume", default=False) is not False:
        raise SeqvaeError("config error: trainer.overwrite=true starts a new run over the old one, and trainer.resume "
                          "continues the old one; set only one of them")
    if OmegaConf.select(cfg, "optimized_metric", default=None) == "val/iw_nll" and \
            not OmegaConf.select(cfg, "trainer.val_iw_samples", default=0):
        raise SeqvaeError("config error: optimized_metric=val/iw_nll needs the validation IW-NLL, but "
                          "trainer.val_iw_samples is 0; set trainer.val_iw_samples=K (e.g. 50)")
    iw_samples = OmegaConf.select(cfg, "objective.iw_samples", default=1) or 1
    free_bits = {k: OmegaConf.select(cfg, f"objective.free_bits.{k}", default=0) or 0 for k in ("per_dim", "total")}
    if iw_samples > 1 and any(free_bits.values()):
        key = next(k for k, v in free_bits.items() if v)
        raise SeqvaeError(f"config error: objective.free_bits.{key}={free_bits[key]} has no meaning for the IWAE "
                          f"bound (objective.iw_samples={iw_samples}): free bits floor the KL term of the ELBO, "
                          f"which the importance-weighted bound does not have; set objective.free_bits.{key}=0 "
                          f"or objective.iw_samples=1")
    lr, lr_min = OmegaConf.select(cfg, "optim.lr", default=None), OmegaConf.select(cfg, "optim.lr_min", default=None)
    cosine = OmegaConf.select(cfg, "optim.lr_schedule", default=None) == "cosine"
    if cosine and lr is not None and lr_min is not None and lr_min > lr:
        raise SeqvaeError(f"config error: optim.lr_min={lr_min} is above optim.lr={lr}: the cosine schedule would "
                          f"raise the learning rate; set optim.lr_min below optim.lr (e.g. optim.lr_min={lr / 100:g})")
    # Checked here, before any data loads; trainer.py re-checks against max_steps once batch counts are known.
    pretrain = OmegaConf.select(cfg, "objective.ae_pretrain_epochs", default=0) or 0
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if epochs is not None and pretrain >= epochs:
        raise SeqvaeError(f"config error: objective.ae_pretrain_epochs={pretrain} leaves no VAE epoch within "
                          f"trainer.max_epochs={epochs}; lower the first or raise the second")
    if pretrain and OmegaConf.select(cfg, "objective.aggressive.enabled", default=False):
        raise SeqvaeError(f"config error: objective.aggressive.enabled=true (He et al. 2019) and "
                          f"objective.ae_pretrain_epochs={pretrain} (Li et al. 2019) are two different cures for "
                          f"posterior collapse; choose one (set objective.ae_pretrain_epochs=0 or "
                          f"objective.aggressive.enabled=false)")
    average = OmegaConf.select(cfg, "trainer.weight_average", default=None)
    if average is not None and average.kind != "none" and epochs is not None and \
            average.start_epoch >= epochs:
        raise SeqvaeError(f"config error: trainer.weight_average.start_epoch={average.start_epoch} is not below "
                          f"trainer.max_epochs={epochs}, so no weights would ever be averaged; lower "
                          f"start_epoch or set trainer.weight_average.kind=none")
