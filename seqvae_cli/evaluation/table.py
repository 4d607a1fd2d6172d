"""The one way seqvae shows a set of metrics: `seqvae eval`'s table, also used by the trainer's test pass."""
from __future__ import annotations


def metrics_table(metrics: dict) -> str:
    """Two columns, metric and value (floats to 4 decimals), one metric a line, in the dict's order."""
    width = max(map(len, metrics), default=6)
    lines = [f"{'metric':<{width}}  value"]
    for key, value in metrics.items():
        lines.append(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return "\n".join(lines)


def markdown_table(metrics: dict) -> str:
    """The same table for TensorBoard's Text tab."""
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(["| metric | value |", "|---|---|", *rows])
