"""A non-editable install works: the wheel carries conf/ (seqvae_cli/conf) and every module, and its `seqvae train`
runs from an empty folder, far from the repository. (The rest of the suite runs the editable install.)"""
from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, SMOKE_ARGS, describe, seqvae_env

# What a build reads; copied to a temporary folder so that the build leaves no build/ in the checkout, and no stale
# file from an earlier build/ can slip into the wheel.
SOURCES = ("seqvae_cli", "conf", "pyproject.toml", "setup.py", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    # No build isolation: the machine may reach no package index; the test env's setuptools builds it.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, describe(proc)
    (built,) = out.glob("seqvae-*.whl")
    return built


def test_wheel_carries_every_config_and_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"seqvae_cli/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "seqvae_cli").rglob("*.py")}
    assert configs and not configs - names, sorted(configs - names)
    assert not modules - names, sorted(modules - names)


@pytest.mark.slow
def test_installed_wheel_trains_from_an_empty_folder(wheel, tmp_path, mnist_data_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # torch, hydra, ... come from the test env. `venv --system-site-packages` would not do: run from a virtualenv,
    # it sees the base interpreter's packages, not the virtualenv's. A .pth line only appends a folder to sys.path
    # (the .pth files inside it, such as the editable install's finder, are not run), so the wheel's seqvae_cli,
    # in the new venv's own site-packages, is the one imported.
    Path(purelib, "test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, describe(proc)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = seqvae_env()
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(python), "-c", "import seqvae_cli.config.runtime as r; print(r.CONF_DIR)"],
                           cwd=empty, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(Path(purelib) / "seqvae_cli" / "conf"), describe(where)
    proc = subprocess.run([str(venv / "bin" / "seqvae"), "train", *SMOKE_ARGS], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, describe(proc)
    (metrics,) = empty.glob("outputs/*/*/metrics.json")
    assert (metrics.parent / "checkpoints" / "best.pt").is_file()
