"""Layer 6: a two-job multirun, `seqvae report` over it, and a 2-d latent run's pictures."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import SAMPLE_FILES, check_pictures, describe, run_seqvae


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mnist_data_dir):
    work = tmp_path_factory.mktemp("sweep")
    sweep_dir = work / "sweep"
    # Through the joblib launcher (the `sweep` extra), two jobs at once, as the README shows it.
    proc = run_seqvae(["train", "-m", "debug=smoke", "model.latent_dim=2,4", "trainer.progress_bar=false",
                       "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}"], cwd=work)
    assert proc.returncode == 0, describe(proc)
    return sweep_dir


def test_sweep_writes_one_folder_per_job(sweep):
    for job, dim in (("0", 2), ("1", 4)):
        folder = sweep / job
        metrics = json.loads((folder / "metrics.json").read_text())
        assert "val" in metrics and "test" in metrics
        assert list((folder / "tb").glob("events.out.tfevents.*"))
        assert (folder / "checkpoints" / "best.pt").is_file()
        assert f"model.latent_dim={dim}" in (folder / ".hydra" / "overrides.yaml").read_text()
    assert not (sweep / "2").exists()
    assert "hydra_joblib_launcher" in (sweep / "0" / ".hydra" / "hydra.yaml").read_text()
    assert not list(sweep.parent.glob("outputs")) and not list(sweep.parent.glob("multirun"))


def test_report(sweep, tmp_path):
    proc = run_seqvae(["report", str(sweep)], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    lines = proc.stdout.splitlines()
    rows = [ln for ln in lines if "model.latent_dim=" in ln]
    assert len(rows) == 2, proc.stdout
    assert any("model.latent_dim=2" in r for r in rows) and any("model.latent_dim=4" in r for r in rows)
    assert all("debug=smoke" in r for r in rows)
    with open(sweep / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2
    assert "val/neg_elbo" in table[0]
    values = [float(r["val/neg_elbo"]) for r in table]
    assert values == sorted(values), "report.csv must be sorted by the optimised metric, best first"
    expected = sorted(json.loads((sweep / j / "metrics.json").read_text())["optimized_value"] for j in ("0", "1"))
    assert values == pytest.approx(expected)
    # the printed table is in the same order as the CSV
    printed = [("model.latent_dim=2" in r, "model.latent_dim=4" in r) for r in rows]
    in_csv = [("model.latent_dim=2" in r["overrides"], "model.latent_dim=4" in r["overrides"]) for r in table]
    assert printed == in_csv


def test_report_errors_go_to_stderr(tmp_path):
    folder = tmp_path            # a folder without any job's metrics.json
    proc = run_seqvae(["report", str(folder)], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("seqvae: error:") and str(folder) in proc.stderr, describe(proc)


def write_job(sweep: Path, name: str, overrides: list[str], metric: str | None = None, value: float = 0.0,
              mode: str = "min") -> None:
    """A job folder as `seqvae train -m` leaves it: .hydra/overrides.yaml, and metrics.json once it finished."""
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metric is not None:
        (sweep / name / "metrics.json").write_text(json.dumps({
            "optimized_metric": metric, "optimized_mode": mode, "optimized_value": value, "best_epoch": 3,
            "test": {"neg_elbo": value + 1.0, "num_examples": 10}}))


def test_report_lists_unfinished_jobs_last_and_ranks_mixed_metrics_within_each(tmp_path, capsys):
    from seqvae_cli.cli.report import NO_METRICS, main as report_main
    sweep = tmp_path / "sweep"
    write_job(sweep, "0", ["model=mlp_vae", "model.latent_dim=2"], "val/neg_elbo", 101.0)
    write_job(sweep, "1", ["model=ae", "model.latent_dim=2"], "val/rec", 60.0)
    write_job(sweep, "2", ["model=mlp_vae", "model.latent_dim=10"])                  # failed: no metrics.json
    write_job(sweep, "10", ["model=mlp_vae", "model.latent_dim=20"], "val/neg_elbo", 95.0)
    write_job(sweep, "11", ["model=ae", "model.latent_dim=20"], "val/rec", 55.0)
    assert report_main([str(sweep)]) == 0
    out, err = capsys.readouterr()
    with open(sweep / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    # val/neg_elbo's jobs first (it appears first), best first, then val/rec's, then the job that never finished
    assert [r["job"] for r in table] == ["10", "0", "11", "1", "2"]
    assert table[-1]["status"] == NO_METRICS and table[-1]["overrides"] == "model=mlp_vae model.latent_dim=10"
    assert table[0]["val/neg_elbo"] == "95.0" and table[2]["val/rec"] == "55.0" and table[2]["val/neg_elbo"] == ""
    assert "1 of 5 jobs" in err and "val/neg_elbo, val/rec" in err and "cannot be compared" in err
    assert "2" in [line.split()[0] for line in out.splitlines()[1:] if line.strip()]   # the failed job is printed


def test_sample_of_a_2d_latent_draws_the_manifold(sweep, tmp_path):
    run = sweep / "0"            # model.latent_dim=2
    proc = run_seqvae(["sample", f"run_dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    check_pictures(run / "samples", SAMPLE_FILES + ("manifold.png",))


@pytest.mark.slow
def test_optuna_search_runs(mnist_data_dir, tmp_path):
    """hparams_search=mnist_optuna, cut to 2 trials of the smoke run: 2 jobs, the study's best, a report."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "optuna"
    proc = run_seqvae(["train", "-m", "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=2", "debug=smoke",
                       "trainer.progress_bar=false", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    jobs = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
    assert jobs == ["0", "1"]
    best = (sweep_dir / "optimization_results.yaml").read_text()
    assert "best_value" in best and "model.latent_dim" in best
    proc = run_seqvae(["report", str(sweep_dir)], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert len([ln for ln in proc.stdout.splitlines() if "optim.lr=" in ln]) == 2


def test_optuna_direction_must_match_the_metric(mnist_data_dir, tmp_path):
    """Maximising AUROC-like metrics with a minimising study is refused in each job, before any training;
    the failed job scores +inf, the worst value of the minimising study."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "optuna"
    proc = run_seqvae(["train", "-m", "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=1", "debug=smoke",
                       "optimized_metric=val/active_units", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    output = proc.stdout + proc.stderr
    assert ("config error: hydra.sweeper.direction=minimize but optimized_metric=val/active_units is better "
            "higher; set hydra.sweeper.direction=maximize") in output, describe(proc)
    assert "Best value: inf" in output, describe(proc)
    assert not list(sweep_dir.glob("*/checkpoints"))
