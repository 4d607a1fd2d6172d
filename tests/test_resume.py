"""Layer 7: resuming a killed run, a half-written checkpoint, and a loss that becomes non-finite."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import SEQVAE, SMOKE_ARGS, assert_one_error_line, clone_run, describe, run_seqvae, seqvae_env
from seqvae_cli.training.checkpoint import save_atomic

# With a weight average on: the average must be restored exactly too (it is what best.pt and the test score).
RESUME_ARGS = [*SMOKE_ARGS, "trainer.max_epochs=3", "trainer.limit_train_batches=20",
               "trainer.weight_average.kind=ema", "trainer.weight_average.ema_decay=0.9"]


def load_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def start_and_kill_at_first_checkpoint(run_dir, cwd, args, timeout=300.0):
    """Start `seqvae train ARGS run_dir=RUN`, SIGKILL it as soon as checkpoints/last.pt appears.

    Returns True when the kill interrupted the run (no metrics.json yet), False when it had already finished."""
    last = run_dir / "checkpoints" / "last.pt"
    log = run_dir.with_name(run_dir.name + ".stderr")      # a file, not a pipe: the child never blocks on it
    with open(log, "w") as err:
        proc = subprocess.Popen([SEQVAE, "train", *args, f"run_dir={run_dir}"], cwd=cwd, env=seqvae_env(),
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        try:
            while not last.exists():
                if proc.poll() is not None:
                    pytest.fail(f"the run ended (exit {proc.returncode}) before writing {last}: {log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{last} did not appear within {timeout} s")
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return proc.returncode == -signal.SIGKILL and not (run_dir / "metrics.json").exists()


def kill_then_resume(work, args):
    """The command `seqvae train ARGS` killed at its first checkpoint (retried up to 3 times), then resumed in
    place with trainer.resume=true. Returns (run_dir, state of the checkpoint it resumed from, the process)."""
    for attempt in range(3):
        killed = work / f"killed{attempt}"
        if start_and_kill_at_first_checkpoint(killed, work, args):
            break
    else:
        pytest.skip("could not kill the run before it finished in 3 attempts (machine too fast?)")
    before = load_state(killed / "checkpoints" / "last.pt")
    assert before["epoch"] < 3, "the kill came after the last epoch: nothing would be resumed"
    proc = run_seqvae(["train", *args, f"run_dir={killed}", "trainer.resume=true"], cwd=work)
    assert proc.returncode == 0, describe(proc)
    return killed, before, proc


@pytest.fixture(scope="module")
def resume_pair(tmp_path_factory, mnist_data_dir):
    """An uninterrupted run, and the same command killed at its first checkpoint then resumed."""
    work = tmp_path_factory.mktemp("resume")
    full = work / "full"
    proc = run_seqvae(["train", *RESUME_ARGS, f"run_dir={full}"], cwd=work)
    assert proc.returncode == 0, describe(proc)
    killed, before, proc = kill_then_resume(work, RESUME_ARGS)
    return full, killed, before, proc


def test_resumed_run_equals_the_uninterrupted_run(resume_pair):
    full, killed, before, proc = resume_pair
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert "resuming from" in proc.stdout + proc.stderr
    assert a["epochs"] == b["epochs"] == 3 and a["steps"] == b["steps"] == 60
    assert a["best_epoch"] == b["best_epoch"]
    assert a["optimized_value"] == b["optimized_value"]
    assert a["val"] == b["val"]          # exactly equal, not approximately
    assert a["test"] == b["test"]
    assert set(a["test"]) >= {"neg_elbo", "iw_nll", "active_units", "mutual_info"}


def test_resumed_weights_equal_the_uninterrupted_weights(resume_pair):
    full, killed, before, _ = resume_pair
    assert before["weight_average"]["count"] > 0          # the kill left a non-empty average behind
    for name in ("last.pt", "best.pt"):
        a, b = load_state(full / "checkpoints" / name), load_state(killed / "checkpoints" / name)
        assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
        assert a["weight_average"] == b["weight_average"]
        for part in ("model", "training_model"):        # the average, and the weights training continues from
            assert a[part].keys() == b[part].keys()
            for key in a[part]:
                assert torch.equal(a[part][key], b[part][key]), f"{name}: {part}.{key} differs"


def test_resume_ignores_a_half_written_checkpoint(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    tmp = run / "checkpoints" / "last.pt.tmp"
    tmp.write_bytes(os.urandom(3000))                 # what a kill during save leaves behind
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "trainer.max_epochs=3"],
                      cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["steps"] == 15         # one more epoch of 5 batches
    assert load_state(run / "checkpoints" / "last.pt")["epoch"] == 3
    assert not tmp.exists()


def test_nan_loss_keeps_the_last_good_checkpoint(mnist_data_dir, tmp_path):
    """Epoch 1 = step 0 with KL weight 0 (finite); from step 1 the KL weight is 1e300: the loss is inf."""
    run = tmp_path / "run"
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.limit_train_batches=1",
                       "objective.kl_anneal.schedule=linear", "objective.kl_anneal.end=1e300",
                       "objective.kl_anneal.warmup=1"], cwd=tmp_path)
    # The KL weight overflows the loss, so the cure is that weight (a new run: a resume keeps it), not a lower lr.
    line = assert_one_error_line(proc, "step 1", "last.pt keeps the last good state", "objective.kl_anneal.end=1")
    assert "optim.lr" not in line
    state = load_state(run / "checkpoints" / "last.pt")
    assert state["step"] == 1 and state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (run / "metrics.json").exists()


def test_nan_loss_before_any_checkpoint(mnist_data_dir, tmp_path):
    """optim.lr=1e30: the first update blows the weights up, the loss of step 1 is not finite."""
    run = tmp_path / "run"
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "optim.lr=1e30"], cwd=tmp_path)
    line = assert_one_error_line(proc, "step 1")
    assert not (run / "checkpoints" / "last.pt").exists()
    # With no checkpoint written, the message must not send the user to one.
    assert "last.pt keeps" not in line, line


def test_non_finite_validation_is_a_clean_error(mnist_data_dir, tmp_path):
    """optim.lr=1e30 with one batch per epoch: step 0's loss is finite but its update makes the weights
    non-finite, so the first validation sees NaNs. That must be the usual one-line error (exit 2), not
    a traceback, and no checkpoint with non-finite weights may be written."""
    run = tmp_path / "run"
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "optim.lr=1e30", "trainer.limit_train_batches=1"],
                      cwd=tmp_path)
    assert "Traceback" not in proc.stderr, describe(proc)
    line = assert_one_error_line(proc)
    assert any(w in line.lower() for w in ("nan", "inf", "finite")), line
    for name in ("last.pt", "best.pt"):
        path = run / "checkpoints" / name
        if path.exists():
            assert all(torch.isfinite(t).all() for t in load_state(path)["model"].values()), name
    assert not (run / "metrics.json").exists()


SCHEDULE_ARGS = [*SMOKE_ARGS, "trainer.max_epochs=4", "trainer.limit_train_batches=15", "trainer.val_every=2",
                 "objective=iwae", "objective.iw_samples=5", "objective.kl_anneal.schedule=cyclical",
                 "objective.kl_anneal.unit=epochs", "objective.kl_anneal.n_cycles=2", "optim=adamw",
                 "optim.lr_schedule=cosine", "optim.lr_min=1e-4", "optim.warmup_steps=10", "trainer.seed=7"]


@pytest.mark.slow
def test_resume_equality_with_every_stateful_schedule(mnist_data_dir, tmp_path):
    """IWAE, cyclical KL in epochs, AdamW with warm-up + cosine lr, validation every 2 epochs: killed at
    the first checkpoint (epoch 1, before any validation and any best.pt), resumed, identical results."""
    full = tmp_path / "full"
    proc = run_seqvae(["train", *SCHEDULE_ARGS, f"run_dir={full}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    killed = tmp_path / "killed"
    if not start_and_kill_at_first_checkpoint(killed, tmp_path, SCHEDULE_ARGS):
        pytest.skip("the run finished before it could be killed")
    assert load_state(killed / "checkpoints" / "last.pt")["epoch"] < 4
    proc = run_seqvae(["train", *SCHEDULE_ARGS, f"run_dir={killed}", "trainer.resume=true"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["steps"] == b["steps"] == 60 and a["best_epoch"] == b["best_epoch"]
    assert a["val"] == b["val"] and a["test"] == b["test"]
    wa = load_state(full / "checkpoints" / "last.pt")
    wb = load_state(killed / "checkpoints" / "last.pt")
    for key in wa["model"]:
        assert torch.equal(wa["model"][key], wb["model"][key]), key
    assert wa["scheduler"] == wb["scheduler"]


PRETRAIN_ARGS = [*SMOKE_ARGS, "trainer.max_epochs=3", "objective.ae_pretrain_epochs=1",
                 "objective.kl_anneal.schedule=linear", "objective.kl_anneal.warmup=5"]


@pytest.mark.slow
def test_ae_pretraining_run_and_resume_across_the_decoder_reset(mnist_data_dir, tmp_path):
    """Li et al. 2019's recipe: epoch 1 trains an autoencoder, then the decoder is re-initialised; best.pt is
    never a pre-training checkpoint; killed right after the reset and resumed, the run is unchanged."""
    full = tmp_path / "full"
    proc = run_seqvae(["train", *PRETRAIN_ARGS, f"run_dir={full}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "decoder re-initialised" in proc.stdout + proc.stderr
    a = json.loads((full / "metrics.json").read_text())
    assert a["best_epoch"] >= 2
    assert load_state(full / "checkpoints" / "best.pt")["epoch"] >= 2
    killed = tmp_path / "killed"
    if not start_and_kill_at_first_checkpoint(killed, tmp_path, PRETRAIN_ARGS):
        pytest.skip("the run finished before it could be killed")
    proc = run_seqvae(["train", *PRETRAIN_ARGS, f"run_dir={killed}", "trainer.resume=true"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "decoder re-initialised" not in proc.stdout + proc.stderr      # the reset is not done twice
    b = json.loads((killed / "metrics.json").read_text())
    assert a["val"] == b["val"] and a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]


def test_resume_from_a_checkpoint_file_into_a_new_run_dir_brings_best_along(smoke_run, tmp_path):
    """trainer.resume=<file> with another run_dir and nothing left to train: the test pass at the end must score
    the source run's best.pt, copied into the new folder (it used to fail on a missing best.pt)."""
    source = smoke_run.run_dir / "checkpoints"
    new = tmp_path / "new"
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={new}", f"trainer.resume={source / 'last.pt'}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "copied" in proc.stdout + proc.stderr
    assert (new / "checkpoints" / "best.pt").read_bytes() == (source / "best.pt").read_bytes()
    metrics = json.loads((new / "metrics.json").read_text())
    original = json.loads((smoke_run.run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] == original["best_epoch"] and metrics["test"] == original["test"]


def test_resume_from_a_lone_checkpoint_file_chooses_best_among_the_new_epochs(smoke_run, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "last.pt").write_bytes((smoke_run.run_dir / "checkpoints" / "last.pt").read_bytes())
    new = tmp_path / "new"
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={new}", f"trainer.resume={lone / 'last.pt'}",
                       "trainer.max_epochs=3"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "no best.pt of its best epoch" in proc.stdout + proc.stderr
    metrics = json.loads((new / "metrics.json").read_text())
    assert metrics["best_epoch"] == 3 and load_state(new / "checkpoints" / "best.pt")["epoch"] == 3


def test_resume_may_lower_the_learning_rate_but_not_change_its_schedule(smoke_run, tmp_path):
    """A NaN stop advises resuming with a lower optim.lr: that override is honoured (the checkpoint's lr would
    otherwise come back with the scheduler state); optim.lr_schedule, which merely starts with the same
    letters, is still refused."""
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    refused = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "trainer.max_epochs=3",
                          "optim.lr_schedule=cosine"], cwd=tmp_path)
    assert_one_error_line(refused, "optim.lr_schedule", "cannot resume")
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "trainer.max_epochs=3",
                       "optim.lr=1e-5", "optim.grad_clip=1.0"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "resuming with optim.lr=1e-05 (was 0.001)" in proc.stdout + proc.stderr
    state = load_state(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 3
    assert state["config"]["optim"]["lr"] == 1e-5 and state["config"]["optim"]["grad_clip"] == 1.0
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-5)   # constant schedule
    assert state["scheduler"]["base_lrs"] == [1e-5]


@pytest.mark.parametrize("new_lr, new_epochs", [(5e-4, 3), (1e-3, 4), (2e-4, 5)])
def test_resumed_lr_follows_the_schedule_of_the_new_lr_and_length(mnist_data_dir, tmp_path, new_lr, new_epochs):
    """Warm-up + cosine, stopped after epoch 1 of 3, resumed with another lr and/or length: at every later step
    the lr is the one a fresh run with those settings (floor scaled with the lr) has at that step."""
    from conftest import compose_train_config
    from seqvae_cli.training.loop import Trainer
    base = ["debug=smoke", "trainer.progress_bar=false", "trainer.log_visuals=false", "trainer.test=false",
            "device=cpu", "optim.lr_schedule=cosine", "optim.warmup_steps=3", "optim.lr=1e-3", "optim.lr_min=1e-4"]
    first = Trainer(compose_train_config(*base, "trainer.max_epochs=3"), tmp_path / "run", [])
    first.train_epoch()
    first.epoch += 1
    save_atomic(first.state(), tmp_path / "run" / "checkpoints" / "last.pt")
    first.writer.close()
    changes = [f"optim.lr={new_lr}", f"trainer.max_epochs={new_epochs}"]
    resumed = Trainer(compose_train_config(*base, *changes, "trainer.resume=true"), tmp_path / "run", changes)
    scaled_floor = f"optim.lr_min={1e-4 * new_lr / 1e-3}"
    fresh = Trainer(compose_train_config(*base, *changes, scaled_floor), tmp_path / "fresh", [])
    assert resumed.step == 5 and resumed.cfg.optim.lr_min == pytest.approx(1e-4 * new_lr / 1e-3)
    fresh_lrs, resumed_lrs = [], []
    for step in range(5 * new_epochs):
        if step >= 5:
            fresh_lrs.append(fresh.optimizer.param_groups[0]["lr"])
            resumed_lrs.append(resumed.optimizer.param_groups[0]["lr"])
            resumed.optimizer.step(), resumed.scheduler.step()
        fresh.optimizer.step(), fresh.scheduler.step()
    assert resumed_lrs == pytest.approx(fresh_lrs, rel=1e-12)
    assert max(fresh_lrs) <= new_lr and fresh_lrs[-1] < fresh_lrs[0]        # decaying, never above the new lr
    resumed.writer.close(), fresh.writer.close()


def test_non_finite_weights_without_validation_never_overwrite_last_pt(mnist_data_dir, tmp_path):
    """val_every=2: epoch 1 ends without a validation; its one update (lr 1e39, inf in float32) made the weights
    non-finite.
    The run must stop there rather than save them as last.pt and then blame the next loss."""
    run = tmp_path / "run"
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "optim.lr=1e39", "trainer.limit_train_batches=1",
                       "trainer.val_every=2", "trainer.max_epochs=3"], cwd=tmp_path)
    line = assert_one_error_line(proc, "weights became non-finite", "step 1 (epoch 1)", "optim.lr=")
    assert not (run / "checkpoints" / "last.pt").exists(), line


def test_resume_with_a_data_rng_state_of_another_device_warns_and_continues(smoke_run, tmp_path):
    """A checkpoint written on CUDA holds a CUDA generator state (another size than a CPU one)."""
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    state = load_state(last)
    state["rng"]["data"] = torch.zeros(16, dtype=torch.uint8)    # the size of a CUDA Philox state
    save_atomic(state, last)                                     # sealed anew: a deliberate change, not corruption
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "trainer.max_epochs=3"],
                      cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "re-seeded" in proc.stdout + proc.stderr
    assert load_state(last)["epoch"] == 3


AGGRESSIVE_ARGS = [*SMOKE_ARGS, "trainer.max_epochs=3", "trainer.limit_train_batches=10",
                   "objective.aggressive.enabled=true", "objective.aggressive.max_inner_steps=6",
                   "objective.aggressive.check_every=2"]


@pytest.mark.slow
def test_resume_equality_with_aggressive_encoder_training(mnist_data_dir, tmp_path):
    """He et al. 2019's inner loop draws its own fresh batches and carries an on/off state across epochs: killed
    at the first checkpoint (still aggressive) and resumed, the run ends exactly as the uninterrupted one."""
    full = tmp_path / "full"
    proc = run_seqvae(["train", *AGGRESSIVE_ARGS, f"run_dir={full}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    killed, before, _ = kill_then_resume(tmp_path, AGGRESSIVE_ARGS)
    assert before["aggressive"]["on"]
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["steps"] == b["steps"] == 30 and a["val"] == b["val"] and a["test"] == b["test"]
    sa, sb = load_state(full / "checkpoints" / "last.pt"), load_state(killed / "checkpoints" / "last.pt")
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    assert (sa["aggressive"]["on"], sa["aggressive"]["last_mutual_info"]) == \
        (sb["aggressive"]["on"], sb["aggressive"]["last_mutual_info"])
    assert torch.equal(sa["aggressive"]["shuffle"], sb["aggressive"]["shuffle"])
