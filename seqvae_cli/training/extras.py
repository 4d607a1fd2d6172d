"""What the trainer runs beside the optimiser step: an average of the weights (EMA / Polyak), and He et al.
2019's aggressive encoder training with the parameter split it needs."""
from __future__ import annotations

import contextlib
import logging
import copy
import math
from typing import Iterator

import torch

from seqvae_cli.data.base import Batch
from seqvae_cli.evaluation.evaluate import split_mutual_information
from seqvae_cli.models.base import LatentModel, eval_mode
from seqvae_cli.objective.elbo import Objective

log = logging.getLogger("seqvae")

class WeightAverage:
    """An average of the training weights over optimiser steps, kept in a copy of the model.

    kind=ema keeps `decay` of the average at each step; kind=uniform is the plain mean of the weights after every
    step since `start_step` (Polyak averaging, as AWD-LSTM's NT-ASGD). Validation, best.pt, the test pass and the
    samples use the average; training never sees it, so a run with averaging trains exactly as one without."""

    def __init__(self, model: LatentModel, kind: str, decay: float, start_step: int) -> None:
        self.kind, self.decay, self.start_step = kind, decay, start_step
        self.count = 0          # steps averaged so far; 0 = no average yet (the training weights stand in)
        self.model = copy.deepcopy(model).requires_grad_(False)
        # Paired once: loading checkpoints and the decoder reset change the tensors in place, never replace them.
        # parameters() lists a tied embedding once and in module order, so both models' lists pair up.
        pairs = list(zip([*self.model.parameters(), *self.model.buffers()], [*model.parameters(), *model.buffers()]))
        self.mine = [mine for mine, _ in pairs if mine.is_floating_point()]
        self.theirs = [theirs for mine, theirs in pairs if mine.is_floating_point()]
        self.copied = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]  # e.g. counters

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the training weights after optimiser step `step` (0-based)."""
        if step < self.start_step:
            return
        if self.count == 0:
            torch._foreach_copy_(self.mine, self.theirs)
        else:
            weight = 1.0 / (self.count + 1) if self.kind == "uniform" else 1.0 - self.ema_decay()
            torch._foreach_lerp_(self.mine, self.theirs, weight)
        for mine, theirs in self.copied:
            mine.copy_(theirs)
        self.count += 1

    def ema_decay(self) -> float:
        """The configured decay, warmed up as TensorFlow's ExponentialMovingAverage does with num_updates: without
        it the initial weights keep decay**n of the average (52% of it after PTB's first 1,315 steps at 0.9995)."""
        return min(self.decay, (1 + self.count) / (10 + self.count))

    def restart(self) -> None:
        """Forget the average (Li et al. 2019's decoder reset makes the old weights meaningless)."""
        self.count = 0

    def eval_model(self, model: LatentModel) -> LatentModel:
        return self.model if self.count else model


class AggressiveEncoder:
    """He et al. 2019's aggressive inference-network training ("Lagging inference networks").

    While on, each training step first updates the encoder alone, on the step's batch and then on fresh ones,
    until the mean loss over a window of `check_every` updates rises above the window before (at most
    `max_inner_steps` updates); the step itself then updates the decoder alone. It switches off for the rest of
    the run after the first epoch whose validation mutual information I(x;z) is below the epoch before's.

    "Encoder" means the parameters only q(z|x) uses. A parameter the decoder also uses (the word embedding the
    sentence VAE's encoder and decoder share) counts as decoder: moving it would move p(x|z), which the inner
    loop holds fixed. He et al.'s models had separate embeddings. (Not the models' decoder_modules(): those are
    what Li et al.'s reset re-initialises, which keeps the shared embedding.)

    Two deliberate differences from He et al.'s code: the side held fixed gets no gradient at all, so
    gradient clipping measures the norm of the side that moves (theirs clips the whole gradient, then steps
    one side); and the first epoch's I(x;z) is compared with -inf rather than 0, so a negative first estimate
    (the estimator can go below 0 while the KL is near 0) does not end aggressive training at once."""

    def __init__(self, model: LatentModel, objective: Objective, probe: Batch, max_inner_steps: int,
                 check_every: int, seed: int) -> None:
        self.max_inner_steps, self.check_every = max_inner_steps, check_every
        self.on, self.last_mutual_info = True, -math.inf
        self.encoder_params, self.decoder_params = split_encoder_decoder(model, objective, probe)
        # The inner loop's own shuffle stream: each epoch draws a new permutation from it, so the checkpoint at
        # the epoch's end holds the whole stream's state and a resumed run replays it exactly.
        self.shuffle_gen = torch.Generator().manual_seed(seed)

    def end_epoch(self, mutual_info: float) -> bool:
        """Record this epoch's validation I(x;z); returns False when aggressive training has just switched off."""
        if mutual_info < self.last_mutual_info:
            self.on = False
        self.last_mutual_info = mutual_info
        return self.on

    def state_dict(self) -> dict:
        return {"on": self.on, "last_mutual_info": self.last_mutual_info, "shuffle": self.shuffle_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.on, self.last_mutual_info = state["on"], state["last_mutual_info"]
        self.shuffle_gen.set_state(state["shuffle"])


@contextlib.contextmanager
def frozen(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """These parameters get no gradient inside: no optimiser update for them (Adam skips a parameter without
    one), and no backward work spent on their weight gradients."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def split_encoder_decoder(model: LatentModel, objective: Objective,
                          batch: Batch) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(encoder-only, all other) trainable parameters, found by what the gradients reach on one batch: the
    encoder's are those q(z|x) depends on and neither log p(x|z) nor the auxiliary loss does at a fixed z."""
    params = [p for p in model.parameters() if p.requires_grad]
    # Eval mode: no dropout, so which parameters are reached does not depend on it, and no RNG is drawn.
    # cuDNN refuses an RNN backward in eval mode; the native kernels reach the same parameters.
    with eval_mode(model), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        q = model.posterior(batch)
        reached_by_q = torch.autograd.grad(sum(t.sum() for t in q.tensors()), params, allow_unused=True)
        z = q.mean.detach().unsqueeze(0)
        decoder_side = model.log_likelihood(batch, z).sum() + objective.aux_loss(model, batch, z[0]).sum()
        reached_by_p = torch.autograd.grad(decoder_side, params, allow_unused=True)
    encoder = [p for p, gq, gp in zip(params, reached_by_q, reached_by_p) if gq is not None and gp is None]
    ids = {id(p) for p in encoder}
    return encoder, [p for p in params if id(p) not in ids]


class AggressiveSteps:
    """The Trainer's side of He et al.'s aggressive training: the encoder's inner loop and the epoch-end switch."""

    def fresh_batches(self) -> Iterator[Batch]:
        """Endless shuffled training batches for the encoder's inner loop, from its own shuffle stream."""
        while True:
            yield from self.dm.train_batches(self.aggressive.shuffle_gen, self.data_gen,
                                             self.cfg.trainer.limit_train_batches)

    def catch_up_encoder(self, batch: Batch, fresh: Iterator[Batch]) -> int:
        """The inner loop: update the encoder alone (decoder held fixed), first on this step's batch, then on
        fresh ones, until the mean loss of a window of check_every updates is above the window before's, at
        most max_inner_steps updates. Losses are per token for text (as He et al.), else per example.
        Returns the number of updates made."""
        aggressive = self.aggressive
        window_loss, window_count, previous = 0.0, 0, math.inf
        with frozen(aggressive.decoder_params):
            for done in range(1, aggressive.max_inner_steps + 1):
                if done > 1:
                    batch = next(fresh)
                # Not summed: the epoch's means are those of the training steps, one batch each.
                loss = float(self.optimizer_update(batch, self.objective.kl_weight(self.step), summed=False)
                             .loss.detach())
                window_loss += loss * batch["x"].shape[0]
                window_count += int(batch["lengths"].sum()) if "lengths" in batch else batch["x"].shape[0]
                if done % aggressive.check_every == 0:
                    current = window_loss / window_count
                    if current > previous:
                        break
                    previous, window_loss, window_count = current, 0.0, 0
        return done

    def end_aggressive_epoch(self) -> None:
        """He et al.'s switch: aggressive training stops after the first epoch whose validation I(x;z) falls."""
        before = self.aggressive.last_mutual_info
        mutual_info = split_mutual_information(self.model, self.dm, "val", self.cfg.trainer.limit_val_batches)
        self.writer.add_scalar("train/aggressive_val_mutual_info", mutual_info, self.step)
        if self.aggressive.end_epoch(mutual_info):
            log.info("epoch %d: validation I(x;z) %.4f; aggressive encoder training continues", self.epoch,
                     mutual_info)
        else:
            log.info("epoch %d: validation I(x;z) %.4f fell below %.4f; aggressive encoder training is off from "
                     "here", self.epoch, mutual_info, before)
