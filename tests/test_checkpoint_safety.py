"""Issue 19: a checkpoint is data, never code; corruption is detected, not evaluated.

Crafted checkpoints are real smoke-run checkpoints with their config altered: a `_target_` that, were it
instantiated, would create a marker file (open(mode="w"), Path.write_text, shutil.copyfile, torch.load and
numpy.load over a pickle whose __reduce__ opens the marker for writing). The config is not covered by the
checksum, so these files pass it: what stops them is the parts registry (seqvae_cli/registry.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (SMOKE_ARGS, assert_one_error_line, clone_run, compose_train_config, describe, error_lines,
                      run_seqvae)
from seqvae_cli.training.checkpoint import FORMAT, RUN_ID_FILE, build, load_checkpoint, load_run, save_atomic, state_checksum
from seqvae_cli.errors import SeqvaeError

CPU = torch.device("cpu")


class OpensMarker:
    """Unpickled, it opens (creates) the marker for writing: what a `__reduce__` payload does."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def payload(kind: str, work, marker) -> dict:
    """A config node that, given to hydra.utils.instantiate, creates `marker`."""
    if kind == "open":
        return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    if kind == "write_text":
        return {"_target_": "pathlib.Path.write_text",
                "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "written"]}
    if kind == "copyfile":
        source = work / "source.txt"
        source.write_text("copied")
        return {"_target_": "shutil.copyfile", "src": str(source), "dst": str(marker)}
    if kind == "torch_load":
        pickled = work / "payload.pt"
        torch.save(OpensMarker(marker), pickled)
        return {"_target_": "torch.load", "f": str(pickled), "weights_only": False}
    if kind == "numpy_load":
        pickled = work / "payload.npy"
        np.save(pickled, np.array([OpensMarker(marker)], dtype=object), allow_pickle=True)
        return {"_target_": "numpy.load", "file": str(pickled), "allow_pickle": True}
    raise ValueError(kind)


PAYLOADS = ("open", "write_text", "copyfile", "torch_load", "numpy_load")
# placement -> (where the payload goes in the stored config, the key path the error must name)
PLACES = {
    "data": (lambda cfg, node: cfg.__setitem__("data", node), "data._target_="),
    "model": (lambda cfg, node: cfg["model"].__setitem__("extra", node), "model.extra._target_="),
    "nested key": (lambda cfg, node: cfg["data"].__setitem__("extra", {"inner": node}),
                   "data.extra.inner._target_="),
    "list": (lambda cfg, node: cfg["data"].__setitem__("extra", [1, node]), "data.extra[1]._target_="),
    "_args_": (lambda cfg, node: cfg["data"].__setitem__("_args_", [node]), "data._args_[0]._target_="),
    "objective": (lambda cfg, node: cfg["objective"].__setitem__("extra", node), "objective.extra._target_="),
}


def craft(source, target, place: str, node: dict):
    """A copy of checkpoint `source` at `target` whose config carries `node` at `place`."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    PLACES[place][0](state["config"], node)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)      # the config is outside the checksum: the file stays valid for it
    return target


def expected_key(place: str) -> str:
    """The key path the error names (write_text nests a second _target_ in its _args_: the outer one comes first)."""
    return PLACES[place][1]


# ------------------------------------------------------------------------------- parts registry, in-process

@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("kind", PAYLOADS)
def test_a_crafted_checkpoint_is_refused_before_anything_is_built(smoke_run, tmp_path, kind, place):
    marker = tmp_path / "MARKER"
    crafted = craft(smoke_run.run_dir / "checkpoints" / "best.pt", tmp_path / "crafted.pt", place,
                    payload(kind, tmp_path, marker))
    assert load_checkpoint(crafted)["checksum"]       # a sealed file: the checksum is not what stops it
    with pytest.raises(SeqvaeError) as info:
        load_run(None, str(crafted), CPU)
    message = str(info.value)
    assert "\n" not in message and f"checkpoint {crafted}" in message, message
    assert expected_key(place) in message and "seqvae's own parts" in message, message
    assert not marker.exists()


@pytest.mark.parametrize("directive", ["_partial_", "_recursive_", "_convert_"])
def test_instantiation_directives_are_refused_too(smoke_run, tmp_path, directive):
    state = torch.load(smoke_run.run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["data"][directive] = True
    torch.save(state, tmp_path / "crafted.pt")
    with pytest.raises(SeqvaeError, match=rf"data\.{directive}=True is an instantiation directive"):
        load_run(None, str(tmp_path / "crafted.pt"), CPU)


def test_a_target_smuggled_through_an_interpolation_is_refused(smoke_run, tmp_path):
    """oc.decode turns a string into a node when the config resolves: the check looks at the resolved config, so
    no resolver can hide a `_target_` from it (Hydra happened not to instantiate such a node; the registry must not
    rely on that)."""
    marker = tmp_path / "MARKER"
    state = torch.load(smoke_run.run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["data"]["extra"] = "${oc.decode:'{_target_: builtins.open, file: " + str(marker) + ", mode: w}'}"
    torch.save(state, tmp_path / "crafted.pt")
    with pytest.raises(SeqvaeError, match=r"data\.extra\._target_='builtins.open' is not one of seqvae's own"):
        load_run(None, str(tmp_path / "crafted.pt"), CPU)
    assert not marker.exists()


def test_train_builds_through_the_same_registry(tmp_path):
    """The command's own config obeys the same rule: only registered parts, by full path or short name."""
    with pytest.raises(SeqvaeError, match=r"^the config: data\._target_='builtins.open' is not one of"):
        build(compose_train_config("data._target_=builtins.open"), CPU)
    with pytest.raises(SeqvaeError, match=r"model\._target_='seqvae_cli.models.sentence_vae.LSTMVAE' is not one"):
        build(compose_train_config("model._target_=seqvae_cli.models.sentence_vae.LSTMVAE"), CPU)
    with pytest.raises(SeqvaeError, match=r"data \(MNISTData\) cannot be built from its keys: .*'colour'"):
        build(compose_train_config("+data.colour=red"), CPU)


# ----------------------------------------------------------------------------- parts registry, the commands

def cli_cases(work, smoke_run_dir):
    """Each way a checkpoint is loaded -> (the command's args, where the crafted file goes; its name says which of
    the run's checkpoints it is made from)."""
    run = clone_run(smoke_run_dir, work / "run")
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    return {
        "eval checkpoint=": (["eval", f"checkpoint={work / 'lone' / 'best.pt'}"], work / "lone" / "best.pt"),
        "eval run_dir=": (["eval", f"run_dir={run}"], best),
        "sample run_dir=": (["sample", f"run_dir={run}"], best),
        "train trainer.resume=FILE": (["train", *SMOKE_ARGS, f"trainer.resume={work / 'lone' / 'last.pt'}",
                                       f"run_dir={work / 'new'}"], work / "lone" / "last.pt"),
        "train trainer.resume=true": (["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true"], last),
    }


ENTRY_POINTS = ("eval checkpoint=", "eval run_dir=", "sample run_dir=", "train trainer.resume=FILE",
                "train trainer.resume=true")


def check_refused_by_the_command(smoke_run, work, entry: str, kind: str, place: str) -> None:
    marker = work / "MARKER"
    args, crafted_path = cli_cases(work, smoke_run.run_dir)[entry]
    craft(smoke_run.run_dir / "checkpoints" / crafted_path.name, crafted_path, place, payload(kind, work, marker))
    proc = run_seqvae(args, cwd=work)
    assert_one_error_line(proc, f"checkpoint {crafted_path}", expected_key(place), "seqvae's own parts")
    assert not marker.exists(), describe(proc)


# One payload and placement per way in (the in-process matrix above covers every pair; the slow test below
# every payload at every way in).
@pytest.mark.parametrize("entry, kind, place", [
    ("eval checkpoint=", "torch_load", "nested key"), ("eval run_dir=", "open", "data"),
    ("sample run_dir=", "write_text", "_args_"), ("train trainer.resume=FILE", "copyfile", "model"),
    ("train trainer.resume=true", "numpy_load", "list")])
def test_every_command_refuses_a_crafted_checkpoint(smoke_run, tmp_path, entry, kind, place):
    check_refused_by_the_command(smoke_run, tmp_path, entry, kind, place)


@pytest.mark.slow
@pytest.mark.parametrize("place", ["nested key", "list", "_args_"])
def test_eval_refuses_a_target_in_a_nested_key_a_list_and_args(smoke_run, tmp_path, place):
    check_refused_by_the_command(smoke_run, tmp_path, "eval checkpoint=", "torch_load", place)


@pytest.mark.slow
@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_payload_at_every_way_in(smoke_run, tmp_path, entry, kind):
    check_refused_by_the_command(smoke_run, tmp_path, entry, kind, "nested key")


# ------------------------------------------------------------------------------------------------ checksum

def small_state():
    return {"format": FORMAT, "model": {"w": torch.arange(5000, dtype=torch.float32),
                                        "h": torch.ones(3, dtype=torch.bfloat16)},
            "optimizer": {"state": {0: {"exp_avg": torch.full((64,), 0.5)}}, "param_groups": [{"lr": 1e-3}]},
            "step": 3, "epoch": 1, "config": {"data": {"_target_": "seqvae_cli.data.mnist.MNISTData"}}}


def flip_bytes_inside(path, tensor: torch.Tensor, count: int = 40) -> None:
    """Flip `count` bytes in the middle of `tensor`'s stored bytes (the zip entries are stored uncompressed, and
    torch's zip reader checks no CRC: such a file loads)."""
    data = bytearray(path.read_bytes())
    at = bytes(data).find(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    assert at >= 0, "the tensor's bytes were not found in the file"
    start = at + (tensor.numel() * tensor.element_size() - count) // 2
    for i in range(start, start + count):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_checksum_covers_every_tensor_and_value_but_not_the_config(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(small_state(), path)
    state = load_checkpoint(path)
    assert state["checksum"].startswith("sha256:") and state["checksum"] == state_checksum(small_state())
    for change in (lambda s: s["model"]["w"].__setitem__(7, 1.5), lambda s: s["model"]["h"].__setitem__(0, 2),
                   lambda s: s["optimizer"]["state"][0]["exp_avg"].__setitem__(0, 0.25),
                   lambda s: s.__setitem__("step", 4), lambda s: s["optimizer"]["param_groups"][0].update(lr=1e-2)):
        changed = small_state()
        change(changed)
        assert state_checksum(changed) != state["checksum"]
    edited = small_state()
    edited["config"]["data"]["download"] = False
    assert state_checksum(edited) == state["checksum"]
    torch.save(small_state(), tmp_path / "old.pt")            # written before checksums: still loads
    assert "checksum" not in load_checkpoint(tmp_path / "old.pt")


def test_flipped_bytes_in_a_weight_or_in_adams_state_are_a_corrupt_file(tmp_path):
    for part, tensor in (("model", small_state()["model"]["w"]),
                         ("optimizer", small_state()["optimizer"]["state"][0]["exp_avg"])):
        path = tmp_path / part / "last.pt"
        save_atomic(small_state(), path)
        flip_bytes_inside(path, tensor, count=8)
        with pytest.raises(SeqvaeError, match="is corrupt") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "best.pt" in str(info.value) and "\n" not in str(info.value)


def test_eval_refuses_40_flipped_bytes_in_mu_head(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    best = run / "checkpoints" / "best.pt"
    flip_bytes_inside(best, load_checkpoint(best)["model"]["posterior_head.mu_head.weight"])
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=2", "limit_examples=100"], cwd=tmp_path)
    assert_one_error_line(proc, f"checkpoint {best} is corrupt", "last.pt or best.pt")
    assert not (run / "eval.json").exists()


def test_resume_refuses_a_flipped_byte_in_adams_state(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    flip_bytes_inside(last, next(iter(state["optimizer"]["state"].values()))["exp_avg"], count=1)
    before = last.read_bytes()
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "trainer.max_epochs=3"],
                      cwd=tmp_path)
    assert_one_error_line(proc, f"checkpoint {last} is corrupt")
    assert last.read_bytes() == before


# ---------------------------------------------------------------------------------------------- non-finite

def test_nan_weights_are_refused_by_eval_and_sample(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    best = run / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    state["model"]["posterior_head.mu_head.weight"][0, 0] = float("nan")
    save_atomic(state, best)                       # sealed: only the non-finite check can object
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=2", "limit_examples=100"], cwd=tmp_path)
    assert_one_error_line(proc, f"checkpoint {best} holds non-finite values", "posterior_head.mu_head.weight")
    assert not (run / "eval.json").exists()
    with pytest.raises(SeqvaeError, match="1 NaN/inf in model.posterior_head.mu_head.weight"):   # sample loads the same way
        load_run(str(run), "best", CPU)


def test_resume_refuses_nan_weights(smoke_run, tmp_path):
    from omegaconf import OmegaConf
    from seqvae_cli.training.resume import find_resume_state
    state = load_checkpoint(smoke_run.run_dir / "checkpoints" / "last.pt")
    state["model"]["decoder.0.bias"][:3] = float("inf")
    save_atomic(state, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(SeqvaeError, match=r"holds non-finite values \(3 NaN/inf in model.decoder.0.bias\)"):
        find_resume_state(OmegaConf.create({"trainer": {"resume": True}}), tmp_path)


def test_eval_metrics_that_overflow_are_an_error(smoke_run, tmp_path):
    """Finite but huge weights: the posterior means overflow float32, -ELBO comes out inf."""
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    best = run / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    state["model"]["posterior_head.mu_head.weight"] *= 1e30
    save_atomic(state, best)
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=2", "limit_examples=100"], cwd=tmp_path)
    # The pass itself ran (its progress bar is on stderr); then one error line, no table, nothing written.
    lines = [ln for ln in error_lines(proc.stderr) if not ln.startswith("eval test")]
    assert proc.returncode == 2 and len(lines) == 1, describe(proc)
    assert lines[0].startswith(f"seqvae: error: evaluating {best} gave non-finite metrics (")
    assert "neg_elbo=" in lines[0] and proc.stdout == ""
    assert not (run / "eval.json").exists()


# ------------------------------------------------------------------------------------- a checkpoint's run

def foreign(path) -> None:
    """Make the checkpoint at `path` one of another run (a valid, sealed file)."""
    state = load_checkpoint(path)
    state["run_id"] = "0" * 32
    save_atomic(state, path)


def test_a_run_records_its_id_in_its_folder_and_every_checkpoint(smoke_run):
    run_id = (smoke_run.run_dir / RUN_ID_FILE).read_text().strip()
    assert len(run_id) == 32
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(smoke_run.run_dir / "checkpoints" / name)["run_id"] == run_id


def test_eval_and_sample_refuse_a_checkpoint_of_another_run(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    best = run / "checkpoints" / "best.pt"
    foreign(best)
    proc = run_seqvae(["eval", f"run_dir={run}", "iw_samples=2", "limit_examples=100"], cwd=tmp_path)
    assert_one_error_line(proc, f"{best} belongs to another run", "0" * 32, "checkpoint=")
    assert not (run / "eval.json").exists()
    with pytest.raises(SeqvaeError, match="belongs to another run"):    # sample loads the same way
        load_run(str(run), "best", CPU)
    # Named explicitly inside the folder, it would still be scored into this run's eval.json: refused too.
    with pytest.raises(SeqvaeError, match="belongs to another run"):
        load_run(None, str(best), CPU)
    # Copied out of the folder, as the message advises, it has no run to disagree with and is scored on its own.
    lone = tmp_path / "lone" / "best.pt"
    lone.parent.mkdir()
    lone.write_bytes(best.read_bytes())
    proc = run_seqvae(["eval", f"checkpoint={lone}", "iw_samples=2", "limit_examples=100"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    # A lone file's folder is not a run: the results go to this command's own outputs/eval/DATE/TIME.
    written = [Path(line.split(": ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("written: ")]
    assert len(written) == 1 and not (lone.parent / "eval.json").exists()
    assert json.loads(written[0].read_text())["test"]["num_examples"] == 100


def test_resume_in_place_refuses_a_last_pt_of_another_run(smoke_run, tmp_path):
    run = clone_run(smoke_run.run_dir, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    foreign(last)
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={run}", "trainer.resume=true", "trainer.max_epochs=3"],
                      cwd=tmp_path)
    assert_one_error_line(proc, f"{last} belongs to another run", "run_dir=<a new folder>")


def test_resume_into_a_new_folder_continues_the_same_run(smoke_run, tmp_path):
    new = tmp_path / "new"
    source = smoke_run.run_dir / "checkpoints"
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={new}", f"trainer.resume={source / 'last.pt'}",
                       "trainer.max_epochs=3"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    run_id = (smoke_run.run_dir / RUN_ID_FILE).read_text()
    assert (new / RUN_ID_FILE).read_text() == run_id
    assert load_checkpoint(new / "checkpoints" / "last.pt")["run_id"] == run_id.strip()
    proc = run_seqvae(["eval", f"run_dir={new}", "iw_samples=2", "limit_examples=100"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)

