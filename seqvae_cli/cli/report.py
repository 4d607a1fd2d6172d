"""`seqvae report MULTIRUN_DIR`: one row per job (its overrides and final metrics), best first."""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import yaml

from seqvae_cli.config.runtime import metric_mode
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.files import read_json, write_text_atomic

NO_METRICS = "no metrics.json: failed or still running"
BROKEN = "broken: metrics.json unreadable"


def _job_key(job: Path) -> tuple:
    return (0, int(job.name), "") if job.name.isdigit() else (1, 0, job.name)   # 2 before 10


def collect(sweep_dir: Path) -> list[dict]:
    """One row per job folder (one with .hydra/ or metrics.json): its overrides, optimised metric and value, best
    epoch and test metrics; a job without metrics.json (it failed, or is still running) gets a row saying so."""
    jobs = {p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")}
    jobs |= {p.parent for p in sweep_dir.glob("*/metrics.json")}
    rows = []
    for job in sorted(jobs, key=_job_key):
        row = {"job": job.name, "overrides": _overrides(job / ".hydra" / "overrides.yaml")}
        metrics_file = job / "metrics.json"
        if not metrics_file.exists():
            rows.append({**row, "status": NO_METRICS})
            continue
        try:   # a file torn by a kill (written in place by older versions) or edited by hand: listed, not fatal
            metrics = read_json(metrics_file)
            metric = metrics["optimized_metric"]
            row.update({"status": "done", metric: metrics["optimized_value"], "best_epoch": metrics["best_epoch"],
                        "_metric": metric, "_mode": metrics.get("optimized_mode") or metric_mode(metric)})
        except (SeqvaeError, KeyError, TypeError, AttributeError):
            rows.append({**row, "status": BROKEN})
            continue
        for key, value in metrics.get("test", {}).items():
            if isinstance(value, (int, float)) and key != "num_examples":
                row[f"test/{key}"] = value
        rows.append(row)
    return rows


def _overrides(path: Path) -> str:
    """The job's command-line overrides, without Hydra's own; '?' when the file is unreadable."""
    if not path.exists():
        return ""
    try:
        overrides = yaml.safe_load(path.read_text()) or []
        return " ".join(str(o) for o in overrides if not str(o).startswith("hydra"))
    except (OSError, yaml.YAMLError, TypeError):
        return "?"


def rank(rows: list[dict]) -> dict[str, str]:
    """Sort rows best first, in place, and return {optimised metric: min|max} in the order their jobs come. Jobs that
    optimised different metrics (e.g. model=ae,mlp_vae: val/rec and val/neg_elbo) cannot be compared, so they
    are ranked within each metric, groups in order of first appearance; jobs without a finite value come last."""
    modes = {r["_metric"]: r["_mode"] for r in rows if "_metric" in r}
    metrics = list(modes)

    def key(row: dict) -> tuple:
        value = row.get(row.get("_metric", ""))
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            return (True, 0, 0.0)
        return (False, metrics.index(row["_metric"]), -value if row["_mode"] == "max" else value)

    rows.sort(key=key)
    return modes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqvae report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path,
                        help="a multirun folder, e.g. multirun/mlp_vae-mnist/2026-11-21/10-00-00")
    parser.add_argument("--csv", type=Path, default=None, help="CSV path (default: SWEEP_DIR/report.csv)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"seqvae: error: {args.sweep_dir} is not a folder; pass a multirun directory "
              f"(multirun/NAME/DATE/TIME) written by `seqvae train -m ...`", file=sys.stderr)
        return 2
    rows = collect(args.sweep_dir)
    if not rows:
        print(f"seqvae: error: {args.sweep_dir} holds no job folder (expected {args.sweep_dir}/N/ with .hydra/ "
              f"and metrics.json); pass the multirun directory of a `seqvae train -m ...` sweep", file=sys.stderr)
        return 2
    modes = rank(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r if not k.startswith("_")))
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    out = args.csv or args.sweep_dir / "report.csv"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    try:
        write_text_atomic(out, table.getvalue())
    except SeqvaeError as exc:
        print(f"seqvae: error: {exc}", file=sys.stderr)
        return 2
    order = "; ".join(f"{m}, {'higher' if mode == 'max' else 'lower'} is better" for m, mode in modes.items())
    print(f"written: {out} (sorted by {order or 'nothing: no job finished'})")
    unfinished = sum(r["status"] == NO_METRICS for r in rows)
    if unfinished:
        print(f"seqvae: warning: {unfinished} of {len(rows)} jobs have {NO_METRICS} (their train.log says which)",
              file=sys.stderr)
    broken = [r["job"] for r in rows if r["status"] == BROKEN]
    if broken:
        print(f"seqvae: warning: {len(broken)} of {len(rows)} jobs have an unreadable metrics.json (jobs "
              f"{', '.join(broken)}); `seqvae train run_dir=SWEEP/JOB trainer.resume=true` writes it again",
              file=sys.stderr)
    if len(modes) > 1:
        print(f"seqvae: warning: the jobs optimised different metrics ({', '.join(modes)}), which cannot be "
              f"compared; each group is ranked on its own", file=sys.stderr)
    return 0


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
