"""The networks of issue 22 through the installed `seqvae` command on real data: model=conv_vae on MNIST, and
model.encoder=transformer on PTB and ECG5000. Each run is tiny (debug=smoke, one thread). The default run trains
conv_vae (then samples every picture) and the Transformer sentence VAE, both in bf16-mixed; `seqvae eval`, the
ECG5000 run, kill-and-resume equality (three trainings each) and a sweep are marked slow."""
from __future__ import annotations

import json

import pytest

from conftest import (DATA_DIR, SAMPLE_FILES, SMOKE_ARGS, check_pictures, describe, real_data, run_seqvae, train)
from test_resume import kill_then_resume

# Small widths keep each run a few seconds on one loaded core; the networks are the ones the configs build.
CONV_ARGS = ["model=conv_vae", *SMOKE_ARGS, "device.num_threads=1", "model.channels=[8,16]", "model.hidden_size=32",
             "model.latent_dim=4"]
TF_TEXT_ARGS = ["model=lstm_vae", "data=ptb", "model.encoder=transformer", *SMOKE_ARGS, "device.num_threads=1",
                "data.eval_batch_size=32", "model.embed_dim=32", "model.hidden_size=32", "model.latent_dim=4",
                "model.transformer.ffn_size=64", "model.transformer.heads=2"]
TF_SERIES_ARGS = ["model=lstm_vae", "data=ecg5000", "model.encoder=transformer", *SMOKE_ARGS, "device.num_threads=1",
                  "model.embed_dim=8", "model.hidden_size=16", "model.latent_dim=4", "model.transformer.ffn_size=32",
                  "model.transformer.heads=2", "model.transformer.pooling=token"]
ECG = pytest.mark.skipif(not (DATA_DIR / "ECG5000" / "ECG5000_TRAIN.tsv").is_file(),
                         reason="ECG5000 is not under $SEQVAE_DATA_DIR")


@pytest.fixture(scope="session")
def ptb_dir():
    from seqvae_cli.data.text import find_or_download_ptb
    return real_data(lambda: find_or_download_ptb(DATA_DIR / "ptb", download=True), "Penn Treebank")


def metrics_of(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


# ----------------------------------------------------------------------------------------------- conv_vae

def test_conv_vae_trains_in_bf16_and_samples(tmp_path, mnist_data_dir):
    run = train(tmp_path, [*CONV_ARGS, "trainer.precision=bf16-mixed"]).run_dir
    metrics = metrics_of(run)
    assert metrics["steps"] == 10
    test = metrics["test"]             # the trainer's test pass is evaluate(), as `seqvae eval` (slow test below)
    assert test["neg_elbo"] == pytest.approx(test["rec"] + test["kl"]) and 0 < test["iw_nll"] <= test["neg_elbo"] + 1
    assert {"active_units", "mutual_info"} <= set(test)
    proc = run_seqvae(["sample", f"run_dir={run}", "device.num_threads=1"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    check_pictures(run / "samples", SAMPLE_FILES)


@pytest.mark.slow
def test_conv_vae_resume_equality_then_eval(tmp_path, mnist_data_dir):
    args = [*CONV_ARGS, "trainer.max_epochs=3", "trainer.limit_train_batches=20"]
    full = train(tmp_path, args, name="full").run_dir
    killed, _, _ = kill_then_resume(tmp_path, args)
    a, b = metrics_of(full), metrics_of(killed)
    assert a["steps"] == b["steps"] == 60
    assert a["val"] == b["val"] and a["test"] == b["test"]          # exactly equal
    proc = run_seqvae(["eval", f"run_dir={killed}", "iw_samples=20", "limit_examples=200", "device.num_threads=1"],
                      cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    result = json.loads((killed / "eval.json").read_text())["test"]
    assert {"iw_nll", "active_units", "mutual_info"} <= set(result) and result["iw_samples"] == 20


@pytest.mark.slow
def test_conv_vae_sweep(tmp_path, mnist_data_dir):
    proc = run_seqvae(["train", "-m", *CONV_ARGS, "trainer.log_visuals=false", "model.kernel_size=3,4",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    for job in ("0", "1"):
        assert "neg_elbo" in metrics_of(tmp_path / "sweep" / job)["test"]


# ---------------------------------------------------------------------------------- the Transformer encoder

@pytest.mark.slow
def test_transformer_sentence_vae_trains_in_bf16(tmp_path, ptb_dir):
    test = metrics_of(train(tmp_path, [*TF_TEXT_ARGS, "trainer.precision=bf16-mixed"]).run_dir)["test"]
    assert {"neg_elbo", "iw_nll", "ppl", "active_units", "mutual_info"} <= set(test)


@ECG
@pytest.mark.slow
def test_transformer_series_vae_scores_ecg5000(tmp_path):
    test = metrics_of(train(tmp_path, TF_SERIES_ARGS).run_dir)["test"]
    assert 0.0 <= test["auroc"] <= 1.0 and test["num_anomalous"] > 0


@pytest.mark.slow
def test_transformer_sentence_vae_resume_equality_then_sample(tmp_path, ptb_dir):
    args = [*TF_TEXT_ARGS, "trainer.max_epochs=3", "trainer.limit_train_batches=10"]
    full = train(tmp_path, args, name="full").run_dir
    killed, _, _ = kill_then_resume(tmp_path, args)
    a, b = metrics_of(full), metrics_of(killed)
    assert a["steps"] == b["steps"] == 30
    assert a["val"] == b["val"] and a["test"] == b["test"]
    proc = run_seqvae(["sample", f"run_dir={killed}", "device.num_threads=1", "num_samples=2",
                       "sentences=['the company said it expects higher earnings']"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert (killed / "samples" / "reconstructions.txt").read_text().strip()


@ECG
@pytest.mark.slow
def test_transformer_series_vae_resume_equality(tmp_path):
    args = [*TF_SERIES_ARGS, "trainer.max_epochs=3", "trainer.limit_train_batches=10"]
    full = train(tmp_path, args, name="full").run_dir
    killed, _, _ = kill_then_resume(tmp_path, args)
    a, b = metrics_of(full), metrics_of(killed)
    assert a["steps"] == b["steps"] == 30
    assert a["val"] == b["val"] and a["test"] == b["test"]
