"""Layer 8: bad input fails fast, with a non-zero exit and a short message on stderr naming the problem."""
from __future__ import annotations

import shutil

import pytest
import torch

from conftest import SMOKE_ARGS, assert_one_error_line, clone_run, run_seqvae, seqvae_env


@pytest.mark.parametrize("override,needles", [
    ("model.likelihood=poisson", ("model.likelihood", "poisson", "bernoulli", "gaussian")),
    ("trainer.max_epochs=0", ("trainer.max_epochs", "0")),
])
def test_bad_value(tmp_path, override, needles):
    proc = run_seqvae(["train", override, "run_dir=run"], cwd=tmp_path)
    assert_one_error_line(proc, *needles)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_metric_the_model_does_not_report_fails_before_the_first_epoch(tmp_path, mnist_data_dir):
    proc = run_seqvae(["train", *SMOKE_ARGS, "optimized_metric=val/elbo", "run_dir=run"], cwd=tmp_path)
    assert_one_error_line(proc, "optimized_metric='val/elbo'", "val/neg_elbo")
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert "epoch 1:" not in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("verb,override,needles", [
    ("eval", "limit_examples=-5", ("limit_examples=-5", "positive integer")),
    ("eval", "batch_size=0", ("batch_size=0",)),
    ("sample", "num_reconstructions=0", ("num_reconstructions=0", ">= 1")),
    ("sample", "interpolation_steps=1", ("interpolation_steps=1", ">= 2")),
    ("sample", "length_penalty=-1", ("length_penalty=-1", ">= 0")),
])
def test_bad_eval_and_sample_values_fail_before_loading_the_run(tmp_path, verb, override, needles):
    """Checked before the run is read (run_dir does not even exist): one line, no traceback from deep inside."""
    proc = run_seqvae([verb, "run_dir=nowhere", override], cwd=tmp_path)
    assert_one_error_line(proc, *needles)


def test_unknown_option(tmp_path):
    proc = run_seqvae(["train", "model=nonexistent"], cwd=tmp_path)
    assert_one_error_line(proc, "model=nonexistent", "no such option", "ae, lstm_lm, lstm_vae, mlp_vae")


def test_unknown_key(tmp_path):
    proc = run_seqvae(["train", "model.foo=1"], cwd=tmp_path)
    assert_one_error_line(proc, "model.foo", "no such key in 'model'", "latent_dim", "hidden_sizes")


@pytest.mark.parametrize("args,needles", [
    (["train", "-m", "model.latent_dim=2,10", "model.foo=1"], ("model.foo", "latent_dim")),   # every job is checked
    (["train", "-m", "model=mlp_vae,nonexistent"], ("model=nonexistent", "mlp_vae")),
    (["train", "trainer.max_epoch=3"], ("trainer.max_epoch", "max_epochs")),
    (["eval", "run_dir=x", "iw_sample=3"], ("iw_sample", "iw_samples")),
    (["sample", "model=ae"], ("model", "no such key at the top level", "traversal_steps")),
])
def test_unknown_keys_and_options_in_sweeps_and_every_verb(tmp_path, args, needles):
    proc = run_seqvae(args, cwd=tmp_path)
    assert_one_error_line(proc, *needles)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_missing_data(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_seqvae(["train", *SMOKE_ARGS, "data.download=false", "run_dir=run"], cwd=tmp_path,
                      env=seqvae_env(SEQVAE_DATA_DIR=str(empty)))
    line = assert_one_error_line(proc, str(empty.resolve() / "MNIST" / "raw"))
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in line
    assert not list(empty.rglob("*-ubyte"))           # download=false: nothing fetched


def test_corrupt_checkpoint(tmp_path):
    garbage = tmp_path / "garbage.pt"
    # Fixed "random" bytes (test_checkpoint.py covers many other kinds of garbage in-process).
    garbage.write_bytes(bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0)).tolist()))
    proc = run_seqvae(["eval", f"checkpoint={garbage}"], cwd=tmp_path)
    assert_one_error_line(proc, "unreadable", str(garbage))


def test_resume_with_another_model(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "model=ae"], cwd=tmp_path)
    line = assert_one_error_line(proc, "model", "cannot resume")
    assert "MLPVAE" in line or "mlp_vae" in line
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_without_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true"], cwd=tmp_path)
    assert_one_error_line(proc, "trainer.resume=true", "last.pt", "no checkpoint yet", "afresh")


def test_resume_without_a_run_dir_asks_for_one(tmp_path):
    proc = run_seqvae(["train", *SMOKE_ARGS, "trainer.resume=true"], cwd=tmp_path)
    assert_one_error_line(proc, "trainer.resume=true", "run_dir=")


def test_fresh_run_into_a_used_run_dir(smoke_run, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(smoke_run.run_dir / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}"], cwd=tmp_path)
    assert_one_error_line(proc, "trainer.resume=true", str(run))
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert not (run / "metrics.json").exists()


def test_ae_pretraining_longer_than_the_step_budget(mnist_data_dir, tmp_path):
    """objective.ae_pretrain_epochs=1 with trainer.max_steps=5 (= one smoke epoch): no VAE step is left.
    Like ae_pretrain_epochs >= max_epochs, that must be refused with a message naming both settings,
    not end in 'best.pt does not exist' after training."""
    proc = run_seqvae(["train", *SMOKE_ARGS, "objective.ae_pretrain_epochs=1", "trainer.max_steps=5",
                       "run_dir=run"], cwd=tmp_path)
    line = assert_one_error_line(proc, "ae_pretrain_epochs", "max_steps")
    assert "best.pt" not in line


@pytest.mark.parametrize("verb", ["eval", "sample"])
def test_a_mistyped_run_dir_is_not_created(tmp_path, verb):
    proc = run_seqvae([verb, "run_dir=no_such_run"], cwd=tmp_path)
    assert_one_error_line(proc, "no_such_run", "does not exist")
    assert not (tmp_path / "no_such_run").exists()
    # Its logs went to outputs/VERB/DATE/TIME, which held nothing else when the command stopped: removed (issue 20).
    assert not (tmp_path / "outputs").exists()
