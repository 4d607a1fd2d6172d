"""Checkpoint files and resume bookkeeping, in-process (the CLI paths are in test_errors/test_resume)."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from seqvae_cli.training.checkpoint import FORMAT, load_checkpoint, resolve_checkpoint, save_atomic
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.training.resume import find_resume_state, merge_resumed_config


def small_state():
    return {"format": FORMAT, "model": {"w": torch.arange(5000, dtype=torch.float32)}, "step": 3, "epoch": 1}


def test_save_atomic_round_trip(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic(small_state(), path)
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.arange(5000, dtype=torch.float32))
    assert not path.with_name("last.pt.tmp").exists()


def test_save_atomic_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(small_state(), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_atomic({"format": FORMAT, "bad": lambda: 0}, path)      # cannot be pickled
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 3


GARBAGE = ["empty", "text", "truncated", "tail", "random0", "random1", "random2", "random3"]


def garbage_file(tmp_path, name):
    full = tmp_path / "full.pt"
    torch.save(small_state(), full)
    data = full.read_bytes()
    if name.startswith("random"):
        seed = int(name[-1])
        content = bytes(torch.randint(0, 256, (1000 + 997 * seed,),
                                      generator=torch.Generator().manual_seed(seed)).tolist())
    else:
        content = {"empty": b"", "text": b"hello, this is not a checkpoint\n", "truncated": data[: len(data) // 2],
                   "tail": data[len(data) // 2:]}[name]
    path = tmp_path / f"{name}.pt"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("name", GARBAGE)
def test_unreadable_checkpoints_are_one_line_errors(tmp_path, name):
    """Whatever the garbage (torch's weights-only unpickler raises KeyError/IndexError on some), the user
    gets the 'unreadable' SeqvaeError, never a traceback."""
    path = garbage_file(tmp_path, name)
    with pytest.raises(SeqvaeError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "unreadable" in message and str(path) in message
    assert "\n" not in message


def test_a_torch_file_that_is_not_a_seqvae_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(SeqvaeError, match="not a seqvae checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(SeqvaeError, match="does not exist"):
        load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")


def test_resolve_checkpoint(tmp_path):
    assert resolve_checkpoint(str(tmp_path), "last") == tmp_path / "checkpoints" / "last.pt"
    assert resolve_checkpoint(None, "x/y.pt") == tmp_path.__class__("x/y.pt")
    with pytest.raises(SeqvaeError, match="run_dir"):
        resolve_checkpoint(None, "best")


def trainer_cfg(resume):
    return OmegaConf.create({"trainer": {"resume": resume}})


def test_find_resume_state(tmp_path):
    assert find_resume_state(trainer_cfg(False), tmp_path) == (None, None)
    with pytest.raises(SeqvaeError, match="trainer.resume=true"):
        find_resume_state(trainer_cfg(True), tmp_path)
    save_atomic(small_state(), tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(SeqvaeError, match="trainer.resume=true"):
        find_resume_state(trainer_cfg(False), tmp_path)
    state, path = find_resume_state(trainer_cfg(True), tmp_path)
    assert state["step"] == 3 and path == tmp_path / "checkpoints" / "last.pt"
    other = tmp_path / "elsewhere.pt"
    save_atomic(small_state(), other)
    assert find_resume_state(trainer_cfg(str(other)), tmp_path / "new")[1] == other


def test_merge_resumed_config():
    stored = OmegaConf.create({"model": {"name": "mlp_vae", "latent_dim": 20},
                               "trainer": {"max_epochs": 2, "resume": False, "seed": 42},
                               "optim": {"lr": 1e-3}, "run_dir": "old", "paths": {"data_dir": "/old"}})
    now = OmegaConf.create({"model": {"name": "mlp_vae", "latent_dim": 20},
                            "trainer": {"max_epochs": 5, "resume": True, "seed": 42},
                            "optim": {"lr": 1e-3}, "run_dir": "new", "paths": {"data_dir": "/new"}})
    merged = merge_resumed_config(now, stored, ["trainer.max_epochs=5", "trainer.resume=true", "run_dir=new",
                                                "model.latent_dim=20"], "ckpt")
    assert merged.trainer.max_epochs == 5 and merged.trainer.resume is True   # carried over
    assert merged.paths.data_dir == "/new"
    # Without an explicit override the run keeps its own length: the command's default (5 here) is not taken.
    kept = merge_resumed_config(now, stored, ["trainer.resume=true", "run_dir=new"], "ckpt")
    assert kept.trainer.max_epochs == 2 and kept.trainer.resume is True and kept.paths.data_dir == "/new"
    assert merged.model.latent_dim == 20 and merged.trainer.seed == 42
    changed = OmegaConf.merge(now, {"model": {"latent_dim": 4}})
    with pytest.raises(SeqvaeError, match="model.latent_dim") as info:
        merge_resumed_config(changed, stored, ["model.latent_dim=4"], "ckpt")
    assert "\n" not in str(info.value)
    other_model = OmegaConf.merge(now, {"model": {"name": "ae"}})
    with pytest.raises(SeqvaeError, match="model"):
        merge_resumed_config(other_model, stored, ["model=ae"], "ckpt")


def test_weights_of_another_architecture(tmp_path):
    from seqvae_cli.training.checkpoint import load_model_state
    from seqvae_cli.models.mlp_vae import MLPVAE
    trained = MLPVAE(input_dim=784, hidden_sizes=[400], latent_dim=20)
    other = MLPVAE(input_dim=784, hidden_sizes=[400], latent_dim=2)
    with pytest.raises(SeqvaeError, match="different model") as info:
        load_model_state(other, {"model": trained.state_dict()}, tmp_path / "best.pt")
    assert "\n" not in str(info.value)
    load_model_state(trained, {"model": MLPVAE(784, [400], 20).state_dict()}, tmp_path / "best.pt")
