"""Unit tests of the text pipeline: tokenising, vocabulary, batching, the sequence VAE/LM and decoding.

Everything runs on tiny files written to tmp_path and tiny random models with fixed seeds (seconds on a CPU).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from seqvae_cli.models import decoding
from seqvae_cli.data.text import SPECIALS, TextData, build_vocabulary, tokenize
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.lstm_lm import LSTMLM
from seqvae_cli.models.sentence_vae import LSTMVAE
from seqvae_cli.nn.rnn import TokenIO

CPU = torch.device("cpu")


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def make_data(tmp_path, train, val=None, test=None, **kwargs) -> TextData:
    write(tmp_path / "train.txt", train)
    write(tmp_path / "val.txt", val or train[:3])
    write(tmp_path / "test.txt", test or train[:3])
    settings = dict(data_dir=str(tmp_path), relative_to="data_dir", batch_size=4, eval_batch_size=5,
                    bucket_size=2, download=False)
    settings.update(kwargs)
    dm = TextData("train.txt", "val.txt", "test.txt", **settings)
    dm.setup(CPU)
    return dm


def random_corpus(n: int, seed: int = 0, vocab: int = 30, max_len: int = 12) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        length = int(torch.randint(1, max_len + 1, (1,), generator=g))
        words = torch.randint(0, vocab, (length,), generator=g).tolist()
        lines.append(" " + " ".join(f"w{w}" for w in words))
    return lines


# ------------------------------------------------------------------------------------------ tokeniser

def test_tokenizers_and_lowercase():
    line = " The cat, it's well-known: 3.5% <unk> !"
    assert tokenize(line, "whitespace") == ["The", "cat,", "it's", "well-known:", "3.5%", "<unk>", "!"]
    assert tokenize(line, "simple") == ["The", "cat", ",", "it's", "well-known", ":", "3.5", "%", "<unk>", "!"]
    assert tokenize(line, "simple", lowercase=True)[0] == "the"
    assert tokenize("   ", "simple") == [] and tokenize("", "whitespace") == []
    with pytest.raises(SeqvaeError, match="tokenizer"):
        tokenize("a b", "bpe")


# ----------------------------------------------------------------------------------------- vocabulary

def test_vocabulary_order_min_freq_max_size_and_ties():
    sents = [["b", "a", "c", "<unk>"], ["a", "b", "d"], ["a", "<unk>", "<unk>"]]
    itos = build_vocabulary(sents)
    assert itos[:4] == list(SPECIALS) == ["<pad>", "<unk>", "<sos>", "<eos>"]
    assert itos[4:] == ["a", "b", "c", "d"]              # a:3, b:2, then c/d tied at 1 -> alphabetical
    assert itos.count("<unk>") == 1                       # the file's <unk> is the special, not a word
    assert build_vocabulary(sents, min_freq=2)[4:] == ["a", "b"]
    assert build_vocabulary(sents, max_size=3)[4:] == ["a", "b", "c"]
    # Determinism whatever the order sentences come in.
    assert build_vocabulary(sents[::-1]) == itos


def test_encoding_eos_unknown_words_and_file_unk(tmp_path):
    dm = make_data(tmp_path, [" the cat sat", " the dog <unk>", " the cat"], val=[" the zebra sat"],
                   test=[" a cat"])
    assert dm.stoi["<unk>"] == dm.unk_id == 1
    x, lengths = dm.splits["train"]
    assert x.tolist()[1] == [dm.stoi["the"], dm.stoi["dog"], dm.unk_id, dm.eos_id]
    assert lengths.tolist() == [4, 4, 3]                  # <eos> counted
    assert x[2, 3] == dm.pad_id
    assert dm.splits["val"][0].tolist() == [[dm.stoi["the"], dm.unk_id, dm.stoi["sat"], dm.eos_id]]
    assert dm.num_tokens("train") == 11
    ids = dm.encode_sentence("the cat flew")
    assert ids.tolist() == [dm.stoi["the"], dm.stoi["cat"], dm.unk_id, dm.eos_id]
    assert dm.decode_ids(ids) == "the cat <unk>"
    assert dm.decode_ids([dm.stoi["cat"], dm.eos_id, dm.stoi["the"]]) == "cat"
    assert dm.model_kwargs() == {"vocab_size": 4 + 4, "pad_id": 0, "unk_id": 1, "sos_id": 2, "eos_id": 3}
    with pytest.raises(SeqvaeError, match="no tokens"):
        dm.encode_sentence("   ")


def test_lowercase_and_simple_tokenizer_in_data(tmp_path):
    dm = make_data(tmp_path, ["The Cat, sat.", "the cat"], lowercase=True, tokenizer="simple")
    assert dm.itos[4:] == ["cat", "the", ",", ".", "sat"]
    assert dm.decode_ids(dm.encode_sentence("THE CAT!")) == "the cat <unk>"


def test_file_errors_blank_lines_and_max_train_len(tmp_path):
    write(tmp_path / "empty.txt", ["", "   "])
    write(tmp_path / "ok.txt", [" a b", "", " a c d e f"])
    with pytest.raises(SeqvaeError, match="empty.txt"):
        TextData("empty.txt", "ok.txt", "ok.txt", data_dir=str(tmp_path)).setup(CPU)
    with pytest.raises(SeqvaeError, match="missing.txt"):
        TextData("ok.txt", "missing.txt", "ok.txt", data_dir=str(tmp_path)).setup(CPU)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(SeqvaeError, match="latin1.txt"):
        TextData("latin1.txt", "ok.txt", "ok.txt", data_dir=str(tmp_path)).setup(CPU)
    dm = TextData("ok.txt", "ok.txt", "ok.txt", data_dir=str(tmp_path), max_train_len=3)
    dm.setup(CPU)
    assert dm.num_examples("train") == 1 and dm.num_examples("val") == 2   # blank skipped, val never dropped
    assert "f" in dm.stoi                                  # the vocabulary still comes from the whole file


def test_relative_to_cwd(tmp_path, monkeypatch):
    write(tmp_path / "t.txt", [" a b"])
    monkeypatch.chdir(tmp_path)
    dm = TextData("t.txt", "t.txt", str(tmp_path / "t.txt"), data_dir="/nonexistent", relative_to="cwd")
    dm.setup(CPU)
    assert dm.num_examples("train") == 1


def test_missing_ptb_without_download_names_folder_and_files(tmp_path):
    dm = TextData("ptb/ptb.train.txt", "ptb/ptb.valid.txt", "ptb/ptb.test.txt", data_dir=str(tmp_path),
                  download=False)
    with pytest.raises(SeqvaeError, match="ptb.train.txt"):
        dm.setup(CPU)


def test_vocabulary_state_roundtrip_and_mismatch(tmp_path):
    lines = [" a b c", " a b", " a"]
    dm = make_data(tmp_path, lines)
    state = dm.state_dict()
    assert state["itos"] == dm.itos
    again = TextData("train.txt", "val.txt", "test.txt", data_dir=str(tmp_path))
    again.load_state_dict(state)
    again.setup(CPU)
    assert again.itos == dm.itos
    write(tmp_path / "train.txt", lines + [" d e", " d"])
    changed = TextData("train.txt", "val.txt", "test.txt", data_dir=str(tmp_path))
    changed.load_state_dict(state)
    with pytest.raises(SeqvaeError, match=r"does not match the data.*7 entries.*train\.txt gives 9.*2 words"):
        changed.setup(CPU)


# ------------------------------------------------------------------------------------------- batching

def test_train_batches_cover_epoch_length_homogeneous_and_padded(tmp_path):
    lines = random_corpus(103, seed=1, max_len=15)
    dm = make_data(tmp_path, lines, batch_size=4, bucket_size=3)
    x_all, len_all = dm.splits["train"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        seen = []
        batches = list(dm.train_batches(gen, None))
        assert len(batches) == dm.num_train_batches() == math.ceil(103 / 4)
        for batch in batches:
            x, lengths = batch["x"], batch["lengths"]
            assert x.shape[1] == int(lengths.max())
            assert (x[torch.arange(x.shape[0]), lengths - 1] == dm.eos_id).all()
            positions = torch.arange(x.shape[1]).unsqueeze(0)
            assert ((x == dm.pad_id) == (positions >= lengths.unsqueeze(1))).all()
            assert ((x == dm.eos_id).sum(1) == 1).all()
            # Match each row back to its sentence.
            for row, n in zip(x, lengths):
                hits = ((x_all[:, :n] == row[:n]).all(1) & (len_all == n)).nonzero().flatten().tolist()
                seen.append(tuple(row[:n].tolist()))
                assert hits
        assert sorted(seen) == sorted(tuple(r[:n].tolist()) for r, n in zip(x_all, len_all))
    # Bucketing makes batches far more homogeneous than random ones: lengths 1..15, 4 per batch, spread
    # about 9 at random vs about 15/3 with buckets of 3 batches.
    spread = sum(int(b["lengths"].max() - b["lengths"].min()) for b in dm.train_batches(gen, None))
    assert spread / len(batches) < 6
    # With one bucket holding the whole epoch, the batches' length ranges do not overlap at all.
    dm.bucket_size = 1000
    ranges = sorted((int(b["lengths"].min()), int(b["lengths"].max())) for b in dm.train_batches(gen, None))
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))
    dm.bucket_size = 3
    # limit and reproducibility
    a = [b["x"] for b in dm.train_batches(torch.Generator().manual_seed(5), None, limit=3)]
    b = [b["x"] for b in dm.train_batches(torch.Generator().manual_seed(5), None, limit=3)]
    assert len(a) == 3 and all(torch.equal(u, v) for u, v in zip(a, b))


def test_eval_batches_sorted_and_complete(tmp_path):
    dm = make_data(tmp_path, random_corpus(23, seed=2), val=random_corpus(17, seed=3))
    batches = list(dm.eval_batches("val", batch_size=5))
    assert sorted(b["x"].shape[0] for b in batches) == [2, 5, 5, 5]
    # Batches are cut from the length-sorted split: their length ranges do not overlap.
    ranges = sorted((int(b["lengths"].min()), int(b["lengths"].max())) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))
    rows = sorted(tuple(r[:n].tolist()) for b in batches for r, n in zip(b["x"], b["lengths"]))
    x_all, len_all = dm.splits["val"]
    assert rows == sorted(tuple(r[:n].tolist()) for r, n in zip(x_all, len_all))
    again = list(dm.eval_batches("val", batch_size=5))
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(batches, again))     # deterministic
    limited = list(dm.eval_batches("val", batch_size=5, limit=2))
    assert len(limited) == 2 and torch.equal(limited[0]["x"], batches[0]["x"])


# ---------------------------------------------------------------------------------------------- models

V = 12


def tiny_batch() -> dict:
    x = torch.tensor([[5, 6, 7, 8, 3], [9, 3, 0, 0, 0], [4, 10, 11, 3, 0]])
    return {"x": x, "lengths": torch.tensor([5, 2, 4])}


VAE_VARIANTS = [("lstm", "init", False, None), ("gru", "concat", True, True), ("lstm", "both", False, True),
                ("gru", "init", False, False)]


def make_vae(rnn, cond, bidir, packed, encoder_layers=2) -> LSTMVAE:
    torch.manual_seed(0)
    model = LSTMVAE(V, embed_dim=6, hidden_size=7, latent_dim=3, rnn=rnn, z_conditioning=cond,
                    bidirectional=bidir, encoder_layers=encoder_layers, decoder_layers=2, word_dropout=0.5,
                    embed_dropout=0.1, output_dropout=0.1, packed=packed)
    return model.eval()


@pytest.fixture(params=VAE_VARIANTS, ids=lambda p: "-".join(map(str, p)))
def vae(request) -> LSTMVAE:
    return make_vae(*request.param)


@pytest.mark.parametrize("rnn,bidir", [("lstm", False), ("gru", False), ("lstm", True)])
def test_packed_and_padded_runs_agree(rnn, bidir):
    """Padded runs (the CPU default) give the same encoding and likelihood as packed ones."""
    packed, padded = make_vae(rnn, "both", bidir, True), make_vae(rnn, "both", bidir, False)
    batch = tiny_batch()
    batch = {"x": torch.cat([batch["x"], torch.zeros(3, 2, dtype=torch.long)], 1), "lengths": batch["lengths"]}
    for a, b in zip(packed.posterior(batch).tensors(), padded.posterior(batch).tensors()):
        assert torch.allclose(a, b, atol=1e-6)
    z = torch.randn(2, 3, 3)
    assert torch.allclose(packed.log_likelihood(batch, z), padded.log_likelihood(batch, z), atol=1e-5)


def test_encode_shapes_and_batch_order(vae):
    batch = tiny_batch()
    mu, logvar = vae.posterior(batch).tensors()
    assert mu.shape == logvar.shape == (3, 3)
    for i in range(3):                                     # encoding is per-example, whatever the batch
        n = int(batch["lengths"][i])
        single = {"x": batch["x"][i:i + 1, :n], "lengths": batch["lengths"][i:i + 1]}
        assert torch.allclose(vae.posterior(single).tensors()[0][0], mu[i], atol=1e-6)


def test_log_likelihood_many_samples_equals_separate_calls(vae):
    batch = tiny_batch()
    z = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(1))
    joint = vae.log_likelihood(batch, z)
    assert joint.shape == (4, 3)
    separate = torch.cat([vae.log_likelihood(batch, z[s:s + 1]) for s in range(4)])
    assert torch.allclose(joint, separate, atol=1e-5)


def brute_force(model, x_row, n, z_row):
    """Σ_t log p(x_t | x_<t, z) with the one-step interface, one sentence, no packing."""
    state = model.init_decoder_state(z_row, 1)
    token, total = torch.tensor([model.sos_id]), 0.0
    for t in range(n):
        lp, state = model.decoder_step(token, state, z_row)
        total += float(lp[0, x_row[t]].detach())
        token = x_row[t:t + 1]
    return total


def test_log_likelihood_matches_brute_force_step_by_step(vae):
    batch = tiny_batch()
    z = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(2))
    ll = vae.log_likelihood(batch, z)[0]
    for i in range(3):
        expected = brute_force(vae, batch["x"][i], int(batch["lengths"][i]), z[0, i:i + 1])
        assert ll[i].item() == pytest.approx(expected, abs=1e-4)


def test_language_model_exact_nll_and_brute_force():
    torch.manual_seed(0)
    lm = LSTMLM(V, embed_dim=5, hidden_size=5, rnn="gru", tie_weights=True).eval()
    assert lm.latent_dim == 0 and not lm.variational
    batch = tiny_batch()
    ll = lm.log_likelihood(batch, None)
    assert ll.shape == (1, 3)
    for i in range(3):
        assert ll[0, i].item() == pytest.approx(brute_force(lm, batch["x"][i], int(batch["lengths"][i]), None),
                                                abs=1e-4)


def test_word_dropout_only_in_training():
    torch.manual_seed(0)
    io = TokenIO(V, 4, 4, word_dropout=0.5)
    tokens = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 11, 0, 0]] * 50)
    io.eval()
    assert torch.equal(io.drop_words(tokens), tokens)
    io.train()
    dropped = io.drop_words(tokens)
    changed = dropped != tokens
    assert changed.any() and (dropped[changed] == io.unk_id).all()
    assert (dropped[:, 0] == 2).all() and (dropped[:, 8:] == 0).all()        # never <sos> or <pad>
    assert 0.35 < changed[:, 1:8].float().mean() < 0.65
    # In eval mode the VAE's likelihood is deterministic (no word dropout, no dropout).
    model = LSTMVAE(V, embed_dim=4, hidden_size=4, latent_dim=2, word_dropout=0.9).eval()
    z = torch.randn(1, 3, 2)
    assert torch.equal(model.log_likelihood(tiny_batch(), z), model.log_likelihood(tiny_batch(), z))


@pytest.mark.parametrize("rnn,packed", [("lstm", False), ("gru", True)])
def test_weight_drop_masks_recurrent_weights_once_per_batch(rnn, packed):
    """model.weight_drop (DropConnect): a training pass equals the same model run with each decoder layer's
    hidden-to-hidden weights multiplied by one dropout mask, i.e. one mask for all time steps; the next
    batch draws a new one; evaluation uses the full weights."""
    sizes = dict(embed_dim=6, hidden_size=7, latent_dim=3, rnn=rnn, decoder_layers=2, packed=packed)
    torch.manual_seed(0)
    plain = LSTMVAE(V, **sizes)
    dropped = LSTMVAE(V, weight_drop=0.4, **sizes)
    dropped.load_state_dict(plain.state_dict())          # weight_drop adds no parameters
    batch, z = tiny_batch(), torch.randn(1, 3, 3)
    plain.eval(), dropped.eval()
    assert torch.equal(plain.log_likelihood(batch, z), dropped.log_likelihood(batch, z))

    plain.train(), dropped.train()          # no other dropout is configured: the masks are the only randomness
    torch.manual_seed(1)
    got = dropped.log_likelihood(batch, z)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in range(2):
            w = getattr(plain.decoder.rnn, f"weight_hh_l{layer}")
            w.copy_(F.dropout(w, 0.4, training=True))
    assert torch.allclose(got, plain.log_likelihood(batch, z), atol=1e-6)
    assert not torch.allclose(got, dropped.log_likelihood(batch, z))

    # Gradients reach only the weights the mask kept.
    torch.manual_seed(2)
    dropped.zero_grad()
    dropped.log_likelihood(batch, z).sum().backward()
    torch.manual_seed(2)
    kept = F.dropout(torch.ones_like(dropped.decoder.rnn.weight_hh_l0), 0.4, training=True) != 0
    grad = dropped.decoder.rnn.weight_hh_l0.grad
    assert (grad[~kept] == 0).all() and (grad[kept] != 0).float().mean() > 0.9
    assert 0.25 < (~kept).float().mean() < 0.55


def test_tied_weights_share_storage_and_size_check():
    model = LSTMVAE(V, embed_dim=6, hidden_size=6, latent_dim=2, tie_weights=True)
    assert model.io.out.weight.data_ptr() == model.io.embedding.weight.data_ptr()
    assert model.io.out.weight is model.io.embedding.weight
    with pytest.raises(SeqvaeError, match="tie_weights"):
        LSTMVAE(V, embed_dim=6, hidden_size=8, latent_dim=2, tie_weights=True)


def test_config_errors():
    with pytest.raises(SeqvaeError, match="model.z_conditioning"):
        LSTMVAE(V, z_conditioning="sum")
    with pytest.raises(SeqvaeError, match="model.rnn"):
        LSTMLM(V, rnn="transformer")
    with pytest.raises(SeqvaeError, match=r"model.weight_drop.*\[0, 1\)"):
        LSTMLM(V, weight_drop=1.0)


def test_bag_of_words_nll_by_hand():
    model = LSTMVAE(6, embed_dim=2, hidden_size=2, latent_dim=1)
    with torch.no_grad():
        model.bow.weight.zero_()
        model.bow.bias.copy_(torch.tensor([0.0, 0.0, 0.0, math.log(2.0), math.log(3.0), 0.0]))
    # softmax of the bias: exp = [1, 1, 1, 2, 3, 1] / 9
    batch = {"x": torch.tensor([[4, 4, 3], [5, 3, 0]]), "lengths": torch.tensor([3, 2])}
    nll = model.bag_of_words_nll(batch, torch.zeros(2, 1))
    expected = torch.tensor([-(2 * math.log(3 / 9) + math.log(2 / 9)), -(math.log(1 / 9) + math.log(2 / 9))])
    assert torch.allclose(nll, expected, atol=1e-5)
    assert model.bag_of_words_nll(batch, torch.zeros(4, 2, 1)).shape == (4, 2)


def test_gradients_reach_encoder_decoder_and_bow():
    torch.manual_seed(0)
    model = LSTMVAE(V, embed_dim=4, hidden_size=4, latent_dim=2, word_dropout=0.3).train()
    batch = tiny_batch()
    mu, logvar = model.posterior(batch).tensors()
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    loss = -model.log_likelihood(batch, z.unsqueeze(0)).sum() + model.bag_of_words_nll(batch, z).sum()
    loss.backward()
    for name in ("encoder.rnn.weight_ih_l0", "posterior_head.mu_head.weight", "decoder.z_to_state.weight", "io.out.weight",
                 "bow.weight", "io.embedding.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


# -------------------------------------------------------------------------------------------- decoding

@pytest.fixture
def decoder_model() -> LSTMVAE:
    torch.manual_seed(3)
    model = LSTMVAE(V, embed_dim=8, hidden_size=8, latent_dim=3, z_conditioning="both")
    with torch.no_grad():  # sharpen the output so sentences end and strategies differ
        model.io.out.weight.mul_(4.0)
        model.io.out.bias[3] += 1.0
    return model.eval()


def z_fixed(n=6, d=3, seed=4):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_greedy_is_deterministic_and_consistent(decoder_model):
    z = z_fixed()
    a, b = decoding.greedy(decoder_model, z, max_len=15), decoding.greedy(decoder_model, z, max_len=15)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_prob, b.log_prob)
    for i in range(z.shape[0]):
        seq = a.tokens[i, :a.lengths[i]]
        assert (seq != decoder_model.pad_id).all() and (seq != decoder_model.sos_id).all()
        assert (seq == decoder_model.eos_id).sum() <= 1
        if a.lengths[i] < 15:
            assert seq[-1] == decoder_model.eos_id
        batch = {"x": seq.unsqueeze(0), "lengths": a.lengths[i:i + 1]}
        ll = decoder_model.log_likelihood(batch, z[i].view(1, 1, -1))
        assert ll.item() == pytest.approx(a.log_prob[i].item(), abs=1e-4)


def test_beam_at_least_greedy(decoder_model):
    z = z_fixed(8)
    g = decoding.greedy(decoder_model, z, max_len=12)
    b = decoding.beam_search(decoder_model, z, beam_width=5, max_len=12)
    assert (b.log_prob >= g.log_prob - 1e-5).all()
    assert (b.log_prob > g.log_prob + 1e-5).any()
    assert torch.equal(decoding.beam_search(decoder_model, z, beam_width=1, max_len=12).tokens, g.tokens)
    for i in range(z.shape[0]):                            # the returned score is the sequence's log-probability
        seq = b.tokens[i, :b.lengths[i]]
        batch = {"x": seq.unsqueeze(0), "lengths": b.lengths[i:i + 1]}
        assert decoder_model.log_likelihood(batch, z[i].view(1, 1, -1)).item() == pytest.approx(
            b.log_prob[i].item(), abs=1e-4)


def replay_choices(model, z, out):
    """Yield (allowed log-probs of the step, chosen token, still running) for every step of a decode."""
    state = model.init_decoder_state(z, z.shape[0])
    tokens = torch.full((z.shape[0],), model.sos_id)
    with torch.no_grad():
        for t in range(out.tokens.shape[1]):
            lp, state = model.decoder_step(tokens, state, z)
            running = t < out.lengths
            yield decoding.allowed_log_probs(model, lp), out.tokens[:, t], running
            tokens = out.tokens[:, t]


def test_top_k_only_chooses_among_k_most_likely(decoder_model):
    z = z_fixed(20)
    out = decoding.sample(decoder_model, z, max_len=12, generator=torch.Generator().manual_seed(0), top_k=3)
    steps = 0
    for lp, chosen, running in replay_choices(decoder_model, z, out):
        top = lp.topk(3, dim=-1).indices
        assert ((top == chosen.unsqueeze(1)).any(1) | ~running).all()
        steps += int(running.sum())
    assert steps > 40


def test_top_p_only_chooses_within_nucleus(decoder_model):
    z = z_fixed(20)
    p = 0.6
    out = decoding.sample(decoder_model, z, max_len=12, generator=torch.Generator().manual_seed(0), top_p=p)
    for lp, chosen, running in replay_choices(decoder_model, z, out):
        probs = lp.exp()
        chosen_p = probs.gather(1, chosen.unsqueeze(1))
        more_likely_mass = (probs * (probs > chosen_p)).sum(1)
        assert ((more_likely_mass < p + 1e-6) | ~running).all()


def test_sampling_reproducible_and_low_temperature_is_greedy(decoder_model):
    z = z_fixed(10)
    a = decoding.sample(decoder_model, z, max_len=12, generator=torch.Generator().manual_seed(7))
    b = decoding.sample(decoder_model, z, max_len=12, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens)
    g = decoding.greedy(decoder_model, z, max_len=12)
    cold = decoding.sample(decoder_model, z, max_len=12, generator=torch.Generator().manual_seed(7),
                           temperature=1e-4)
    assert torch.equal(cold.tokens, g.tokens)
    assert torch.equal(decoding.sample(decoder_model, z, max_len=12, temperature=0).tokens, g.tokens)


def test_language_model_decoding_without_z():
    torch.manual_seed(0)
    lm = LSTMLM(V, embed_dim=4, hidden_size=4).eval()
    out = decoding.decode(lm, None, n=3, strategy="sample", max_len=6, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape[0] == 3 and out.tokens.shape[1] <= 6
    beam = decoding.decode(lm, None, n=2, strategy="beam", max_len=6)
    assert torch.equal(beam.tokens[0], beam.tokens[1])
    with pytest.raises(SeqvaeError):
        decoding.decode(lm, None, n=1, strategy="nucleus")


def test_ptb_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(url, root, filename=None, md5=None):
        (tmp_path / "ptb" / filename).write_text("partial")   # a truncated file must not survive
        raise OSError("Network is unreachable")

    (tmp_path / "ptb").mkdir()
    monkeypatch.setattr(tv_utils, "download_url", offline)
    dm = TextData("ptb/ptb.train.txt", "ptb/ptb.valid.txt", "ptb/ptb.test.txt", data_dir=str(tmp_path),
                  download=True)
    with pytest.raises(SeqvaeError) as err:
        dm.setup(CPU)
    message = str(err.value)
    for part in (str(tmp_path / "ptb"), "ptb.train.txt", "ptb.valid.txt", "ptb.test.txt", "Network is unreachable",
                 "offline demo"):
        assert part in message
    assert not (tmp_path / "ptb" / "ptb.train.txt").exists()


def test_importance_sampling_rows_are_chunked_without_grad(monkeypatch):
    model = make_vae("gru", "init", False, None)
    batch = tiny_batch()
    z = torch.randn(7, 3, 3)
    full = model.log_likelihood(batch, z)
    monkeypatch.setattr(LSTMVAE, "max_rows_per_pass", 4)
    with torch.no_grad():
        chunked = model.log_likelihood(batch, z)
    assert torch.allclose(full, chunked, atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_reset_decoder_keeps_encoder_and_embedding(tie):
    model = LSTMVAE(V, embed_dim=6, hidden_size=6, latent_dim=2, tie_weights=tie)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_decoder()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"decoder.rnn.weight_hh_l0", "decoder.z_to_state.weight", "io.out.bias"} <= changed
    assert not any(k.startswith(("encoder.", "posterior_head.mu_head.", "posterior_head.logvar_head.", "io.embedding.", "bow.")) for k in changed)
    assert ("io.out.weight" in changed) != tie


# ------------------------------------------------------------------------------ configs (Hydra compose)

@pytest.mark.parametrize("model", ["lstm_vae", "lstm_lm"])
@pytest.mark.parametrize("data", ["ptb", "text"])
def test_configs_compose_validate_and_build(tmp_path, model, data):
    """Every key of conf/data/{ptb,text}.yaml and conf/model/{lstm_vae,lstm_lm}.yaml is a constructor argument."""
    from seqvae_cli.training.checkpoint import build
    from seqvae_cli.config.rules import validate
    from conftest import compose_train_config

    (tmp_path / "ptb").mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        write(tmp_path / "ptb" / name, random_corpus(20, seed=len(name)))
    overrides = [f"model={model}", f"data={data}", f"paths.data_dir={tmp_path}", "model.embed_dim=8",
                 "model.hidden_size=8"]
    if data == "text":
        overrides += [f"data.{split}_file={tmp_path / 'ptb' / f'ptb.{name}.txt'}"
                      for split, name in (("train", "train"), ("val", "valid"), ("test", "test"))]
    cfg = compose_train_config(*overrides)
    validate(cfg)
    dm, net = build(cfg, CPU)
    assert dm.kind == "text" and dm.num_examples("train") == 20
    assert net.io.vocab_size == dm.vocab_size
    batch = next(dm.train_batches(torch.Generator().manual_seed(0), None))
    z = torch.zeros(2, batch["x"].shape[0], net.latent_dim) if net.latent_dim else None
    assert torch.isfinite(net.log_likelihood(batch, z)).all()
    # A checkpoint's data state rebuilds the same vocabulary.
    dm2, _ = build(cfg, CPU, dm.state_dict())
    assert dm2.itos == dm.itos


def test_text_config_requires_files():
    from seqvae_cli.config.rules import validate
    from conftest import compose_train_config

    cfg = compose_train_config("model=lstm_vae", "data=text")
    with pytest.raises(SeqvaeError, match="data.test_file|data.train_file|data.val_file"):
        validate(cfg)


# ------------------------------------------------------------------------------------------ presets

@pytest.mark.parametrize("experiment", ["ptb_bowman", "ptb_cyclical", "ptb_li2019", "ptb_lm", "ptb_cyclical_fb",
                                        "ptb_he2019"])
def test_ptb_presets_have_the_published_sizes_and_the_measured_recipe(experiment):
    """The sizes text-VAE papers share (256-unit LSTMs, 32-d latent, dropout 0.5, batch 32) and the optimiser
    settings of the README's PTB table, so `seqvae train experiment=X` is the command that reproduces it."""
    from conftest import compose_train_config
    from seqvae_cli.config.rules import validate

    cfg = compose_train_config(f"experiment={experiment}")
    validate(cfg)
    m = cfg.model
    assert cfg.data.name == "ptb" and cfg.data.batch_size == 32
    assert (m.rnn, m.embed_dim, m.hidden_size, m.embed_dropout, m.output_dropout) == ("lstm", 256, 256, 0.5, 0.5)
    assert (cfg.optim.lr, cfg.optim.lr_schedule, cfg.optim.lr_min, cfg.optim.grad_clip) == (2e-3, "cosine", 1e-5, 5.0)
    assert cfg.trainer.max_epochs == (30 if experiment == "ptb_cyclical_fb" else 20)
    assert m.get("tie_weights", False) == (experiment == "ptb_cyclical_fb")
    if experiment == "ptb_lm":
        assert m.name == "lstm_lm" and cfg.optimized_metric == "val/nll"
        return
    assert m.name == "lstm_vae" and m.latent_dim == 32 and m.z_conditioning == "init"
    recipe = {"ptb_bowman": ("sigmoid", 0.25, 0.0, 0), "ptb_cyclical": ("cyclical", 0.0, 0.0, 0),
              "ptb_li2019": ("linear", 0.0, 0.1, 5), "ptb_cyclical_fb": ("cyclical", 0.0, 0.05, 0),
              "ptb_he2019": ("linear", 0.0, 0.0, 0)}[experiment]
    o = cfg.objective
    assert (o.kl_anneal.schedule, m.word_dropout, o.free_bits.per_dim, o.ae_pretrain_epochs) == recipe
    assert o.aggressive.enabled == (experiment == "ptb_he2019")
    if experiment == "ptb_he2019":   # KL weight 0.1 -> 1 over the first 10 epochs, as He et al.
        assert (o.kl_anneal.start, o.kl_anneal.end, o.kl_anneal.unit, o.kl_anneal.warmup) == (0.1, 1.0, "epochs", 10)
