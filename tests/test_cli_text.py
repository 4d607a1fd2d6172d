"""Layer 5 for text: the installed `seqvae` command on the real Penn Treebank (and tiny generated corpora),
in subprocesses run from temporary folders, as test_cli_mnist.py does for MNIST.

Every run is tiny (debug=smoke: 2 epochs x 5 batches, 2 validation/test batches of 32 sentences, one torch
thread). One PTB sentence-VAE run and one language-model run are shared by the module; tests that write into
a run work on a copy of it (conftest.clone_run).
"""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.util import tensor_util

from conftest import (DATA_DIR, SMOKE_ARGS, Run, assert_one_error_line, clone_run, describe, real_data,
                      run_seqvae, seqvae_env, train)
from test_resume import kill_then_resume, load_state

SPECIALS = ["<pad>", "<unk>", "<sos>", "<eos>"]
PTB_VOCAB = 10002

# Tiny on a loaded 2-core machine: one torch thread, evaluation batches of 32 sentences.
TEXT_ARGS = [*SMOKE_ARGS, "device.num_threads=1", "data.eval_batch_size=32"]
VAE_ARGS = ["model=lstm_vae", "data=ptb", *TEXT_ARGS]
LM_ARGS = ["model=lstm_lm", "data=ptb", *TEXT_ARGS]
ONE_THREAD = "device.num_threads=1"

GIVEN = ["the company said it expects higher earnings", "zzzunknownword is here"]


def sentences_override(sentences) -> str:
    """sample.yaml's `sentences` list as one Hydra override (each item quoted: it may hold spaces or be blank)."""
    return "sentences=[" + ",".join(f"'{s}'" for s in sentences) + "]"


@pytest.fixture(scope="session")
def ptb_data_dir():
    """The absolute data root holding ptb/ptb.{train,valid,test}.txt; tests on real PTB need it."""
    from seqvae_cli.data.text import find_or_download_ptb
    return real_data(lambda: find_or_download_ptb(DATA_DIR / "ptb", download=True), "Penn Treebank")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, ptb_data_dir) -> Run:
    """`seqvae train model=lstm_vae data=ptb debug=smoke` once per module; tests must not modify it."""
    return train(tmp_path_factory.mktemp("ptb_vae"), VAE_ARGS, env=seqvae_env(warnings=True))


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, ptb_data_dir) -> Run:
    """The language model trains with trainer.precision=bf16-mixed: that path end to end, at no extra cost."""
    return train(tmp_path_factory.mktemp("ptb_lm"), [*LM_ARGS, "trainer.precision=bf16-mixed"])


def ppl_of(nats_per_sentence: float, metrics: dict) -> float:
    return math.exp(nats_per_sentence * metrics["num_examples"] / metrics["num_tokens"])


# ------------------------------------------------------------------------------- (a) training a VAE

def test_text_vae_metrics_json(vae_run):
    metrics = json.loads((vae_run.run_dir / "metrics.json").read_text())
    assert metrics["optimized_metric"] == "val/neg_elbo"
    assert metrics["epochs"] == 2 and metrics["steps"] == 10            # debug=smoke: 2 epochs x 5 batches
    assert metrics["optimized_value"] == metrics["val"]["neg_elbo"]
    # Validation leaves out the mutual information (trainer.validate: with_mutual_info=False); the test pass has it.
    for split, keys in (("val", ("neg_elbo", "rec", "kl", "ppl_elbo", "num_tokens", "active_units")),
                        ("test", ("neg_elbo", "rec", "kl", "ppl_elbo", "num_tokens", "active_units",
                                  "mutual_info", "iw_nll", "ppl"))):
        m = metrics[split]
        for key in keys:
            assert key in m, f"{split}/{key}"
        assert 0 < m["num_examples"] <= 64                               # 2 batches of data.eval_batch_size=32
        assert m["num_tokens"] > 2 * m["num_examples"]                   # words plus one <eos> per sentence
        assert m["neg_elbo"] == pytest.approx(m["rec"] + m["kl"])
        assert m["ppl_elbo"] == pytest.approx(ppl_of(m["neg_elbo"], m), rel=1e-6)
        assert 1 < m["ppl_elbo"] < 2 * PTB_VOCAB                          # about uniform after 10 steps
        assert 0 <= m["active_units"] <= 32
    test = metrics["test"]
    assert test["iw_samples"] == 5                                       # debug=smoke: test_iw_samples=5
    assert test["ppl"] == pytest.approx(ppl_of(test["iw_nll"], test), rel=1e-6)
    assert 0 < test["iw_nll"] <= test["neg_elbo"] + 1.0
    assert math.isfinite(test["mutual_info"])


def test_text_vae_run_folder_and_no_own_warnings(vae_run):
    run = vae_run.run_dir
    for rel in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.json", "train.log", ".hydra/config.yaml"):
        assert (run / rel).is_file() and (run / rel).stat().st_size > 0, rel
    assert not list(run.rglob("*.tmp"))
    log = (run / "train.log").read_text()
    assert "vocabulary 10002" in log and "sentences train 42068, val 3370, test 3761" in log
    own = [ln for ln in vae_run.proc.stderr.splitlines() if "seqvae_cli" in ln and "Warning" in ln]
    assert not own, "\n".join(own)


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_checkpoints_carry_the_vocabulary(vae_run, name):
    state = load_state(vae_run.run_dir / "checkpoints" / name)       # weights_only=True
    data = state["data_state"]
    itos = data["itos"]
    assert len(itos) == PTB_VOCAB and itos[:4] == SPECIALS
    assert itos[4] == "the" and len(set(itos)) == PTB_VOCAB          # PTB's most frequent word; no duplicates
    assert data["tokenizer"] == "whitespace" and data["lowercase"] is False
    assert data["files"]["train"].endswith("ptb/ptb.train.txt")
    assert state["model"]["io.embedding.weight"].shape == (PTB_VOCAB, 256)
    assert state["model"]["io.out.weight"].shape == (PTB_VOCAB, 256)


# ----------------------------------------------------------------------------- TensorBoard text

def text_events(run_dir):
    acc = ea.EventAccumulator(str(run_dir / "tb"),
                              size_guidance={k: 0 for k in (ea.SCALARS, ea.IMAGES, ea.HISTOGRAMS, ea.TENSORS,
                                                            ea.COMPRESSED_HISTOGRAMS, ea.AUDIO)})
    acc.Reload()
    return acc


def text_tag(acc, name: str) -> str | None:
    """The tensor tag TensorBoard's text plugin keeps for add_text(name) (torch appends /text_summary)."""
    try:
        in_plugin = set(acc.PluginTagToContent("text"))
    except KeyError:                                         # no text summary at all
        in_plugin = set()
    for tag in (name, f"{name}/text_summary"):
        if tag in in_plugin and tag in acc.Tags()["tensors"]:
            return tag
    return None


def texts(acc, name: str) -> list[tuple[int, str]]:
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode("utf-8"))
            for e in acc.Tensors(text_tag(acc, name))]


@pytest.fixture(scope="module")
def vae_events(vae_run):
    return text_events(vae_run.run_dir)


def test_tensorboard_text_during_training(vae_events):
    for name in ("text/prior_samples", "text/reconstructions"):
        assert text_tag(vae_events, name), f"no text summary {name}: {vae_events.Tags()['tensors']}"
    prior = texts(vae_events, "text/prior_samples")
    assert [step for step, _ in prior] == [5, 10]                     # one per validation (end of each epoch)
    for _, text in prior:
        assert len(text.splitlines()) == 5 and all(ln.strip() for ln in text.splitlines())
    recon = texts(vae_events, "text/reconstructions")
    assert [step for step, _ in recon] == [5, 10]
    assert recon[-1][1].count("in : ") == 5 and recon[-1][1].count("out: ") == 5
    assert {"val/neg_elbo", "val/ppl_elbo", "train/kl_weight"} <= set(vae_events.Tags()["scalars"])


def test_tensorboard_text_is_shown_literally(vae_events):
    for name in ("text/prior_samples", "text/reconstructions"):
        for _, text in texts(vae_events, name):
            assert all(ln.startswith("    ") for ln in text.splitlines()), text


# -------------------------------------------------------------------------------------------- (b) eval

def test_eval_iw_nll_and_perplexity(vae_run, tmp_path):
    run = clone_run(vae_run.run_dir, tmp_path / "run")
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=3", "limit_examples=64", "batch_size=32", ONE_THREAD],
                      cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    for key in ("iw_nll", "ppl", "ppl_elbo", "neg_elbo", "num_tokens"):
        assert re.search(rf"^{key}\s+[0-9.]+", proc.stdout, re.M), f"{key} missing from the table:\n{proc.stdout}"
    test = json.loads((run / "eval.json").read_text())["test"]
    for key in ("iw_nll", "ppl", "ppl_elbo", "neg_elbo", "rec", "kl", "num_tokens", "active_units", "mutual_info"):
        assert key in test, key
    assert test["num_examples"] == 64 and test["iw_samples"] == 3
    assert 0 < test["iw_nll"] <= test["neg_elbo"] + 1.0
    assert test["ppl"] == pytest.approx(ppl_of(test["iw_nll"], test), rel=1e-6)
    assert test["ppl_elbo"] == pytest.approx(ppl_of(test["neg_elbo"], test), rel=1e-6)
    assert test["checkpoint_epoch"] == json.loads((run / "metrics.json").read_text())["best_epoch"]
    assert test["iw_precision"] == "32"


def test_eval_limit_examples_is_a_number_of_examples(vae_run, tmp_path):
    """Also the bfloat16 IW pass: eval.json says how its IW-NLL was computed."""
    run = clone_run(vae_run.run_dir, tmp_path / "run")
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=1", "limit_examples=64", "batch_size=100",
                       "iw_precision=bf16-mixed", ONE_THREAD], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    test = json.loads((run / "eval.json").read_text())["test"]
    assert test["num_examples"] == 64 and test["iw_precision"] == "bf16-mixed"


# ------------------------------------------------------------------------------------------ (c) sample

@pytest.fixture(scope="module")
def sampled(vae_run, tmp_path_factory) -> Run:
    work = tmp_path_factory.mktemp("sample")
    run = clone_run(vae_run.run_dir, work / "run")
    proc = run_seqvae(["sample", f"run_dir={run}", sentences_override(GIVEN), "num_samples=3", ONE_THREAD], cwd=work)
    assert proc.returncode == 0, describe(proc)
    return Run(run, proc)


def test_sample_writes_every_text_file(sampled):
    folder = sampled.run_dir / "samples"
    expected = ["prior_greedy.txt", "prior_beam_5.txt", "prior_temperature_*.txt", "prior_top_k_*.txt",
                "prior_top_p_*.txt", "reconstructions.txt", "homotopy.txt"]
    for pattern in expected:
        found = list(folder.glob(pattern))
        assert len(found) == 1, f"{pattern}: {sorted(p.name for p in folder.iterdir())}"
        assert found[0].stat().st_size > 0 and found[0].read_text().strip(), pattern
        assert f"written: {found[0]}" in sampled.proc.stdout
    for path in folder.glob("prior_*.txt"):                 # num_samples=3: three sentences per strategy
        assert len(path.read_text().splitlines()) == 3, path.name


def test_sample_reconstructions_show_unknown_words(sampled):
    folder = sampled.run_dir / "samples"
    blocks = [b for b in (folder / "reconstructions.txt").read_text().split("\n\n") if b.strip()]
    assert len(blocks) == 2
    # Each block: "input : ...", "read  : ..." (what the model read), "greedy: ...", "beam  : ...".
    fields = [dict(re.match(r"^(\w+)\s*: ?(.*)$", ln).groups() for ln in b.splitlines()) for b in blocks]
    assert [f["input"] for f in fields] == GIVEN
    assert fields[0]["read"] == GIVEN[0]                    # every word is in the PTB vocabulary
    assert fields[1]["read"] == "<unk> is here"
    assert all(set(f) == {"input", "read", "greedy", "beam"} for f in fields)
    homotopy = (folder / "homotopy.txt").read_text().splitlines()
    assert homotopy[0] == f"from: {GIVEN[0]}" and homotopy[-1] == f"to  : {GIVEN[1]}"
    assert len(homotopy) == 10 + 2                          # sample.interpolation_steps=10 decoded points
    tags = text_events(sampled.run_dir).Tags()["tensors"]
    assert any(t.startswith("sample/reconstructions") for t in tags) and any(t.startswith("sample/homotopy")
                                                                             for t in tags)


@pytest.fixture(scope="module")
def blank_sentence_on_a_fresh_run(vae_run, tmp_path_factory) -> Run:
    work = tmp_path_factory.mktemp("blank")
    run = clone_run(vae_run.run_dir, work / "run")          # no samples/ folder
    proc = run_seqvae(["sample", f"run_dir={run}", sentences_override([GIVEN[0], "   "]), "num_samples=3",
                       ONE_THREAD], cwd=work)
    return Run(run, proc)


def test_sample_rejects_a_sentence_without_tokens(blank_sentence_on_a_fresh_run):
    run, proc = blank_sentence_on_a_fresh_run.run_dir, blank_sentence_on_a_fresh_run.proc
    assert_one_error_line(proc, "'   '", "no tokens")
    written = [p.name for p in (run / "samples").iterdir()] if (run / "samples").exists() else []
    assert written == [], f"files written before the error: {written}"


def test_sample_with_a_bad_sentence_creates_no_folder(blank_sentence_on_a_fresh_run):
    run, proc = blank_sentence_on_a_fresh_run.run_dir, blank_sentence_on_a_fresh_run.proc
    assert proc.returncode == 2
    assert not (run / "samples").exists()


def test_sample_takes_one_plain_sentence_a_bom_file_and_a_length_penalty(vae_run, tmp_path):
    """sentences=<one sentence> is that sentence (not its characters); a sentences_file saved by Windows tools
    (UTF-8 with a byte-order mark) reads the same as without it."""
    run = clone_run(vae_run.run_dir, tmp_path / "run")
    sentence_file = tmp_path / "given.txt"
    sentence_file.write_bytes("\ufeff".encode("utf-8") + f"{GIVEN[1]}\n".encode("utf-8"))
    proc = run_seqvae(["sample", f"run_dir={run}", f"sentences='{GIVEN[0]}'", f"sentences_file={sentence_file}",
                       "num_samples=2", "length_penalty=1.0", ONE_THREAD], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    blocks = [b for b in (run / "samples" / "reconstructions.txt").read_text().split("\n\n") if b.strip()]
    inputs = [b.splitlines()[0].split(":", 1)[1].strip() for b in blocks]
    assert inputs == GIVEN
    assert "read  : <unk> is here" in (run / "samples" / "reconstructions.txt").read_text().splitlines()


def test_sample_with_a_non_utf8_sentences_file_is_one_error_line(vae_run, tmp_path):
    run = clone_run(vae_run.run_dir, tmp_path / "run")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("the caf\u00e9 closed\n".encode("latin-1"))
    proc = run_seqvae(["sample", f"run_dir={run}", f"sentences_file={latin1}", ONE_THREAD], cwd=tmp_path)
    assert_one_error_line(proc, str(latin1), "not UTF-8", "iconv")
    assert not (run / "samples").exists()


# ------------------------------------------------------------------------------ (d) the language model

def test_language_model_train_and_eval(lm_run, tmp_path):
    metrics = json.loads((lm_run.run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        assert {"nll", "ppl", "num_tokens"} <= set(m) and not {"kl", "iw_nll", "active_units"} & set(m)
        assert m["ppl"] == pytest.approx(ppl_of(m["nll"], m), rel=1e-6)
    state = load_state(lm_run.run_dir / "checkpoints" / "best.pt")
    assert len(state["data_state"]["itos"]) == PTB_VOCAB
    assert state["config"]["trainer"]["precision"] == "bf16-mixed"
    assert all(w.dtype == torch.float32 for w in state["model"].values() if w.is_floating_point())
    acc = text_events(lm_run.run_dir)
    assert text_tag(acc, "text/prior_samples") and not text_tag(acc, "text/reconstructions")

    run = clone_run(lm_run.run_dir, tmp_path / "run")
    proc = run_seqvae(["eval", f"run_dir={run}", "limit_examples=64", "batch_size=32", ONE_THREAD], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    test = json.loads((run / "eval.json").read_text())["test"]
    assert test["num_examples"] == 64 and test["nll"] > 0 and test["nll"] == test["neg_elbo"]
    assert test["ppl"] == pytest.approx(ppl_of(test["nll"], test), rel=1e-6)
    assert "iw_nll" not in test and "kl" not in test


# ------------------------------------------------------------------------------- (e) a two-job sweep

@pytest.fixture(scope="module")
def text_sweep(tmp_path_factory, ptb_data_dir):
    work = tmp_path_factory.mktemp("text_sweep")
    sweep_dir = work / "sweep"
    proc = run_seqvae(["train", "-m", *VAE_ARGS, "objective.kl_anneal.schedule=linear,cyclical",
                       f"hydra.sweep.dir={sweep_dir}"], cwd=work)
    assert proc.returncode == 0, describe(proc)
    return sweep_dir


def test_text_sweep_and_report(text_sweep, tmp_path):
    for job, schedule in (("0", "linear"), ("1", "cyclical")):
        folder = text_sweep / job
        metrics = json.loads((folder / "metrics.json").read_text())
        assert {"ppl_elbo", "neg_elbo"} <= set(metrics["val"]) and "iw_nll" in metrics["test"]
        assert f"objective.kl_anneal.schedule={schedule}" in (folder / ".hydra" / "overrides.yaml").read_text()
        assert load_state(folder / "checkpoints" / "best.pt")["config"]["objective"]["kl_anneal"]["schedule"] \
            == schedule
    assert not (text_sweep / "2").exists()
    proc = run_seqvae(["report", str(text_sweep)], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    rows = [ln for ln in proc.stdout.splitlines() if "objective.kl_anneal.schedule=" in ln]
    assert len(rows) == 2, proc.stdout
    assert any("schedule=linear" in r for r in rows) and any("schedule=cyclical" in r for r in rows)
    assert all("data=ptb" in r and "model=lstm_vae" in r for r in rows)
    assert re.search(r"^job\s.*val/neg_elbo.*test/ppl_elbo", proc.stdout, re.M), proc.stdout


# ------------------------------------------------------------------------------------------ (f) resume

# weight_drop: its DropConnect masks come from the RNG state a resume must restore.
RESUME_ARGS = [*VAE_ARGS, "trainer.max_epochs=3", "model.weight_drop=0.2"]


@pytest.fixture(scope="module")
def text_resume_pair(tmp_path_factory, ptb_data_dir):
    """As test_resume.resume_pair, for the PTB sentence VAE: uninterrupted, and killed at its first checkpoint
    then resumed with trainer.resume=true."""
    work = tmp_path_factory.mktemp("text_resume")
    full = train(work, RESUME_ARGS, "full").run_dir
    killed, _, proc = kill_then_resume(work, RESUME_ARGS)
    return full, killed, proc


@pytest.mark.slow
def test_resumed_text_run_equals_the_uninterrupted_run(text_resume_pair):
    full, killed, proc = text_resume_pair
    assert "resuming from" in proc.stdout + proc.stderr
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["epochs"] == b["epochs"] == 3 and a["steps"] == b["steps"] == 15
    assert a["best_epoch"] == b["best_epoch"] and a["optimized_value"] == b["optimized_value"]
    assert a["val"] == b["val"]          # exactly equal, not approximately
    assert a["test"] == b["test"]
    assert {"ppl_elbo", "iw_nll", "ppl", "mutual_info"} <= set(a["test"])
    wa, wb = load_state(full / "checkpoints" / "last.pt"), load_state(killed / "checkpoints" / "last.pt")
    assert wa["data_state"] == wb["data_state"]
    for key in wa["model"]:
        assert torch.equal(wa["model"][key], wb["model"][key]), key


# ------------------------------------------------------------------------------------- (g) bad input

WORDS = ("cat dog bird fish lion bear wolf deer frog duck goat hawk mole newt owl puma seal toad yak zebra "
         "runs eats sees likes finds").split()


def corpus(seed: int, n: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        lines.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g)))
    return lines


def write_corpus(folder, train_lines, other_lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n".join(train_lines) + "\n")
    (folder / "valid.txt").write_text("\n".join(other_lines[:40]) + "\n")
    (folder / "test.txt").write_text("\n".join(other_lines[40:80]) + "\n")
    return folder


TEXT_FILES = ["data.train_file=corpus/train.txt", "data.val_file=corpus/valid.txt", "data.test_file=corpus/test.txt"]


def test_empty_training_file_is_one_clear_error(tmp_path):
    write_corpus(tmp_path / "corpus", corpus(0, 80), corpus(1, 80))
    (tmp_path / "corpus" / "empty.txt").write_text("")
    proc = run_seqvae(["train", "model=lstm_vae", "data=text", *TEXT_ARGS, "data.train_file=corpus/empty.txt",
                       "data.val_file=corpus/valid.txt", "data.test_file=corpus/test.txt", "run_dir=run"],
                      cwd=tmp_path)
    assert_one_error_line(proc, str(tmp_path / "corpus" / "empty.txt"), "no sentences")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    """Two tiny data=text runs on generated files: one with files relative to the cwd (text.yaml's default),
    one with data.relative_to=data_dir under paths.data_dir=A."""
    work = tmp_path_factory.mktemp("text_data")
    train_lines = corpus(0, 80)
    write_corpus(work / "corpus", train_lines, corpus(1, 80))
    cwd_run = train(work, ["model=lstm_vae", "data=text", *TEXT_ARGS, *TEXT_FILES], "cwd_run").run_dir
    write_corpus(work / "A" / "corpus", train_lines, corpus(1, 80))
    dir_run = train(work, ["model=lstm_vae", "data=text", *TEXT_ARGS, *TEXT_FILES, "data.relative_to=data_dir",
                           f"paths.data_dir={work / 'A'}"], "dir_run").run_dir
    # The same relative paths elsewhere, with a training file whose words differ (its first sentence is new).
    for folder in (work / "other_cwd" / "corpus", work / "B" / "corpus"):
        write_corpus(folder, ["aardvark walrus okapi"] + train_lines, corpus(1, 80))
    return work, cwd_run, dir_run


def eval_args(run):
    return ["eval", f"run_dir={run}", "iw_samples=2", "batch_size=32", ONE_THREAD]


def test_text_run_evaluates_with_its_own_files(text_runs, tmp_path):
    work, cwd_run, dir_run = text_runs
    state = load_state(cwd_run / "checkpoints" / "best.pt")["data_state"]
    assert state["tokenizer"] == "simple" and state["lowercase"] is True          # conf/data/text.yaml
    assert state["itos"][:4] == SPECIALS and set(state["itos"][4:]) == set(WORDS)
    # relative_to=cwd, evaluated from a folder without corpus/: the checkpoint's remembered files are used.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_seqvae(eval_args(cwd_run), cwd=elsewhere)
    assert proc.returncode == 0, describe(proc)
    # relative_to=data_dir, evaluated under the same data_dir.
    proc = run_seqvae([*eval_args(dir_run), f"paths.data_dir={work / 'A'}"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert json.loads((dir_run / "eval.json").read_text())["test"]["num_examples"] == 40


def test_vocabulary_mismatch_after_moving_data_dir(text_runs):
    work, _, dir_run = text_runs
    proc = run_seqvae([*eval_args(dir_run), f"paths.data_dir={work / 'B'}"], cwd=work)
    assert_one_error_line(proc, "vocabulary does not match", str(work / "B" / "corpus" / "train.txt"))


def test_vocabulary_mismatch_from_another_cwd(text_runs):
    work, cwd_run, _ = text_runs
    proc = run_seqvae(eval_args(cwd_run), cwd=work / "other_cwd")
    assert_one_error_line(proc, "vocabulary does not match", str(work / "other_cwd" / "corpus" / "train.txt"))

