"""DDP on the CPU (gloo) through the CLI, and the training step a CUDA graph captures.

The autoencoder (model=ae) draws no noise in training or scoring, so two processes that each take half of every
global batch must give one process's numbers to float rounding: the loss curve, the validation and test metrics.
(A VAE's sampling noise differs per rank by design, so its curves agree only in distribution.)"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqvae_cli.config.rules import validate
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.training.loop import Trainer

from conftest import (SEQVAE, assert_one_error_line, compose_train_config, describe, run_seqvae, seqvae_env,
                      train)

AE = ["debug=smoke", "model=ae", "trainer.progress_bar=false", "device=cpu"]
# Long enough to kill a rank in its second epoch: 3 epochs of 40 batches.
LONGER = ["model=ae", "trainer.progress_bar=false", "device=cpu", "trainer.max_epochs=3",
          "trainer.limit_train_batches=40", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
          "trainer.log_visuals=false", "data.eval_batch_size=200"]


def epoch_losses(run_dir: Path) -> list[float]:
    log = (run_dir / "train.log").read_text()
    return [float(v) for v in re.findall(r"epoch \d+: train loss ([0-9.]+)", log)]


def close(a: dict, b: dict, rel: float = 1e-5) -> bool:
    return all(abs(a[k] - b[k]) <= rel * max(1.0, abs(b[k])) for k in b if isinstance(b[k], (int, float)))


def test_two_gloo_processes_train_as_one_and_write_one_run_folder(tmp_path, mnist_data_dir):
    one = train(tmp_path, AE, "one")
    two = train(tmp_path, [*AE, "trainer.devices=2"], "two")
    assert epoch_losses(two.run_dir) == pytest.approx(epoch_losses(one.run_dir), rel=1e-5)
    m1, m2 = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (one, two))
    assert m2["steps"] == m1["steps"] and m2["val"]["num_examples"] == m1["val"]["num_examples"]
    assert close(m2["val"], m1["val"]) and close(m2["test"], m1["test"]), (m1, m2)
    assert "DDP over 2 processes (gloo)" in (two.run_dir / "train.log").read_text()
    # One folder, one set of files: rank 1 writes nothing (no second event file, config copy or checkpoint).
    assert sorted(p.name for p in two.run_dir.iterdir()) == sorted(p.name for p in one.run_dir.iterdir())
    assert len(list((two.run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (two.run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


@pytest.mark.slow
def test_torchrun_itself_gives_every_rank_one_run_folder(tmp_path, mnist_data_dir):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "seqvae_cli", "train", *AE, "trainer.test=false"],
                          cwd=tmp_path, env=seqvae_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, describe(proc)
    runs = [p for p in (tmp_path / "outputs" / "mlp_vae-mnist").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    assert (runs[0] / "metrics.json").is_file() and (runs[0] / ".hydra" / "config.yaml").is_file()


def rank_pid(run_dir: Path, rank: int) -> int | None:
    """The pid of the training process of `rank` that writes into run_dir (from /proc: its argv and RANK)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"run_dir={run_dir}".encode() in argv and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find a rank's pid")
def test_a_killed_rank_stops_the_run_with_one_line_and_resume_continues_it(tmp_path, mnist_data_dir):
    reference = train(tmp_path, LONGER, "reference")       # one process, never interrupted
    run_dir = tmp_path / "ddp"
    proc = subprocess.Popen([SEQVAE, "train", *LONGER, "trainer.devices=2", f"run_dir={run_dir}"], cwd=tmp_path,
                            env=seqvae_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last, deadline = run_dir / "checkpoints" / "last.pt", time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    pid = rank_pid(run_dir, 1)
    assert pid is not None and proc.poll() is None, "the run ended before a rank could be killed"
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_error_line(done, "training process 1 of 2 was killed by SIGKILL",
                          f"seqvae train run_dir={run_dir} trainer.resume=true trainer.devices=2")
    assert not (run_dir / "metrics.json").exists()
    other = run_dir.with_name("ddp_on_one")
    shutil.copytree(run_dir, other)

    resumed = run_seqvae(["train", *LONGER, f"run_dir={run_dir}", "trainer.resume=true", "trainer.devices=2"],
                         cwd=tmp_path)
    assert resumed.returncode == 0, describe(resumed)
    # Same number of ranks: each continues its own streams, so the run ends as the uninterrupted one would.
    want = json.loads((reference.run_dir / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["epochs"] == 3 and close(got["val"], want["val"]) and close(got["test"], want["test"]), (want, got)

    # Another number of ranks: the shared shuffle stream continues exactly (the autoencoder draws no other noise).
    alone = run_seqvae(["train", *LONGER, f"run_dir={other}", "trainer.resume=true"], cwd=tmp_path)
    assert alone.returncode == 0, describe(alone)
    assert "re-seeded" in (other / "train.log").read_text()
    got = json.loads((other / "metrics.json").read_text())
    assert close(got["val"], want["val"]) and close(got["test"], want["test"]), (want, got)


@pytest.mark.parametrize("override, needle", [
    ("trainer.devices=0", "trainer.devices=0 is not allowed; expected an integer >= 1"),
    ("trainer.devices=1.5", "trainer.devices=1.5 is not allowed"),
    ("trainer.cuda_graphs=maybe", "trainer.cuda_graphs='maybe' is not allowed; expected auto, true or false"),
])
def test_bad_scale_settings_are_refused_before_work(override, needle):
    with pytest.raises(SeqvaeError, match=re.escape(needle)):
        validate(compose_train_config(*AE, override))


def test_cuda_graphs_true_without_cuda_is_one_line(tmp_path, mnist_data_dir):
    assert_one_error_line(run_seqvae(["train", *AE, "trainer.cuda_graphs=true"], cwd=tmp_path),
                          "trainer.cuda_graphs=true but it needs a CUDA device (this run is on cpu)")


@pytest.mark.slow
def test_aggressive_training_is_refused_under_ddp(tmp_path, mnist_data_dir):
    proc = run_seqvae(["train", *AE, "model=mlp_vae", "objective.aggressive.enabled=true", "trainer.devices=2"],
                      cwd=tmp_path)
    assert proc.returncode == 2, describe(proc)
    assert "objective.aggressive.enabled=true does not run under DDP" in proc.stderr


def test_the_step_a_graph_captures_reads_the_kl_weight_from_a_device_tensor(tmp_path, mnist_data_dir):
    """CapturedStep replays Trainer.optimizer_update with the KL weight in a tensor it fills before each replay:
    on the CPU (no graphs), that step must train exactly as the one given the schedule's float."""
    args = ["debug=smoke", "device=cpu", "trainer.log_visuals=false", "trainer.test=false",
            "objective.kl_anneal.schedule=linear", "objective.kl_anneal.warmup=8"]
    curves = []
    for as_tensor in (False, True):
        trainer = Trainer(compose_train_config(*args), tmp_path / str(as_tensor), [])
        batches = trainer.dm.train_batches(trainer.shuffle_gen, trainer.data_gen, 4)
        losses = []
        for step, batch in enumerate(batches):
            trainer.step = step
            weight = trainer.objective.kl_weight(step)
            assert 0 < weight < 1 or step == 0
            terms = trainer.optimizer_update(batch, torch.tensor(weight) if as_tensor else weight)
            losses.append(float(terms.loss.detach()))
        curves.append((losses, [p.detach().clone() for p in trainer.model.parameters()]))
    assert curves[0][0] == curves[1][0]
    assert all(torch.equal(a, b) for a, b in zip(curves[0][1], curves[1][1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA-graph step needs one")
def test_captured_step_trains_as_the_eager_step_on_cuda(tmp_path, mnist_data_dir):
    base = ["experiment=mnist_pe", "device=cuda", "trainer.max_epochs=2", "trainer.limit_train_batches=30",
            "trainer.limit_val_batches=2", "trainer.test=false", "trainer.log_visuals=false",
            "trainer.progress_bar=false"]
    eager = train(tmp_path, [*base, "trainer.cuda_graphs=false"], "eager")
    graph = train(tmp_path, [*base, "trainer.cuda_graphs=true"], "graph")
    assert "captured as a CUDA graph" in (graph.run_dir / "train.log").read_text()
    assert epoch_losses(graph.run_dir) == pytest.approx(epoch_losses(eager.run_dir), rel=1e-3)
