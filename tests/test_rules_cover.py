"""One validation: every key of every config the CLI can compose has exactly one rule, declared next to the code that
reads it (config/rules.py says where), and every part's constructor holds its arguments to its class's rules.

Configs are discovered by listing conf/, so a new option, preset or key is covered without touching this file: a
key without a rule fails here unless it is on NO_RULE below, with the reason it needs none."""
from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from seqvae_cli.config.rules import CONSUMERS, PART_SLOTS, rule_sources, rules_for, validate
from seqvae_cli.config.runtime import register_resolvers
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.parts import PARTS

from conftest import CONF_DIR, compose_train_config

# Keys that need no rule, and why. Anything else without a rule is an error.
NO_RULE = {
    # bookkeeping and free text
    "task_name": "the verb's name, set by conf/<verb>.yaml",
    "optimized_metric": "a metric name: checked against the metrics the model reports once it is built "
                        "(training/loop.py) and against an Optuna sweep's direction (config/runtime.py)",
    "objective.name": "the option's label (elbo, iwae): nothing reads it",
    "data.name": "the option's label, used in log lines",
    "model.name": "the option's label",
    "data._target_": "the part itself: parts.check_parts allows registered classes only",
    "model._target_": "the part itself: parts.check_parts allows registered classes only",
    "prior._target_": "the part itself: parts.check_parts allows registered classes only",
    "posterior._target_": "the part itself: parts.check_parts allows registered classes only",
    "prior.name": "the option's label",
    "posterior.name": "the option's label",
    "data.timestamp_column": "a CSV column name (a header may hold any name; null = row numbers)",
    "data.label_column": "a CSV column name (null = no labels)",
    # paths: whoever opens them names the path and the key when it is missing or unreadable
    "run_dir": "a run folder (training/runfolder.py, training/checkpoint.py)",
    "sentences_file": "a file of sentences (visuals/text.py)",
    "paths.data_dir": "the data root",
    "data.data_dir": "the data root (${paths.data_dir})",
    "data.train_file": "a text file",
    "data.val_file": "a text file",
    "data.test_file": "a text file",
    "data.folder": "a folder under the data root (ECG5000, NAB)",
    "data.labels_file": "NAB's label file, under its folder",
}

# Which models read which data (model=lstm_lm/lstm_vae need text or series data; mlp_vae/ae images).
MODELS_OF = {"image": ("mlp_vae", "ae"), "text": ("lstm_vae", "lstm_lm"), "series": ("lstm_vae",)}
# Values a data option requires (???), for composing only.
REQUIRED = {"text": ["data.train_file=a.txt", "data.val_file=b.txt", "data.test_file=c.txt"],
            "csv": ["data.path=x.csv"]}


def options(group: str) -> list[str]:
    return [path.stem for path in sorted((CONF_DIR / group).glob("*.yaml"))]


def verb_config(name: str) -> DictConfig:
    """The `seqvae eval|sample` config as its app receives it (no `hydra` node)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def every_config() -> dict[str, DictConfig]:
    """train: every data option with every model that reads it, every option of the other groups (on the default
    MNIST VAE), every experiment preset; eval and sample."""
    configs = {}
    for data in options("data"):
        base = compose_train_config(f"data={data}", *REQUIRED.get(data, []))
        kind = PARTS["data"][base.data._target_].kind
        for model in MODELS_OF[kind]:
            configs[f"train data={data} model={model}"] = compose_train_config(
                f"data={data}", f"model={model}", *REQUIRED.get(data, []))
    for group in ("objective", "optim", "device", "debug", "hparams_search", "prior", "posterior"):
        for option in options(group):
            try:
                configs[f"train {group}={option}"] = compose_train_config(f"{group}={option}")
            except Exception as exc:  # noqa: BLE001 - only an optional Hydra plugin may be missing
                assert "hydra/sweeper" in str(exc) or "hydra/launcher" in str(exc), exc
    for preset in options("experiment"):
        configs[f"train experiment={preset}"] = compose_train_config(f"experiment={preset}")
    configs.update({"eval": verb_config("eval"), "sample": verb_config("sample")})
    return configs


def leaves(node: DictConfig, prefix: str = ""):
    """Every leaf key (a list is one leaf), required values left unset (???) included."""
    for key in node.keys():
        path = f"{prefix}{key}"
        if not OmegaConf.is_missing(node, key) and isinstance(node[key], DictConfig):
            yield from leaves(node[key], path + ".")
        else:
            yield path


@pytest.fixture(scope="module")
def configs() -> dict[str, DictConfig]:
    return every_config()


def test_discovery_composes_every_data_model_pair_and_every_verb(configs):
    assert {"train data=mnist model=ae", "train data=ptb model=lstm_lm", "train data=csv model=lstm_vae",
            "train experiment=ptb_he2019", "train optim=adamw", "eval", "sample"} <= set(configs)
    assert "train data=sines model=lstm_lm" not in configs      # the LM reads text only


def test_every_key_has_a_rule(configs):
    """A leaf of any config without a rule (and not on NO_RULE) is an error: its typos and nonsense would pass."""
    without = {}
    for name, cfg in configs.items():
        validate(cfg)    # every shipped config passes its own rules
        rules = rules_for(cfg)
        for key in leaves(cfg):
            if key not in rules and key not in NO_RULE:
                without.setdefault(key, name)
    assert not without, ("keys without a rule (declare one next to the code that reads the key, see "
                         "config/rules.py, or add the key to NO_RULE with the reason it needs none): "
                         + ", ".join(f"{key} (in {name})" for key, name in sorted(without.items())))


def test_no_rule_lists_only_live_keys_without_a_rule(configs):
    seen = set()
    for cfg in configs.values():
        rules = rules_for(cfg)
        keys = set(leaves(cfg))
        seen |= keys
        assert not (set(NO_RULE) & set(rules)), f"keys on NO_RULE that have a rule: {set(NO_RULE) & set(rules)}"
    assert not set(NO_RULE) - seen, f"NO_RULE lists keys no config has: {sorted(set(NO_RULE) - seen)}"


def test_each_key_has_exactly_one_rule(configs):
    """No two consumers (a verb's settings tables, the data class, the model class) declare the same key."""
    twice = set()
    for name, cfg in configs.items():
        sources = rule_sources(cfg)
        for (where_a, a), (where_b, b) in itertools.combinations(sources, 2):
            twice |= {f"{key}: {where_a} and {where_b} ({name})" for key in set(a) & set(b)}
    assert not twice, f"keys with two rules: {sorted(twice)}"


def test_every_rule_is_of_a_key_some_config_has(configs):
    """No stale rule: each key a consumer or a registered part declares is a key of a config that uses it."""
    for verb in CONSUMERS:
        of_verb = [cfg for name, cfg in configs.items() if name.split()[0] == verb]
        held = set().union(*(set(leaves(cfg)) for cfg in of_verb))
        for where, table in rule_sources(of_verb[0], verb):
            if where in CONSUMERS[verb]:
                assert set(table) <= held, f"{where} declares keys no {verb} config has: {set(table) - held}"
    for slot in PART_SLOTS:
        for cls in set(PARTS[slot].values()):
            named = [cfg for cfg in configs.values() if cfg.get(slot) is not None
                     and PARTS[slot].get(cfg[slot]._target_) is cls]
            assert named, f"no config names {cls.__name__}"
            held = set().union(*(set(leaves(cfg[slot])) for cfg in named))
            assert set(cls.RULES) <= held, f"{cls.__name__}.RULES: keys no config has: {set(cls.RULES) - held}"


def test_a_subclass_redeclares_a_key_only_to_change_its_rule():
    """Subclasses extend their base's RULES; a key declared again must say something else (ECG5000's normalize),
    not repeat the base's rule."""
    classes = {cls for slot in PART_SLOTS for cls in PARTS[slot].values()}
    for cls in classes:
        for base in cls.__mro__[1:]:
            for key in set(vars(cls).get("RULES", {})) & set(getattr(base, "RULES", {})):
                mine, theirs = cls.RULES[key], base.RULES[key]
                assert mine is theirs or mine[1] != theirs[1], f"{cls.__name__} repeats {base.__name__}'s {key}"


def test_the_sequence_models_share_the_rules_of_their_shared_keys():
    """model=lstm_vae builds the sentence VAE or the series VAE: a key both take has one rule object."""
    from seqvae_cli.models.sentence_vae import LSTMVAE
    from seqvae_cli.models.series_vae import SeriesLSTMVAE
    shared = set(LSTMVAE.RULES) & set(SeriesLSTMVAE.RULES)
    assert {"rnn", "hidden_size", "latent_dim", "z_conditioning"} <= shared
    assert all(LSTMVAE.RULES[key] is SeriesLSTMVAE.RULES[key] for key in shared)


# Each registered class (the lstm_vae factory through the two models it builds), with what it needs besides its keys.
MLP = dict(input_dim=4, hidden_sizes=[3], latent_dim=2)
BUILT = {"MNISTData": dict(data_dir="."), "TextData": dict(train_file="a", val_file="b", test_file="c"),
         "SinesData": {}, "ECG5000Data": {}, "NABData": {}, "CSVData": dict(path="x.csv"),
         "MLPVAE": MLP, "MLPAutoencoder": MLP, "LSTMLM": dict(vocab_size=10), "LSTMVAE": dict(vocab_size=10),
         "SeriesLSTMVAE": dict(num_channels=1, seq_len=4),
         "StandardNormal": dict(latent_dim=2), "MixturePrior": dict(latent_dim=2),
         "VampPrior": dict(latent_dim=2, input_shape=(4,)), "GaussianPosterior": dict(in_features=3, latent_dim=2),
         "PlanarPosterior": dict(in_features=3, latent_dim=2), "IAFPosterior": dict(in_features=3, latent_dim=2),
         "ConvVAE": dict(input_dim=784, channels=[4], latent_dim=2)}


def test_every_registered_part_is_checked_below():
    registered = {cls.__name__ for slot in PART_SLOTS for cls in PARTS[slot].values()}
    assert registered - {"lstm_vae"} <= set(BUILT)


def constructor_error(cls, kwargs: dict) -> SeqvaeError | None:
    """The config error a constructor raises, or keeps for setup() (the time-series modules)."""
    try:
        return getattr(cls(**kwargs), "config_error", None)
    except SeqvaeError as exc:
        return exc


@pytest.mark.parametrize("name", sorted(BUILT))
def test_constructors_hold_every_argument_to_their_class_rules(name):
    """A part built from a checkpoint's config (no validate()) refuses what validate() refuses, with its message."""
    from seqvae_cli.models.sentence_vae import LSTMVAE
    from seqvae_cli.models.series_vae import SeriesLSTMVAE
    classes = {cls.__name__: (slot, cls) for slot in PART_SLOTS for cls in PARTS[slot].values()}
    classes.update(LSTMVAE=("model", LSTMVAE), SeriesLSTMVAE=("model", SeriesLSTMVAE))
    slot, cls = classes[name]
    bad = object()          # no rule allows it
    assert constructor_error(cls, BUILT[name]) is None
    for key in cls.RULES:
        top, _, sub = key.partition(".")
        # A nested key: the sines' data.num_series.<split> (its siblings given), model.transformer.<key> (alone).
        value = ({sub: bad} if top == "transformer" else {"train": 2, "val": 2, "test": 2, sub: bad}) if sub else bad
        error = constructor_error(cls, {**BUILT[name], top: value})
        assert error is not None and str(error).startswith(f"config error: {slot}.{key}="), (key, error)
