"""`seqvae report MULTIRUN_DIR`: one row per job (its overrides and final metrics), best first."""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import yaml

from .config import metric_mode


def collect(sweep_dir: Path) -> list[dict]:
    rows = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        job = metrics_file.parent
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        metrics = json.loads(metrics_file.read_text())
        row = {"job": job.name, "overrides": " ".join(o for o in overrides or [] if not o.startswith("hydra")),
               metrics["optimized_metric"]: metrics["optimized_value"], "best_epoch": metrics["best_epoch"],
               "_mode": metrics.get("optimized_mode") or metric_mode(metrics["optimized_metric"])}
        for key, value in metrics.get("test", {}).items():
            if isinstance(value, (int, float)) and key != "num_examples":
                row[f"test/{key}"] = value
        rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqvae report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder, e.g. multirun/2026-11-21/10-00-00")
    parser.add_argument("--csv", type=Path, default=None, help="CSV path (default: SWEEP_DIR/report.csv)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"seqvae: error: {args.sweep_dir} is not a folder; pass a multirun directory "
              f"(multirun/DATE/TIME) written by `seqvae train -m ...`", file=sys.stderr)
        return 2
    rows = collect(args.sweep_dir)
    if not rows:
        print(f"seqvae: error: no job in {args.sweep_dir} has a metrics.json "
              f"(expected {args.sweep_dir}/N/metrics.json); "
              f"did the sweep finish?", file=sys.stderr)
        return 2
    metric = next(k for k in rows[0] if "/" in k and not k.startswith("test/"))
    sign = -1.0 if rows[0]["_mode"] == "max" else 1.0

    def rank(row: dict) -> tuple[bool, float]:
        value = row.get(metric)
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        return (not ok, sign * value if ok else 0.0)   # failed jobs (no value, inf, nan) last

    rows.sort(key=rank)
    columns = list(dict.fromkeys(k for r in rows for k in r if not k.startswith("_")))
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    out = args.csv or args.sweep_dir / "report.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"written: {out} (sorted by {metric}, {'higher' if sign < 0 else 'lower'} is better)")
    return 0


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
