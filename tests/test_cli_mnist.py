"""Layer 5: the installed `seqvae` command on real MNIST, in subprocesses run from a temporary folder.

One tiny training run (conftest.smoke_run, debug=smoke) is shared; tests that write into a run work
on a copy of it (clone_run).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import (CONF_DIR, SAMPLE_FILES, assert_one_error_line, check_pictures, clone_run, describe, run_seqvae,
                      seqvae_env)

METRIC_KEYS = ("neg_elbo", "rec", "kl", "iw_nll", "active_units", "mutual_info")


# --------------------------------------------------------------------------------- the run folder

def test_train_writes_the_run_folder(smoke_run):
    run = smoke_run.run_dir
    for rel in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.json", "train.log", ".hydra/config.yaml",
                ".hydra/overrides.yaml"):
        assert (run / rel).is_file() and (run / rel).stat().st_size > 0, rel
    assert list((run / "tb").glob("events.out.tfevents.*")), "no TensorBoard event file"
    pngs = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert pngs == ["prior_samples.png", "reconstructions.png"], pngs   # what training draws at its end
    for name in pngs:
        Image.open(run / "samples" / name).verify()
    assert not list(run.rglob("*.tmp")), "a temporary checkpoint file was left behind"


def test_train_metrics_json(smoke_run):
    metrics = json.loads((smoke_run.run_dir / "metrics.json").read_text())
    assert metrics["optimized_metric"] == "val/neg_elbo"
    assert metrics["epochs"] == 2 and metrics["steps"] == 10            # debug=smoke: 2 epochs x 5 batches
    assert metrics["optimized_value"] == metrics["val"]["neg_elbo"]
    assert metrics["best_epoch"] in (1, 2)
    for key in ("neg_elbo", "rec", "kl"):
        assert key in metrics["val"]
    test = metrics["test"]
    for key in ("neg_elbo", "iw_nll", "active_units", "mutual_info"):
        assert key in test, key
    assert test["neg_elbo"] == pytest.approx(test["rec"] + test["kl"])
    assert 0 < test["iw_nll"] <= test["neg_elbo"] + 1.0
    assert 0 <= test["active_units"] <= 20 and test["mutual_info"] > -0.5


def test_train_log_and_saved_config(smoke_run):
    run = smoke_run.run_dir
    log = (run / "train.log").read_text()
    assert "epoch 1" in log and "validation" in log and "test" in log
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert cfg["model"]["_target_"] == "seqvae_cli.models.mlp_vae.MLPVAE" and cfg["trainer"]["max_epochs"] == 2
    assert "debug=smoke" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())


def test_train_prints_no_warnings_from_seqvae(smoke_run):
    """A normal run must not spill warnings raised by seqvae's own code onto stderr."""
    own = [ln for ln in smoke_run.proc.stderr.splitlines() if "seqvae_cli" in ln and "Warning" in ln]
    assert not own, "\n".join(own)


# ------------------------------------------------------------------------------------- TensorBoard

@pytest.fixture(scope="module")
def events(smoke_run):
    acc = ea.EventAccumulator(str(smoke_run.run_dir / "tb"),
                              size_guidance={k: 0 for k in (ea.SCALARS, ea.IMAGES, ea.HISTOGRAMS, ea.TENSORS,
                                                            ea.COMPRESSED_HISTOGRAMS, ea.AUDIO)})
    acc.Reload()
    return acc


def test_tensorboard_scalars(events):
    scalars = set(events.Tags()["scalars"])
    for split in ("train", "val"):
        for name in ("loss", "rec", "kl", "kl_weight", "neg_elbo", "lr"):
            assert f"{split}/{name}" in scalars, f"{split}/{name}"
    assert len(events.Scalars("train/loss")) == 10          # log_every=1 in debug=smoke: every step
    assert [e.step for e in events.Scalars("train/loss")] == list(range(10))
    assert len(events.Scalars("val/neg_elbo")) == 2          # one validation per epoch
    assert all(e.value == pytest.approx(1e-3) for e in events.Scalars("train/lr"))
    assert all(e.value == pytest.approx(1.0) for e in events.Scalars("train/kl_weight"))


def test_tensorboard_images_and_histograms(events):
    tags = events.Tags()
    assert {"visuals/reconstructions", "visuals/prior_samples"} <= set(tags["images"])
    assert {"val/posterior_mean", "val/kl_per_dim"} <= set(tags["histograms"])
    image = events.Images("visuals/prior_samples")[-1]
    assert image.width > 28 and image.height > 28


def test_tensorboard_hparams(events):
    content = events.PluginTagToContent("hparams")
    assert content, "no hparams plugin entry"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    hparams = {h.name for h in experiment.hparam_infos}
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"model.latent_dim", "optim.lr", "objective.beta"} <= hparams
    assert "z_hparams/best_val_neg_elbo" in metrics
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model.latent_dim"].number_value == 20
    assert "z_hparams/best_val_neg_elbo" in events.Tags()["scalars"]


def test_tensorboard_opens_on_the_curves(events, smoke_run):
    """Issue 20: TensorBoard's Time Series tab sorts cards by tag prefix and opens the first two groups; they are the
    train/ and val/ curves. The test metrics are a table (Text tab, and the log as `seqvae eval` prints it), not
    single-point charts."""
    tags = events.Tags()
    every = [t for kind in ("scalars", "images", "histograms") for t in tags[kind]]
    groups = sorted({t.split("/", 1)[0] for t in every})
    assert groups[:2] == ["train", "val"], groups
    assert not [t for t in tags["scalars"] if t.startswith("test/")]
    assert "test" in tags["tensors"] or any(t.startswith("test") for t in tags["tensors"]), tags["tensors"]
    log = (smoke_run.run_dir / "train.log").read_text()
    assert "test (best checkpoint" in log and "metric" in log and "\nneg_elbo " in log


# ------------------------------------------------------------------------------------------- eval

def test_eval(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=20", "limit_examples=500"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    table = proc.stdout
    assert re.search(r"^metric\s+value", table, re.M), table
    for key in METRIC_KEYS:
        assert re.search(rf"^{key}\s+-?[0-9.]+", table, re.M), f"{key} missing from the table:\n{table}"
    results = json.loads((run / "eval.json").read_text())
    test = results["test"]
    for key in METRIC_KEYS:
        assert key in test, key
    assert test["num_examples"] == 500 and test["iw_samples"] == 20
    assert test["iw_nll"] <= test["neg_elbo"] + 0.5
    assert test["neg_elbo"] == pytest.approx(test["rec"] + test["kl"])
    assert test["checkpoint_epoch"] == json.loads((run / "metrics.json").read_text())["best_epoch"]


def test_eval_finds_the_training_data_without_a_data_setting(smoke_run, tmp_path):
    """Run from a folder without ./data and without $SEQVAE_DATA_DIR, eval keeps the data root the run trained
    on; an explicit paths.data_dir still wins (data may have moved), with the usual one-line error if empty."""
    import torch
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    state["config"]["data"]["download"] = False    # an online machine must not fetch MNIST into `elsewhere`
    torch.save(state, best)
    env = seqvae_env()
    env.pop("SEQVAE_DATA_DIR")
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=2", "limit_examples=100", "split=train"],
                      cwd=tmp_path, env=env)
    assert proc.returncode == 0, describe(proc)
    assert json.loads((run / "eval.json").read_text())["train"]["num_examples"] == 100
    elsewhere = tmp_path / "elsewhere"
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=2", "limit_examples=100", f"paths.data_dir={elsewhere}"],
                      cwd=tmp_path, env=env)
    assert_one_error_line(proc, "MNIST not found", str(elsewhere / "MNIST" / "raw"))


def test_a_relative_data_root_is_kept_absolute_for_eval(tmp_path, mnist_data_dir):
    """`seqvae train paths.data_dir=<relative>` stores the root it resolved, so eval run from another folder
    (no ./data, no $SEQVAE_DATA_DIR) still finds the data the run trained on."""
    import torch
    from conftest import SMOKE_ARGS, train
    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir()
    other.mkdir()
    (work / "mydata").symlink_to(mnist_data_dir, target_is_directory=True)
    env = seqvae_env()
    env.pop("SEQVAE_DATA_DIR", None)
    run = train(work, [*SMOKE_ARGS, "trainer.log_visuals=false", "paths.data_dir=mydata"], env=env).run_dir
    stored = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["config"]["paths"]["data_dir"]
    assert Path(stored).is_absolute() and Path(stored) == (work / "mydata").resolve()
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=2", "limit_examples=50"], cwd=other, env=env)
    assert proc.returncode == 0, describe(proc)
    assert json.loads((run / "eval.json").read_text())["test"]["num_examples"] == 50


# ----------------------------------------------------------------------------------------- sample

def test_sample(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    (run / "samples").mkdir()
    (run / "samples" / "prior_samples.png").write_bytes(b"an earlier call's")
    (run / "samples" / ".seqvae_sample_files").write_text("prior_samples.png\n")   # what that call wrote
    proc = run_seqvae(["sample", f"run_dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    # Issue 20: a second call said nothing while it replaced the first one's files.
    said = proc.stdout + proc.stderr
    assert "are replaced; samples_dir=NAME" in said and "prior_samples.png" in said, describe(proc)
    check_pictures(run / "samples", SAMPLE_FILES)
    assert not (run / "samples" / "manifold.png").exists()    # only for a 2-d latent
    for name in SAMPLE_FILES:
        assert name in proc.stdout
    with Image.open(run / "samples" / "traversal.png") as im:     # one row per latent dim (20) of 9 steps
        assert im.height > im.width
    # The same pictures go to the run's TensorBoard, under sample/*.
    acc = ea.EventAccumulator(str(run / "tb"), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    assert {f"visuals/sample/{Path(name).stem}" for name in SAMPLE_FILES} <= set(acc.Tags()["images"]), \
        acc.Tags()["images"]


# ------------------------------------------------------------------------------------------- help

def test_help_lists_the_verbs(tmp_path):
    proc = run_seqvae(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    for verb in ("train", "eval", "sample", "report"):
        assert re.search(rf"^\s+{verb}\s", proc.stdout, re.M), verb


def test_train_help_lists_the_config_groups(tmp_path):
    proc = run_seqvae(["train", "--help"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    for group in ("model", "data", "objective", "optim", "device", "trainer", "experiment", "debug"):
        assert re.search(rf"^{group}: ", proc.stdout, re.M), group
    assert re.search(r"^model: .*\bae\b.*\bmlp_vae\b", proc.stdout, re.M)
    assert re.search(r"^experiment: .*mnist_iwae.*mnist_nll.*mnist_pe", proc.stdout, re.M)



@pytest.mark.parametrize("verb", ["eval", "sample"])
def test_eval_and_sample_help_list_only_the_groups_they_take(tmp_path, verb):
    proc = run_seqvae([verb, "--help"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    devices = sorted(p.stem for p in (CONF_DIR / "device").glob("*.yaml"))
    assert re.search(rf"^device: {', '.join(devices)}$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^paths: default$", proc.stdout, re.M)
    for group in ("model", "data", "objective", "optim", "trainer", "experiment"):
        assert not re.search(rf"^{group}: ", proc.stdout, re.M), group
    assert re.search(r"^checkpoint: best$", proc.stdout, re.M)   # the verb's own config follows


def test_the_autoencoder_baseline_trains_and_selects_by_reconstruction(tmp_path, mnist_data_dir):
    """`seqvae train model=ae` as the README shows it: no ELBO, so best.pt follows the validation rec."""
    from conftest import SMOKE_ARGS, train
    run = train(tmp_path, ["model=ae", *SMOKE_ARGS, "trainer.log_visuals=false"])
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["optimized_metric"] == "val/rec" and metrics["optimized_value"] == metrics["val"]["rec"]
    assert "neg_elbo" not in metrics["test"] and metrics["test"]["rec"] > 0


def test_iwae_validates_and_selects_by_the_iw_bound(tmp_path, mnist_data_dir):
    """experiment=mnist_iwae scores the validation IW-NLL at each validation and picks best.pt by it."""
    from conftest import SMOKE_ARGS, train
    run = train(tmp_path, ["experiment=mnist_iwae", *SMOKE_ARGS, "trainer.log_visuals=false"])
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["optimized_metric"] == "val/iw_nll"
    assert metrics["optimized_value"] == metrics["val"]["iw_nll"] and metrics["val"]["iw_samples"] == 50
    assert metrics["val"]["iw_nll"] < metrics["val"]["neg_elbo"]   # the IW bound is the tighter one
    acc = ea.EventAccumulator(str(run.run_dir / "tb"))
    acc.Reload()
    assert len(acc.Scalars("val/iw_nll")) == 2                      # one per validation (2 smoke epochs)
