"""Layer 3 and 7: trainer.weight_average (EMA and uniform Polyak averaging of the training weights).

The average must be what it says (checked against weights recorded after every optimiser step), must leave
training untouched and must be what validation, best.pt and eval score. Kill-and-resume with an average is
test_resume.py's main case."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from seqvae_cli.training.checkpoint import load_checkpoint
from seqvae_cli.config.rules import validate
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.evaluation.evaluate import evaluate
from seqvae_cli.training.loop import Trainer
from seqvae_cli.training.resume import merge_resumed_config

from conftest import SMOKE_ARGS, clone_run, compose_train_config, describe, run_seqvae

BASE = ["debug=smoke", "trainer.progress_bar=false", "trainer.log_visuals=false", "trainer.test=false",
        "device=cpu", "trainer.limit_train_batches=4"]


def trained(tmp_path, *overrides, epochs=2):
    """A Trainer after `epochs` epochs, and the training weights recorded after each optimiser step."""
    trainer = Trainer(compose_train_config(*BASE, *overrides), tmp_path, [])
    after_step = []
    trainer.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: after_step.append([p.detach().clone() for p in trainer.model.parameters()]))
    for _ in range(epochs):
        trainer.train_epoch()
        trainer.epoch += 1
    return trainer, after_step


def test_uniform_average_is_the_mean_of_the_weights_after_each_step_from_start_epoch(tmp_path, mnist_data_dir):
    trainer, after_step = trained(tmp_path, "trainer.weight_average.kind=uniform",
                                  "trainer.weight_average.start_epoch=1")
    assert len(after_step) == 8 and trainer.average.count == 4       # epoch 1 (steps 0-3) is not averaged
    for avg, *steps in zip(trainer.average.model.parameters(), *after_step[4:]):
        assert torch.allclose(avg, torch.stack(steps).mean(0), atol=1e-6)
    assert trainer.eval_model() is trainer.average.model


def test_ema_follows_its_recursion_and_training_is_unchanged(tmp_path, mnist_data_dir):
    decay = 0.4             # below the warm-up's (1+n)/(10+n) after 5 steps: both regimes are checked
    trainer, after_step = trained(tmp_path / "ema", "trainer.weight_average.kind=ema",
                                  f"trainer.weight_average.ema_decay={decay}")
    expected = [w.clone() for w in after_step[0]]
    for n, weights in enumerate(after_step[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))              # the warm-up: 2/11, 3/12, ... until it reaches decay
        expected = [d * e + (1 - d) * w for e, w in zip(expected, weights)]
    for avg, exp in zip(trainer.average.model.parameters(), expected):
        assert torch.allclose(avg, exp, atol=1e-6)
    plain, _ = trained(tmp_path / "plain")
    assert plain.average is None and plain.eval_model() is plain.model
    for a, b in zip(trainer.model.parameters(), plain.model.parameters()):
        assert torch.equal(a, b)                  # the average never feeds back into training
    assert not all(torch.equal(a, b) for a, b in zip(trainer.average.model.parameters(), plain.model.parameters()))


def test_validation_and_checkpoints_use_the_average(tmp_path, mnist_data_dir):
    trainer, _ = trained(tmp_path, "trainer.weight_average.kind=ema", "trainer.weight_average.ema_decay=0.5",
                         epochs=1)
    metrics = trainer.validate()        # validation draws z seeded by trainer.seed: the same draws for all three
    seed, limit = trainer.cfg.trainer.seed, trainer.cfg.trainer.limit_val_batches
    of_average = evaluate(trainer.average.model, trainer.dm, "val", limit=limit, with_mutual_info=False, seed=seed).metrics
    of_training = evaluate(trainer.model, trainer.dm, "val", limit=limit, with_mutual_info=False, seed=seed).metrics
    assert metrics["rec"] == of_average["rec"]
    assert of_average["rec"] != pytest.approx(of_training["rec"], abs=1e-3)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    for key, value in trainer.average.model.state_dict().items():
        assert torch.equal(best["model"][key], value)                 # what eval and sample load
        assert torch.equal(best["training_model"][key], trainer.model.state_dict()[key])
    assert best["weight_average"] == {"count": 4}


def test_a_start_epoch_past_the_run_is_a_config_error(tmp_path):
    with pytest.raises(SeqvaeError, match="start_epoch=2 is not below trainer.max_epochs=2"):
        validate(compose_train_config(*BASE, "trainer.weight_average.kind=uniform",
                                      "trainer.weight_average.start_epoch=2"))


def test_a_run_can_take_up_an_average_when_resumed(smoke_run, tmp_path):
    """A run trained without an average, continued for one more epoch with one: the average covers that epoch,
    and the training weights are those of the same continuation without it."""
    runs = {}
    for name, extra in (("plain", []), ("averaged", ["trainer.weight_average.kind=uniform"])):
        run = clone_run(smoke_run.run_dir, tmp_path / name)
        proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "trainer.max_epochs=3",
                           *extra], cwd=tmp_path)
        assert proc.returncode == 0, describe(proc)
        runs[name] = load_checkpoint(run / "checkpoints" / "last.pt")
    plain, averaged = runs["plain"], runs["averaged"]
    assert averaged["weight_average"] == {"count": 5}           # debug=smoke: 5 batches in epoch 3
    assert averaged["config"]["trainer"]["weight_average"]["kind"] == "uniform"
    assert "training_model" not in plain
    for key, value in plain["model"].items():
        assert torch.equal(averaged["training_model"][key], value)
    assert any(not torch.equal(averaged["model"][k], v) for k, v in plain["model"].items())


def test_a_checkpoint_from_before_the_setting_can_take_up_an_average():
    """Checkpoints written before trainer.weight_average existed have no such key: resuming with one adds it."""
    overrides = ["trainer.weight_average.kind=ema", "trainer.weight_average.ema_decay=0.99"]
    cfg = compose_train_config(*overrides)
    stored = OmegaConf.create(OmegaConf.to_container(cfg))
    del stored.trainer["weight_average"]
    merged = merge_resumed_config(cfg, stored, overrides, Path("old.pt"))
    assert OmegaConf.to_container(merged.trainer.weight_average) == {"kind": "ema", "ema_decay": 0.99,
                                                                     "start_epoch": 0}
    untouched = merge_resumed_config(compose_train_config(), stored, [], Path("old.pt"))
    assert "weight_average" not in untouched.trainer          # without the override the run stays as it was


def test_the_end_of_training_pictures_show_best_pt_not_the_last_epoch(tmp_path, mnist_data_dir, monkeypatch):
    from seqvae_cli import visuals
    drawn = {}
    monkeypatch.setattr(visuals, "end_of_training",
                        lambda model, *args: drawn.update({k: v.clone() for k, v in model.state_dict().items()}))
    # lr 0.03 overshoots after the first epoch here (seed 42), so best.pt is epoch 1 of 3.
    trainer = Trainer(compose_train_config(*BASE, "optim.lr=0.03", "trainer.max_epochs=3",
                                           "trainer.log_visuals=true"), tmp_path, [])
    last_epoch = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.optimizer.register_step_post_hook(lambda *_: last_epoch.update(
        {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    result = trainer.fit()
    assert result["best_epoch"] == 1 and result["epochs"] == 3
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["model"]
    assert drawn.keys() == best.keys()
    assert all(torch.equal(drawn[k], best[k]) for k in best)
    assert not all(torch.equal(drawn[k], last_epoch[k]) for k in best)
