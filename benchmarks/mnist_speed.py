"""Per-epoch training speed of seqvae versus the textbook PyTorch VAE loop, on MNIST on the CPU.

What is compared
  * seqvae: `experiment=mnist_pe` (784-400-20 MLP-VAE, Bernoulli likelihood on grey levels, batch 128,
    Adam 1e-3), built from the real Hydra config and driven through `Trainer.train_epoch()`. Data sits
    in one tensor and batches are gathered by index.
  * textbook: the training loop of pytorch/examples `vae/main.py` as it runs on the CPU:
    torchvision MNIST + ToTensor, DataLoader(batch_size=128, num_workers=0), a VAE with fc1/fc21/fc22/
    fc3/fc4, summed BCE + KLD, Adam 1e-3. It trains on the same 50,000 images as seqvae (the first 50k
    of the training file; seqvae validates on the last 10k). Its per-batch progress prints are left out.

Only the training pass is timed (no validation, test pass or sample images), with time.perf_counter.
Epochs alternate (seqvae 1, seqvae bf16 1, textbook 1, seqvae 2, ...) so that a change in the load of the
machine hits all three alike; a speed-up is the mean of the per-epoch ratios textbook/seqvae.

Both trainings are made to compute the same thing, so their loss curves must agree to float noise:
  * same initial weights: seqvae's model right after it is built is copied into the textbook model;
  * same data order: one torch.randperm(50000) per epoch from a generator seeded with seed+1, as the
    Trainer's shuffle generator does;
  * same reparameterisation noise: each training starts from the global RNG state the Trainer's
    constructor leaves behind (torch.manual_seed(seed), then the five Linear layers' init), and
    nothing else in either loop draws from the global RNG.
What remains is float noise: seqvae minimises the batch mean with its logits-based Bernoulli
likelihood (models.bernoulli_log_prob, the same value as BCE-with-logits), the textbook the batch sum
with BCE on sigmoid outputs, and Adam's eps makes its step depend very slightly on that scale.
Both epoch losses are per example: the textbook's summed loss / 50,000, seqvae's batch losses weighted by
batch size.

A third side runs seqvae with trainer.precision=bf16-mixed (same seed, weights and batches): its matmuls
run in bfloat16 under autocast, so its loss curve differs from the others by bfloat16 rounding, more than
float noise; its speed-up is printed on its own line.

Run (from the repository root):
    export SEQVAE_DATA_DIR=/work/shared/data      # the folder holding MNIST/raw/
    python benchmarks/mnist_speed.py [--epochs 2] [--seed 42] [--data-dir DIR] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import hydra
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, RandomSampler, Subset
from torchvision import datasets, transforms

from seqvae_cli.config.rules import validate
from seqvae_cli.config.runtime import register_resolvers
from seqvae_cli.training.loop import Trainer

REPO = Path(__file__).resolve().parent.parent
NUM_TRAIN = 50_000  # seqvae: the first 50k training images train, the last 10k validate

# seqvae parameter prefix -> textbook layer. seqvae's encoder is Sequential(mlp([784, 400]), ReLU), so its
# first Linear is "encoder.0.0"; the decoder is Sequential(Linear, ReLU, Linear).
WEIGHT_MAP = {"encoder.0.0": "fc1", "posterior_head.mu_head": "fc21", "posterior_head.logvar_head": "fc22", "decoder.0": "fc3", "decoder.2": "fc4"}


# ------------------------------------------------------------------------------ the textbook model
class VAE(nn.Module):
    """pytorch/examples vae/main.py, unchanged (layers created in this order: fc1, fc21, fc22, fc3, fc4)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """Reconstruction + KL divergence, both summed over the batch (as in pytorch/examples)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def textbook_train_epoch(model, loader, optimizer, device: torch.device | None = None,
                         max_batches: int | None = None) -> float:
    """The example's train(epoch) without its prints; returns the loss summed over the epoch. device: where the
    example moves each batch (`data.to(device)`, its CUDA path); max_batches: stop early (gpu_check --quick)."""
    model.train()
    train_loss = 0.0
    for i, (data, _) in enumerate(loader):
        if i == max_batches:
            break
        if device is not None:
            data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    return train_loss


class OnePermutationPerEpoch(RandomSampler):
    """RandomSampler that draws exactly one torch.randperm(n) from its generator per epoch.

    torch's RandomSampler (replacement=False, num_samples == n) yields randperm(n) and then draws a
    second randperm(n) for the "num_samples % n" tail (here empty) once the first is exhausted, so
    its generator advances by two permutations per epoch. Epoch 1 would match seqvae's order and every
    later epoch would not. This keeps the generator in step with seqvae's shuffle generator.
    """

    def __iter__(self):
        yield from torch.randperm(len(self.data_source), generator=self.generator).tolist()


def load_seqvae_weights(textbook: VAE, seqvae_state: dict) -> None:
    mapped = {}
    for key, value in seqvae_state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in WEIGHT_MAP:
            raise KeyError(f"seqvae parameter {key} has no textbook counterpart; update WEIGHT_MAP")
        mapped[f"{WEIGHT_MAP[prefix]}.{leaf}"] = value
    textbook.load_state_dict(mapped)  # strict: every textbook parameter must be covered, shapes must match


# --------------------------------------------------------------------------------------- the benchmark
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-dir", default=os.environ.get("SEQVAE_DATA_DIR", "./data"),
                   help="folder holding MNIST/raw/ (default: $SEQVAE_DATA_DIR, else ./data)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both (default: torch's)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()  # set once, before both: neither side changes it afterwards
    data_dir = str(Path(args.data_dir).expanduser().resolve())
    seed = args.seed

    # ---- seqvae, from its own config ----
    register_resolvers()  # hydra/default.yaml refers to ${seqvae_run_dir:...}
    overrides = ["experiment=mnist_pe", f"trainer.max_epochs={args.epochs}", "trainer.progress_bar=false",
                 "trainer.log_visuals=false", "trainer.test=false", f"trainer.seed={seed}", "device=cpu",
                 f"paths.data_dir={data_dir}"]
    with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra.compose(config_name="train", overrides=overrides)
    validate(cfg)  # the checks `seqvae train` runs first

    run_tmp = tempfile.TemporaryDirectory(prefix="seqvae_bench_")  # TensorBoard events land here
    trainer = Trainer(cfg, Path(run_tmp.name) / "fp32", [])
    # The constructor ran torch.manual_seed(seed) and then initialised the model's layers from the global
    # RNG; this state is where the reparameterisation noise of training starts.
    rng_at_start = torch.get_rng_state()
    initial_weights = copy.deepcopy(trainer.model.state_dict())
    # The same run with trainer.precision=bf16-mixed: same seed, so the same initial weights and noise stream.
    cfg_bf16 = cfg.copy()
    cfg_bf16.trainer.precision = "bf16-mixed"
    trainer_bf16 = Trainer(cfg_bf16, Path(run_tmp.name) / "bf16", [])

    # ---- textbook, made to start where seqvae starts ----
    train_set = Subset(datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor()), range(NUM_TRAIN))
    loader = DataLoader(
        train_set, batch_size=128, num_workers=0,
        sampler=OnePermutationPerEpoch(train_set, generator=torch.Generator().manual_seed(seed + 1)),
        # Without its own generator the DataLoader draws a base seed from the global RNG on every
        # iter(), which would shift the noise stream against seqvae's.
        generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    textbook = VAE()  # same creation order as seqvae's MLPVAE: consumes the same random numbers
    if not torch.equal(torch.get_rng_state(), rng_at_start):
        raise RuntimeError("the textbook model's construction left a different global RNG state than seqvae's "
                           "Trainer: the reparameterisation noise would differ")
    load_seqvae_weights(textbook, initial_weights)
    optimizer = torch.optim.Adam(textbook.parameters(), lr=1e-3)

    # ---- train, alternating epochs; each side keeps its own global-RNG stream ----
    rng = {"seqvae": rng_at_start, "bf16": rng_at_start.clone(), "textbook": rng_at_start.clone()}

    def timed_epoch(name, run):
        torch.set_rng_state(rng[name])
        start = time.perf_counter()
        loss = run()
        seconds = time.perf_counter() - start
        rng[name] = torch.get_rng_state()
        return seconds, loss

    def seqvae_epoch(t: Trainer) -> float:
        loss = t.train_epoch()["loss"]  # the per-example mean over the epoch
        t.epoch += 1  # as fit() does after each train_epoch()
        return loss

    rows = []
    for epoch in range(1, args.epochs + 1):
        seqvae_s, seqvae_loss = timed_epoch("seqvae", lambda: seqvae_epoch(trainer))
        bf16_s, bf16_loss = timed_epoch("bf16", lambda: seqvae_epoch(trainer_bf16))
        textbook_s, textbook_sum = timed_epoch("textbook", lambda: textbook_train_epoch(textbook, loader, optimizer))
        textbook_loss = textbook_sum / len(train_set)
        rows.append((epoch, seqvae_s, bf16_s, textbook_s, seqvae_loss, bf16_loss, textbook_loss))
    for t in (trainer, trainer_bf16):
        t.writer.close()
    run_tmp.cleanup()

    print(f"MNIST VAE 784-400-20, batch 128, Adam 1e-3, {NUM_TRAIN} training images, seed {seed}, "
          f"CPU, {threads} torch thread(s); training pass only")
    header = ("epoch", "seqvae s", "bf16 s", "textbook s", "ratio", "bf16", "seqvae loss", "bf16 loss",
              "textbook loss")
    print("{:>5}  {:>8}  {:>6}  {:>10}  {:>6}  {:>6}  {:>11}  {:>9}  {:>13}".format(*header))
    for e, ss, bs, ts, sl, bl, tl in rows:
        print(f"{e:>5}  {ss:>8.2f}  {bs:>6.2f}  {ts:>10.2f}  {ts / ss:>5.2f}x  {ts / bs:>5.2f}x  {sl:>11.4f}  "
              f"{bl:>9.4f}  {tl:>13.4f}")
    ratio = sum(r[3] / r[1] for r in rows) / len(rows)
    ratio_bf16 = sum(r[3] / r[2] for r in rows) / len(rows)
    diff = max(abs(r[6] - r[4]) / abs(r[4]) for r in rows)
    diff_bf16 = max(abs(r[6] - r[5]) / abs(r[5]) for r in rows)
    print(f"speed-up, float32 (the default): {ratio:.2f}x per epoch (target >= 3x); max relative loss difference "
          f"to the textbook {diff:.1e} (float noise)")
    print(f"speed-up, trainer.precision=bf16-mixed: {ratio_bf16:.2f}x per epoch; max relative loss difference to "
          f"the textbook {diff_bf16:.1e} (bfloat16 rounding of the matmuls, not float noise)")


if __name__ == "__main__":
    main()
