"""Same command, same seed, same numbers: the proof that a redesign (modules moved, the latent Gaussian rewritten)
changes no result.

tests/fixtures/before_redesign/ was recorded on the code of commit d8c501a (CPU, one thread):
* cases.json `train`: short `seqvae train` commands and every number of the metrics.json each wrote;
* cases.json `checkpoints` and runs/: small run folders written by that code, which the installed code must still
  score (`seqvae eval`), sample from (`seqvae sample`) and continue (`trainer.resume=true`) with the same numbers.
Numbers are compared with ==, not approximately: on the CPU the same code and seed give bit-identical floats
(record.py ran every command twice and found no difference), so any difference is a change of behaviour.
The fixtures are re-recorded only on purpose, by a change that MEANS to change numbers: see record.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from same_numbers import FIXTURES, differences, eval_numbers, resume_numbers, sample_outputs, train_numbers

RECORDED = json.loads((FIXTURES / "cases.json").read_text())

# The default run (~35 s of CPU): one training per kind of data (sines: the series LSTM-VAE, autoregressive decoder
# and AUROC), the eval of every old checkpoint (the likeliest break: renamed modules no longer load), one resume and
# one text sample (the prior's sampling path). The rest is marked slow (run with -m slow).
DEFAULT_TRAIN = {"mnist_mlp_vae", "ptb_lstm_vae", "sines_lstm_vae"}
DEFAULT_CHECKPOINT = {("mnist_mlp_vae", "eval"), ("ptb_lstm_vae", "eval"), ("sines_lstm_vae", "eval"),
                      ("mnist_mlp_vae", "resume"), ("ptb_lstm_vae", "sample")}
# A default case renamed in the fixtures must not silently drop out of the default run.
assert DEFAULT_TRAIN <= set(RECORDED["train"]) and {r for r, _ in DEFAULT_CHECKPOINT} <= set(RECORDED["checkpoints"])


def assert_same(expected: dict, got: dict, what: str) -> None:
    diffs = differences(expected, got)
    # Bit-identity holds for one torch build on one kind of CPU: the message says which the recording came from.
    assert not diffs, (f"{what}: {len(diffs)} of {len(expected)} numbers differ from the recording, made with "
                       f"{RECORDED['recorded_with']} (on another torch or CPU, re-record on d8c501a first):\n"
                       + "\n".join(diffs))


def copy_run(name: str, work: Path) -> Path:
    """A writable copy of the recorded run folder NAME (eval, sample and resume write into the folder)."""
    return shutil.copytree(FIXTURES / "runs" / name, work / name)


def _params(cases, default: set) -> list:
    """pytest params for cases (names or tuples of arguments); those not in `default` are marked slow."""
    params = []
    for case in cases:
        values = case if isinstance(case, tuple) else (case,)
        params.append(pytest.param(*values, id="-".join(values), marks=() if case in default else pytest.mark.slow))
    return params


# ----------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", _params(RECORDED["train"], DEFAULT_TRAIN))
def test_train_gives_the_recorded_numbers(case: str, tmp_path: Path) -> None:
    recorded = RECORDED["train"][case]
    assert_same(recorded["metrics"], train_numbers(tmp_path, recorded["args"]), f"train case {case}")


# Decoding as it was before issue 20's rules (which ban <unk>, empty sentences and repeated 3-grams, and rank beams
# by mean log-probability): with them off, the decoders give the recorded sentences bit for bit.
DECODING_AS_RECORDED = ["allow_unk=true", "min_len=0", "no_repeat_ngram=0", "length_penalty=0"]


CHECKPOINT_ACTIONS = [(name, action) for name in RECORDED["checkpoints"] for action in ("eval", "sample", "resume")]


@pytest.mark.parametrize("run, action", _params(CHECKPOINT_ACTIONS, DEFAULT_CHECKPOINT))
def test_old_checkpoint_gives_the_recorded_numbers(run: str, action: str, tmp_path: Path) -> None:
    recorded = RECORDED["checkpoints"][run]
    folder = copy_run(run, tmp_path)
    what = f"seqvae {action} on the old run {run}"
    if action == "eval":
        assert_same(recorded["eval"], eval_numbers(folder, recorded["eval_args"]), what)
    elif action == "resume":
        assert_same(recorded["resume"], resume_numbers(folder, recorded["resume_args"]), what)
    else:
        got = sample_outputs(folder, [*recorded["sample_args"], *DECODING_AS_RECORDED])
        assert set(got) >= set(recorded["sample"]), f"{what}: files missing: {set(recorded['sample']) - set(got)}"
        for name, expected in recorded["sample"].items():
            if isinstance(expected, dict):
                assert_same(expected, got[name], f"{what}: {name}")
            else:
                assert got[name] == expected, f"{what}: {name}: expected {expected}, got {got[name]}"
