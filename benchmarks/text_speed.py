"""Training speed of seqvae's sentence VAE versus a textbook PyTorch sentence-VAE loop, on PTB on the CPU.

What is compared (same sizes on both sides: GRU encoder and decoder, hidden 256, embedding 300,
latent 16, batch 32, the 10,002-word PTB vocabulary seqvae builds, Adam 1e-3, no dropout, KL weight 1)
  * seqvae: `model=lstm_vae data=ptb` with model.rnn=gru, built from the real Hydra config
    (seqvae_cli.training.checkpoint.build), batches from TextData.train_batches (length-bucketed), the loss
    from the real seqvae_cli.objective.elbo.Objective, then zero_grad / backward / Adam step.
  * textbook: the loop of popular PyTorch replications of Bowman et al. 2016 (timbmg/Sentence-VAE
    style), written here: a Dataset of id lists, DataLoader(batch_size=32, shuffle=True) whose collate
    pads each batch of shuffled, unsorted sentences to its longest one; nn.Embedding, a GRU encoder
    over the padded batch (its state read at each sentence's last word), Linear mean/log-variance
    heads, Linear z -> initial decoder state, a GRU decoder over the full padded length, the output
    projection + log-softmax at ALL padded positions, NLLLoss(ignore_index=pad, sum) + KL, divided
    by the batch size.
  * seqvae bf16: the same seqvae step under trainer.precision=bf16-mixed (torch.autocast in bfloat16), from the
    same initial weights, on its own copy of the model.
Tokens = non-pad target tokens, each sentence's words plus its <eos> (what perplexity counts); the
same definition on both sides. Each training step is timed end to end (fetching the batch, forward,
backward, Adam step, loss.item()) with time.perf_counter.

Chunks of batches alternate between the three (after a warm-up of each), so that a change in the load
of the machine hits all alike. The textbook side pads to the batch maximum (about 2.5x the real
tokens on PTB) and projects every padded position onto the vocabulary; seqvae's buckets carry little
padding and it projects only real tokens.

Then the importance-weighted NLL pass of `seqvae eval` (seqvae_cli.evaluation.evaluate.iw_log_likelihood,
k=500) is timed on a length-stratified subset of test sentences and extrapolated to the 3,761 test
sentences by their token count, printed next to one training epoch (42,068 sentences) at seqvae's float32 and bf16-mixed speeds.

With --encoders it compares seqvae's two sentence encoders instead (no textbook loop, no IW timing): the model
of `experiment=ptb_cyclical_fb` (LSTM 256, embeddings 256, latent 32, batch 32, tied, dropout 0.5) with its LSTM
encoder (model.encoder=rnn) and with the Transformer encoder (model.encoder=transformer, the YAML's defaults),
each in float32 and bf16-mixed, in alternating rounds: training tokens/s side by side.

Run (from the repository root):
    export SEQVAE_DATA_DIR=/work/shared/data      # the folder holding ptb/
    python benchmarks/text_speed.py [--batches 160] [--rounds 4] [--threads 1] [--iw-sentences 64]
    python benchmarks/text_speed.py --encoders [--batches 160] [--rounds 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import time
from pathlib import Path

import hydra
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from seqvae_cli.training.checkpoint import build
from seqvae_cli.config.rules import validate
from seqvae_cli.config.runtime import register_resolvers
from seqvae_cli.evaluation.evaluate import iw_log_likelihood
from seqvae_cli.objective.elbo import Objective
from seqvae_cli.training.loop import make_optimizer

REPO = Path(__file__).resolve().parent.parent
EMBED, HIDDEN, LATENT, BATCH = 300, 256, 16, 32
REPLICATION_TOKENS_PER_S = 1500   # what a popular replication reaches on this CPU
TARGET_FACTOR = 3.0


# ------------------------------------------------------------------------------ the textbook model
class SentenceDataset(Dataset):
    """One sentence per item: (decoder input <sos> w1..wn, target w1..wn <eos>) as lists of ids."""

    def __init__(self, sentences: list[list[int]], sos: int, eos: int) -> None:
        self.items = [([sos] + s, s + [eos]) for s in sentences]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        inp, tgt = self.items[i]
        return torch.tensor(inp), torch.tensor(tgt), len(tgt)


def pad_collate(pad: int):
    def collate(items):
        inputs, targets, lengths = zip(*items)
        return (nn.utils.rnn.pad_sequence(inputs, batch_first=True, padding_value=pad),
                nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=pad),
                torch.tensor(lengths))
    return collate


class SentenceVAE(nn.Module):
    def __init__(self, vocab_size: int, pad: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, EMBED, padding_idx=pad)
        self.encoder_rnn = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.hidden2mean = nn.Linear(HIDDEN, LATENT)
        self.hidden2logv = nn.Linear(HIDDEN, LATENT)
        self.latent2hidden = nn.Linear(LATENT, HIDDEN)
        self.decoder_rnn = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.outputs2vocab = nn.Linear(HIDDEN, vocab_size)

    def forward(self, inputs, targets, lengths):
        b = targets.shape[0]
        enc_out, _ = self.encoder_rnn(self.embedding(inputs))           # <sos> w1..wn, as timbmg
        hidden = enc_out[torch.arange(b), lengths - 1]                  # state at each sentence's end
        mean, logv = self.hidden2mean(hidden), self.hidden2logv(hidden)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logv)
        h0 = self.latent2hidden(z).unsqueeze(0)
        outputs, _ = self.decoder_rnn(self.embedding(inputs), h0)       # the full padded length
        logp = F.log_softmax(self.outputs2vocab(outputs.reshape(-1, HIDDEN)), dim=-1)
        return logp.view(b, -1, logp.shape[-1]), mean, logv


def textbook_loss(model, nll, inputs, targets, lengths):
    logp, mean, logv = model(inputs, targets, lengths)
    nll_loss = nll(logp.view(-1, logp.shape[-1]), targets.reshape(-1))
    kl_loss = -0.5 * torch.sum(1 + logv - mean.pow(2) - logv.exp())
    return (nll_loss + kl_loss) / targets.shape[0]


# ------------------------------------------------------------------------------------- the two loops
def endless(make_iter):
    while True:
        yield from make_iter()


def seqvae_arm(model, cfg, dm, objective, seed: int, bf16: bool):
    """One seqvae training: its own copy of the model (same initial weights), optimiser and batch order; the step
    is Trainer.train_epoch's, with trainer.precision=bf16-mixed when bf16. -> (step, endless batches)."""
    arm_model = copy.deepcopy(model).train()
    optimizer = make_optimizer(arm_model, cfg.optim)
    shuffle_gen = torch.Generator().manual_seed(seed + 1)
    step_no = [0]

    def step(batch) -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            terms = objective(arm_model, batch, step_no[0])
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        terms.loss.item()
        step_no[0] += 1
        return int(batch["lengths"].sum())
    return step, endless(lambda: dm.train_batches(shuffle_gen))


def compose(overrides: list[str]):
    register_resolvers()
    with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra.compose(config_name="train", overrides=overrides)
    validate(cfg)
    return cfg


def alternate(arms: dict, args, after_warmup=None) -> tuple[dict, list]:
    """Warm each arm up (then call after_warmup, if given), then time them in alternating chunks.
    -> ({name: [wall s, CPU s, tokens]}, rows of the per-round tokens/s)."""
    for step, batches in arms.values():
        run_chunk(step, batches, args.warmup)
    if after_warmup is not None:
        after_warmup()
    per_round = max(1, args.batches // args.rounds)
    totals = {name: [0.0, 0.0, 0] for name in arms}
    rows = []
    for r in range(1, args.rounds + 1):
        row = {}
        for name, (step, batches) in arms.items():
            sec, cpu, tok = run_chunk(step, batches, per_round)
            totals[name][0] += sec
            totals[name][1] += cpu
            totals[name][2] += tok
            row[name] = tok / sec
        rows.append((r, row))
    return totals, rows


def compare_encoders(args, data_dir: str) -> None:
    """--encoders: the ptb_cyclical_fb sentence VAE with its LSTM encoder against the Transformer encoder."""
    arms, sizes = {}, {}
    for encoder in ("rnn", "transformer"):
        torch.manual_seed(args.seed)
        cfg = compose(["experiment=ptb_cyclical_fb", "device=cpu", f"paths.data_dir={data_dir}", "data.download=false",
                       f"model.encoder={encoder}", f"trainer.seed={args.seed}"])
        dm, model = build(cfg, torch.device("cpu"))
        steps = dm.num_train_batches()
        objective = Objective(cfg.objective, cfg.trainer.max_epochs * steps, steps)
        sizes[encoder] = sum(p.numel() for p in model.encoder.parameters())
        for bf16 in (False, True):
            arms[(encoder, bf16)] = seqvae_arm(model, cfg, dm, objective, args.seed, bf16)
    totals, rows = alternate(arms, args)
    names = {("rnn", False): "LSTM f32", ("rnn", True): "LSTM bf16", ("transformer", False): "Transformer f32",
             ("transformer", True): "Transformer bf16"}
    print(f"PTB sentence VAE of experiment=ptb_cyclical_fb (LSTM decoder 256, embeddings 256, latent 32, batch 32); "
          f"CPU, {torch.get_num_threads()} torch thread(s); {rows and len(rows) * max(1, args.batches // args.rounds)} "
          f"timed batches per arm in {args.rounds} alternating rounds; encoder parameters: LSTM {sizes['rnn']:,}, "
          f"Transformer {sizes['transformer']:,}")
    print("round  " + "  ".join(f"{names[a]:>17}" for a in arms) + "   (training tokens/s)")
    for r, row in rows:
        print(f"{r:>5}  " + "  ".join(f"{row[a]:>17,.0f}" for a in arms))
    tps = {a: tok / sec for a, (sec, _, tok) in totals.items()}
    per_cpu = {a: tok / cpu for a, (_, cpu, tok) in totals.items()}
    for a in arms:
        print(f"{names[a]:>17}: {tps[a]:,.0f} tokens/s ({per_cpu[a]:,.0f} per CPU-second)")
    for bf16 in (False, True):
        print(f"Transformer / LSTM encoder, {'bf16-mixed' if bf16 else 'float32'}: "
              f"{tps[('transformer', bf16)] / tps[('rnn', bf16)]:.2f}x by wall time, "
              f"{per_cpu[('transformer', bf16)] / per_cpu[('rnn', bf16)]:.2f}x by CPU time")


def run_chunk(step, batches, n: int) -> tuple[float, float, int]:
    """n training steps; returns (wall seconds, CPU seconds of this process, tokens)."""
    seconds, cpu, tokens = 0.0, 0.0, 0
    for _ in range(n):
        start, cpu_start = time.perf_counter(), time.process_time()
        tokens += step(next(batches))
        seconds += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
    return seconds, cpu, tokens


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=160, help="timed batches per side (split into --rounds chunks)")
    p.add_argument("--rounds", type=int, default=4, help="alternating chunks per side")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches per side first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both (default: torch's)")
    p.add_argument("--iw-samples", type=int, default=500)
    p.add_argument("--iw-sentences", type=int, default=64, help="test sentences scored for the IW-NLL timing")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--encoders", action="store_true",
                   help="compare the LSTM and Transformer encoders of experiment=ptb_cyclical_fb instead")
    p.add_argument("--data-dir", default=os.environ.get("SEQVAE_DATA_DIR", "./data"),
                   help="folder holding ptb/ (default: $SEQVAE_DATA_DIR, else ./data)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    data_dir = str(Path(args.data_dir).expanduser().resolve())
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if args.encoders:
        compare_encoders(args, data_dir)
        return

    # ---- seqvae, from its own config ----
    overrides = ["model=lstm_vae", "data=ptb", "device=cpu", f"paths.data_dir={data_dir}", "data.download=false",
                 "model.rnn=gru", f"model.embed_dim={EMBED}", f"model.hidden_size={HIDDEN}",
                 f"model.latent_dim={LATENT}", f"data.batch_size={BATCH}", "optim=adam", "optim.lr=1e-3",
                 f"trainer.seed={args.seed}"]
    cfg = compose(overrides)
    device = torch.device("cpu")
    dm, model = build(cfg, device)
    steps_per_epoch = dm.num_train_batches()
    objective = Objective(cfg.objective, cfg.trainer.max_epochs * steps_per_epoch, steps_per_epoch)

    # ---- textbook, on the same sentences and vocabulary ----
    train_x, train_len = dm.splits["train"]
    sentences = [row[:n - 1] for row, n in zip(train_x.tolist(), train_len.tolist())]   # words, without <eos>
    loader = DataLoader(SentenceDataset(sentences, dm.sos_id, dm.eos_id), batch_size=BATCH, shuffle=True,
                        collate_fn=pad_collate(dm.pad_id), generator=torch.Generator().manual_seed(args.seed))
    textbook = SentenceVAE(dm.vocab_size, dm.pad_id)
    tb_optimizer = torch.optim.Adam(textbook.parameters(), lr=1e-3)
    nll = nn.NLLLoss(ignore_index=dm.pad_id, reduction="sum")
    textbook.train()
    textbook_batches = endless(lambda: iter(loader))
    padded_positions = [0]

    def textbook_step(batch) -> int:
        inputs, targets, lengths = batch
        loss = textbook_loss(textbook, nll, inputs, targets, lengths)
        tb_optimizer.zero_grad()
        loss.backward()
        tb_optimizer.step()
        loss.item()
        padded_positions[0] += targets.numel()
        return int(lengths.sum())

    def count(m):
        return sum(p.numel() for p in m.parameters())

    # ---- warm up, then alternate chunks ----
    arms = {"seqvae": seqvae_arm(model, cfg, dm, objective, args.seed, bf16=False),
            "bf16": seqvae_arm(model, cfg, dm, objective, args.seed, bf16=True),
            "textbook": (textbook_step, textbook_batches)}
    # wall s, CPU s, tokens per arm; the padding count starts after the warm-up
    totals, rows = alternate(arms, args, after_warmup=lambda: padded_positions.__setitem__(0, 0))
    per_round = max(1, args.batches // args.rounds)
    seqvae_tps = totals["seqvae"][2] / totals["seqvae"][0]
    bf16_tps = totals["bf16"][2] / totals["bf16"][0]
    textbook_tps = totals["textbook"][2] / totals["textbook"][0]
    per_cpu_s = {name: tok / cpu for name, (_, cpu, tok) in totals.items()}
    share = {name: cpu / sec for name, (sec, cpu, _) in totals.items()}

    print(f"PTB sentence VAE: GRU hidden {HIDDEN}, embedding {EMBED}, latent {LATENT}, batch {BATCH}, vocabulary "
          f"{dm.vocab_size}, Adam 1e-3; CPU, {threads} torch thread(s); {per_round * args.rounds} timed batches per "
          f"side in {args.rounds} alternating rounds after {args.warmup} warm-up batches each")
    print(f"parameters: seqvae {count(model):,} (incl. its unused bag-of-words head), textbook {count(textbook):,}")
    print("{:>5}  {:>16}  {:>21}  {:>18}  {:>6}  {:>6}".format(
        "round", "seqvae tokens/s", "seqvae bf16 tokens/s", "textbook tokens/s", "ratio", "bf16"))
    for r, row in rows:
        s, b, t = row["seqvae"], row["bf16"], row["textbook"]
        print(f"{r:>5}  {s:>16,.0f}  {b:>21,.0f}  {t:>18,.0f}  {s / t:>5.2f}x  {b / t:>5.2f}x")
    print(f"seqvae   (bucketed batches, real Objective): {seqvae_tps:,.0f} tokens/s "
          f"({totals['seqvae'][2]:,} tokens in {totals['seqvae'][0]:.1f} s; {per_cpu_s['seqvae']:,.0f} tokens per "
          f"CPU-second, the process got {share['seqvae']:.0%} of the CPU time of {threads} thread(s))")
    print(f"seqvae   trainer.precision=bf16-mixed: {bf16_tps:,.0f} tokens/s ({totals['bf16'][2]:,} tokens in "
          f"{totals['bf16'][0]:.1f} s; {per_cpu_s['bf16']:,.0f} tokens per CPU-second)")
    print(f"textbook (padded to batch max, all positions): {textbook_tps:,.0f} tokens/s "
          f"({totals['textbook'][2]:,} tokens in {totals['textbook'][0]:.1f} s; {per_cpu_s['textbook']:,.0f} tokens "
          f"per CPU-second, {share['textbook']:.0%} of the CPU; it projected "
          f"{padded_positions[0] / max(totals['textbook'][2], 1):.2f} padded positions per real token)")
    print(f"ratio seqvae / textbook: {seqvae_tps / textbook_tps:.2f}x by wall time, "
          f"{per_cpu_s['seqvae'] / per_cpu_s['textbook']:.2f}x by CPU time; with bf16-mixed "
          f"{bf16_tps / textbook_tps:.2f}x and {per_cpu_s['bf16'] / per_cpu_s['textbook']:.2f}x")
    target = TARGET_FACTOR * REPLICATION_TOKENS_PER_S
    for label, tps in (("seqvae float32", seqvae_tps), ("seqvae bf16-mixed", bf16_tps)):
        verdict = "meets" if tps >= target else "MISSES"
        print(f"vs the ~{REPLICATION_TOKENS_PER_S:,} tokens/s a popular replication reaches on this CPU: {label} is "
              f"{tps / REPLICATION_TOKENS_PER_S:.1f}x and {verdict} the target of >= "
              f"{TARGET_FACTOR:.0f}x ({target:,.0f} tokens/s)")
    print(f"  the textbook loop here runs at {textbook_tps / REPLICATION_TOKENS_PER_S:.1f}x the replication's speed")
    print(f"  load-independent views: per CPU-second seqvae {per_cpu_s['seqvae']:,.0f} tokens "
          f"({per_cpu_s['seqvae'] / REPLICATION_TOKENS_PER_S:.1f}x the replication), with bf16-mixed "
          f"{per_cpu_s['bf16']:,.0f} ({per_cpu_s['bf16'] / REPLICATION_TOKENS_PER_S:.1f}x); scaled so that the textbook loop "
          f"here would run at ~{REPLICATION_TOKENS_PER_S:,}, seqvae ~{seqvae_tps / textbook_tps * REPLICATION_TOKENS_PER_S:,.0f} "
          f"tokens/s ({seqvae_tps / textbook_tps:.1f}x)")

    # ---- IW-NLL timing (float32 as `seqvae eval`, then iw_precision=bf16-mixed), extrapolated to the test split ----
    model.eval()
    test_lengths = dm._cpu_lengths["test"]
    order = torch.sort(test_lengths, stable=True).indices
    n_test = order.numel()
    pick = order[torch.linspace(0, n_test - 1, min(args.iw_sentences, n_test)).round().long()]   # stratified by length
    sub_tokens = int(test_lengths[pick].sum())
    test_tokens = dm.num_tokens("test")
    epoch_tokens = dm.num_tokens("train")
    epoch_s = epoch_tokens / seqvae_tps
    print(f"one training epoch ({dm.num_examples('train'):,} sentences, {epoch_tokens:,} tokens): ~{epoch_s / 60:.1f} min "
          f"at seqvae's float32 {seqvae_tps:,.0f} tokens/s, ~{epoch_tokens / bf16_tps / 60:.1f} min with bf16-mixed")
    for label, iw_bf16 in (("iw_precision=32", False), ("iw_precision=bf16-mixed", True)):
        torch.manual_seed(args.seed)
        start, cpu_start = time.perf_counter(), time.process_time()
        for idx in torch.split(pick, 16):            # length-sorted groups, as the eval batches are sorted
            batch = dm._gather("test", idx)
            iw_log_likelihood(model, batch, args.iw_samples, dm.iw_rows_per_chunk, bf16=iw_bf16)
        iw_s, iw_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        iw_full, iw_full_cpu = iw_s * test_tokens / sub_tokens, iw_cpu * test_tokens / sub_tokens
        print(f"IW-NLL k={args.iw_samples}, {label}: {pick.numel()} test sentences ({sub_tokens} tokens, "
              f"length-stratified) in {iw_s:.1f} s ({iw_cpu:.1f} CPU-s); extrapolated by tokens to all {n_test:,} "
              f"test sentences ({test_tokens:,} tokens): ~{iw_full / 60:.1f} min (~{iw_full_cpu / 60:.1f} CPU-min), "
              f"~{iw_full / epoch_s:.1f} float32 training epochs")


if __name__ == "__main__":
    main()
