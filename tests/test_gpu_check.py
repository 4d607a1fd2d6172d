"""benchmarks/gpu_check.py end to end with --quick: on CUDA when there is a GPU, and (slow) on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PARTS = ("mnist", "mnist_bf16", "iwae", "ptb", "ptb_bf16", "ecg", "ddp")


def run_check(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "gpu_check.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the check trains seqvae on CUDA")
def test_gpu_check_quick_on_cuda(tmp_path):
    result, stdout = run_check(tmp_path)
    failed = [f"{r['work']}: {r['status']}" for r in result["rows"]
              if not r["status"].startswith(("ok", "PASS", "skipped: 1 GPU"))]
    assert not failed, "\n".join(failed) + "\n" + stdout[-3000:]


@pytest.mark.slow
def test_gpu_check_quick_on_cpu(tmp_path):
    result, stdout = run_check(tmp_path, "--device", "cpu")
    assert {r["part"] for r in result["rows"]} == set(PARTS)
    assert result["markdown"] in stdout and (tmp_path / "gpu_check.md").is_file()
    # the parts that need no feature beyond plain training/eval/sample ran end to end
    for row in result["rows"]:
        if row["part"] in ("mnist_bf16", "iwae", "ptb", "ptb_bf16", "ecg"):
            assert row["status"].startswith("ok"), f"{row['work']}: {row['status']}"
