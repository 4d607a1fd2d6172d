"""Layer 1: every config group option composes with Hydra's compose API and passes validate().

Options are discovered by listing conf/, so a new yaml file is covered without touching this file.
Only the MNIST part of the product is checked here: options that need another data module (text,
time series) are skipped with a reason; their own test files cover them.
"""
from __future__ import annotations

import copy
import inspect
import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

from seqvae_cli.config.rules import validate
from seqvae_cli.config.runtime import check_sweep_direction, metric_mode, register_resolvers, setup_device
from seqvae_cli.errors import SeqvaeError

from conftest import CONF_DIR

MNIST_TARGET = "seqvae_cli.data.mnist.MNISTData"
# Groups Hydra itself owns or that are not knobs of an experiment.
NOT_GROUPS = {"hydra"}


def group_options() -> list[tuple[str, str]]:
    found = []
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in NOT_GROUPS):
        found += [(group.name, f.stem) for f in sorted(group.glob("*.yaml"))]
    return found


GROUP_OPTIONS = group_options()


@pytest.fixture
def hydra_conf():
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def compose_train(overrides: list[str]):
    """The train config as the app receives it (no `hydra` node), with Hydra's group choices attached."""
    cfg = compose("train", overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices, sweeper


def needs_plugin(exc: Exception) -> bool:
    text = str(exc)
    return "hydra/sweeper" in text or "hydra/launcher" in text


def mnist_model_compatible(model_cfg) -> bool:
    """A model works on MNIST when the MNIST data module's kwargs (input_dim) plus its config build it."""
    params = inspect.signature(get_class(model_cfg._target_)).parameters
    required = {n for n, p in params.items() if p.default is p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return "input_dim" in params and required <= set(model_cfg.keys()) | {"input_dim"}


def test_discovery_finds_the_mnist_groups():
    """The listing really sees the config tree (a wrong CONF_DIR would make every test below vacuous)."""
    found = set(GROUP_OPTIONS)
    for expected in [("model", "mlp_vae"), ("model", "ae"), ("data", "mnist"), ("objective", "elbo"),
                     ("objective", "iwae"), ("optim", "adam"), ("optim", "adamw"), ("device", "auto"),
                     ("device", "cpu"), ("device", "cuda"), ("device", "mps"), ("experiment", "mnist_pe"),
                     ("experiment", "mnist_nll"), ("experiment", "mnist_iwae"), ("debug", "smoke")]:
        assert expected in found


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_train_composes_with_every_option(hydra_conf, group, option):
    try:
        cfg, choices, _ = compose_train([f"{group}={option}"])
    except Exception as exc:  # noqa: BLE001 - only a missing optional Hydra plugin is acceptable
        if needs_plugin(exc):
            pytest.skip(f"{group}={option} needs an optional Hydra plugin: {exc}")
        raise
    if cfg.data._target_ != MNIST_TARGET:
        pytest.skip(f"{group}={option} uses {cfg.data._target_}, not MNIST (covered by the text/series tests)")
    if group == "model" and not mnist_model_compatible(cfg.model):
        pytest.skip(f"model={option} ({cfg.model._target_}) needs a text/series data module")
    assert choices[group] == option
    validate(cfg)
    # The whole config resolves (interpolations, the env resolver) and has no required value left unset.
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("option", [o for g, o in GROUP_OPTIONS if g == "experiment"])
def test_experiments_compose_with_the_smoke_debug(hydra_conf, option):
    """What a user runs to try an experiment quickly: experiment=X debug=smoke."""
    cfg, _, _ = compose_train([f"experiment={option}", "debug=smoke"])
    if cfg.data._target_ != MNIST_TARGET:
        pytest.skip(f"experiment={option} is not an MNIST experiment")
    validate(cfg)
    assert cfg.trainer.limit_train_batches == 5  # debug is applied after the experiment


def test_experiment_values(hydra_conf):
    """The documented architectures of the MNIST experiments."""
    pe = compose_train(["experiment=mnist_pe"])[0]
    assert list(pe.model.hidden_sizes) == [400] and pe.model.latent_dim == 20
    assert pe.data.binarize == "none" and pe.trainer.max_epochs == 10 and pe.objective.iw_samples == 1
    nll = compose_train(["experiment=mnist_nll"])[0]
    assert list(nll.model.hidden_sizes) == [512, 512] and nll.model.latent_dim == 50
    assert nll.model.activation == "elu" and nll.objective.kl_anneal.schedule == "linear"
    assert nll.optim.lr_schedule == "cosine"
    iwae = compose_train(["experiment=mnist_iwae"])[0]
    assert iwae.objective.name == "iwae" and iwae.objective.iw_samples == 50
    assert iwae.optimized_metric == "val/iw_nll" and iwae.trainer.val_iw_samples == 50
    assert list(iwae.model.hidden_sizes) == [512, 512] and iwae.model.latent_dim == 50


def test_model_group_options_are_what_they_say(hydra_conf):
    ae = compose_train(["model=ae"])[0]
    assert ae.model._target_ == "seqvae_cli.models.mlp_vae.MLPAutoencoder" and ae.model.hidden_sizes == [400]
    assert ae.optimized_metric == "val/rec"      # it has no ELBO to pick best.pt by
    assert compose_train(["model=ae", "optimized_metric=val/active_units"])[0].optimized_metric == \
        "val/active_units"
    assert compose_train(["model=mlp_vae"])[0].model._target_ == "seqvae_cli.models.mlp_vae.MLPVAE"
    assert compose_train(["optim=adamw"])[0].optim.name == "adamw"
    assert compose_train(["objective=iwae"])[0].objective.iw_samples > 1


def test_default_train_config_is_the_mnist_vae(hydra_conf):
    cfg = compose_train([])[0]
    validate(cfg)
    assert cfg.data._target_ == MNIST_TARGET and cfg.model._target_ == "seqvae_cli.models.mlp_vae.MLPVAE"
    assert cfg.optimized_metric == "val/neg_elbo"


@pytest.mark.parametrize("option", [o for g, o in GROUP_OPTIONS if g == "hparams_search"])
def test_hparams_search_space_is_valid(hydra_conf, option):
    """Every searched key exists, and every value the sweeper may pick passes validate()."""
    try:
        cfg, _, sweeper = compose_train([f"hparams_search={option}"])
    except Exception as exc:  # noqa: BLE001
        if needs_plugin(exc):
            pytest.skip(f"hparams_search={option} needs an optional Hydra plugin: {exc}")
        raise
    if cfg.data._target_ != MNIST_TARGET:
        pytest.skip(f"hparams_search={option} does not search an MNIST model")
    params = sweeper.get("params") or {}
    assert params, f"hparams_search={option} searches nothing"
    check_sweep_direction(cfg.optimized_metric, sweeper["direction"])   # the study optimises the right way
    parser = OverridesParser.create()
    for key, space in params.items():
        assert OmegaConf.select(cfg, key, default="__absent__") != "__absent__", f"{key} is not a config key"
        sweep = parser.parse_override(f"{key}={space}").value()
        if isinstance(sweep, ChoiceSweep):
            values = list(sweep.list)
        elif isinstance(sweep, (IntervalSweep, RangeSweep)):
            values = [sweep.start, sweep.stop if isinstance(sweep, RangeSweep) else sweep.end]
        else:
            values = [sweep]
        for value in values:
            trial = copy.deepcopy(cfg)
            OmegaConf.update(trial, key, value)
            validate(trial)


@pytest.mark.parametrize("name", ["eval", "sample"])
def test_eval_and_sample_compose(hydra_conf, name):
    cfg = compose(name, overrides=[])
    validate(cfg)
    assert cfg.task_name == name and cfg.run_dir is None and cfg.checkpoint == "best"
    for option in [o for g, o in GROUP_OPTIONS if g == "device"]:
        validate(compose(name, overrides=[f"device={option}", "checkpoint=some/file.pt"]))


@pytest.mark.parametrize("override,key", [
    ("model.likelihood=poisson", "model.likelihood"),
    ("model.activation=swish", "model.activation"),
    ("model.latent_dim=0", "model.latent_dim"),
    ("model.hidden_sizes=[]", "model.hidden_sizes"),
    ("trainer.precision=16", "trainer.precision"),
    ("trainer.precision=bf16", "trainer.precision"),
    ("optim.fused=1", "optim.fused"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches"),
    ("trainer.resume=maybe", "trainer.resume"),
    ("optim.lr=0", "optim.lr"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.betas=[0.9,1.0]", "optim.betas"),
    ("optim.eps=0", "optim.eps"),
    ("trainer.test=maybe", "trainer.test"),
    ("trainer.log_visuals=1", "trainer.log_visuals"),
    ("trainer.progress_bar=yes", "trainer.progress_bar"),
    ("data.download=0", "data.download"),
    ("data.static_seed=-1", "data.static_seed"),
    ("optim.lr_schedule=linear", "optim.lr_schedule"),
    ("objective.kl_anneal.schedule=exp", "objective.kl_anneal.schedule"),
    ("objective.kl_anneal.ratio=0", "objective.kl_anneal.ratio"),
    ("objective.beta=-1", "objective.beta"),
    ("data.binarize=otsu", "data.binarize"),
    ("device.type=tpu", "device.type"),
    ("objective.ae_pretrain_epochs=20", "objective.ae_pretrain_epochs"),   # = max_epochs: no VAE epoch left
    ("trainer.val_iw_samples=-1", "trainer.val_iw_samples"),
    ("optimized_metric=val/iw_nll", "trainer.val_iw_samples"),            # the metric needs the validation IW pass
])
def test_validate_refuses_bad_values(hydra_conf, override, key):
    cfg = compose_train([override])[0]
    with pytest.raises(SeqvaeError) as info:
        validate(cfg)
    message = str(info.value)
    assert key in message and "\n" not in message


def test_validate_refuses_free_bits_with_the_iwae_bound(hydra_conf):
    for floor in ("objective.free_bits.per_dim=0.5", "objective.free_bits.total=2"):
        cfg = compose_train(["objective=iwae", floor])[0]
        with pytest.raises(SeqvaeError, match="objective.iw_samples=1") as info:
            validate(cfg)
        assert floor.split("=")[0] in str(info.value) and "\n" not in str(info.value)
    validate(compose_train(["objective.free_bits.per_dim=0.5"])[0])     # with the ELBO it is the usual recipe


def test_validate_refuses_a_cosine_floor_above_the_lr(hydra_conf):
    cfg = compose_train(["optim.lr_schedule=cosine", "optim.lr=1e-4", "optim.lr_min=1e-3"])[0]
    with pytest.raises(SeqvaeError, match=r"optim.lr_min=0.001 is above optim.lr=0.0001"):
        validate(cfg)
    validate(compose_train(["optim.lr_schedule=cosine", "optim.lr=1e-3", "optim.lr_min=1e-4"])[0])
    validate(compose_train(["optim.lr_schedule=constant", "optim.lr=1e-4", "optim.lr_min=1e-3"])[0])  # unused


def test_metrics_where_higher_is_better_are_maximised():
    assert [metric_mode(m) for m in ("val/neg_elbo", "val/iw_nll", "val/nll", "val/mse")] == ["min"] * 4
    assert [metric_mode(m) for m in ("val/auroc", "val/auprc", "val/best_f1", "val/nab/machine_temp/auroc",
                                     "val/active_units")] == ["max"] * 5
    check_sweep_direction("val/neg_elbo", "minimize")
    check_sweep_direction("val/auroc", "maximize")
    for metric, direction, fix in (("val/auroc", "minimize", "maximize"), ("val/neg_elbo", "maximize", "minimize")):
        with pytest.raises(SeqvaeError, match=f"hydra.sweeper.direction={fix}$"):
            check_sweep_direction(metric, direction)


@pytest.mark.parametrize("override", ["trainer.limit_train_batches=0.5", "trainer.limit_train_batches=1.0",
                                      "trainer.limit_train_batches=3", "trainer.resume=true",
                                      "trainer.resume=/some/run/checkpoints/last.pt", "trainer.max_steps=-1",
                                      "model.likelihood=gaussian", "objective.kl_anneal.schedule=cyclical"])
def test_validate_accepts_good_values(hydra_conf, override):
    validate(compose_train([override])[0])


def test_likelihood_message_lists_the_allowed_values(hydra_conf):
    with pytest.raises(SeqvaeError, match="bernoulli, gaussian"):
        validate(compose_train(["model.likelihood=poisson"])[0])


def test_bf16_on_cpu_bounds_onednn_primitive_cache(monkeypatch):
    """bfloat16 LSTMs filled oneDNN's default 1,024-entry primitive cache past 8 GB: setup_device caps it, unless
    the user set it."""
    cpu = OmegaConf.create({"type": "cpu", "num_threads": None})
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    setup_device(cpu)
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    assert setup_device(cpu, bf16=True).type == "cpu"
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    setup_device(cpu, bf16=True)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
