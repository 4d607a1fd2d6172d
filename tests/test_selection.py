"""Which checkpoint is best.pt and which sweep job ranks first, for metrics minimised (-ELBO, NLL) and
maximised (AUROC, AUPRC, F1, active units)."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import seqvae_cli.training.loop as trainer_module
import seqvae_cli.training.reporting as reporting_module
from conftest import compose_train_config
from seqvae_cli.cli import report


def test_best_checkpoint_of_a_maximised_metric_is_its_highest_value(tmp_path, monkeypatch, mnist_data_dir):
    """Validation reports active units 5, 9, 7 over three epochs: best.pt must be epoch 2 (9 units), where a
    minimising trainer would keep epoch 1. (The first value, 0, is the check of the metric before training.)"""
    scripted = iter([0, 5, 9, 7])
    real_evaluate = reporting_module.evaluate

    def evaluate_with_scripted_units(model, dm, split, **kwargs):
        result = real_evaluate(model, dm, split, **kwargs)
        if split == "val":
            result.metrics["active_units"] = next(scripted)
        return result

    monkeypatch.setattr(reporting_module, "evaluate", evaluate_with_scripted_units)
    cfg = compose_train_config("debug=smoke", "trainer.progress_bar=false", "trainer.max_epochs=3",
                               "trainer.limit_train_batches=2", "trainer.log_visuals=false", "trainer.test=false",
                               "optimized_metric=val/active_units", "device=cpu")
    result = trainer_module.Trainer(cfg, tmp_path, []).fit()
    assert result["optimized_mode"] == "max"
    assert result["optimized_value"] == 9 and result["best_epoch"] == 2
    best = torch.load(tmp_path / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["optimized_mode"] == "max"



def test_evaluation_leaves_the_random_streams_alone_and_draws_the_same_samples_each_time(tmp_path, mnist_data_dir):
    """fit() scores the validation split once before the first epoch, and after each; those passes draw posterior
    samples, from seeds of their own, so training draws what it would without them, and a score does not depend
    on what ran before it."""
    cfg = compose_train_config("debug=smoke", "trainer.progress_bar=false", "trainer.log_visuals=false",
                               "device=cpu")
    trainer = trainer_module.Trainer(cfg, tmp_path, [])
    before = torch.get_rng_state()
    trainer.check_optimized_metric()
    first = trainer.validation_metrics().metrics
    assert torch.equal(torch.get_rng_state(), before)
    torch.randn(100)                                   # whatever ran before does not change the score
    assert trainer.validation_metrics().metrics["rec"] == first["rec"]
    unseeded = reporting_module.evaluate(trainer.model, trainer.dm, "val", limit=2, with_mutual_info=False).metrics
    assert not torch.equal(torch.get_rng_state(), before)     # without a seed, evaluation draws from the stream
    assert unseeded["rec"] != first["rec"]

@pytest.mark.parametrize("mode, metric, best_first", [("max", "val/auroc", 0.95), ("min", "val/neg_elbo", 0.80)])
def test_report_ranks_jobs_by_the_metric_direction(tmp_path, capsys, mode, metric, best_first):
    for job, value in (("0", 0.80), ("1", 0.95), ("2", float("inf"))):   # job 2 failed
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text(json.dumps(
            {"optimized_metric": metric, "optimized_mode": mode, "optimized_value": value, "best_epoch": 1}))
    assert report.main([str(tmp_path)]) == 0
    with open(tmp_path / "report.csv", newline="") as f:
        values = [float(row[metric]) for row in csv.DictReader(f)]
    assert values[0] == best_first and values[-1] == float("inf")
    assert ("higher is better" if mode == "max" else "lower is better") in capsys.readouterr().out
