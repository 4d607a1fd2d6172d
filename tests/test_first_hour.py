"""Issue 20, "The first hour": what a new user meets first. Fast checks only (a few seconds each): the command line,
run folders, messages, defaults and the package's metadata."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest
import torch

from conftest import CONF_DIR, REPO, SEQVAE, compose_train_config, describe, run_seqvae, seqvae_env


# ------------------------------------------------------------------------------------------ the command line

def test_help_answers_without_importing_torch():
    """`seqvae --help` printed after importing torch (~2-5 s); it needs nothing of it."""
    code = ("import sys; from seqvae_cli.cli import main; sys.argv = ['seqvae', '--help']; main(); "
            "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'heavy imports'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=seqvae_env())
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.startswith("usage: seqvae VERB")


def test_help_into_a_closed_pipe_is_not_a_traceback():
    """`seqvae --help | head -0`: the reader is gone before seqvae writes. Exit 141 like any command cut off by its
    pipe, and nothing on stderr."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([SEQVAE, "--help"], stdout=write, stderr=subprocess.PIPE, text=True, env=seqvae_env())
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_shell_completion_names_the_real_command(tmp_path, monkeypatch, capsys):
    """The script Hydra installs completes `seqvae` (there is no `seqvae-train`), and its queries, which carry the
    whole line (`seqvae train mod`), complete verbs, then the verb's config."""
    proc = run_seqvae(["train", "--shell-completion", "install=bash"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.rstrip().endswith("hydra_bash_completion seqvae") and "seqvae-" not in proc.stdout

    def query(line: str) -> list[str]:
        done = run_seqvae(["-sc", "query=bash"], cwd=tmp_path, env=seqvae_env(COMP_LINE=line))
        assert done.returncode == 0, describe(done)
        return done.stdout.split()
    assert "model=lstm_vae" in query("seqvae train model=")
    from seqvae_cli.cli.command import completion_query
    monkeypatch.setenv("COMP_LINE", "seqvae tr")   # the verb itself is completed without starting Hydra
    assert completion_query(["-sc", "query=bash"]) == []
    assert capsys.readouterr().out.split() == ["train"]


# --------------------------------------------------------------------------------------------- run folders

def test_a_config_error_leaves_no_folder(tmp_path):
    """The value check runs inside the Hydra app, after Hydra made outputs/NAME/DATE/TIME: that folder goes again."""
    proc = run_seqvae(["train", "model.likelihood=poisson"], cwd=tmp_path)
    assert proc.returncode == 2, describe(proc)
    assert list(tmp_path.iterdir()) == []


def test_run_folders_are_named_by_what_they_train():
    from seqvae_cli.config.runtime import _run_dir, run_name
    assert run_name(None, "mlp_vae", "mnist") == "mlp_vae-mnist"
    assert run_name("ptb_cyclical_fb", "lstm_vae", "ptb") == "ptb_cyclical_fb"
    assert _run_dir("train", None, None, None, "lstm_vae", "ptb").startswith("outputs/lstm_vae-ptb/")
    assert _run_dir("train", None, None, "sines", "lstm_vae", "sines").startswith("outputs/sines/")
    assert _run_dir("train", "my/run", None, "sines", "lstm_vae", "sines") == "my/run"
    from seqvae_cli.config.runtime import sweep_name   # a sweep's config holds its first job's choices only
    assert sweep_name(None, "mlp_vae", "mnist", ["model=mlp_vae,ae", "model.latent_dim=2,3"]) == "mlp_vae+ae-mnist"
    assert sweep_name(None, "lstm_vae", "ptb", ["model.latent_dim=2,3", "data=ptb"]) == "lstm_vae-ptb"
    assert sweep_name("sines", "lstm_vae", "sines", ["experiment=sines,ecg5000"]) == "sines+ecg5000"


# ------------------------------------------------------------------------------------------------ downloads

def test_a_failed_download_names_its_cause_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    """torchvision's message starts with a line that ends in a colon: the cause is its last line."""
    import torchvision.datasets
    from seqvae_cli.data.mnist import find_or_download_mnist
    from seqvae_cli.errors import SeqvaeError

    class Offline:
        def __init__(self, root, train, download):
            os.makedirs(os.path.join(root, "MNIST", "raw"), exist_ok=True)   # as torchvision does before fetching
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://example/mnist/, got:\n"
                               "<urlopen error [Errno -2] Name or service not known>\n")
    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(SeqvaeError) as caught:
        find_or_download_mnist(str(tmp_path / "data"), download=True)
    assert "download failed: RuntimeError: urlopen error [Errno -2] Name or service not known)" in str(caught.value)
    assert not (tmp_path / "data").exists()


# -------------------------------------------------------------------------------------------------- defaults

def test_default_passes_are_sized_for_the_training_they_follow():
    """The test pass after training skips the IW-NLL (k decoder passes per example), `seqvae eval` uses k=100 (seconds
    to minutes), and the paper-grade k is an override; presets keep the k they were measured with."""
    plain = compose_train_config()
    assert plain.trainer.test_iw_samples == 0 and plain.data.eval_iw_samples == 100
    assert compose_train_config("model=lstm_vae", "data=ptb").data.eval_iw_samples == 100
    # pytorch/examples' VAE: 10 epochs of ~3 s, so a 26 s IW test pass would make it as slow as the textbook's loop
    assert compose_train_config("experiment=mnist_pe").trainer.test_iw_samples == 0
    assert compose_train_config("experiment=ptb_cyclical_fb").trainer.test_iw_samples == 100


def test_a_long_iw_pass_is_announced_with_its_estimate(caplog):
    from seqvae_cli.evaluation.evaluate import announce_iw_pass
    with caplog.at_level("WARNING", logger="seqvae"):
        announce_iw_pass("test", 5000, 10000, 30.0)
        assert not caplog.records                      # under a minute: nothing to say
        announce_iw_pass("test", 5000, 10000, 1530.0)
    line = caplog.records[-1].getMessage()
    assert "k=5000" in line and "10000 examples" in line and "26 min" in line and "iw_samples=" in line
    from seqvae_cli.evaluation.evaluate import announce_pass
    with caplog.at_level("WARNING", logger="seqvae"):
        announce_pass("train", 42068, 125.0)
    assert caplog.records[-1].getMessage() == "scoring the train split: 42068 examples, estimated 2 min on this machine"


def test_metrics_table_is_one_format():
    from seqvae_cli.evaluation.table import metrics_table
    assert metrics_table({"split": "test", "neg_elbo": 90.123456, "active_units": 12}).splitlines() == [
        "metric        value", "split         test", "neg_elbo      90.1235", "active_units  12"]


# -------------------------------------------------------------------------------------------------- package

def test_the_licence_is_named():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert CONF_DIR.is_dir()


# ------------------------------------------------------------------------------------------ text decoding

class WeakDecoder(torch.nn.Module):
    """A collapsed sentence VAE's decoder: whatever z, <unk> is likeliest, then the word 4, then <eos>."""
    pad_id, unk_id, sos_id, eos_id = 0, 1, 2, 3

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([0.0, 6.0, 0.0, 4.5, 5.0, 1.0, 1.0, 1.0]))

    def init_decoder_state(self, z, n):
        return (torch.zeros(1, n, 1),)

    def decoder_step(self, tokens, state, z):
        return torch.log_softmax(self.logits, -1).expand(tokens.shape[0], -1), state


def test_decoding_rules_give_sentences():
    """Issue 20: without rules, greedy repeats <unk> to max_len and beam search (length_penalty 0) returns the empty
    sentence; sample.yaml's rules (no <unk>, no immediate <eos>, no 3-gram twice) and length penalty give words."""
    from seqvae_cli.models.decoding import Rules, beam_search, greedy
    model, z = WeakDecoder(), torch.zeros(2, 1)
    plain = greedy(model, z, max_len=20)
    assert plain.lengths.tolist() == [20, 20] and (plain.tokens == model.unk_id).all()
    assert beam_search(model, z, max_len=20).lengths.tolist() == [1, 1]            # just <eos>: a blank line
    for out in (greedy(model, z, max_len=20, rules=Rules()),
                beam_search(model, z, max_len=20, length_penalty=1.0, rules=Rules())):
        row = out.tokens[0, :out.lengths[0]].tolist()
        assert row == [4, 4, 4, model.eos_id], row       # the loop stops before it repeats a 3-gram
    unk_ok = greedy(model, z, max_len=5, rules=Rules(allow_unk=True, no_repeat_ngram=0))
    assert (unk_ok.tokens == model.unk_id).all()


def test_sample_defaults_are_the_rules():
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(CONF_DIR / "sample.yaml")
    assert (cfg.allow_unk, cfg.min_len, cfg.no_repeat_ngram, cfg.length_penalty) == (False, 1, 3, 1.0)


# ------------------------------------------------------------------------------------------ eval subsets

def _text_data(tmp_path):
    from seqvae_cli.data.text import TextData
    words = [f"w{i}" for i in range(30)]
    lines = [" ".join(words[: 1 + i % 30]) for i in range(600)]          # lengths 1..30, evenly
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    dm = TextData(str(tmp_path / "train.txt"), str(tmp_path / "valid.txt"), str(tmp_path / "test.txt"),
                  relative_to="cwd", eval_batch_size=50)
    dm.setup(torch.device("cpu"))
    return dm


def test_limit_examples_is_exact_and_representative_for_every_kind(tmp_path, mnist_data_dir):
    """Issue 20: text `limit_examples=256` scored 177 sentences of the longest length bucket. Now: exactly n,
    uniformly drawn with the seed, whatever order the batches take; per-timestamp scores only for whole splits."""
    from seqvae_cli.data.mnist import MNISTData
    from seqvae_cli.data.series.sines import SinesData

    text = _text_data(tmp_path)
    full = text._cpu_lengths["test"].float()
    cut = text.subset("test", 256, seed=0)
    kept = torch.cat([b["lengths"] for b in cut.eval_batches("test")]).float()
    assert kept.numel() == 256 == cut.num_examples("test") and text.num_examples("test") == full.numel()  # a copy
    assert abs(kept.mean() - full.mean()) < 0.15 * full.mean() and kept.min() <= 3 and kept.max() >= 28
    (tmp_path / "again").mkdir()
    again = _text_data(tmp_path / "again")
    assert torch.equal(torch.cat([b["x"][:, :1] for b in again.subset("test", 256, seed=0).eval_batches("test")]),
                       torch.cat([b["x"][:, :1] for b in cut.eval_batches("test")]))    # seeded

    sines = SinesData(num_series={"train": 20, "val": 10, "test": 100}, seq_len=12, channels=1)
    sines.setup(torch.device("cpu"))
    labels = sines.splits["test"]["label"].clone()
    cut = sines.subset("test", 40, seed=1)
    assert sum(b["x"].shape[0] for b in cut.eval_batches("test")) == 40 and sines.num_examples("test") == 100
    assert int(labels.sum()) == 10 and 0 < int(cut.splits["test"]["label"].sum()) < 40   # both classes kept

    mnist = MNISTData(str(mnist_data_dir), eval_batch_size=1000)
    mnist.setup(torch.device("cpu"))
    digits = torch.cat([b["y"] for b in mnist.subset("test", 300, seed=0).eval_batches("test")])
    assert digits.numel() == 300 and digits.unique().numel() == 10


# ------------------------------------------------------------------------------------ series figures

@pytest.mark.parametrize("decoder", ["autoregressive", "repeat"])
def test_series_reconstructions_are_readable_and_explained(decoder):
    """Issue 20: reconstructions.png was 18 inches of 8 cells a row, with MSEs of 0.5-3.1 next to excellent
    forecasts and no word on why. Now two a row, and a caption with the reason."""
    from seqvae_cli.data.series.sines import SinesData
    from seqvae_cli.models.series_vae import SeriesLSTMVAE
    from seqvae_cli.visuals.series import _pyplot, reconstruction_figure
    dm = SinesData(num_series={"train": 8, "val": 16, "test": 8}, seq_len=20, channels=2)
    dm.setup(torch.device("cpu"))
    model = SeriesLSTMVAE(num_channels=2, seq_len=20, embed_dim=4, hidden_size=8, latent_dim=2,
                          series_decoder=decoder).eval()
    fig = reconstruction_figure(model, dm, "val", 16)
    width, height = fig.get_size_inches()
    assert width <= 10.5 and height > width      # two sequences a row, not eight
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "normalised units" in caption and ("drifts in phase" in caption) == (decoder == "autoregressive")
    _pyplot().close(fig)


# -------------------------------------------------------------------------------------- a checkpoint stands alone

def _trained(tmp_path, *overrides: str):
    """A few steps of training, in this process; returns the run folder."""
    from seqvae_cli.training.loop import Trainer
    run = tmp_path / "run"
    Trainer(compose_train_config("debug=smoke", "trainer.progress_bar=false", "trainer.log_visuals=false",
                                 "trainer.test=false", "device=cpu", "trainer.max_epochs=1", *overrides), run, []).fit()
    return run


def _sample_cfg(**values):
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(CONF_DIR / "sample.yaml")
    cfg.merge_with(values)
    return cfg


def test_text_sample_and_eval_need_only_the_checkpoint_and_the_split(tmp_path, caplog):
    """Issue 20: with PTB gone, sampling from your own sentences failed (and tried a download). The vocabulary is in
    the checkpoint: sample needs no file, eval only the file of the split it scores."""
    from seqvae_cli import visuals
    from seqvae_cli.training.checkpoint import load_run
    from seqvae_cli.evaluation.evaluate import evaluate
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _text_data(corpus)
    with caplog.at_level("WARNING", logger="seqvae"):
        run = _trained(tmp_path, "model=lstm_vae", "data=text", f"data.train_file={corpus}/train.txt",
                       f"data.val_file={corpus}/valid.txt", f"data.test_file={corpus}/test.txt", "model.embed_dim=8",
                       "model.hidden_size=8", "model.latent_dim=4", "data.eval_batch_size=50")
    # 10 steps leave z unused: the run's last line says so, and (the recipe's cures being on) to train longer
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the latent collapsed")]
    assert len(said) == 1 and "of 4 active units" in said[0] and "train longer" in said[0], said
    for name in ("train.txt", "valid.txt"):
        (corpus / name).unlink()
    _, dm, model, _ = load_run(str(run), "best", torch.device("cpu"), splits=("test",))
    assert evaluate(model, dm, "test", iw_samples=2).metrics["num_examples"] == 600
    (corpus / "test.txt").unlink()
    _, dm, model, _ = load_run(str(run), "best", torch.device("cpu"), splits=())
    cfg = _sample_cfg(sentences=["w0 w1 w2", "w3 w4"], num_samples=3, max_len=8, beam_width=2)
    written = visuals.sample(model, dm, cfg, tmp_path / "samples", NullWriter(), 0)
    assert {p.name for p in written} >= {"prior_greedy.txt", "reconstructions.txt", "homotopy.txt"}


def test_image_and_series_sample_without_data_draw_the_prior(tmp_path, mnist_data_dir):
    """A checkpoint on its own: prior samples (in the data's units, for series) and nothing that needs the data."""
    from seqvae_cli import visuals
    from seqvae_cli.training.checkpoint import load_run
    for kind, overrides in (("image", ["model.hidden_sizes=[16]", "model.latent_dim=2"]),
                            ("series", ["experiment=sines", "data.num_series.train=64", "data.num_series.val=16",
                                        "data.num_series.test=16", "model.hidden_size=8", "model.embed_dim=4"])):
        work = tmp_path / kind
        run = _trained(work, *overrides)
        _, dm, model, _ = load_run(str(run), "best", torch.device("cpu"), str(work / "no_data"), splits=())
        assert not dm.has_split("test")
        names = {p.name for p in visuals.sample(model, dm, _sample_cfg(num_samples=4), work / "s", NullWriter(), 0)}
        assert names == ({"prior_samples.png", "manifold.png"} if kind == "image" else {"prior_samples.png"})


class NullWriter:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_mnist_test_split_alone_is_the_same_test_split(tmp_path, mnist_data_dir):
    """`seqvae eval` (split=test) reads the two t10k files only, and binarises them exactly as a full set-up does."""
    from seqvae_cli.data.mnist import MNISTData
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to(mnist_data_dir / "MNIST" / "raw" / name)
    alone, full = MNISTData(str(tmp_path), download=False), MNISTData(str(mnist_data_dir), download=False)
    alone.setup(torch.device("cpu"), splits=("test",))
    full.setup(torch.device("cpu"))
    assert alone.has_split("test") and not alone.has_split("train")
    assert torch.equal(alone.splits["test"][0], full.splits["test"][0])


# ------------------------------------------------------------------------------------------ collapse

def test_a_collapsed_latent_is_said_with_its_remedy():
    from seqvae_cli.training.collapse import collapse_warning
    plain = compose_train_config("model=lstm_vae", "data=ptb", "recipe=none")
    line = collapse_warning({"kl": 0.0088, "active_units": 0}, plain, 32, "test")
    assert "KL 0.0088 nats, 0 of 32 active units" in line
    assert "objective.kl_anneal.schedule=cyclical objective.free_bits.per_dim=0.05" in line
    recipe = compose_train_config("model=lstm_vae", "data=ptb")
    early = collapse_warning({"kl": 1.37, "active_units": 0}, recipe, 32, "test")
    assert "train longer" in early and "objective.free_bits.per_dim=0.1" in early and "cyclical" not in early
    assert collapse_warning({"kl": 1.66, "active_units": 32}, recipe, 32, "test") is None
    assert collapse_warning({"kl": 3.0, "active_units": 2}, recipe, 2, "test") is None   # all of a 2-d latent
    assert "conf/recipe/ptb_lstm_vae.yaml" in line and "recipe" not in early.replace("recipes", "")
    mnist = collapse_warning({"kl": 0.5, "active_units": 1}, compose_train_config(), 20, "test")
    assert "recipe" not in mnist and "word_dropout" not in mnist and "cyclical" in mnist   # no such file for MNIST


def test_the_headline_commands_train_their_recipe():
    """Issue 20: `model=lstm_vae data=ptb` trained a constant KL weight without free bits, and collapsed. It trains
    the measured recipe now; recipe=none is the plain VAE; the presets compose exactly as before (they opt out)."""
    from seqvae_cli.cli.command import check_optional_groups
    from hydra.core.override_parser.overrides_parser import OverridesParser
    with pytest.raises(Exception, match="recipe=nnoe: no such option in config group 'recipe'; choose one of"):
        check_optional_groups(OverridesParser.create().parse_overrides(["recipe=nnoe"]), CONF_DIR)
    check_optional_groups(OverridesParser.create().parse_overrides(["recipe=none", "data=ptb"]), CONF_DIR)
    cfg = compose_train_config("model=lstm_vae", "data=ptb")
    assert cfg.objective.kl_anneal.schedule == "cyclical" and cfg.objective.free_bits.per_dim == 0.05
    assert cfg.model.tie_weights and cfg.model.embed_dropout == 0.4 and cfg.model.weight_drop == 0.25
    assert cfg.optim.lr_schedule == "cosine" and cfg.optim.grad_clip == 5.0
    plain = compose_train_config("model=lstm_vae", "data=ptb", "recipe=none")
    assert plain.objective.kl_anneal.schedule == "constant" and plain.objective.free_bits.per_dim == 0
    assert not plain.model.tie_weights
    fb = compose_train_config("experiment=ptb_cyclical_fb")
    assert (fb.model.embed_dropout, fb.model.weight_drop, fb.trainer.max_epochs) == (0.5, 0.0, 30)
    assert compose_train_config("experiment=ptb_bowman").objective.free_bits.per_dim == 0
    assert compose_train_config("model=lstm_vae", "data=ptb", "objective.free_bits.per_dim=0.1"
                                ).objective.free_bits.per_dim == 0.1             # the command line still wins
    for data in ("sines", "ecg5000", "nab", "csv"):
        series = compose_train_config("model=lstm_vae", f"data={data}")
        assert series.objective.kl_anneal.schedule != "constant", data


def test_sample_command_without_the_data_draws_the_prior_and_says_why(smoke_run, tmp_path):
    from conftest import clone_run
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    empty = tmp_path / "no_data"
    empty.mkdir()
    proc = run_seqvae(["sample", f"run_dir={run}", f"paths.data_dir={empty}", "num_samples=4"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert sorted(p.name for p in (run / "samples").iterdir()) == [".seqvae_sample_files", "prior_samples.png"]
    assert "drawing only what the checkpoint alone gives" in proc.stdout + proc.stderr
    assert not list(empty.iterdir())          # nothing downloaded into it


def test_the_text_models_name_their_unk_for_the_rules():
    """The rules find <unk> through the model: a model without unk_id would let it through silently."""
    from seqvae_cli.models.lstm_lm import LSTMLM
    from seqvae_cli.models.sentence_vae import LSTMVAE
    assert LSTMVAE(12, unk_id=1, embed_dim=4, hidden_size=4, latent_dim=2).unk_id == 1
    assert LSTMLM(12, unk_id=1, embed_dim=4, hidden_size=4).unk_id == 1


def test_evaluate_announces_its_estimate_before_the_bulk_of_the_pass(monkeypatch, caplog, capsys):
    """The estimate comes from the first chunk of IW samples (the test pass and `seqvae eval` pass announce=True),
    with or without a progress bar (trainer.progress_bar=false in a cluster's log must not look hung either)."""
    from seqvae_cli.data.series.sines import SinesData
    from seqvae_cli.evaluation import evaluate as ev
    from seqvae_cli.models.series_vae import SeriesLSTMVAE
    dm = SinesData(num_series={"train": 4, "val": 4, "test": 40}, seq_len=10, channels=1, eval_batch_size=10)
    dm.setup(torch.device("cpu"))
    model = SeriesLSTMVAE(num_channels=1, seq_len=10, embed_dim=4, hidden_size=4, latent_dim=2).eval()
    monkeypatch.setattr(ev, "ANNOUNCE_AFTER_S", 0.0)
    monkeypatch.setattr(ev, "IW_PROGRESS_AFTER_S", 0.0)   # the bars' delay (2 s) cut to nothing
    with caplog.at_level("WARNING", logger="seqvae"):
        ev.evaluate(model, dm, "test", iw_samples=7, rows_per_chunk=20, announce=True, seed=0)
        ev.evaluate(model, dm, "val", iw_samples=7, rows_per_chunk=20, progress=True, seed=0)   # a validation
    said = [r.getMessage() for r in caplog.records if "scoring the" in r.getMessage()]
    assert len(said) == 1 and "test split: IW-NLL with k=7 importance samples over 40 examples" in said[0], said
    bars = capsys.readouterr().err
    assert "scoring val" in bars and "scoring test" not in bars     # a bar with progress=True, an estimate or not
