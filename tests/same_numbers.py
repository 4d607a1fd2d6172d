"""Running the "same numbers" commands and reading the numbers they write: shared by tests/test_same_numbers.py
and the recorder of its fixtures, tests/fixtures/before_redesign/record.py."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from conftest import describe, run_seqvae

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "before_redesign"

# Keys holding wall-clock times (train_seconds_this_session, eval's seconds): not results.
TIME_KEYS = ("seconds",)


def numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a metrics.json/eval.json tree, flattened ({"val": {"rec": 1.5}} -> {"val/rec": 1.5}),
    except times. Strings (split names, metric names, paths) are left out."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(numbers(value, name + "/"))
        elif isinstance(value, (int, float)) and not any(t in key for t in TIME_KEYS):
            flat[name] = value
    return flat


def _same(expected: object, got: object) -> bool:
    # NaN is a legitimate recorded value (e.g. an AUROC on a one-class split) and equals only itself.
    both_nan = isinstance(expected, float) and isinstance(got, float) and math.isnan(expected) and math.isnan(got)
    return both_nan or expected == got


def differences(expected: dict, got: dict) -> list[str]:
    """'key: expected X, got Y' for every recorded entry that `got` lacks or holds another value of. New entries in
    `got` are allowed: adding a metric changes no old number."""
    return [f"  {key}: expected {value!r}, got {got.get(key, '<missing>')!r}"
            for key, value in expected.items() if not _same(value, got.get(key))]


def _seqvae(args: list[str], cwd: Path) -> None:
    proc = run_seqvae(args, cwd=cwd)
    assert proc.returncode == 0, f"seqvae {' '.join(args)}\n{describe(proc)}"


def train_numbers(work: Path, args: list[str], name: str = "run") -> dict:
    """`seqvae train ARGS run_dir=WORK/NAME`; the numbers of its metrics.json."""
    run = work / name
    _seqvae(["train", *args, f"run_dir={run}"], work)
    return numbers(json.loads((run / "metrics.json").read_text()))


def eval_numbers(run: Path, args: list[str]) -> dict:
    _seqvae(["eval", f"run_dir={run}", *args], run.parent)
    return numbers(json.loads((run / "eval.json").read_text()))


def resume_numbers(run: Path, args: list[str]) -> dict:
    _seqvae(["train", f"run_dir={run}", *args], run.parent)
    return numbers(json.loads((run / "metrics.json").read_text()))


def sample_outputs(run: Path, args: list[str]) -> dict:
    """`seqvae sample` on RUN: each file it wrote into RUN/samples -> the sha256 of a text file (decoded sentences
    are exact), the numbers of a JSON file (forecast errors), or None for a picture (its bytes depend on the PNG
    encoder and matplotlib, not only on the model)."""
    _seqvae(["sample", f"run_dir={run}", *args], run.parent)
    outputs: dict[str, object] = {}
    for path in sorted((run / "samples").iterdir()):
        assert path.stat().st_size > 0, f"{path} is empty"
        if path.suffix == ".txt":
            outputs[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.suffix == ".json":
            outputs[path.name] = numbers(json.loads(path.read_text()))
        else:
            outputs[path.name] = None
    return outputs
