"""Non-finite and mistyped numbers: every numeric key refuses NaN and +-inf and every integer key refuses floats,
before any work starts; when training itself blows up, the stop names what went non-finite and a cure that is a
finite number. Everything runs in-process on tiny fake data, except three runs of the CLI."""
from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from seqvae_cli.config.rules import SEED_MAX, rules_for, validate
from seqvae_cli.config.runtime import register_resolvers
from seqvae_cli.data.series.sines import SinesData
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.training.non_finite import diagnose
from seqvae_cli.training.loop import Trainer

from conftest import CONF_DIR, assert_one_error_line, compose_train_config, run_seqvae
from test_data import write_fake_mnist

# ------------------------------------------------------------------------- every numeric key has a rule

# Which models read which data (test_compose.py covers the group options on MNIST alone).
DATA_MODELS = {"mnist": ("mlp_vae", "ae"), "ptb": ("lstm_vae", "lstm_lm"), "text": ("lstm_vae", "lstm_lm"),
               "sines": ("lstm_vae",), "ecg5000": ("lstm_vae",), "nab": ("lstm_vae",), "csv": ("lstm_vae",)}
REQUIRED = {"text": ["data.train_file=a.txt", "data.val_file=b.txt", "data.test_file=c.txt"],
            "csv": ["data.path=x.csv"]}
# Null by default and not numbers: paths, column names, a run folder.
NULL_NON_NUMBERS = {"run_dir", "sentences_file", "data.path", "data.label_column", "data.timestamp_column",
                    "data.value_columns"}


def verb_config(name: str, *overrides: str) -> DictConfig:
    """The `seqvae eval|sample` config as the app receives it (no `hydra` node)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def every_config() -> dict[str, DictConfig]:
    """train for each data kind with each model that reads it and for each experiment, eval and sample."""
    configs = {f"train data={d} model={m}": compose_train_config(f"data={d}", f"model={m}", *REQUIRED.get(d, []))
               for d, models in DATA_MODELS.items() for m in models}
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        configs[f"train experiment={path.stem}"] = compose_train_config(f"experiment={path.stem}")
    configs.update(eval=verb_config("eval"), sample=verb_config("sample"))
    return configs


def leaves(node: DictConfig, prefix: str = ""):
    """(key, value) of every leaf; a list is one leaf; required values left unset (???) are skipped."""
    for key in node.keys():
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            yield from leaves(value, path + ".")
        else:
            yield path, list(value) if isinstance(value, ListConfig) else value


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_numeric(v) -> bool:
    return is_number(v) or (isinstance(v, list) and len(v) > 0 and all(is_number(i) for i in v))


@pytest.fixture(scope="module")
def configs() -> dict[str, DictConfig]:
    return every_config()


def test_every_number_and_switch_of_every_config_has_a_rule(configs):
    """A numeric, boolean or null-by-default leaf without a rule is an error here: its typos would pass (every other
    leaf too: tests/test_rules_cover.py)."""
    without = set()
    for name, cfg in configs.items():
        validate(cfg)   # the defaults themselves are allowed
        rules = rules_for(cfg)
        for key, value in leaves(cfg):
            numeric_or_switch = is_numeric(value) or isinstance(value, bool) or \
                (value is None and key not in NULL_NON_NUMBERS)
            if numeric_or_switch and key not in rules:
                without.add(f"{key} ({name})")
    assert not without, f"keys without a rule: {sorted(without)}"


def every_rule(configs) -> dict:
    """key -> rule, over every config (a key means the same in each config that has it: test_rules_cover.py)."""
    return {key: rule for cfg in configs.values() for key, rule in rules_for(cfg).items()}


def test_every_numeric_rule_refuses_nan_and_infinities_and_integer_rules_refuse_floats(configs):
    checked, rules = {}, {}
    for cfg in configs.values():
        cfg_rules = rules_for(cfg)
        numeric = [(key, value) for key, value in leaves(cfg) if is_numeric(value) and key in cfg_rules]
        checked.update(numeric)
        rules.update((key, cfg_rules[key]) for key, _ in numeric)
    assert {"optim.grad_clip", "trainer.seed", "temperature", "traversal_range", "data.window", "seed"} <= set(checked)
    for key, value in sorted(checked.items()):
        ok, allowed = rules[key]
        assert ok(value), (key, value)
        for bad in (math.nan, math.inf, -math.inf):
            spoilt = [bad] + value[1:] if isinstance(value, list) else bad
            assert not ok(spoilt), f"{key} accepts {spoilt!r}"
        if isinstance(value, list) or not isinstance(value, int):
            continue
        # A key that refuses 2.5 counts in integers, so it must refuse 2.0 (Hydra's reading of `key=2.0`) too.
        if not ok(value + 0.5):
            assert not ok(float(value)), f"{key} accepts {float(value)!r} ({allowed})"


def test_seeds_fit_the_generators(configs):
    """Seeds reach torch's generators after products and offsets (evaluate: seed * 100_003 + batch)."""
    rules = every_rule(configs)
    for key in ("trainer.seed", "data.static_seed", "data.seed", "seed"):
        ok, allowed = rules[key]
        assert ok(0) and ok(SEED_MAX) and not ok(SEED_MAX + 1) and not ok(2**64) and not ok(-1), key
        assert str(SEED_MAX) in allowed
    import torch
    torch.Generator().manual_seed(SEED_MAX * 100_003 + 10**6)   # the largest product a seed meets stays in range


# The examples, and their siblings: refused by validate() with one line naming the key.
@pytest.mark.parametrize("verb,overrides,needles", [
    ("train", ["optim.grad_clip=nan"], ("optim.grad_clip=nan", "finite number >= 0")),
    ("train", ["objective.free_bits.per_dim=nan"], ("objective.free_bits.per_dim=nan",)),
    ("train", ["objective.free_bits.total=inf"], ("objective.free_bits.total=inf",)),
    ("train", ["optim.lr=nan"], ("optim.lr=nan",)),
    ("train", ["optim.lr=inf"], ("optim.lr=inf",)),
    ("train", ["optim.lr_min=nan"], ("optim.lr_min=nan",)),
    ("train", ["optim.weight_decay=inf"], ("optim.weight_decay=inf",)),
    ("train", ["objective.beta=nan"], ("objective.beta=nan",)),
    ("train", ["objective.kl_anneal.warmup=inf"], ("objective.kl_anneal.warmup=inf",)),
    ("train", ["model.latent_dim=2.0"], ("model.latent_dim=2.0", "an integer", "override model.latent_dim=2)")),
    ("train", ["data.batch_size=64.0"], ("data.batch_size=64.0", "override data.batch_size=64)")),
    ("train", ["trainer.seed=1e20"], ("trainer.seed=1e+20", "an integer", str(SEED_MAX))),
    ("train", ["trainer.seed=100000000000000000000"], ("trainer.seed=100000000000000000000", str(SEED_MAX))),
    ("train", ["trainer.precision=32.0"], ("trainer.precision=32.0",)),
    ("train", ["device.num_threads=true"], ("device.num_threads=True",)),
    ("train", ["trainer.max_steps=true"], ("trainer.max_steps=True",)),
    ("train", ["model=lstm_vae", "data=ptb", "model.tie_weights=1"], ("model.tie_weights=1", "true or false")),
    ("train", ["data=sines", "data.noise_std=nan"], ("data.noise_std=nan",)),
    ("train", ["data=sines", "data.amplitude=[0.5,inf]"], ("data.amplitude=[0.5, inf]", "finite")),
    ("train", ["data=sines", "data.seed=2.0"], ("data.seed=2.0",)),
    ("train", ["data=nab", "data.window=64.0"], ("data.window=64.0",)),
    ("train", ["data=nab", "data.train_fraction=nan"], ("data.train_fraction=nan",)),
    ("train", ["data=ecg5000", "data.num_val_normal=1e2"], ("data.num_val_normal=100.0",)),
    ("sample", ["traversal_range=nan"], ("traversal_range=nan",)),
    ("sample", ["temperature=nan"], ("temperature=nan",)),
    ("sample", ["temperature=inf"], ("temperature=inf",)),
    ("sample", ["length_penalty=inf"], ("length_penalty=inf",)),
    ("sample", ["num_samples=64.0"], ("num_samples=64.0",)),
    ("sample", ["seed=1e20"], ("seed=1e+20",)),
    ("eval", ["seed=-1"], ("seed=-1",)),
    ("eval", ["iw_samples=true"], ("iw_samples=True",)),
])
def test_validate_refuses(verb, overrides, needles):
    cfg = compose_train_config(*overrides) if verb == "train" else verb_config(verb, *overrides)
    with pytest.raises(SeqvaeError) as info:
        validate(cfg)
    message = str(info.value)
    assert "\n" not in message and message.startswith("config error: ")
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_series_modules_hold_their_arguments_to_the_same_rules():
    """A data module built from a checkpoint's config (no validate()) refuses the same values, at setup."""
    for kwargs, key in ((dict(noise_std=math.nan), "noise_std"), (dict(seq_len=10.0), "seq_len"),
                        (dict(amplitude=[0.5, math.inf]), "amplitude"), (dict(seed=SEED_MAX + 1), "seed")):
        dm = SinesData(num_series={"train": 2, "val": 2, "test": 2}, **kwargs)
        with pytest.raises(SeqvaeError, match=rf"config error: data\.{key}="):
            dm.setup("cpu")


@pytest.mark.parametrize("args,needles", [
    (["train", "optim.grad_clip=nan", "run_dir=run"], ("optim.grad_clip=nan", "finite")),
    pytest.param(["train", "model.latent_dim=2.0", "run_dir=run"], ("model.latent_dim=2.0", "model.latent_dim=2)"),
                 marks=pytest.mark.slow),     # the in-process tests above cover the rule; the CLI path is one
    pytest.param(["sample", "run_dir=nowhere", "traversal_range=nan"], ("traversal_range=nan",),
                 marks=pytest.mark.slow),
])
def test_cli_refuses_before_any_work(tmp_path, args, needles):
    proc = run_seqvae(args, cwd=tmp_path)
    assert_one_error_line(proc, *needles)
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ the NaN stop

@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_fake_mnist(root)
    return root


def tiny_mnist(root, *overrides: str) -> list[str]:
    return [f"paths.data_dir={root}", "data.num_val=10", "data.batch_size=8", "data.download=false", "device=cpu",
            "model.hidden_sizes=[16]", "model.latent_dim=2", "trainer.progress_bar=false", "trainer.log_visuals=false",
            "trainer.test=false", "trainer.max_epochs=2", *overrides]


def stop_message(run_dir, overrides: list[str], per_step: bool = True) -> str:
    """Train in-process until the NaN stop; its message (one line). per_step=False: the CUDA way (sums every
    trainer.log_every steps), on the CPU."""
    trainer = Trainer(compose_train_config(*overrides), run_dir, [])
    trainer.check_each_step = per_step
    with pytest.raises(SeqvaeError) as info:
        trainer.fit()
    trainer.writer.close()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_diverging_lr_is_named_with_the_terms_and_a_sane_lr(fake_mnist, tmp_path):
    line = stop_message(tmp_path / "run", tiny_mnist(fake_mnist, "optim.lr=1e30"))
    assert line.startswith("the loss became nan at step 1 (epoch 1), with rec=nan, kl=nan and loss=nan:"), line
    assert "optim.lr=1e+30" in line and "start again with optim.lr=0.001 optim.grad_clip=5.0" in line, line
    clipped = stop_message(tmp_path / "clipped", tiny_mnist(fake_mnist, "optim.lr=1e30", "optim.grad_clip=1.0"))
    assert clipped.endswith("start again with optim.lr=0.001"), clipped


def test_an_overflowing_kl_weight_is_blamed_not_the_lr(fake_mnist, tmp_path):
    """beta = 1e39 is finite in Python and inf in float32: the loss overflows at the first step, its terms do not."""
    line = stop_message(tmp_path / "run", tiny_mnist(fake_mnist, "objective.beta=1e39"))
    assert "at step 0 (epoch 1), with loss=inf while rec and kl stayed finite" in line, line
    assert "objective.beta=1e+39" in line and line.endswith("start again with objective.beta=1"), line
    assert "optim.lr" not in line


def test_adamw_decay_that_flips_the_weights_is_blamed(fake_mnist, tmp_path):
    line = stop_message(tmp_path / "run", tiny_mnist(fake_mnist, "optim=adamw", "optim.weight_decay=1e6"))
    assert "optim.weight_decay=1e+06" in line and line.endswith("start again with optim.weight_decay=0.01"), line
    assert "optim.lr=" not in line.split("start again")[1]


def test_non_finite_validation_and_weights_are_named(fake_mnist, tmp_path):
    line = stop_message(tmp_path / "val", tiny_mnist(fake_mnist, "optim.lr=1e30", "trainer.limit_train_batches=1"))
    assert line.startswith("validation metrics became non-finite at step 1 (epoch 1), with rec=nan"), line
    assert "neg_elbo=nan" in line and "optim.lr=0.001" in line
    line = stop_message(tmp_path / "weights", tiny_mnist(fake_mnist, "optim.lr=1e39", "trainer.limit_train_batches=1",
                                                        "trainer.val_every=2", "trainer.max_epochs=3"))
    assert line.startswith("the weights became non-finite (inf in encoder."), line
    assert "at step 1 (epoch 1)" in line and "optim.lr=0.001" in line


def test_the_cuda_check_names_the_terms_of_its_span(fake_mnist, tmp_path):
    line = stop_message(tmp_path / "run", tiny_mnist(fake_mnist, "optim.lr=1e30"), per_step=False)
    assert line.startswith("the loss became non-finite between step 0 and step 3 (epoch 1), with rec=nan"), line
    assert "optim.lr=0.001" in line


def test_a_tiny_fixed_std_before_any_update_is_blamed(tmp_path):
    overrides = ["data=sines", "model=lstm_vae", "data.num_series.train=8", "data.num_series.val=4",
                 "data.num_series.test=4", "data.seq_len=10", "data.batch_size=4", "model.embed_dim=4",
                 "model.hidden_size=4", "model.latent_dim=2", "trainer.progress_bar=false", "device=cpu",
                 "trainer.log_visuals=false", "trainer.test=false", "trainer.max_epochs=1",
                 "model.output_std=fixed", "model.fixed_std=1e-30"]
    line = stop_message(tmp_path / "run", overrides)
    assert "at step 0 (epoch 1), with rec=inf" in line and "no update has run yet, so not the learning rate" in line
    assert line.endswith("start again with model.fixed_std=0.1") and "optim.lr" not in line, line


def test_the_resume_hint_only_offers_what_a_resume_may_change(fake_mnist, tmp_path):
    trainer = Trainer(compose_train_config(*tiny_mnist(fake_mnist, "objective.beta=1e39")), tmp_path / "run", [])
    trainer.writer.close()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    trainer.step = 7
    terms = {"rec": 100.0, "kl": 3.0, "loss": math.inf}
    with pytest.raises(SeqvaeError) as info:
        trainer.stop_non_finite("the loss became inf", values=terms)
    assert str(info.value).endswith("a resumed run keeps its settings: start a new run with objective.beta=1")
    with pytest.raises(SeqvaeError) as info:
        trainer.stop_non_finite("the loss became nan", values={**terms, "rec": math.nan})
    assert str(info.value).endswith(f"continue it with seqvae train run_dir={tmp_path / 'run'} trainer.resume=true "
                                    f"optim.lr=0.0001 optim.grad_clip=5.0")


def test_cli_nan_stop_is_one_line_with_its_cure(fake_mnist, tmp_path):
    proc = run_seqvae(["train", *tiny_mnist(fake_mnist, "objective.beta=1e39"), "run_dir=run"], cwd=tmp_path)
    line = assert_one_error_line(proc, "the loss became inf at step 0 (epoch 1)", "start again with objective.beta=1")
    assert "optim.lr" not in line and not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("optim,values,updates_done,cure", [
    (dict(lr=2e-3, grad_clip=0.0), {"rec": math.nan, "loss": math.nan}, True, ["optim.lr=0.0002", "optim.grad_clip=5.0"]),
    (dict(lr=0.5, grad_clip=1.0), None, True, ["optim.lr=0.001"]),          # an absurd lr: straight to a sane one
    (dict(lr=2e-3, grad_clip=0.0), {"rec": math.inf, "loss": math.inf}, False, []),   # the data, not the lr
    (dict(name="adamw", lr=1.0, weight_decay=10.0), {"loss": math.nan}, True, ["optim.lr=0.001",
                                                                              "optim.grad_clip=5.0"]),
])
def test_diagnose_cures_are_finite_numbers(optim, values, updates_done, cure):
    cfg = OmegaConf.create({"optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "grad_clip": 0.0, **optim},
                            "objective": {"beta": 1.0, "kl_anneal": {"start": 0.0, "end": 1.0}, "bow_weight": 0.0}})
    diagnosis = diagnose(cfg, values, updates_done)
    assert diagnosis.cure == cure
    for item in diagnosis.cure:
        assert math.isfinite(float(item.split("=", 1)[1]))
