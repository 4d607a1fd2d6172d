"""The SLURM preset conf/hydra/launcher/slurm.yaml (Hydra's submitit launcher, docs/slurm.md).

No cluster here: the preset is composed, and the sbatch script the plugin writes is caught by a fake
`sbatch` on PATH that keeps a copy and refuses the submission.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf  # noqa: E402

from conftest import CONF_DIR, REPO, describe, seqvae_env  # noqa: E402

PRESET = CONF_DIR / "hydra" / "launcher" / "slurm.yaml"
TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def seqvae(*args: str, cwd=REPO, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqvae_cli", *args], cwd=cwd, env=env or seqvae_env(),
                          capture_output=True, text=True, timeout=300)


def compose_with_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir

    from seqvae_cli.config.runtime import register_resolvers
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)


def test_preset_composes_through_the_cli():
    # Hydra 1.3 refuses --cfg together with -m; the launcher group composes the same without it.
    proc = seqvae("train", "hydra/launcher=slurm", "--cfg", "hydra")
    assert proc.returncode == 0, describe(proc)
    launcher = OmegaConf.create(proc.stdout).hydra.launcher
    assert launcher._target_ == TARGET
    assert launcher.tasks_per_node == 1 and launcher.nodes == 1 and launcher.timeout_min == 240
    assert launcher.partition is None and launcher.max_num_timeout == 0
    assert OmegaConf.to_container(launcher)["gpus_per_node"] == "${trainer.devices}"


def test_preset_sets_only_the_plugins_own_keys():
    # The plugin's schema is a dataclass: an unknown or misspelt key fails the composition below,
    # and this names it.
    own = {f.name for f in dataclasses.fields(SlurmQueueConf)}
    keys = set(OmegaConf.load(PRESET)) - {"defaults"}
    assert keys and keys <= own, f"not keys of submitit_slurm: {sorted(keys - own)}"
    cfg = compose_with_hydra()
    assert cfg.hydra.launcher._target_ == TARGET
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"


@pytest.mark.parametrize("devices", [1, 4])
def test_gpus_per_node_follows_trainer_devices(devices):
    overrides = [] if devices == 1 else [f"trainer.devices={devices}"]
    cfg = compose_with_hydra(*overrides)
    assert cfg.trainer.devices == devices
    assert cfg.hydra.launcher.gpus_per_node == devices       # resolves ${trainer.devices}
    # an explicit launcher override still wins (a CPU-only job asks for no GPU)
    cfg = compose_with_hydra(*overrides, "hydra.launcher.gpus_per_node=null")
    assert cfg.hydra.launcher.gpus_per_node is None and cfg.trainer.devices == devices


FAKE_SBATCH = """#!/bin/bash
cp "${@: -1}" "$SBATCH_COPY"
echo "fake sbatch: nothing submitted" >&2
exit 1
"""


def test_ddp_settings_reach_sbatch(tmp_path):
    """One SLURM task per node holding trainer.devices GPUs: the job's own torchrun uses them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 1\n")   # submitit only checks that srun exists
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    copy, sweep = tmp_path / "submission.sh", tmp_path / "sweep"
    env = seqvae_env(SBATCH_COPY=str(copy))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    proc = seqvae("train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer.devices=2",
                  "model.latent_dim=2,4", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)
    assert proc.returncode != 0 and copy.is_file(), describe(proc)
    script = copy.read_text()
    sbatch = {ln.split()[1] for ln in script.splitlines() if ln.startswith("#SBATCH ")}
    for line in ("--gpus-per-node=2", "--ntasks-per-node=1", "--nodes=1", "--partition=gpu", "--time=240",
                 "--cpus-per-task=8", "--mem=32GB", "--array=0-1%2",   # %: array_parallelism, capped at the job count
                 f"--output={sweep}/.submitit/%A_%a/%A_%a_0_log.out"):
        assert line in sbatch, f"{line} not in\n{script}"
    assert "submitit.core._submit" in script and not (sweep / "0").exists()
