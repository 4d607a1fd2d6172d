"""Shared setup of the test suite.

* SEQVAE_DATA_DIR is made absolute ONCE, here, at import time (CI sets it to the relative path
  ../shared/data): every subprocess below runs in a temporary working directory, where a relative
  path would point elsewhere.
* `run_seqvae` runs the installed console script `seqvae` in a subprocess.
* `smoke_run` trains one tiny real-MNIST run (debug=smoke) shared by the whole session.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# The product's rule (paths.data_dir): $SEQVAE_DATA_DIR, else ./data, here the folder pytest starts in. The
# absolute result is exported so that the subprocesses, which run in temporary folders, read the same root.
DATA_DIR = Path(os.environ.get("SEQVAE_DATA_DIR") or "data").expanduser().resolve()
os.environ["SEQVAE_DATA_DIR"] = str(DATA_DIR)

def compose_train_config(*overrides: str):
    """The `seqvae train` config for these overrides, as the app receives it (Hydra's own node dropped)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from seqvae_cli.config.runtime import register_resolvers
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


# The console script of the environment running the tests (a CI virtualenv may not be on PATH).
_NEXT_TO_PYTHON = Path(sys.executable).with_name("seqvae")
SEQVAE = str(_NEXT_TO_PYTHON) if _NEXT_TO_PYTHON.is_file() else (shutil.which("seqvae") or "seqvae")


def real_data(ensure, what: str) -> Path:
    """DATA_DIR once `ensure` (the product's find-or-download of a dataset) has found or fetched `what` there.
    Offline and without the files, the tests that need it fail with the product's message, which names the
    folder and files expected: a suite that skipped them would look green without having trained anything."""
    from seqvae_cli.errors import SeqvaeError
    try:
        ensure()
    except SeqvaeError as exc:
        pytest.fail(f"the tests on real {what} need it under {DATA_DIR} ($SEQVAE_DATA_DIR, else ./data): {exc}")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist_data_dir() -> Path:
    """The absolute data root holding MNIST/raw (downloaded there if absent); tests on real MNIST need it."""
    from seqvae_cli.data.mnist import find_or_download_mnist
    return real_data(lambda: find_or_download_mnist(str(DATA_DIR), download=True), "MNIST")


def seqvae_env(warnings: bool = False, **extra: str) -> dict:
    """The environment of a `seqvae` subprocess. Library warnings are silenced (warnings=False) so that
    a deprecation notice of some torch version cannot break a check on the error line; one test keeps
    them on to check that seqvae's own code warns about nothing."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)     # the tests check the short error messages users see
    env["OMP_NUM_THREADS"] = "1"          # 2 cores, one busy with another job: no thread contention
    if warnings:
        env.pop("PYTHONWARNINGS", None)
    else:
        env["PYTHONWARNINGS"] = "ignore"
    env.update(extra)
    return env


def run_seqvae(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """Run `seqvae ARGS` in `cwd` (a temporary folder, so nothing lands in the repository)."""
    return subprocess.run([SEQVAE, *map(str, args)], cwd=cwd, env=env or seqvae_env(), capture_output=True,
                          text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of stderr, without Python warnings that a library may print."""
    return [ln for ln in stderr.splitlines() if ln.strip() and "Warning" not in ln]


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """seqvae's own errors: exit 2 and exactly one line on stderr, `seqvae: error: ...` holding every needle."""
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2, describe(proc)
    assert len(lines) == 1 and lines[0].startswith("seqvae: error: "), describe(proc)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def clone_run(src: Path, dst: Path) -> Path:
    """Copy a trained run (checkpoints, config, metrics) so a test can change it without touching `src`."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tb", "samples", "logs", "eval.json"))
    return dst


SAMPLE_FILES = ("prior_samples.png", "reconstructions.png", "interpolation.png", "traversal.png",
                "latent_scatter.png")


def check_pictures(folder: Path, names) -> None:
    """Each picture exists, is a loadable image, and is bigger than one MNIST digit."""
    from PIL import Image
    for name in names:
        path = folder / name
        assert path.is_file() and path.stat().st_size > 0, name
        with Image.open(path) as im:
            im.load()
            assert im.width > 28 and im.height > 28, name


SMOKE_ARGS = ["debug=smoke", "trainer.progress_bar=false"]


@dataclass
class Run:
    run_dir: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, mnist_data_dir) -> Run:
    """`seqvae train debug=smoke` on real MNIST, once per session; tests must not modify it (clone_run)."""
    return train(tmp_path_factory.mktemp("smoke"), SMOKE_ARGS, env=seqvae_env(warnings=True))


def train(work: Path, args: list[str], name: str = "run", env: dict | None = None) -> Run:
    """`seqvae train ARGS run_dir=WORK/NAME`, which must succeed."""
    run_dir = work / name
    proc = run_seqvae(["train", *args, f"run_dir={run_dir}"], cwd=work, env=env)
    assert proc.returncode == 0, describe(proc)
    return Run(run_dir, proc)
