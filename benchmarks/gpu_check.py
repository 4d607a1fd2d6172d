"""GPU check (issue 23, item 4): seqvae trains, evaluates and samples MNIST, PTB and ECG5000 on CUDA, timed against
the textbook loops of benchmarks/; one table at the end.

What runs. Each seqvae step is a subprocess `python -m seqvae_cli VERB ... device=DEV run_dir=TMP/NAME` with a
timeout; one that fails puts "failed: <its last error line>" in its rows (its output stays in TMP), the rest go on.
  mnist       experiment=mnist_pe, float32, trainer.cuda_graphs=false (eager) and =auto (the training step captured
              once as a CUDA graph): seconds per epoch (target with auto <= 0.2 s) and the two loss curves (train loss
              per epoch; "same" = max relative difference <= 1e-3); then `seqvae eval` (limit_examples, k=50) and
              `seqvae sample`. Textbook: pytorch/examples vae/main.py as it runs on CUDA (mnist_speed.py's model and
              loss; torchvision MNIST + ToTensor, DataLoader(batch 128, shuffle, num_workers=1, pin_memory),
              data.to(device) and loss.item() each step) on the same 50,000 images.
  mnist_bf16  experiment=mnist_pe trainer.precision=bf16-mixed.
  iwae        experiment=mnist_iwae (k=50), bf16-mixed, validation IW-NLL k=50 each epoch: s/epoch (target <= 0.5 s).
  ptb         the Sentence-VAE of text_speed.py (GRU 256, embeddings 300, z 16, batch 32, Adam 1e-3) in float32 /
  ptb_bf16    bf16-mixed, on a fraction of each epoch: training tokens/s (target >= 3x the textbook loop on the same
              device); ptb also evals and samples. Textbook: text_speed.py's timbmg/Sentence-VAE-style step (padded
              to the batch's longest sentence, every position projected), DataLoader(batch 32, shuffle), .to(device).
  ecg         experiment=ecg5000: seconds per epoch, eval and sample.
  ddp         experiment=mnist_pe trainer.devices=<visible GPUs> (DDP via torchrun); one GPU: "skipped: 1 GPU";
              --device cpu: 2 gloo processes.

How it is timed
  * seconds per epoch: what train.log's "epoch N: train loss ... (S steps, T s)" line gives for the training pass
    (the trainer reads its sums back from the device first, so the GPU work is in), median over epochs 2.. (epoch 1
    holds warm-up and graph capture). Beside it, from the lines' millisecond timestamps, "line to line": from the
    previous epoch's validation line to this epoch's line = training pass + the last.pt write (used when a line
    gives no seconds); "val" = validation line minus train line.
  * PTB tokens/s: tokens (words + <eos>) of epochs 2.. / their training seconds as above. The tokens are exact:
    the Trainer's batch order is replayed (its shuffle generator is seeded trainer.seed + 1) on the same TextData.
  * textbook loops: time.perf_counter after a warm-up epoch (MNIST) or 30 batches (PTB); loss.item() syncs.
  * "process": the whole subprocess (start-up, data loading, CUDA init).

Run from the repository root, data under $SEQVAE_DATA_DIR (MNIST/raw, ptb/, ECG5000/), no network needed:
    python benchmarks/gpu_check.py --out gpu_check.json          # one GPU, ~3 min; --budget caps it
    python benchmarks/gpu_check.py --device cpu --quick          # the plumbing with tiny limits, on a CPU
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]   # seqvae_cli, mnist_speed, text_speed
PARTS = ("mnist", "mnist_bf16", "iwae", "ptb", "ptb_bf16", "ecg", "ddp")
MNIST_PE, BF16 = ["experiment=mnist_pe", "data.download=false"], ["trainer.precision=bf16-mixed"]
PTB_VAE = ["model=lstm_vae", "data=ptb", "model.rnn=gru", "model.embed_dim=300", "model.hidden_size=256",
           "model.latent_dim=16", "data.batch_size=32", "optim=adam", "optim.lr=1e-3", "data.download=false"]
QUICK_BATCHES = 4   # --quick: training batches per epoch, seqvae and textbook
LOG = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^]]*\]\[\w+\] - epoch (\d+)"
                 r"(?:: train loss ([^,]+),.*\((\d+) steps(?:, ([\d.]+) s)?\)| validation:)")


class Skipped(Exception):
    pass


def error_line(text: str) -> str:
    """The telling line of a failure: the last unindented line that names an error."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    flat = [ln for ln in lines if not ln[0].isspace()]
    errors = [ln for ln in flat if re.search(r"error|exception|not in struct|could not", ln, re.I)]
    return (errors or flat or lines or ["(no output)"])[-1][:200]


def parse_log(path: Path) -> list[dict]:
    """Per epoch: train loss, cumulative steps, training seconds as logged (or None), seconds since the previous
    epoch's last line (None for epoch 1), validation seconds."""
    epochs, last = {}, None
    for line in path.read_text().splitlines():
        if not (m := LOG.match(line)):
            continue
        t, n = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f"), int(m[2])
        if m[4] is not None:
            epochs[n] = {"loss": float(m[3]), "steps": int(m[4]), "logged_s": float(m[5]) if m[5] else None,
                         "line_s": (t - last).total_seconds() if last and n > 1 else None, "at": t, "val_s": 0.0}
        elif n in epochs:
            epochs[n]["val_s"] = (t - epochs[n]["at"]).total_seconds()
        last = t
    return [epochs[n] for n in sorted(epochs)]


def later_epochs(run: dict) -> list[dict]:
    """Epochs 2.. with "train_s": the logged training seconds, else line to line."""
    later = run["epochs"][1:]
    if not later:
        raise RuntimeError(f"train.log has {len(run['epochs'])} epoch line(s); timing needs 2")
    return [{**e, "train_s": e["logged_s"] if e["logged_s"] is not None else e["line_s"]} for e in later]


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.quick, self.device = args, args.quick, torch.device(args.device)
        self.rows, self.cache, self.start = [], {}, time.time()
        self.tmp = Path(tempfile.mkdtemp(prefix="seqvae_gpu_check_"))
        self.env = {**os.environ, "SEQVAE_DATA_DIR": args.data_dir}

    def say(self, msg: str) -> None:
        print(f"[{time.time() - self.start:6.1f} s] {msg}", flush=True)

    def once(self, key: str, make):
        """make() once; its result, or its exception, is what every later call gets."""
        if key not in self.cache:
            try:
                self.cache[key] = (True, make())
            except Exception as exc:   # noqa: BLE001 - reported by the rows that need it
                self.cache[key] = (False, exc)
        ok, value = self.cache[key]
        if not ok:
            raise value
        return value

    def row(self, part: str, work: str, cells) -> None:
        try:
            cells = cells() if callable(cells) else cells
        except Skipped as exc:
            cells = {"status": f"skipped: {exc}"}
        except Exception as exc:   # noqa: BLE001 - one failing part must not stop the rest
            cells = {"status": f"failed: {error_line(str(exc)) or type(exc).__name__}"}
        row = {"part": part, "work": work, "seqvae": "", "textbook": "", "ratio/target": "", "status": "ok", **cells}
        self.rows.append(row)
        self.say(" | ".join(row[k] for k in ("work", "seqvae", "textbook", "ratio/target", "status")))

    def judge(self, ok: bool) -> str:
        return "ok (--quick: no target)" if self.quick else ("PASS" if ok else "MISS")

    def seqvae(self, verb: str, overrides: list[str], run: Path) -> float:
        left = self.args.budget - (time.time() - self.start)   # no command runs past the budget
        if left < 20:
            raise Skipped(f"--budget of {self.args.budget:.0f} s used up")
        timeout = min(self.args.timeout, left)
        cmd = [sys.executable, "-m", "seqvae_cli", verb, *overrides, f"device={self.device.type}", f"run_dir={run}"]
        self.say("$ python " + " ".join(cmd[1:]))
        start = time.time()
        try:
            p = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{verb} timed out after {timeout:.0f} s") from None
        if p.returncode != 0:
            (self.tmp / f"{run.name}_{verb}.log").write_text(p.stdout + p.stderr)
            raise RuntimeError(f"{verb}: {error_line(p.stderr + p.stdout)}")
        return time.time() - start

    def train(self, name: str, overrides: list[str] = ()) -> dict:
        """The training run `name`, started (with these overrides) the first time it is asked for."""
        def make():
            common = [f"trainer.max_epochs={self.args.epochs}", "trainer.progress_bar=false", "trainer.test=false",
                      "trainer.log_visuals=false"]
            if self.quick:
                common += ["trainer.limit_val_batches=1", "data.eval_batch_size=100"]
                if not any(o.startswith("trainer.limit_train_batches=") for o in overrides):
                    common.append(f"trainer.limit_train_batches={QUICK_BATCHES}")
            run = self.tmp / name
            wall = self.seqvae("train", [*overrides, *common], run)
            return {"run": run, "wall": wall, "epochs": parse_log(run / "train.log")}
        return self.once(name, make)

    def eval_and_sample(self, run: Path, examples: int) -> dict:
        n, k = (100, 5) if self.quick else (examples, 50)
        eval_s = self.seqvae("eval", [f"limit_examples={n}", f"iw_samples={k}"], run)
        test = json.loads((run / "eval.json").read_text())["test"]
        shown = ", ".join(f"{key} {test[key]:.2f}" for key in ("neg_elbo", "iw_nll", "auroc") if key in test)
        few = ["num_samples=8", "num_reconstructions=4", "scatter_points=300", "forecast_windows=3", "num_forecasts=10"]
        sample_s = self.seqvae("sample", few if self.quick else [], run)
        files = len(list((run / "samples").glob("*")))
        return {"seqvae": f"eval {eval_s:.0f} s ({n} test examples, k={k}: {shown}); "
                          f"sample {sample_s:.0f} s ({files} files)"}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    # ------------------------------------------------------------------------------------- textbook loops
    def textbook_mnist(self) -> float:
        """pytorch/examples vae/main.py's train() on self.device: median seconds per epoch after the first."""
        from mnist_speed import NUM_TRAIN, VAE, textbook_train_epoch
        from torch.utils.data import DataLoader, Subset
        from torchvision import datasets, transforms
        torch.manual_seed(0)
        mnist = datasets.MNIST(self.args.data_dir, train=True, transform=transforms.ToTensor())
        train = Subset(mnist, range(NUM_TRAIN))
        kwargs = {"num_workers": 1, "pin_memory": True} if self.device.type == "cuda" else {}
        loader = DataLoader(train, batch_size=128, shuffle=True, **kwargs)
        model = VAE().to(self.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        seconds = []
        for _ in range(self.args.textbook_epochs):
            start = time.perf_counter()
            textbook_train_epoch(model, loader, optimizer, self.device, QUICK_BATCHES if self.quick else None)
            self.sync()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds[1:])

    def ptb_data(self):
        """The TextData `seqvae train` builds for PTB_VAE (the same composed config), on the CPU; and the config."""
        import hydra
        from seqvae_cli.parts import build_part
        from seqvae_cli.config.runtime import register_resolvers
        register_resolvers()
        with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = hydra.compose(config_name="train", overrides=PTB_VAE + [f"paths.data_dir={self.args.data_dir}"])
        dm = build_part(cfg.data, "data")
        dm.setup(torch.device("cpu"))
        return dm, cfg

    def textbook_ptb(self) -> float:
        """text_speed.py's textbook step on self.device: tokens/s over the timed batches."""
        from text_speed import BATCH, SentenceDataset, SentenceVAE, pad_collate, textbook_loss
        from torch.utils.data import DataLoader
        dm, _ = self.once("ptb_data", self.ptb_data)
        torch.manual_seed(0)
        train_x, train_len = dm.splits["train"]
        sentences = [row[:n - 1] for row, n in zip(train_x.tolist(), train_len.tolist())]   # words, no <eos>
        loader = DataLoader(SentenceDataset(sentences, dm.sos_id, dm.eos_id), batch_size=BATCH, shuffle=True,
                            collate_fn=pad_collate(dm.pad_id))
        model = SentenceVAE(dm.vocab_size, dm.pad_id).to(self.device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        nll = torch.nn.NLLLoss(ignore_index=dm.pad_id, reduction="sum")
        warmup, timed = (2, QUICK_BATCHES) if self.quick else (30, 400)
        tokens, start = 0, 0.0
        for i, (inputs, targets, lengths) in enumerate(loader):   # 1,315 batches: one pass is enough
            if i == warmup:
                self.sync()
                tokens, start = 0, time.perf_counter()
            if i == warmup + timed:
                break
            # lengths stay on the CPU: they only index the encoder's outputs
            loss = textbook_loss(model, nll, inputs.to(self.device), targets.to(self.device), lengths)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            tokens += int(lengths.sum())
        self.sync()
        return tokens / (time.perf_counter() - start)

    def ptb_epoch_tokens(self, epochs: int, limit: int | float) -> list[tuple[int, int]]:
        """(batches, tokens) of each epoch the Trainer trains with limit_train_batches=limit: its order replayed."""
        from seqvae_cli.data.base import batch_limit
        dm, cfg = self.once("ptb_data", self.ptb_data)
        gen, lengths, out = torch.Generator().manual_seed(int(cfg.trainer.seed) + 1), dm._cpu_lengths["train"], []
        for _ in range(epochs):
            batches = dm.train_batch_indices(gen)
            batches = batches[:batch_limit(limit, len(batches))]
            out.append((len(batches), sum(int(lengths[idx].sum()) for idx in batches)))
        return out


# ---------------------------------------------------------------------------------------------- the parts
def speed(c: Check, name: str, overrides: list[str], target: float | None = None, textbook=None):
    """The cells of a seconds-per-epoch row; textbook: a Check method giving the textbook's seconds per epoch."""
    def cells():
        run = c.train(name, overrides)
        later = later_epochs(run)
        s, line, val = (statistics.median(e[k] for e in later) for k in ("train_s", "line_s", "val_s"))
        out = {"seqvae": f"{s:.3f} s/epoch (line to line {line:.3f} s; val {val:.3f} s; process {run['wall']:.0f} s)"}
        notes = []
        if textbook:
            try:
                t = c.once(textbook.__name__, textbook)
                out["textbook"] = f"{t:.3f} s/epoch"
                notes.append(f"{t / s:.1f}x faster")
            except Exception as exc:   # noqa: BLE001 - the seqvae side still counts
                out["textbook"] = f"failed: {error_line(str(exc))}"
        if target is not None:
            notes.append(f"target <= {target} s")
            out["status"] = c.judge(s <= target)
        return {**out, "ratio/target": "; ".join(notes)}
    return cells


def part_mnist(c: Check) -> None:
    eager, auto = MNIST_PE + ["trainer.cuda_graphs=false"], MNIST_PE + ["trainer.cuda_graphs=auto"]
    c.row("mnist", "mnist_pe train fp32, cuda_graphs=false (eager)",
          speed(c, "mnist_eager", eager, None, c.textbook_mnist))
    c.row("mnist", "mnist_pe train fp32, cuda_graphs=auto", speed(c, "mnist_auto", auto, 0.2, c.textbook_mnist))

    def curves():
        a, b = ([e["loss"] for e in c.train(n)["epochs"]] for n in ("mnist_auto", "mnist_eager"))
        diff = max(abs(x - y) / abs(y) for x, y in zip(a, b))
        return {"seqvae": f"max rel. diff {diff:.1e} over {len(a)} epochs (last: auto {a[-1]:.4f}, eager {b[-1]:.4f})",
                "ratio/target": "<= 1e-3 (same curve)",
                "status": "PASS" if diff <= 1e-3 and len(a) == len(b) else "MISS"}

    def eval_sample():   # on the auto run, else the eager one
        ok = [n for n in ("mnist_auto", "mnist_eager") if c.cache.get(n, (False,))[0]]
        return c.eval_and_sample(c.train(ok[0] if ok else "mnist_auto")["run"], 1000)
    c.row("mnist", "mnist_pe loss curve: auto vs eager", curves)
    c.row("mnist", "mnist_pe eval + sample", eval_sample)


def part_ptb(c: Check, bf16: bool) -> None:
    name, limit = ("ptb_bf16" if bf16 else "ptb"), (QUICK_BATCHES if c.quick else c.args.ptb_fraction)

    def cells():
        run = c.train(name, PTB_VAE + (BF16 if bf16 else []) + [f"trainer.limit_train_batches={limit}"])
        later = later_epochs(run)
        replay = c.ptb_epoch_tokens(len(run["epochs"]), limit)
        steps = [e["steps"] for e in run["epochs"]]
        if [n for n, _ in replay] != [b - a for a, b in zip([0] + steps, steps)]:
            raise RuntimeError("the replayed batch order does not match the run's steps per epoch")
        tokens, seconds = sum(t for _, t in replay[1:]), sum(e["train_s"] for e in later)
        line = tokens / sum(e["line_s"] for e in later)
        tps, t = tokens / seconds, c.once("textbook_ptb", c.textbook_ptb)
        return {"seqvae": f"{tps:,.0f} tokens/s ({tokens:,} tokens in {seconds:.2f} s; line to line {line:,.0f}; "
                          f"process {run['wall']:.0f} s)",
                "textbook": f"{t:,.0f} tokens/s", "ratio/target": f"{tps / t:.2f}x; target >= 3x",
                "status": c.judge(tps >= 3 * t)}
    c.row(name, f"PTB Sentence-VAE train {'bf16-mixed' if bf16 else 'fp32'}", cells)
    if not bf16:
        c.row(name, "PTB eval + sample", lambda: c.eval_and_sample(c.train(name)["run"], 256))


def part_ddp(c: Check) -> None:
    n = torch.cuda.device_count() if c.device.type == "cuda" else 2
    if n < 2:
        c.row("ddp", "DDP mnist_pe", {"status": "skipped: 1 GPU"})
    else:
        c.row("ddp", f"DDP mnist_pe, trainer.devices={n} (the whole job's s/epoch)",
              speed(c, "ddp", MNIST_PE + [f"trainer.devices={n}"]))


PART_RUNS = {
    "mnist": part_mnist,
    "mnist_bf16": lambda c: c.row("mnist_bf16", "mnist_pe train bf16-mixed", speed(c, "mnist_bf16", MNIST_PE + BF16)),
    "iwae": lambda c: c.row("iwae", "mnist_iwae k=50 train bf16-mixed (val: IW-NLL k=50)",
                            speed(c, "iwae", ["experiment=mnist_iwae", "data.download=false"] + BF16, 0.5)),
    "ptb": lambda c: part_ptb(c, False),
    "ptb_bf16": lambda c: part_ptb(c, True),
    "ecg": lambda c: (c.row("ecg", "ECG5000 train fp32", speed(c, "ecg", ["experiment=ecg5000"])),
                      c.row("ecg", "ECG5000 eval + sample", lambda: c.eval_and_sample(c.train("ecg")["run"], 1000))),
    "ddp": part_ddp,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("SEQVAE_DATA_DIR", "./data"))
    p.add_argument("--out", type=Path, help="write the rows, the table and the setup here as JSON (and FILE.md)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help=f"tiny limits ({QUICK_BATCHES} batches an epoch): the plumbing")
    p.add_argument("--epochs", type=int, help="epochs per training run (default 3; --quick 2); epoch 1 is warm-up")
    p.add_argument("--textbook-epochs", type=int, default=2, help="textbook MNIST epochs; the first is warm-up")
    p.add_argument("--ptb-fraction", type=float, default=0.25, help="PTB trainer.limit_train_batches per epoch")
    p.add_argument("--timeout", type=int, default=150, help="seconds allowed to each seqvae command")
    p.add_argument("--budget", type=float, help="seconds after which no seqvae command runs (cuda 270, cpu 900)")
    p.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("torch sees no CUDA device here; --device cpu --quick checks the plumbing on the CPU")
    args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    args.epochs = args.epochs or (2 if args.quick else 3)
    args.budget = args.budget or (270 if args.device == "cuda" else 900)
    c = Check(args)
    name = torch.cuda.get_device_name(0) if c.device.type == "cuda" else "CPU"
    setup = (f"seqvae GPU check on {name} (torch {torch.__version__}, {torch.cuda.device_count()} visible GPU(s)), "
             f"{args.epochs} epochs per run{', --quick' if args.quick else ''}; work folder {c.tmp}")
    c.say(setup)
    for part in PARTS:
        if part not in args.skip:
            PART_RUNS[part](c)
    cols = ("work", "seqvae", "textbook", "ratio/target", "status")
    table = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                      + ["| " + " | ".join(r[k] for k in cols) + " |" for r in c.rows])
    total = time.time() - c.start
    print(f"\n{setup}\n\n{table}\n\ntotal {total:.0f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"setup": setup, "args": {k: str(v) for k, v in vars(args).items()},
                                        "total_seconds": round(total, 1), "rows": c.rows, "markdown": table}, indent=2))
        args.out.with_suffix(".md").write_text(f"{setup}\n\n{table}\n\ntotal {total:.0f} s\n")


if __name__ == "__main__":
    main()
