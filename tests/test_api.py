"""The Python API (seqvae_cli/api.py, docs/api.md): the documented snippets run, shapes hold, `run.evaluate` gives
the numbers `seqvae eval` writes, and `import seqvae_cli` loads no torch."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import seqvae_cli
from conftest import REPO, clone_run, describe, run_seqvae, train
from seqvae_cli.errors import SeqvaeError
from test_cli_text import TEXT_ARGS, TEXT_FILES, corpus, write_corpus

DOC = REPO / "docs" / "api.md"
# The run folders the snippets name, replaced by real runs.
IMAGE_RUN, TEXT_RUN = "outputs/mlp_vae-mnist/2026-12-04/10-00-00", "outputs/lstm_vae-ptb/2026-12-05/09-00-00"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def execute(code: str, placeholder: str, run_dir: Path) -> dict:
    assert placeholder in code, f"{DOC}: the snippet no longer names {placeholder}"
    scope: dict = {}
    exec(compile(code.replace(placeholder, str(run_dir)), str(DOC), "exec"), scope)
    return scope


@pytest.fixture(scope="module")
def mnist_run(smoke_run):
    return seqvae_cli.load(smoke_run.run_dir, device="cpu")


@pytest.fixture(scope="module")
def text_run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("api_text")
    write_corpus(work / "corpus", corpus(0, 80), corpus(1, 80))
    return train(work, ["model=lstm_vae", "data=text", *TEXT_ARGS, *TEXT_FILES]).run_dir


def test_the_documented_image_snippet_runs(smoke_run, capsys):
    scope = execute(snippets()[0], IMAGE_RUN, smoke_run.run_dir)
    d = scope["run"].model.latent_dim
    assert scope["z"].shape == (8, d) and scope["zs"].shape == (5, 8, d)
    assert scope["x"].shape == (8, 1, 28, 28) and scope["samples"].shape == (16, 1, 28, 28)
    assert scope["metrics"]["num_examples"] == 500 and scope["metrics"]["iw_samples"] == 10
    assert "MLPVAE on mnist" in capsys.readouterr().out


def test_evaluate_gives_the_numbers_of_seqvae_eval(smoke_run, mnist_run, tmp_path):
    run_dir = clone_run(smoke_run.run_dir, tmp_path / "run")       # eval writes eval.json into the run
    proc = run_seqvae(["eval", f"run_dir={run_dir}", "split=val", "iw_samples=7", "limit_examples=300",
                      "batch_size=128", "seed=3"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    cli = json.loads((run_dir / "eval.json").read_text())["val"]
    api = mnist_run.evaluate("val", iw_samples=7, limit=300, batch_size=128, seed=3)
    assert set(api) <= set(cli) and api["num_examples"] == 300
    for key, value in api.items():   # equal up to float rounding (a thread count may change a sum's order)
        assert value == (pytest.approx(cli[key], rel=1e-6) if isinstance(value, float) else cli[key]), key


def test_image_shapes_and_the_prior_of_seqvae_sample(mnist_run):
    from seqvae_cli.visuals.images import image_prior_samples
    run, d = mnist_run, mnist_run.model.latent_dim
    batch = run.batch("val", 5)
    assert batch["x"].shape == (5, 784)
    z = run.encode(batch)
    x = run.decode(z)
    assert z.shape == (5, d) and x.shape == (5, 1, 28, 28) and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert torch.equal(run.encode(x), run.encode(x.reshape(5, 784)))      # images or rows
    q = run.encode(batch, full=True)
    assert torch.equal(q.mean, z) and q.stddev.shape == (5, d) and q.log_prob(q.rsample(3)).shape == (3, 5)
    assert torch.equal(run.sample(4, seed=3), run.sample(4, seed=3))
    assert torch.allclose(run.sample(4, seed=3), image_prior_samples(run.model, run.data, 4, seed=3))


def test_mistakes_are_one_line(mnist_run, tmp_path):
    for call, needle in ((lambda: mnist_run.batch("tset"), "split='tset' is not a split"),
                         (lambda: mnist_run.encode(["a sentence"]), "sentences can only be encoded by a text model"),
                         (lambda: mnist_run.decode(torch.zeros(1, 2), top_k=5), "apply to text models only"),
                         (lambda: seqvae_cli.load(tmp_path / "nothing"), "does not exist")):
        with pytest.raises(SeqvaeError, match=needle) as info:
            call()
        assert "\n" not in str(info.value)


def test_text_encodes_sentences_and_decodes_to_sentences(text_run_dir, capsys):
    scope = execute(snippets()[1], TEXT_RUN, text_run_dir)
    run = scope["run"]
    assert scope["z"].shape == (2, run.model.latent_dim)
    printed = capsys.readouterr().out
    assert printed.count("[") == 3                                          # three lists of sentences printed
    assert len(run.sample(3, seed=1)) == 3 and all(isinstance(s, str) for s in run.sample(3, seed=1))
    batch = run.batch("test", 4)
    assert run.encode(batch).shape == (4, run.model.latent_dim)
    assert len(run.decode(run.encode("cat sees dog"), strategy="sample", temperature=0.5)) == 1
    assert all(s.strip() and "<unk>" not in s for s in run.sample(8, seed=2, strategy="beam"))   # the rules apply
    with pytest.raises(SeqvaeError, match="not a bare tensor"):
        run.encode(batch["x"])
    assert {"ppl", "iw_nll", "kl"} <= set(run.evaluate("test", iw_samples=3, limit=20))


def test_text_decodes_with_the_defaults_of_seqvae_sample():
    """Issue 20: the API decoded with the bare decoders' defaults (plain log-probability beams: blank lines) while
    `seqvae sample` used its rules. Its defaults are sample.yaml's."""
    import inspect

    from omegaconf import OmegaConf

    from seqvae_cli.api import Run
    sample_yaml = OmegaConf.load(REPO / "conf" / "sample.yaml")
    defaults = {k: p.default for k, p in inspect.signature(Run._sentences).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for key in ("length_penalty", "allow_unk", "min_len", "no_repeat_ngram", "max_len"):
        assert defaults[key] == sample_yaml[key], key


def test_import_seqvae_cli_loads_no_torch():
    code = "import sys, seqvae_cli; assert callable(seqvae_cli.load); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", "import sys, seqvae_cli; print('torch' in sys.modules)"],
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "False", describe(proc)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "True", describe(proc)     # the API itself is there, on first use
