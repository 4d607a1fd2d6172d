"""He et al. 2019's aggressive encoder training (objective.aggressive): which parameters each phase moves, the
inner loop's stopping rule, the switch-off on the validation I(x;z), and its config errors."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from seqvae_cli.training.checkpoint import save_atomic
from seqvae_cli.config.rules import validate
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.mlp_vae import MLPVAE
from seqvae_cli.models.sentence_vae import LSTMVAE
from seqvae_cli.models.series_vae import SeriesLSTMVAE
from seqvae_cli.objective.elbo import Objective
from seqvae_cli.training.loop import Trainer
from seqvae_cli.training.extras import AggressiveEncoder, split_encoder_decoder

from conftest import compose_train_config

ENCODER = ("encoder.", "posterior_head.mu_head.", "posterior_head.logvar_head.")
BASE = ["debug=smoke", "trainer.progress_bar=false", "trainer.log_visuals=false", "trainer.test=false",
        "device=cpu", "trainer.limit_train_batches=3"]


def names(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def objective(*overrides: str) -> Objective:
    return Objective(compose_train_config(*overrides).objective, total_steps=100, steps_per_epoch=10)


def test_the_encoder_side_is_what_only_q_uses_in_an_mlp_vae():
    model = MLPVAE(12, [8, 6], 3)
    batch = {"x": torch.rand(5, 12)}
    encoder, decoder = split_encoder_decoder(model, objective(), batch)
    everything = {n for n, _ in model.named_parameters()}
    assert names(model, encoder) == {n for n in everything if n.startswith(ENCODER)}
    assert names(model, decoder) == {n for n in everything if n.startswith("decoder.")}
    assert model.training                         # the probe leaves the mode as it found it


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("bow_weight", [0.0, 1.0])
def test_a_shared_embedding_and_the_bag_of_words_head_are_on_the_decoder_side(tied, bow_weight):
    model = LSTMVAE(12, embed_dim=6, hidden_size=6, latent_dim=2, tie_weights=tied).eval()
    batch = {"x": torch.tensor([[5, 6, 7, 3], [9, 3, 0, 0]]), "lengths": torch.tensor([4, 2])}
    encoder, decoder = split_encoder_decoder(model, objective(f"objective.bow_weight={bow_weight}"), batch)
    assert names(model, encoder) == {n for n, _ in model.named_parameters() if n.startswith(ENCODER)}
    assert "io.embedding.weight" in names(model, decoder)    # the encoder reads it too, but p(x|z) depends on it
    assert {"bow.weight", "bow.bias"} <= names(model, decoder)
    assert not model.training


@pytest.mark.parametrize("series_decoder", ["repeat", "autoregressive"])
def test_the_series_models_input_projection_is_the_encoders_own(series_decoder):
    model = SeriesLSTMVAE(num_channels=2, seq_len=9, embed_dim=4, hidden_size=5, latent_dim=3,
                          series_decoder=series_decoder)
    encoder, decoder = split_encoder_decoder(model, objective(), {"x": torch.randn(4, 9, 2)})
    own = ENCODER + ("input_proj.",)     # the autoregressive decoder reads its inputs through decoder_proj
    assert names(model, encoder) == {n for n, _ in model.named_parameters() if n.startswith(own)}
    assert {"head.log_std", "decoder.z_to_state.weight"} <= names(model, decoder)


def inner_loop(losses, check_every, max_inner_steps, sizes=None):
    """Trainer.catch_up_encoder with scripted per-update losses (batch i of size/tokens sizes[i]); returns the
    number of updates it made and the batches it trained on."""
    held = [torch.nn.Parameter(torch.zeros(2))]
    seen = []

    def update(batch, kl_weight, summed=True):
        assert not held[0].requires_grad            # the decoder is held fixed inside the loop
        assert not summed                           # the epoch's means count the training steps only
        seen.append(batch["id"])
        return SimpleNamespace(loss=torch.tensor(losses[len(seen) - 1]))

    def batch(i):
        examples, tokens = (sizes or {}).get(i, (1, None))
        b = {"id": i, "x": torch.zeros(examples, 1)}
        if tokens is not None:
            b["lengths"] = torch.full((examples,), tokens)
        return b

    fake = SimpleNamespace(aggressive=SimpleNamespace(max_inner_steps=max_inner_steps, check_every=check_every,
                                                      decoder_params=held), optimizer_update=update,
                           objective=SimpleNamespace(kl_weight=lambda step: 1.0), step=0)
    done = Trainer.catch_up_encoder(fake, batch(0), (batch(i) for i in itertools.count(1)))
    assert held[0].requires_grad                    # released afterwards
    return done, seen


def test_the_inner_loop_stops_when_a_window_mean_rises():
    done, seen = inner_loop([5, 5, 5, 4, 4, 4, 4.5, 4.5, 4.5, 1, 1, 1], check_every=3, max_inner_steps=100)
    assert done == 9
    assert seen == list(range(9))      # the step's own batch first, then fresh ones


def test_the_inner_loop_goes_on_while_the_windows_do_not_rise_and_stops_at_the_cap():
    assert inner_loop([3.0] * 10, check_every=2, max_inner_steps=10)[0] == 10      # level windows continue
    assert inner_loop([10 - 0.1 * i for i in range(7)], check_every=2, max_inner_steps=7)[0] == 7
    assert inner_loop([1.0], check_every=15, max_inner_steps=1)[0] == 1


def test_text_windows_are_compared_per_token():
    # Window 1: 12 nats over 11 tokens (1.09/token; 6 per sentence); window 2: 8 nats over 4 tokens (2/token; 4 per
    # sentence). Per token the loss rose, so the loop stops, though per sentence it fell.
    sizes = {0: (1, 10), 1: (1, 1), 2: (1, 2), 3: (1, 2)}
    losses = [10.0, 2.0, 4.0, 4.0] + [0.1] * 10
    assert inner_loop(losses, check_every=2, max_inner_steps=14, sizes=sizes)[0] == 4
    assert inner_loop(losses, check_every=2, max_inner_steps=14)[0] == 14     # per example it goes on


def test_aggressive_training_switches_off_for_good_after_the_mutual_information_falls():
    model = MLPVAE(12, [8], 3)
    aggressive = AggressiveEncoder(model, objective(), {"x": torch.rand(4, 12)}, 100, 15, seed=0)
    assert aggressive.on
    assert aggressive.end_epoch(1.0) and aggressive.end_epoch(1.0) and aggressive.end_epoch(2.5)
    assert not aggressive.end_epoch(2.4)
    assert not aggressive.end_epoch(9.0) and not aggressive.on
    restored = AggressiveEncoder(model, objective(), {"x": torch.rand(4, 12)}, 100, 15, seed=1)
    restored.load_state_dict(aggressive.state_dict())
    assert (restored.on, restored.last_mutual_info) == (False, 9.0)
    assert torch.equal(restored.shuffle_gen.get_state(), aggressive.shuffle_gen.get_state())


def moved(before: list[torch.Tensor], after: list[torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {n for (n, _), a, b in zip(model.named_parameters(), before, after) if not torch.equal(a, b)}


def test_each_update_moves_only_the_encoder_or_only_the_decoder_and_all_after_switch_off(tmp_path, mnist_data_dir):
    trainer = Trainer(compose_train_config(*BASE, "objective.aggressive.enabled=true",
                                           "objective.aggressive.max_inner_steps=6",
                                           "objective.aggressive.check_every=2"), tmp_path, [])
    model = trainer.model
    everything = {n for n, _ in model.named_parameters()}
    encoder = {n for n in everything if n.startswith(ENCODER)}
    assert names(model, trainer.aggressive.encoder_params) == encoder
    snapshots = [[p.detach().clone() for p in model.parameters()]]
    trainer.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: snapshots.append([p.detach().clone() for p in model.parameters()]))

    update, outer = trainer.optimizer_update, []

    def recorded(batch, kl_weight, global_size=None, summed=True):
        terms = update(batch, kl_weight, global_size, summed)
        if summed:
            outer.append((batch["x"].shape[0], float(terms.loss.detach())))
        return terms
    trainer.optimizer_update = recorded
    means = trainer.train_epoch()
    # The epoch's mean loss is that of its 3 steps: the inner updates once made it ~(1 + inner) times too large.
    assert len(outer) == 3 and means["loss"] == pytest.approx(sum(b * v for b, v in outer) / sum(b for b, _ in outer))
    steps = [moved(a, b, model) for a, b in zip(snapshots, snapshots[1:])]
    assert set(map(frozenset, steps)) == {frozenset(encoder), frozenset(everything - encoder)}
    decoder_steps = [i for i, s in enumerate(steps) if s == everything - encoder]
    assert len(decoder_steps) == trainer.step == 3                  # one decoder update per training step
    inner = [b - a - 1 for a, b in zip([-1] + decoder_steps, decoder_steps)]   # encoder updates before each
    assert all(k in (4, 6) for k in inner)   # a rise is only seen at the end of a window, from the second on
    assert means["encoder_updates_per_step"] == pytest.approx(sum(inner) / 3)
    assert all(p.requires_grad for p in model.parameters())

    trainer.epoch += 1
    trainer.aggressive.on = False
    del snapshots[:-1]
    assert "encoder_updates_per_step" not in trainer.train_epoch()
    assert [moved(a, b, model) for a, b in zip(snapshots, snapshots[1:])] == [everything] * 3


def test_fit_records_the_mutual_information_and_the_checkpoint_carries_the_state(tmp_path, mnist_data_dir):
    trainer = Trainer(compose_train_config(*BASE, "objective.aggressive.enabled=true",
                                           "objective.aggressive.max_inner_steps=2"), tmp_path, [])
    trainer.fit()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["aggressive"]["last_mutual_info"] == trainer.aggressive.last_mutual_info > 0
    assert state["aggressive"]["on"] == trainer.aggressive.on
    # A checkpoint whose aggressive state differs from a fresh one in every field: resuming must take all three.
    state["aggressive"] = {"on": False, "last_mutual_info": 7.25,
                           "shuffle": torch.Generator().manual_seed(123).get_state()}
    save_atomic(state, tmp_path / "checkpoints" / "last.pt")     # sealed anew: a deliberate change
    resumed = Trainer(compose_train_config(*BASE, "objective.aggressive.enabled=true",
                                           "objective.aggressive.max_inner_steps=2", "trainer.resume=true"),
                      tmp_path, ["trainer.resume=true"])
    assert (resumed.aggressive.on, resumed.aggressive.last_mutual_info) == (False, 7.25)
    assert torch.equal(resumed.aggressive.shuffle_gen.get_state(), state["aggressive"]["shuffle"])


def test_config_errors():
    with pytest.raises(SeqvaeError, match=r"objective.aggressive.max_inner_steps=0 is not allowed"):
        validate(compose_train_config("objective.aggressive.max_inner_steps=0"))
    with pytest.raises(SeqvaeError, match=r"objective.aggressive.enabled='yes' is not allowed; expected true or"):
        validate(compose_train_config("objective.aggressive.enabled=yes"))
    with pytest.raises(SeqvaeError, match=r"objective.ae_pretrain_epochs=2 \(Li et al. 2019\) are two different"):
        validate(compose_train_config("objective.aggressive.enabled=true", "objective.ae_pretrain_epochs=2"))


def test_a_model_without_a_posterior_is_refused(tmp_path, mnist_data_dir):
    with pytest.raises(SeqvaeError, match=r"objective.aggressive.enabled=true .* but ae has no posterior"):
        Trainer(compose_train_config(*BASE, "model=ae", "objective.aggressive.enabled=true"), tmp_path, [])
