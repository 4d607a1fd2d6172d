"""Decoding strategies for the sequence models, batched over sentences.

They use only the models' step interface (nn/rnn.py, models/sentence_vae.py):
  model.init_decoder_state(z, n) -> state    a tuple of tensors, each [layers, N, H]
  model.decoder_step(tokens [N], state, z)   -> (log-probabilities [N, V], new state)
  model.sos_id, model.eos_id, model.pad_id
z is [N, D] for a latent-variable model, None for a language model (then give n).

Every strategy stops a sentence at <eos> (which is kept, and counted in its length and log-probability)
or after max_len tokens; <pad> and <sos> are never generated. Each returns a Decoded: tokens [N, L] padded
with <pad>, lengths [N], and the model's log-probability of each returned sequence (untempered,
unfiltered). Sampling takes a torch.Generator, so the same seed gives the same sentences.

`rules` (Rules) add what readers of a text VAE's output expect and a weak model does not give by itself: no
<unk> in the output, no empty sentence, no phrase looping to the length limit. None = the model's distribution
as it is (the functions' default; `seqvae sample` and the TensorBoard text use sample.yaml's rules).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from seqvae_cli.config.rules import BOOLEAN, check_arguments, number
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.base import eval_mode

STRATEGIES = ("greedy", "sample", "beam")


# The decoding settings of `seqvae sample` (read by sample() and beam_search() below, which hold their arguments
# to the same rules).
RULES = {
    "temperature": number(0),
    "top_k": number(0, integer=True),
    "top_p": number(0, 1, lo_open=True),
    "beam_width": number(1, integer=True),
    "length_penalty": number(0),
    "allow_unk": BOOLEAN,
    "min_len": number(0, integer=True),
    "no_repeat_ngram": number(0, integer=True),
}


# A decode that runs longer than this many seconds shows a progress bar (label given: seqvae sample's decodes).
PROGRESS_AFTER_S = 2.0


@dataclass(frozen=True)
class Rules:
    """Constraints on what a decode may generate (the log-probabilities it reports stay the model's)."""
    allow_unk: bool = False     # false: <unk> is never generated (a weak model's likeliest word, and no word)
    min_len: int = 1            # words before <eos> may end a sentence: 1 = never an empty sentence
    no_repeat_ngram: int = 3    # no n-gram twice in one sentence (0 = off): a loop cannot run to max_len

    def apply(self, model, log_probs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """log_probs [R, V] of the next token after `history` [R, t] (the tokens so far), banned ones -inf. A row
        whose every token is banned keeps its log-probabilities (a tiny vocabulary must still decode)."""
        banned = torch.zeros_like(log_probs, dtype=torch.bool)
        unk = getattr(model, "unk_id", None)
        if not self.allow_unk and unk is not None:
            banned[:, unk] = True
        if history.shape[1] < self.min_len:
            banned[:, model.eos_id] = True
        n = self.no_repeat_ngram
        if n > 0 and history.shape[1] >= n:
            windows = history.unfold(1, n, 1)                                   # [R, t-n+1, n]
            seen = (windows[:, :, :n - 1] == history[:, None, history.shape[1] - n + 1:]).all(-1)
            followers = torch.zeros(banned.shape, dtype=torch.long, device=banned.device)
            followers.scatter_add_(1, windows[:, :, n - 1], seen.long())   # each token that once followed them
            banned |= followers > 0
        banned &= ~banned.all(-1, keepdim=True)
        return log_probs.masked_fill(banned, float("-inf"))


@dataclass
class Decoded:
    tokens: torch.Tensor     # [N, L] ids, <eos> included when produced, then <pad>
    lengths: torch.Tensor    # [N] tokens up to and including <eos> (max_len when none was produced)
    log_prob: torch.Tensor   # [N] sum of the model's log-probabilities of those tokens


def _start(model, z: torch.Tensor | None, n: int | None):
    if z is None and n is None:
        raise SeqvaeError("decoding needs z (a latent-variable model) or n (how many sentences to generate)")
    n = z.shape[0] if z is not None else int(n)
    state = model.init_decoder_state(z, n)
    device = state[0].device
    tokens = torch.full((n,), model.sos_id, dtype=torch.long, device=device)
    return n, state, tokens, device


def allowed_log_probs(model, log_probs: torch.Tensor) -> torch.Tensor:
    """The step's log-probabilities with the tokens that are never generated (<pad>, <sos>) set to -inf."""
    return log_probs.index_fill(-1, torch.tensor([model.pad_id, model.sos_id], device=log_probs.device),
                                float("-inf"))


def filter_log_probs(log_probs: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0) -> torch.Tensor:
    """The distribution to sample from: tempered, then restricted to the top k and/or the nucleus of mass
    top_p (the smallest set of most likely tokens whose probability reaches top_p); -inf elsewhere."""
    logits = log_probs / temperature
    if top_k and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs        # mass of the strictly more likely tokens
        remove_sorted = before >= top_p
        remove_sorted[..., 0] = False                       # always keep the most likely token
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def _steps(max_len: int, label: str | None) -> tqdm:
    """The decoding steps; with a label, a progress bar once the decode has run PROGRESS_AFTER_S seconds."""
    return tqdm(range(max_len), desc=label, unit="token", delay=PROGRESS_AFTER_S, leave=False,
                disable=label is None)


@torch.no_grad()
def _left_to_right(model, z, n, max_len, choose, progress: str | None = None, rules: Rules | None = None
                   ) -> Decoded:
    with eval_mode(model), _steps(max_len, progress) as steps:
        n, state, tokens, device = _start(model, z, n)
        out = torch.full((n, max_len), model.pad_id, dtype=torch.long, device=device)
        log_prob = torch.zeros(n, device=device)
        lengths = torch.full((n,), max_len, dtype=torch.long, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        for t in steps:
            lp, state = model.decoder_step(tokens, state, z)
            allowed = allowed_log_probs(model, lp)
            tokens = choose(rules.apply(model, allowed, out[:, :t]) if rules is not None else allowed)
            tokens = tokens.masked_fill(done, model.pad_id)
            log_prob += lp.gather(1, tokens.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0)
            out[:, t] = tokens
            ended = ~done & (tokens == model.eos_id)
            lengths[ended] = t + 1
            done |= ended
            if bool(done.all()):
                out = out[:, :t + 1]
                break
        return Decoded(out, lengths, log_prob)


def greedy(model, z: torch.Tensor | None = None, n: int | None = None, max_len: int = 100,
           progress: str | None = None, rules: Rules | None = None) -> Decoded:
    """The most likely token at every step (deterministic)."""
    return _left_to_right(model, z, n, max_len, lambda lp: lp.argmax(-1), progress, rules)


def sample(model, z: torch.Tensor | None = None, n: int | None = None, max_len: int = 100,
           generator: torch.Generator | None = None, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, progress: str | None = None, rules: Rules | None = None) -> Decoded:
    """Ancestral sampling, optionally tempered and restricted to the top k / the nucleus of mass top_p.
    temperature=0 is greedy decoding."""
    check_arguments("", RULES, temperature=temperature, top_k=top_k, top_p=top_p)
    if temperature == 0:
        return greedy(model, z, n, max_len, progress, rules)

    def choose(lp: torch.Tensor) -> torch.Tensor:
        probs = filter_log_probs(lp, temperature, top_k, top_p).exp()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _left_to_right(model, z, n, max_len, choose, progress, rules)


@torch.no_grad()
def beam_search(model, z: torch.Tensor | None = None, n: int | None = None, beam_width: int = 5,
                max_len: int = 100, length_penalty: float = 0.0, progress: str | None = None,
                rules: Rules | None = None) -> Decoded:
    """Beam search, batched over sentences. A finished hypothesis stays in its beam with a fixed score;
    the search ends when every beam's hypotheses are finished or at max_len. Returns, per sentence, the
    hypothesis with the best total log-probability (divided by length**length_penalty when > 0)."""
    check_arguments("", RULES, beam_width=beam_width)
    k = beam_width
    with eval_mode(model), _steps(max_len, progress) as steps:
        n, state, _, device = _start(model, z, n)
        state = tuple(s.repeat_interleave(k, dim=1) for s in state)
        zk = z.repeat_interleave(k, dim=0) if z is not None else None
        tokens = torch.full((n * k,), model.sos_id, dtype=torch.long, device=device)
        scores = torch.full((n, k), float("-inf"), device=device)
        scores[:, 0] = 0.0                                   # all beams start identical: expand one
        history = torch.empty(n, k, 0, dtype=torch.long, device=device)
        lengths = torch.zeros(n, k, dtype=torch.long, device=device)
        done = torch.zeros(n, k, dtype=torch.bool, device=device)
        base = (torch.arange(n, device=device) * k).unsqueeze(1)
        for _ in steps:
            lp, state = model.decoder_step(tokens, state, zk)
            v = lp.shape[-1]
            lp = allowed_log_probs(model, lp)
            if rules is not None:
                lp = rules.apply(model, lp, history.reshape(n * k, -1))
            lp = lp.view(n, k, v)
            # A finished hypothesis can only be extended by <pad>, at no cost.
            frozen = torch.full_like(lp[0, 0], float("-inf"))
            frozen[model.pad_id] = 0.0
            lp = torch.where(done.unsqueeze(-1), frozen, lp)
            cand = (scores.unsqueeze(-1) + lp).view(n, k * v)
            scores, flat = cand.topk(k, dim=-1)
            beam, tok = flat // v, flat % v
            history = torch.cat([history.gather(1, beam.unsqueeze(-1).expand(-1, -1, history.shape[-1])),
                                 tok.unsqueeze(-1)], dim=-1)
            done = done.gather(1, beam)
            lengths = lengths.gather(1, beam) + (~done).long()
            done = done | (tok == model.eos_id)
            rows = (base + beam).view(-1)
            state = tuple(s.index_select(1, rows) for s in state)
            tokens = tok.view(-1)
            if bool(done.all()):
                break
        ranked = scores / lengths.clamp(min=1).float() ** length_penalty if length_penalty > 0 else scores
        best = ranked.argmax(-1)
        pick = lambda a: a.gather(1, best.view(n, 1, *([1] * (a.dim() - 2))).expand(n, 1, *a.shape[2:])).squeeze(1)
        out_tokens, out_len, out_score = pick(history), pick(lengths), pick(scores)
        width = int(out_len.max()) if n else 0
        return Decoded(out_tokens[:, :width].contiguous(), out_len, out_score)


def decode(model, z: torch.Tensor | None = None, n: int | None = None, strategy: str = "greedy",
           max_len: int = 100, generator: torch.Generator | None = None, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, beam_width: int = 5, length_penalty: float = 0.0,
           progress: str | None = None, rules: Rules | None = None) -> Decoded:
    """One entry point for the sampler: strategy = greedy | sample | beam. progress: a label for the progress bar
    a long decode shows (none without). rules: Rules, or None for the model's distribution as it is."""
    if strategy == "greedy":
        return greedy(model, z, n, max_len, progress, rules)
    if strategy == "sample":
        return sample(model, z, n, max_len, generator, temperature, top_k, top_p, progress, rules)
    if strategy == "beam":
        return beam_search(model, z, n, beam_width, max_len, length_penalty, progress, rules)
    raise SeqvaeError(f"decoding strategy {strategy!r} is not allowed; expected one of: {', '.join(STRATEGIES)}")


# ------------------------------------------------------------------------------ helpers for samplers

def to_text(dm, decoded: Decoded) -> list[str]:
    """Decoded sequences as strings (dm: a TextData; stops at <eos>)."""
    return [dm.decode_ids(row[:n]) for row, n in zip(decoded.tokens.tolist(), decoded.lengths.tolist())]


def homotopy(z_from: torch.Tensor, z_to: torch.Tensor, steps: int) -> torch.Tensor:
    """Points on the straight line between two latent codes [D] (Bowman et al.'s homotopies): [steps, D]."""
    t = torch.linspace(0.0, 1.0, steps, device=z_from.device).unsqueeze(1)
    return (1 - t) * z_from.unsqueeze(0) + t * z_to.unsqueeze(0)


@torch.no_grad()
def reconstruct(model, batch: dict, strategy: str = "greedy", max_len: int = 100, **kwargs) -> Decoded:
    """Decode each sentence of a batch from its posterior mean."""
    with eval_mode(model):
        mu = model.posterior(batch).mean
    return decode(model, mu, strategy=strategy, max_len=max_len, **kwargs)
