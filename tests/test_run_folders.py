"""Layer 7b: run folders and the disk, by fault injection. Two trainings into one folder, training over another
run's files, a full disk (/dev/full behind the temporary file), a read-only folder, SIGINT and SIGTERM mid-run,
torn JSON files, eval/sample pointed at a folder that is not a run, and sizes whose memory cannot fit.

Each case checks the one line users see, the exit code, and that what was on disk before is intact."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import (SEQVAE, SMOKE_ARGS, assert_one_error_line, clone_run, describe, error_lines, run_seqvae,
                      seqvae_env, train)
from test_cli_text import VAE_ARGS, ptb_data_dir, vae_run  # noqa: F401 - the tiny PTB run, shared fixtures
from test_resume import load_state

from seqvae_cli.training import runfolder
from seqvae_cli.training.checkpoint import FORMAT, load_checkpoint, save_atomic
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.files import WriteFailed, write_json_atomic

# Epochs of ~1 s: long enough to signal a run between its first checkpoint and its end.
LONG_ARGS = [*SMOKE_ARGS, "trainer.max_epochs=4", "trainer.limit_train_batches=100", "trainer.log_visuals=false"]
DEV_FULL = Path("/dev/full")     # every write to it fails with ENOSPC: a full disk without filling one


def start_training(run_dir: Path, cwd: Path, args: list[str]) -> tuple[subprocess.Popen, Path]:
    """`seqvae train ARGS run_dir=RUN` in the background; stderr goes to a file (returned), never a pipe."""
    err = run_dir.with_name(run_dir.name + ".stderr")
    with open(err, "w") as f:
        proc = subprocess.Popen([SEQVAE, "train", *args, f"run_dir={run_dir}"], cwd=cwd, env=seqvae_env(),
                                stdout=subprocess.DEVNULL, stderr=f)
    return proc, err


def wait_for(path: Path, proc: subprocess.Popen, err: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before writing {path}: {err.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def the_line(proc_returncode: int, err: Path, exit_code: int, *needles: str) -> str:
    """The one `seqvae: error:` line a stopped process left on stderr, with its exit code."""
    lines = error_lines(err.read_text())
    assert proc_returncode == exit_code and len(lines) == 1, f"exit {proc_returncode}: {lines}"
    assert lines[0].startswith("seqvae: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def same_results(a: Path, b: Path) -> None:
    """Two runs' metrics.json, exactly equal where a resumed CPU run must replay the uninterrupted one."""
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    for key in ("epochs", "steps", "best_epoch", "optimized_value", "val", "test"):
        assert ma[key] == mb[key], key


# ---------------------------------------------------------------------------------------- one run, one folder

def test_the_lock_names_a_live_holder_and_is_taken_over_once_it_died(tmp_path, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from seqvae_cli.training import runfolder; "
         "runfolder.acquire_lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SeqvaeError, match=f"PID {holder.pid} on ") as info:
            runfolder.acquire_lock(run)
        assert "in use" in str(info.value) and "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock").exists()       # SIGKILL left it behind: stale, taken over
    runfolder.acquire_lock(run)
    try:
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        runfolder.log_takeovers()
        assert f"took over the stale lock {run / '.lock'} of PID {holder.pid} on " in caplog.text
    finally:
        runfolder.release_lock(run)
    assert not (run / ".lock").exists()


@pytest.mark.slow
def test_a_second_training_into_a_busy_folder_is_refused_then_takes_over_once_the_first_is_killed(
        mnist_data_dir, tmp_path):
    run = tmp_path / "run"
    first, err = start_training(run, tmp_path, [*SMOKE_ARGS, "trainer.max_epochs=50",
                                                "trainer.limit_train_batches=100", "trainer.log_visuals=false"])
    try:
        wait_for(run / "checkpoints" / "last.pt", first, err)
        config = (run / ".hydra" / "config.yaml").read_bytes()
        second = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true"], cwd=tmp_path)
        assert_one_error_line(second, "in use", f"PID {first.pid}", str(run / ".lock"))
        assert (run / ".hydra" / "config.yaml").read_bytes() == config     # not even Hydra's record was touched
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    epoch = load_state(run / "checkpoints" / "last.pt")["epoch"]
    resumed = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true",
                          f"trainer.max_epochs={epoch}"], cwd=tmp_path)   # nothing left to train: the test pass
    assert resumed.returncode == 0, describe(resumed)
    assert f"took over the stale lock {run / '.lock'} of PID {first.pid}" in resumed.stdout
    assert not (run / ".lock").exists() and (run / "metrics.json").exists()


def test_check_run_folder_ignores_what_hydra_wrote_for_this_command(tmp_path):
    run = tmp_path / "run"
    runfolder.check_run_folder(run, False, False)              # absent
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").write_text("")
    (run / ".lock").write_text("{}")
    runfolder.check_run_folder(run, False, False)              # what Hydra (and the lock) put there: fresh
    (run / "tb").mkdir()
    with pytest.raises(SeqvaeError, match="holds no seqvae run"):
        runfolder.check_run_folder(run, False, False)
    runfolder.check_run_folder(run, False, True)                # trainer.overwrite=true
    runfolder.check_run_folder(run, str(run / "checkpoints" / "last.pt"), False)   # resuming a file of its own
    with pytest.raises(SeqvaeError, match="holds no seqvae run"):
        runfolder.check_run_folder(run, str(tmp_path / "other" / "last.pt"), False)


def test_training_into_another_run_is_refused_and_leaves_it_untouched(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}"], cwd=tmp_path)
    assert_one_error_line(proc, f"{run} already holds a run", "trainer.resume=true", "trainer.overwrite=true")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before   # .hydra/ included


def test_a_folder_that_is_no_run_needs_overwrite_which_keeps_its_other_files(mnist_data_dir, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={folder}"], cwd=tmp_path)
    assert_one_error_line(proc, "not empty", "holds no seqvae run", "notes.txt", "trainer.overwrite=true")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={folder}", "trainer.overwrite=true",
                       "trainer.max_epochs=1", "trainer.log_visuals=false", "trainer.test=false"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert (folder / "notes.txt").read_text() == "my notes" and (folder / "metrics.json").exists()


def test_overwrite_replaces_the_previous_runs_outputs(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    (run / "tb").mkdir()
    (run / "tb" / "events.out.tfevents.old").write_bytes(b"old events")
    (run / "eval.json").write_text("{}")
    (run / "README.txt").write_text("not seqvae's")
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.overwrite=true", "trainer.max_epochs=1",
                       "trainer.log_visuals=false", "trainer.test=false"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "removed the previous run's checkpoints, tb, metrics.json, eval.json" in proc.stdout
    assert not (run / "tb" / "events.out.tfevents.old").exists() and not (run / "eval.json").exists()
    assert (run / "README.txt").exists()
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    assert load_state(run / "checkpoints" / "last.pt")["epoch"] == 1


def test_overwrite_and_resume_together_are_refused(tmp_path):
    proc = run_seqvae(["train", "run_dir=run", "trainer.resume=true", "trainer.overwrite=true"], cwd=tmp_path)
    assert_one_error_line(proc, "trainer.overwrite=true", "trainer.resume", "only one")


# --------------------------------------------------------------------------------- a full or read-only disk

@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full to fake a full disk")
def test_a_full_disk_is_one_line_removes_the_temporary_file_and_keeps_last_pt(smoke_run, tmp_path):
    """checkpoints/last.pt.tmp is a link to /dev/full: writing epoch 3's checkpoint fails with ENOSPC (torch turns
    it into 'enforce fail at inline_container.cc' without the errno)."""
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    tmp = run / "checkpoints" / "last.pt.tmp"
    tmp.symlink_to(DEV_FULL)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "trainer.max_epochs=3"],
                      cwd=tmp_path)
    line = assert_one_error_line(proc, f"could not write {run / 'checkpoints' / 'last.pt'}",
                                 "no space left on the device (ENOSPC)", "free space",
                                 f"seqvae train run_dir={run} trainer.resume=true", "still holds epoch 2")
    assert "inline_container" not in line
    assert not tmp.exists() and not tmp.is_symlink()
    assert (run / "checkpoints" / "last.pt").read_bytes() == before and not (run / ".lock").exists()
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "trainer.max_epochs=3"],
                      cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert load_state(run / "checkpoints" / "last.pt")["epoch"] == 3


@pytest.mark.slow
@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full to fake a full disk")
def test_a_full_disk_at_metrics_json_keeps_the_old_file(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    (run / "metrics.json.tmp").symlink_to(DEV_FULL)
    before = (run / "metrics.json").read_bytes()
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true"], cwd=tmp_path)
    assert_one_error_line(proc, f"could not write {run / 'metrics.json'}", "ENOSPC", "trainer.resume=true")
    assert (run / "metrics.json").read_bytes() == before and not (run / "metrics.json.tmp").is_symlink()


def small_state() -> dict:
    return {"format": FORMAT, "model": {"w": torch.arange(5000, dtype=torch.float32)}, "step": 3, "epoch": 1}


@pytest.mark.parametrize("fault, needles", [
    (OSError(28, "No space left on device"), ("no space left", "ENOSPC", "free space")),
    (OSError(30, "Read-only file system"), ("read-only", "EROFS")),
    (PermissionError(13, "Permission denied"), ("permission denied", "EACCES", "chmod")),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), ("the write failed",)),
])
def test_save_atomic_turns_disk_faults_into_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, fault, needles):
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic(small_state(), path)
    before = path.read_bytes()

    def failing_save(state, f):
        f.write(b"half a checkpoint")
        raise fault
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(WriteFailed) as info:
        save_atomic({"format": FORMAT, "step": 4}, path)
    message = str(info.value)
    assert message.startswith(f"could not write {path}: ") and "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert path.read_bytes() == before and not path.with_name("last.pt.tmp").exists()


@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full to fake a full disk")
def test_write_json_atomic_on_a_full_disk_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"old": 1})
    path.with_name("metrics.json.tmp").symlink_to(DEV_FULL)
    with pytest.raises(WriteFailed, match="ENOSPC"):
        write_json_atomic(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1} and not path.with_name("metrics.json.tmp").is_symlink()


def test_a_read_only_run_folder_is_refused_before_training(smoke_run, tmp_path, monkeypatch, capsys):
    """chmod 555 stops any user but root; as root (as in many CI containers) the kernel's answer to "may I write
    here?" is faked instead: os.access says no for the run folder, as it would on a read-only mount."""
    from seqvae_cli.cli import command as cli
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: (not mode & os.W_OK or not Path(p).resolve()
                                                                 .is_relative_to(run.resolve())) and
                            real_access(p, mode, **kw))
    else:
        run.chmod(0o555)
    monkeypatch.setattr(sys, "argv", ["seqvae", "train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true",
                                      "trainer.max_epochs=3"])
    try:
        with pytest.raises(SystemExit) as info:
            cli.main()
    finally:
        run.chmod(0o755)
    lines = error_lines(capsys.readouterr().err)
    assert info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"seqvae: error: the run folder {run} cannot be written: ") and "writable" in lines[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# -------------------------------------------------------------------------------------------- SIGINT, SIGTERM

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_data_dir) -> Path:
    return train(tmp_path_factory.mktemp("uninterrupted"), LONG_ARGS).run_dir


@pytest.mark.parametrize("signum, exit_code, name", [
    pytest.param(signal.SIGINT, 130, "Ctrl-C (SIGINT)", marks=pytest.mark.slow),   # ~22 s: three trainings
    pytest.param(signal.SIGTERM, 143, "SIGTERM", marks=pytest.mark.slow),
])
def test_a_signal_stops_at_a_step_boundary_and_resume_replays_the_run(uninterrupted, tmp_path, signum, exit_code,
                                                                      name):
    run = tmp_path / "run"
    proc, err = start_training(run, tmp_path, LONG_ARGS)
    try:
        wait_for(run / "checkpoints" / "last.pt", proc, err)
        proc.send_signal(signum)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = the_line(proc.returncode, err, exit_code, f"training stopped by {name} after step",
                    f"seqvae train run_dir={run} trainer.resume=true")
    saved = load_checkpoint(run / "checkpoints" / "last.pt")           # intact, and what the line says it holds
    assert saved["epoch"] < 4 and f"last.pt holds the end of epoch {saved['epoch']}" in line
    assert "Traceback" not in err.read_text()
    assert not list(run.rglob("*.tmp")) and not (run / ".lock").exists() and not (run / "metrics.json").exists()
    proc = run_seqvae(["train", *LONG_ARGS, f"run_dir={run}", "trainer.resume=true"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    same_results(uninterrupted, run)


# ------------------------------------------------------------------------------------------------ JSON files

def test_report_lists_a_job_with_a_torn_metrics_json_as_broken(tmp_path, capsys):
    from seqvae_cli.cli.report import main as report_main
    for job, text in (("0", json.dumps({"optimized_metric": "val/neg_elbo", "optimized_value": 90.0,
                                        "best_epoch": 2, "test": {"neg_elbo": 91.0}})),
                      ("1", '{"optimized_metric": "val/neg_elbo", "optimized_val')):   # a kill mid-write
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- model.latent_dim={job}\n")
        (tmp_path / job / "metrics.json").write_text(text)
    assert report_main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()}
    assert "done" in rows["0"] and "broken" in rows["1"]
    assert "unreadable metrics.json (jobs 1)" in err
    assert (tmp_path / "report.csv").read_text().count("broken") == 1 and not (tmp_path / "report.csv.tmp").exists()


def test_eval_sets_a_torn_eval_json_aside(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    (run / "eval.json").write_text('{"val": {"neg_elbo": 1')
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=2", "limit_examples=50"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert json.loads((run / "eval.json").read_text())["test"]["num_examples"] == 50
    assert (run / "eval.json.broken").read_text() == '{"val": {"neg_elbo": 1'


# ------------------------------------------------------------------------------- eval and sample, elsewhere

@pytest.mark.parametrize("verb, extra", [("eval", ["iw_samples=2", "limit_examples=50"]),
                                         ("sample", ["num_samples=4", "scatter_points=50"])])
def test_eval_and_sample_of_a_lone_checkpoint_write_nothing_beside_it(smoke_run, tmp_path, verb, extra):
    """A checkpoint copied into a folder that is no seqvae run (no checkpoints/, no .hydra/): the logs, eval.json,
    samples/ and tb/ go to this command's own outputs/VERB/DATE/TIME."""
    lone = tmp_path / "models"
    lone.mkdir()
    (lone / "vae.pt").write_bytes((smoke_run.run_dir / "checkpoints" / "best.pt").read_bytes())
    proc = run_seqvae([verb, f"checkpoint={lone / 'vae.pt'}", *extra], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert sorted(p.name for p in lone.iterdir()) == ["vae.pt"]
    own = list((tmp_path / "outputs" / verb).glob("*/*"))
    assert len(own) == 1
    if verb == "eval":
        assert json.loads((own[0] / "eval.json").read_text())["test"]["num_examples"] == 50
    else:
        assert (own[0] / "samples" / "prior_samples.png").exists() and list((own[0] / "tb").iterdir())


@pytest.mark.parametrize("verb", ["eval", "sample"])
def test_eval_and_sample_of_a_system_folder_leave_it_alone(tmp_path, verb):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "passwd").write_text("root:x:0:0")
    proc = run_seqvae([verb, f"run_dir={folder}"], cwd=tmp_path)
    assert_one_error_line(proc, "does not exist")
    assert sorted(p.name for p in folder.iterdir()) == ["passwd"]     # no logs/ inside


# ------------------------------------------------------------------------------------------------- sizes

@pytest.fixture(scope="module")
def sines_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("sines"), ["model=lstm_vae", "data=sines", *SMOKE_ARGS,
                                                    "device.num_threads=1", "model.hidden_size=16",
                                                    "model.embed_dim=8", "model.latent_dim=4"]).run_dir


@pytest.mark.parametrize("override, needles", [
    ("beam_width=100000", ("beam_width=100000 needs about", "TiB", "beam search", "use beam_width<=")),
    ("num_samples=100000000", ("num_samples=100000000 needs about", "use num_samples<=")),
])
def test_text_decodes_that_cannot_fit_are_refused_up_front(vae_run, tmp_path, override, needles):
    started = time.monotonic()
    proc = run_seqvae(["sample", f"run_dir={vae_run.run_dir}", override], cwd=tmp_path)
    assert_one_error_line(proc, *needles, "available")
    assert time.monotonic() - started < 120
    assert not (vae_run.run_dir / "samples").exists()


def test_forecasts_that_cannot_fit_are_refused_up_front(sines_run, tmp_path):
    proc = run_seqvae(["sample", f"run_dir={sines_run}", "num_forecasts=100000000"], cwd=tmp_path)
    assert_one_error_line(proc, "num_forecasts=100000000 needs about", "forecasts", "use num_forecasts<=")
    assert not (sines_run / "samples").exists()


def test_max_len_is_bounded(tmp_path):
    proc = run_seqvae(["sample", "run_dir=nowhere", "max_len=1000000"], cwd=tmp_path)
    assert_one_error_line(proc, "max_len=1000000", "<= 1000")


def test_a_long_decode_shows_progress(capsys, monkeypatch):
    from seqvae_cli.models import decoding
    from seqvae_cli.models.sentence_vae import LSTMVAE
    torch.manual_seed(0)
    model = LSTMVAE(12, embed_dim=6, hidden_size=7, latent_dim=3).eval()
    monkeypatch.setattr(decoding, "PROGRESS_AFTER_S", 0.0)
    decoding.decode(model, torch.zeros(2, 3), strategy="beam", max_len=30, progress="prior sentences, beam_5")
    assert "prior sentences, beam_5" in capsys.readouterr().err


def test_the_iw_pass_folds_its_chunks_so_memory_stays_bounded(monkeypatch):
    """k samples in chunks of one: without folding, one pending result per chunk (1e8 samples made 760k)."""
    from seqvae_cli.evaluation import evaluate
    from seqvae_cli.models.sentence_vae import LSTMVAE
    torch.manual_seed(0)
    model = LSTMVAE(12, embed_dim=6, hidden_size=7, latent_dim=3).eval()
    batch = {"x": torch.tensor([[5, 6, 7, 3], [8, 3, 0, 0]]), "lengths": torch.tensor([4, 2])}
    stacked = []
    real_stack = torch.stack
    monkeypatch.setattr(evaluate.torch, "stack", lambda ts, *a, **k: stacked.append(len(ts)) or real_stack(ts, *a, **k))
    monkeypatch.setattr(evaluate, "MAX_PENDING_CHUNKS", 4)
    torch.manual_seed(1)
    folded = evaluate.iw_log_likelihood(model, batch, 40, rows_per_chunk=2)
    assert max(stacked) <= 4
    monkeypatch.setattr(evaluate, "MAX_PENDING_CHUNKS", 10_000)
    torch.manual_seed(1)
    whole = evaluate.iw_log_likelihood(model, batch, 40, rows_per_chunk=2)
    assert torch.allclose(folded, whole, atol=1e-5)
