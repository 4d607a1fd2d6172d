"""Text data: one sentence per line, a vocabulary built from the training file, length-bucketed batches.

Every sentence is stored as its token ids followed by <eos>; <sos> is only ever a decoder input and is
never counted. Each split lives on the training device as a padded LongTensor [N, Lmax] (pad = 0)
plus lengths [N] (which include the <eos>). A training epoch costs a handful of tensor operations:
shuffle, cut into buckets of `bucket_size` batches, sort each bucket by length, cut into batches,
shuffle the batch order, gather. A batch is {"x": LongTensor [B, T], "lengths": LongTensor [B]}
with T the longest sentence of the batch.

The vocabulary travels with checkpoints (state_dict), so eval/sample never rebuild a different one.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import torch

from seqvae_cli.config.rules import BOOLEAN, check_arguments, number, one_of, optional_positive_int, value_error
from seqvae_cli.data.base import (Batch, DataModule, batch_limit, failure_cause, read_text_file, remove_empty_folders,
                                  resolve_data_dir)
from seqvae_cli.errors import SeqvaeError

log = logging.getLogger("seqvae")


PAD, UNK, SOS, EOS = "<pad>", "<unk>", "<sos>", "<eos>"


SPECIALS = (PAD, UNK, SOS, EOS)          # ids 0, 1, 2, 3
TOKENIZERS = ("whitespace", "simple")
RELATIVE_TO = ("data_dir", "cwd")


# `simple`: keep <unk>-style markers whole, words with inner hyphens, apostrophes, dots or commas whole
# ("don't", "well-known", "3.5", "1,000"), and split every other punctuation mark off as its own token.
_SIMPLE = re.compile(r"<[A-Za-z]+>|\w+(?:[-'.,]\w+)*|[^\w\s]", re.UNICODE)


# Mikolov's split of the Penn Treebank, as distributed with Zaremba et al.'s LSTM code.
PTB_URL = "https://raw.githubusercontent.com/tomsercu/lstm/master/data/{}"
PTB_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}


# ------------------------------------------------------------------------------------- tokenising

def tokenize(line: str, tokenizer: str = "whitespace", lowercase: bool = False) -> list[str]:
    """Split one line into tokens. whitespace: split on spaces; simple: also split off punctuation."""
    if lowercase:
        line = line.lower()
    if tokenizer == "whitespace":
        return line.split()
    if tokenizer == "simple":
        return _SIMPLE.findall(line)
    raise value_error("data.tokenizer", tokenizer, TextData.RULES["tokenizer"])


def read_sentences(path: Path, tokenizer: str, lowercase: bool) -> list[list[str]]:
    """Tokenised non-blank lines of `path`; a missing, unreadable or empty file is a SeqvaeError."""
    text = read_text_file(path, f"text file {path}", "data.train_file/val_file/test_file and paths.data_dir "
                                                      "(or $SEQVAE_DATA_DIR)", encoding="utf-8-sig")
    sentences, blank = [], 0
    for line in text.splitlines():
        tokens = tokenize(line, tokenizer, lowercase)
        if tokens:
            sentences.append(tokens)
        else:
            blank += 1
    if not sentences:
        raise SeqvaeError(f"text file {path} holds no sentences (it is empty or blank); "
                          f"expected one sentence per line")
    if blank:
        log.info("%s: skipped %d blank line%s", path, blank, "" if blank == 1 else "s")
    return sentences


def build_vocabulary(sentences: Sequence[Sequence[str]], min_freq: int = 1, max_size: int | None = None
                     ) -> list[str]:
    """itos: the four specials, then words by descending frequency, ties broken alphabetically.

    The file's own "<unk>" (PTB has one) is the <unk> special, not a word; max_size counts words only."""
    counts = Counter(tok for sent in sentences for tok in sent)
    for special in SPECIALS:
        counts.pop(special, None)
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[:max_size]
    return list(SPECIALS) + words


def find_or_download_ptb(folder: Path, download: bool, needed: tuple[str, ...] = tuple(PTB_MD5)) -> None:
    """Make sure the PTB files `needed` (default: all three) are in `folder`, downloading them (md5-checked, with a
    progress bar) if asked."""
    missing = [f for f in needed if not (folder / f).is_file()]
    if not missing:
        return
    reason = "data.download=false"
    if download:
        created = [p for p in (folder.parent, folder) if not p.exists()]
        try:
            from torchvision.datasets.utils import download_url
            for name in missing:
                log.info("downloading %s to %s", name, folder)
                download_url(PTB_URL.format(name), str(folder), filename=name, md5=PTB_MD5[name])
            missing = [f for f in needed if not (folder / f).is_file()]
            if not missing:
                return
            reason = "the download finished but files are still missing"
        except Exception as exc:  # no network, read-only folder, checksum mismatch, ...
            reason = f"download failed: {failure_cause(exc)}"
            _remove_corrupt(folder, missing)
            remove_empty_folders(created)
    raise SeqvaeError(
        f"Penn Treebank not found: expected {', '.join(needed)} in {folder} (missing {', '.join(missing)}; "
        f"{reason}). Put Mikolov's PTB split there or set paths.data_dir (or $SEQVAE_DATA_DIR) to the folder "
        f"that holds ptb/, or try the offline demo that needs no download: seqvae train experiment=sines.")


def _remove_corrupt(folder: Path, names: list[str]) -> None:
    """Delete what a failed download left behind, so the next run does not take it for the data."""
    try:
        from torchvision.datasets.utils import check_integrity
    except ImportError:
        return
    for name in names:
        path = folder / name
        if path.is_file() and not check_integrity(str(path), PTB_MD5[name]):
            try:
                path.unlink()
            except OSError:
                pass


def pad_ids(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> padded LongTensor [N, Lmax] (pad 0) and lengths [N], without a per-row Python copy."""
    lengths = torch.tensor([len(s) for s in ids], dtype=torch.long)
    flat = torch.tensor([t for s in ids for t in s], dtype=torch.long)
    n, lmax = len(ids), int(lengths.max()) if ids else 0
    x = torch.zeros(n, lmax, dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(n), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    cols = torch.arange(flat.numel()) - torch.repeat_interleave(starts, lengths)
    x[rows, cols] = flat
    return x, lengths


# ----------------------------------------------------------------------------------- data module

class TextData(DataModule):
    """Sentences from three text files (train/val/test), e.g. the Penn Treebank (conf/data/ptb.yaml)."""

    kind = "text"
    RULES = {
        "relative_to": one_of(*RELATIVE_TO),
        "lowercase": BOOLEAN,
        "tokenizer": one_of(*TOKENIZERS),
        "min_freq": number(1, integer=True),
        "max_size": optional_positive_int(),
        "max_train_len": optional_positive_int(),
        **DataModule.RULES,
        "bucket_size": number(1, integer=True),
        "iw_rows_per_chunk": number(1, integer=True),
        "download": BOOLEAN,
    }

    def __init__(self, train_file: str, val_file: str, test_file: str, data_dir: str = ".",
                 relative_to: str = "data_dir", lowercase: bool = False, tokenizer: str = "whitespace",
                 min_freq: int = 1, max_size: int | None = None, max_train_len: int | None = None,
                 batch_size: int = 32, eval_batch_size: int = 256, eval_iw_samples: int = 100,
                 bucket_size: int = 100, iw_rows_per_chunk: int = 4096, download: bool = False,
                 name: str = "text") -> None:
        check_arguments("data", self.RULES, tokenizer=tokenizer, relative_to=relative_to, min_freq=min_freq,
                        batch_size=batch_size, eval_batch_size=eval_batch_size, bucket_size=bucket_size,
                        iw_rows_per_chunk=iw_rows_per_chunk, max_size=max_size, max_train_len=max_train_len,
                        lowercase=lowercase, eval_iw_samples=eval_iw_samples, download=download)
        self.name, self.data_dir, self.relative_to = name, data_dir, relative_to
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.lowercase, self.tokenizer = bool(lowercase), tokenizer
        self.min_freq, self.max_size, self.max_train_len = min_freq, max_size, max_train_len
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.eval_iw_samples, self.bucket_size = eval_iw_samples, bucket_size
        self.iw_rows_per_chunk, self.download = iw_rows_per_chunk, download
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        self.loaded_state: dict | None = None
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.paths: dict[str, Path] = {}
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------------------- special ids
    pad_id, unk_id, sos_id, eos_id = 0, 1, 2, 3

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    # ------------------------------------------------------------------------------------ set-up
    def resolve(self, split: str) -> Path:
        """Where a split's file is: absolute as given, else under data_dir (relative_to=data_dir) or the cwd."""
        raw = Path(str(self.files[split])).expanduser()
        if raw.is_absolute():
            return raw
        if self.relative_to == "data_dir":
            return resolve_data_dir(self.data_dir) / raw
        path = raw.resolve()
        # A run trained from another directory: the checkpoint remembers where its files were.
        remembered = (self.loaded_state or {}).get("files", {}).get(split)
        if not path.exists() and remembered and Path(remembered).exists():
            return Path(remembered)
        return path

    def setup(self, device: torch.device, splits: tuple[str, ...] | None = None) -> None:
        self.device = torch.device(device)
        self.paths = {split: self.resolve(split) for split in ("train", "val", "test")}
        # The checkpoint's vocabulary stands in for the training file: only the splits asked for are read.
        from_checkpoint = splits is not None and self.loaded_state is not None
        wanted = tuple(splits) if from_checkpoint else ("train", "val", "test")
        if self.download:
            for folder in sorted({p.parent for p in self.paths.values()}):
                names = tuple(p.name for s, p in self.paths.items() if s in wanted and p.parent == folder
                              and p.name in PTB_MD5 and not p.is_file())
                if names:
                    find_or_download_ptb(folder, self.download, names)
        sentences = {split: read_sentences(self.paths[split], self.tokenizer, self.lowercase) for split in wanted}
        train = sentences.get("train")
        if train is None and wanted and self.paths["train"].is_file():
            # Scoring a split: the training file, when it is still there, tells whether the data moved under the run.
            train = read_sentences(self.paths["train"], self.tokenizer, self.lowercase)
        if train is not None:
            built = build_vocabulary(train, self.min_freq, self.max_size)
            if self.loaded_state is not None:
                self._check_vocabulary(built)
            self.itos = built
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if self.max_train_len is not None and "train" in sentences:
            kept = [s for s in sentences["train"] if len(s) <= self.max_train_len]
            dropped = len(sentences["train"]) - len(kept)
            if not kept:
                raise SeqvaeError(f"data.max_train_len={self.max_train_len} drops every training sentence of "
                                  f"{self.paths['train']}; raise it or set it to null")
            if dropped:
                log.info("%s: dropped %d of %d training sentences longer than %d tokens (data.max_train_len)",
                         self.paths["train"], dropped, len(sentences["train"]), self.max_train_len)
            sentences["train"] = kept
        for split, sents in sentences.items():
            x, lengths = pad_ids([self._ids(s) for s in sents])
            self.splits[split] = (x.to(self.device), lengths.to(self.device))
        # Per-sentence lengths on the CPU, to size batches without a device sync per batch.
        self._cpu_lengths = {split: lengths.cpu() for split, (_, lengths) in self.splits.items()}
        n_unk = {split: int((x == self.unk_id).sum()) for split, (x, _) in self.splits.items()}
        counts = ", ".join(f"{s} {self.num_examples(s)}" for s in self.splits) or "none read (the checkpoint's "\
                                                                                   "vocabulary)"
        log.info("%s: vocabulary %d (incl. 4 specials); sentences %s; <unk> tokens %s", self.name, self.vocab_size,
                 counts, n_unk)

    def _check_vocabulary(self, built: list[str]) -> None:
        stored = list(self.loaded_state["itos"])
        if stored == built:
            return
        differ = len(set(stored) ^ set(built))
        same_set = differ == 0
        raise SeqvaeError(
            f"the checkpoint's vocabulary does not match the data: it has {len(stored)} entries, while "
            f"{self.paths['train']} gives {len(built)} with the same settings "
            + ("(same words in a different order)" if same_set else f"({differ} words are in only one of them)")
            + "; the training file changed since the run was trained. Point data.train_file / paths.data_dir "
              "(or $SEQVAE_DATA_DIR) at the file the run was trained on, or train a new run on this data")

    def _ids(self, tokens: Sequence[str]) -> list[int]:
        stoi, unk = self.stoi, self.unk_id
        # Only <unk> of the specials may appear in text; a literal "<eos>"/"<sos>"/"<pad>" is an unknown word.
        return [stoi.get(t, unk) if t not in (PAD, SOS, EOS) else unk for t in tokens] + [self.eos_id]

    # ----------------------------------------------------------------------------- the interface
    def model_kwargs(self) -> dict:
        return {"vocab_size": self.vocab_size, "pad_id": self.pad_id, "unk_id": self.unk_id,
                "sos_id": self.sos_id, "eos_id": self.eos_id}

    def num_examples(self, split: str) -> int:
        return self.splits[split][0].shape[0]

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def num_tokens(self, split: str) -> int:
        """Tokens of a split counted as perplexity counts them: words plus one <eos> per sentence."""
        return int(self._cpu_lengths[split].sum())

    def train_batch_indices(self, shuffle_gen: torch.Generator) -> list[torch.Tensor]:
        """One epoch's batches as CPU index tensors: shuffled, bucketed, length-sorted, batch order shuffled."""
        lengths = self._cpu_lengths["train"]
        n = lengths.numel()
        perm = torch.randperm(n, generator=shuffle_gen)
        bucket = torch.arange(n) // (self.batch_size * self.bucket_size)
        key = bucket * (int(lengths.max()) + 1) + lengths[perm]
        order = perm[torch.sort(key, stable=True).indices]
        batches = list(torch.split(order, self.batch_size))
        batch_order = torch.randperm(len(batches), generator=shuffle_gen).tolist()
        return [batches[i] for i in batch_order]

    def _gather(self, split: str, idx: torch.Tensor) -> Batch:
        x, lengths = self.splits[split]
        t = int(self._cpu_lengths[split][idx].max())
        idx = idx.to(self.device)
        return {"x": x[idx, :t], "lengths": lengths[idx]}

    def train_batches(self, shuffle_gen: torch.Generator, data_gen: torch.Generator | None = None,
                      limit: int | float | None = None) -> Iterator[Batch]:
        batches = self.train_batch_indices(shuffle_gen)
        for idx in batches[:batch_limit(limit, len(batches))]:
            yield self._gather("train", idx)

    def eval_batches(self, split: str, batch_size: int | None = None,
                     limit: int | float | None = None) -> Iterator[Batch]:
        """Deterministic batches covering every sentence once: sentences sorted by length (ties in file order)
        are cut into batches, whose order is then shuffled with a fixed seed, so that a `limit` scores a
        representative subset rather than the shortest sentences."""
        bs = batch_size or self.eval_batch_size
        order = torch.sort(self._cpu_lengths[split], stable=True).indices
        chunks = torch.split(order, bs)
        batch_order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(0)).tolist()
        for i in batch_order[:batch_limit(limit, len(chunks))]:
            yield self._gather(split, chunks[i])

    def restrict(self, split: str, rows: torch.Tensor) -> None:
        x, lengths = self.splits[split]
        t = int(self._cpu_lengths[split][rows].max())
        self.splits[split] = (x[rows.to(x.device), :t], lengths[rows.to(lengths.device)])
        self._cpu_lengths[split] = self._cpu_lengths[split][rows]

    def state_dict(self) -> dict:
        return {"itos": list(self.itos), "tokenizer": self.tokenizer, "lowercase": self.lowercase,
                "min_freq": self.min_freq, "max_size": self.max_size,
                "files": {split: str(path) for split, path in self.paths.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Use the checkpoint's vocabulary (checked against the current train file in setup)."""
        if not state or "itos" not in state:
            return
        self.loaded_state = dict(state)
        # The tokenisation the vocabulary was built with wins over the config's (they normally agree).
        self.tokenizer = state.get("tokenizer", self.tokenizer)
        self.lowercase = bool(state.get("lowercase", self.lowercase))
        self.min_freq = state.get("min_freq", self.min_freq)
        self.max_size = state.get("max_size", self.max_size)
        self.itos = list(state["itos"])
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    # -------------------------------------------------------------------------- helpers for sampling
    def encode_sentence(self, text: str) -> torch.Tensor:
        """A sentence as the model reads it: ids of its tokens (unknown words -> <unk>) then <eos>."""
        if not self.itos:
            raise SeqvaeError("the text data has no vocabulary yet: call setup() (or load a checkpoint) first")
        tokens = tokenize(text, self.tokenizer, self.lowercase)
        if not tokens:
            raise SeqvaeError(f"the sentence {text!r} has no tokens ({self.tokenizer} tokenizer); "
                              f"give a sentence with at least one word")
        return torch.tensor(self._ids(tokens), dtype=torch.long)

    def batch_from_sentences(self, texts: Sequence[str]) -> Batch:
        """Several sentences as one padded batch on the data's device."""
        x, lengths = pad_ids([self.encode_sentence(t).tolist() for t in texts])
        return {"x": x.to(self.device), "lengths": lengths.to(self.device)}

    def decode_ids(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Token ids -> text, stopping at <eos>; <pad>/<sos> are skipped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.sos_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return " ".join(words)
