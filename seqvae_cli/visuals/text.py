"""What text models show: sentences from the prior under each decoding strategy, reconstructions of
given sentences, and homotopies (Bowman et al. 2016) — as text files and TensorBoard text."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import ListConfig
from torch.utils.tensorboard import SummaryWriter

from seqvae_cli.config.rules import number
from seqvae_cli.data.base import read_text_file
from seqvae_cli.memory import check_fits, decoding_row_bytes
from seqvae_cli.models.base import eval_mode
from seqvae_cli.models.decoding import Rules, decode, homotopy, to_text


def rules_of(cfg) -> Rules:
    """sample.yaml's decoding rules."""
    return Rules(bool(cfg.allow_unk), int(cfg.min_len), int(cfg.no_repeat_ngram))


# The longest decode `seqvae sample` runs (tokens per sentence): PTB's longest sentence has 83 tokens, and a model
# that never emits <eos> would otherwise decode for as long as asked, minutes for max_len=1000000.
MAX_DECODE_LEN = 1000


# `seqvae sample`'s keys that only the text figures read (sample() below; the decoding keys: models/decoding.py).
# sentences_file is a path: it has no rule.
RULES = {
    "sentences": (lambda v: v is None or isinstance(v, (str, int, float)) or
                  (isinstance(v, list) and all(isinstance(s, (str, int, float)) for s in v)),
                  "a sentence or a list of sentences, e.g. 'sentences=[the market fell,prices rose]'"),
    "max_len": number(1, MAX_DECODE_LEN, integer=True),
}


def _markdown(lines: list[str]) -> str:
    # TensorBoard renders text as markdown: indent by four spaces to keep <unk>, <eos> and spacing literal.
    return "\n".join("    " + line for entry in lines for line in entry.split("\n"))


@torch.no_grad()
def prior_sentences(model, dm, n: int, seed: int, strategy: str = "greedy", max_len: int = 50, **kwargs
                    ) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    if model.latent_dim == 0:
        out = decode(model, None, n=n, strategy=strategy, max_len=max_len,
                     generator=_device_generator(dm, seed), **kwargs)
    else:
        z = model.prior.sample(n, gen, dm.device)
        out = decode(model, z, strategy=strategy, max_len=max_len, generator=_device_generator(dm, seed), **kwargs)
    return to_text(dm, out)


def _device_generator(dm, seed: int) -> torch.Generator:
    return torch.Generator(device=dm.device).manual_seed(seed)


@torch.no_grad()
def reconstructions(model, dm, sentences: list[str], strategy: str = "greedy", max_len: int = 50,
                    beam_width: int = 5, length_penalty: float = 1.0, progress: str | None = None,
                    rules: Rules | None = Rules()) -> list[str]:
    """Decode each sentence from its posterior mean."""
    batch = dm.batch_from_sentences(sentences)
    mu = model.posterior(batch).mean
    return to_text(dm, decode(model, mu, strategy=strategy, max_len=max_len, beam_width=beam_width,
                              length_penalty=length_penalty, progress=progress, rules=rules))


def _some_sentences(dm, split: str, n: int) -> list[str]:
    batch = next(iter(dm.eval_batches(split, batch_size=max(n, 1))))
    return [dm.decode_ids(row) for row in batch["x"][:n]]


def during_training(model, dm, writer: SummaryWriter, step: int) -> None:
    with eval_mode(model):
        # Without a latent, greedy decoding gives one sentence five times: sample instead.
        lines = prior_sentences(model, dm, 5, seed=1234, strategy="greedy" if model.latent_dim else "sample",
                                rules=Rules())
        writer.add_text("text/prior_samples", _markdown(lines), step)
        if model.latent_dim > 0:
            inputs = _some_sentences(dm, "val", 5)
            outputs = reconstructions(model, dm, inputs)
            writer.add_text("text/reconstructions",
                            _markdown([f"in : {a}\nout: {b}" for a, b in zip(inputs, outputs)]), step)


def given_sentences(cfg) -> list[str]:
    # sentences="the market fell" is one sentence (a plain string would otherwise iterate into characters).
    given = cfg.sentences if cfg.sentences is not None else []
    sentences = [str(s) for s in (given if isinstance(given, (list, ListConfig)) else [given])]
    if cfg.sentences_file:
        path = Path(cfg.sentences_file)
        text = read_text_file(path, f"sentences_file={path}", "sentences_file (a text file with one sentence per "
                                                               "line)", encoding="utf-8-sig")
        sentences += [line.strip() for line in text.splitlines() if line.strip()]
    return sentences


def check_decoding_fits(model, dm, cfg, inputs: int) -> None:
    """Refuse up front the sizes whose decoding tensors cannot fit: num_samples (or the sentences to reconstruct)
    decoded at once, and beam_width beams for each of them."""
    rows = max(cfg.num_samples, inputs)
    key = "num_samples" if cfg.num_samples >= inputs else ("sentences" if given_sentences(cfg) else
                                                            "num_reconstructions")
    vocab = f"the {model.vocab_size}-word vocabulary"
    check_fits(key, rows, decoding_row_bytes(model, cfg.max_len, beam=False), 0,
               f"decoding {rows} sentences at once over {vocab}", dm.device)
    check_fits("beam_width", cfg.beam_width, rows * decoding_row_bytes(model, cfg.max_len, beam=True), 0,
               f"beam search over {vocab} for {rows} sentences at once", dm.device)


def sample(model, dm, cfg, out_dir: Path, writer: SummaryWriter, step: int) -> list[Path]:
    """Everything `seqvae sample` writes for a text model; returns the files written."""
    sentences = given_sentences(cfg)
    if sentences:  # fail on a bad sentence before writing anything
        dm.batch_from_sentences(sentences)
    check_decoding_fits(model, dm, cfg, (len(sentences) or cfg.num_reconstructions) if model.latent_dim else 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    rules = rules_of(cfg)
    strategies = {
        "greedy": dict(strategy="greedy"),
        f"temperature_{cfg.temperature}": dict(strategy="sample", temperature=cfg.temperature),
        f"top_k_{cfg.top_k}": dict(strategy="sample", top_k=cfg.top_k),
        f"top_p_{cfg.top_p}": dict(strategy="sample", top_p=cfg.top_p),
        f"beam_{cfg.beam_width}": dict(strategy="beam", beam_width=cfg.beam_width,
                                       length_penalty=cfg.length_penalty),
    }
    for name, kwargs in strategies.items():
        files[f"prior_{name}"] = prior_sentences(model, dm, cfg.num_samples, cfg.seed, max_len=cfg.max_len,
                                                 progress=f"prior sentences, {name}", rules=rules, **kwargs)
    if model.latent_dim > 0 and (sentences or dm.has_split(cfg.split)):
        inputs = sentences or _some_sentences(dm, cfg.split, cfg.num_reconstructions)
        greedy_out = reconstructions(model, dm, inputs, "greedy", cfg.max_len, progress="reconstructions, greedy",
                                     rules=rules)
        beam_out = reconstructions(model, dm, inputs, "beam", cfg.max_len, cfg.beam_width, cfg.length_penalty,
                                   progress=f"reconstructions, beam_{cfg.beam_width}", rules=rules)
        known = [dm.decode_ids(dm.encode_sentence(s)) for s in inputs]  # what the model read (<unk> shown)
        files["reconstructions"] = [f"input : {s}\nread  : {k}\ngreedy: {g}\nbeam  : {b}\n"
                                    for s, k, g, b in zip(inputs, known, greedy_out, beam_out)]
        ends = inputs[:2] if len(inputs) >= 2 else _some_sentences(dm, cfg.split, 2) if dm.has_split(cfg.split) \
            else []
        if len(ends) == 2:   # one sentence of your own and no data: no second end
            mu = model.posterior(dm.batch_from_sentences(ends)).mean
            path = homotopy(mu[0], mu[1], cfg.interpolation_steps)
            decoded = decode(model, path, max_len=cfg.max_len, progress="homotopy", rules=rules)
            files["homotopy"] = [f"from: {ends[0]}"] + to_text(dm, decoded) + [f"to  : {ends[1]}"]
    written = []
    for name, lines in files.items():
        target = out_dir / f"{name}.txt"
        target.write_text("\n".join(lines) + "\n")
        writer.add_text(f"sample/{name}", _markdown(lines), step)
        written.append(target)
    return written
