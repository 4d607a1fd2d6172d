"""Adding a part is one file plus one YAML (docs/extending.md): the registry's hook, plugin modules named by the user
($SEQVAE_PARTS, entry points), and a toy model from tests/ (toy_parts.py) trained and scored through the CLI."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import SMOKE_ARGS, assert_one_error_line, describe, run_seqvae, seqvae_env, train
from seqvae_cli import parts
from seqvae_cli.errors import SeqvaeError
from seqvae_cli.models.mlp_vae import MLPVAE

TESTS = Path(__file__).resolve().parent
TOY_YAML = "_target_: toy_parts.ToyVAE\nname: toy\nlatent_dim: 2\n"


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, put back after the test: what a test registers or imports does not leak out."""
    monkeypatch.setattr(parts, "PARTS", {slot: dict(table) for slot, table in parts.PARTS.items()})
    monkeypatch.setattr(parts, "_imported", set())
    monkeypatch.setattr(parts, "_entry_points_loaded", False)
    monkeypatch.delenv(parts.PLUGINS_ENV, raising=False)
    sys.modules.pop("toy_parts", None)
    yield parts.PARTS
    sys.modules.pop("toy_parts", None)


# ----------------------------------------------------------------------------------------- in-process

def test_builtin_parts_keep_their_short_full_and_former_names():
    table = parts.PARTS["model"]
    assert table["MLPVAE"] is table["seqvae_cli.models.mlp_vae.MLPVAE"] is table["seqvae_cli.models.MLPVAE"] is MLPVAE
    assert set(parts.PARTS) == set(parts.SLOTS)


def test_register_works_as_a_decorator_and_refuses_a_taken_name(registry):
    @parts.register("model", name="tiny")
    class Tiny(MLPVAE):
        pass

    assert registry["model"]["tiny"] is registry["model"][f"{__name__}.{Tiny.__qualname__}"] is Tiny
    with pytest.raises(SeqvaeError, match=r"the name 'MLPVAE' is already model part seqvae_cli\.models\.mlp_vae"):
        parts.register("model", Tiny, name="MLPVAE")
    with pytest.raises(SeqvaeError, match=r"register\('decoder', 'Tiny'\): no such slot; the slots are data, model, "
                                          r"prior, posterior"):
        parts.register("decoder", Tiny)


def test_a_data_module_without_restrict_refuses_limit_examples_in_one_line():
    """restrict() is optional for a data module of your own: limit_examples then says what it needs."""
    from seqvae_cli.data.base import DataModule

    class Rows(DataModule):
        kind = "series"

        def num_examples(self, split: str) -> int:
            return 10

    Rows().subset("test", 10, seed=0)           # the whole split: nothing to cut
    with pytest.raises(SeqvaeError, match=r"^limit_examples needs Rows\.restrict\(split, rows\), which this data "
                                          r"module does not define: score the whole split"):
        Rows().subset("test", 3, seed=0)


def test_seqvae_parts_imports_the_named_modules_before_the_check(registry, monkeypatch):
    config = {"data": {"_target_": "MNISTData"}, "model": {"_target_": "toy_parts.ToyVAE"}}
    with pytest.raises(SeqvaeError, match=r"toy_parts\.ToyVAE'.*name the module that registers it in SEQVAE_PARTS"):
        parts.check_parts(config, "the config")
    monkeypatch.setenv(parts.PLUGINS_ENV, " toy_parts , ")
    parts.check_parts(config, "the config")
    assert "ToyVAE" in registry["model"]


@pytest.mark.parametrize("value, needle", [
    ("no_such_module_xyz", "SEQVAE_PARTS names no_such_module_xyz, which cannot be imported: ModuleNotFoundError"),
    ("my module", "SEQVAE_PARTS names 'my module', which is not a module name"),
])
def test_a_bad_seqvae_parts_is_one_line(registry, monkeypatch, value, needle):
    monkeypatch.setenv(parts.PLUGINS_ENV, value)
    with pytest.raises(SeqvaeError) as info:
        parts.load_plugins()
    assert needle in str(info.value) and "\n" not in str(info.value)


def fake_distribution(folder: Path, value: str) -> None:
    """An installed distribution (as pip leaves one) whose seqvae.parts entry point names `value`."""
    info = folder / "toy_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{parts.ENTRY_POINT_GROUP}]\ntoy = {value}\n")


def test_an_entry_point_of_an_installed_distribution_registers_its_parts(registry, monkeypatch, tmp_path):
    fake_distribution(tmp_path, "toy_parts")
    monkeypatch.syspath_prepend(str(tmp_path))
    parts.load_plugins()
    assert "toy_parts.ToyVAE" in registry["model"]


def test_a_broken_entry_point_is_one_line(registry, monkeypatch, tmp_path):
    fake_distribution(tmp_path, "no_such_plugin_xyz")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SeqvaeError, match=r"^the seqvae\.parts entry point toy = no_such_plugin_xyz of toy-plugin, "
                                          r"which cannot be imported: .*; fix or uninstall toy-plugin$"):
        parts.load_plugins()


# ---------------------------------------------------------------------------------------- the commands

def toy_env(**extra: str) -> dict:
    """A `seqvae` subprocess that imports tests/toy_parts.py, as a user names a module of their own."""
    return seqvae_env(PYTHONPATH=str(TESTS), SEQVAE_PARTS="toy_parts", **extra)


def toy_args(work: Path) -> list[str]:
    """One YAML in a folder of the user's, found through Hydra's search path (docs/extending.md)."""
    (work / "my_conf" / "model").mkdir(parents=True, exist_ok=True)
    (work / "my_conf" / "model" / "toy.yaml").write_text(TOY_YAML)
    return [*SMOKE_ARGS, "model=toy", "hydra.searchpath=[file://my_conf]"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, mnist_data_dir):
    work = tmp_path_factory.mktemp("toy")
    return work, train(work, toy_args(work), env=toy_env())


def test_a_toy_model_from_tests_trains_and_evaluates_through_the_cli(toy_run):
    work, run = toy_run
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["test"]["active_units"] <= 2 and metrics["test"]["neg_elbo"] > 0
    proc = run_seqvae(["eval", f"run_dir={run.run_dir}", "iw_samples=5", "limit_examples=200"], cwd=work,
                      env=toy_env())
    assert proc.returncode == 0, describe(proc)
    scored = json.loads((run.run_dir / "eval.json").read_text())["test"]
    assert scored["num_examples"] == 200 and scored["iw_nll"] > 0


def test_without_seqvae_parts_the_toy_config_and_checkpoint_are_refused(toy_run):
    work, run = toy_run
    env = seqvae_env(PYTHONPATH=str(TESTS))      # importable, but not named: nothing imports it
    proc = run_seqvae(["train", *toy_args(work), f"run_dir={work / 'refused'}"], cwd=work, env=env)
    assert_one_error_line(proc, "the config: model._target_='toy_parts.ToyVAE' is not one of",
                          "for a part of your own, name the module that registers it in SEQVAE_PARTS")
    assert not (work / "refused" / "checkpoints").exists()
    proc = run_seqvae(["eval", f"run_dir={run.run_dir}"], cwd=work, env=env)
    assert_one_error_line(proc, "model._target_='toy_parts.ToyVAE'",
                          "if this run was trained with a part of your own, name the module")


def test_a_module_that_cannot_be_imported_stops_the_command_in_one_line(tmp_path):
    proc = run_seqvae(["train", *SMOKE_ARGS, f"run_dir={tmp_path / 'run'}"], cwd=tmp_path,
                      env=seqvae_env(SEQVAE_PARTS="no_such_module_xyz"))
    assert_one_error_line(proc, "SEQVAE_PARTS names no_such_module_xyz, which cannot be imported",
                          "put its folder on PYTHONPATH")
    assert not (tmp_path / "run").exists()     # stopped before Hydra made the run folder


def test_the_documented_example_is_the_toy_of_these_tests():
    """docs/extending.md shows tests/toy_parts.py and its YAML: what is documented is what is tested."""
    doc = (TESTS.parent / "docs" / "extending.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    (yaml,) = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    assert code.strip() in (TESTS / "toy_parts.py").read_text() and yaml == TOY_YAML
