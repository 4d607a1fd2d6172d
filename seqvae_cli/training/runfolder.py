"""Run folders: one training per folder (a lock), no training over another run's files, writable before work.

The lock is RUN/.lock, created atomically (O_CREAT|O_EXCL) and held with flock(2) while the run trains; it names
the holder (PID, host, start time). The kernel drops an flock when its process dies, however it dies, so a lock
file whose flock is free was left by a killed run: it is taken over, with a log line. (On a file system without
flock, a lock whose PID is not alive on this host counts as stale instead.)
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator

import yaml

from seqvae_cli.errors import SeqvaeError

log = logging.getLogger("seqvae")


LOCK_NAME = ".lock"


# Set by a process that holds a run folder's lock for the processes it starts (trainer.devices=N): they train into
# that folder without taking the lock or checking the folder again.
LOCKED_BY_PARENT_ENV = "SEQVAE_RUN_LOCKED"


# What Hydra writes into the run folder before `seqvae train` itself runs: a folder holding only these is fresh.
WRITTEN_BY_HYDRA = (".hydra", "train.log")


# What a training writes into its folder, and eval/sample add: trainer.overwrite=true removes these (and only these)
# from a folder that holds a seqvae run, so the new run's files never mix with the old one's.
RUN_OUTPUTS = ("checkpoints", "tb", "samples", "logs", "metrics.json", "eval.json")


_held: dict[Path, int] = {}   # run folder -> fd of the lock this process holds


# Stale locks taken over, said once logging is set up (the lock may be taken before Hydra configures it), so the
# line lands in the run's train.log too.
_takeovers: list[str] = []


def is_seqvae_run(folder: Path) -> bool:
    """A folder `seqvae train` wrote: it holds checkpoints/*.pt, or Hydra's record of a train command."""
    if any((folder / "checkpoints").glob("*.pt")):
        return True
    try:
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and config.get("task_name") == "train"


def not_writable_reason(folder: Path) -> str | None:
    """Why seqvae could not create files in `folder` (or, while it does not exist, in the nearest folder above it
    that does, where it would be created); None when it can."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    with contextlib.suppress(OSError):
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"{existing} is on a read-only file system"
    return f"{existing} is not writable (permission denied for this user)"


def check_writable(folder: Path, what: str = "run folder") -> None:
    """Refuse, before any work, a folder that could not take the run's files."""
    reason = not_writable_reason(folder)
    if reason is not None:
        raise SeqvaeError(f"the {what} {folder} cannot be written: {reason}; make it writable or choose another "
                          f"run_dir=...")
    for sub in ("checkpoints", "tb"):   # a run's own subfolders may have been made read-only on their own
        if (folder / sub).is_dir() and not os.access(folder / sub, os.W_OK | os.X_OK):
            raise SeqvaeError(f"the {what} {folder} cannot be written: {folder / sub} is not writable; make it "
                              f"writable or choose another run_dir=...")


# ------------------------------------------------------------------------------------------------ the lock

def _read_holder(fd: int) -> dict:
    with contextlib.suppress(OSError, ValueError):
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        if isinstance(holder, dict):
            return holder
    return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that is only starting (no PID written yet)"
    pid, host, started = holder.get("pid", "?"), holder.get("host", "?"), holder.get("started", "?")
    return f"PID {pid} on {host}, started {started}"


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:    # alive, owned by another user
        return True
    return True


def _flock(fd: int, holder: dict) -> bool:
    """Take the flock on fd; False when another live process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:   # no flock on this file system (ENOLCK, EOPNOTSUPP): judge by the PID instead
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        here = holder.get("host") == socket.gethostname()
        return not holder or (here and not _pid_alive(holder.get("pid")))


def acquire_lock(run_dir: Path) -> None:
    """Take RUN/.lock for this process (a no-op when it already holds it); SeqvaeError naming the holder when
    another live process trains into RUN."""
    key = run_dir.resolve()
    if key in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    for _ in range(5):   # retried when the holder removed its lock file between our open and our flock
        try:
            fd, created = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644), True
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:
                continue
        holder = {} if created else _read_holder(fd)
        if not _flock(fd, holder):
            holder = _read_holder(fd) or holder   # its creator may have written it since we read
            os.close(fd)
            raise SeqvaeError(f"{run_dir} is in use: `seqvae train` {_describe(holder)} is training into it "
                              f"({path}); wait for it to finish, stop it (kill {holder.get('pid', 'PID')}), or "
                              f"choose another run_dir=...")
        if not path.exists() or os.fstat(fd).st_ino != os.stat(path).st_ino:
            os.close(fd)     # we locked a lock file its holder had just removed: start again
            continue
        if holder:
            _takeovers.append(f"took over the stale lock {path} of {_describe(holder)}: that process is no longer "
                              f"running (killed?)")
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        os.fsync(fd)
        _held[key] = fd
        return
    raise SeqvaeError(f"could not take the lock {path}: it keeps being replaced; is another `seqvae train` starting "
                      f"in {run_dir}? Try again, or choose another run_dir=...")


def release_lock(run_dir: Path) -> None:
    """Remove RUN/.lock if this process holds it (removed while still locked, so nobody takes a dying lock)."""
    fd = _held.pop(run_dir.resolve(), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(run_dir / LOCK_NAME)
    os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN/.lock inside the block; a lock this process already held (taken earlier) stays held after it."""
    held_before = run_dir.resolve() in _held
    acquire_lock(run_dir)
    try:
        yield
    finally:
        if not held_before:
            release_lock(run_dir)


def log_takeovers() -> None:
    while _takeovers:
        log.warning(_takeovers.pop(0))


def locked_by_parent() -> bool:
    return bool(os.environ.get(LOCKED_BY_PARENT_ENV))


# ------------------------------------------------------------------------------------- an existing folder

def foreign_entries(run_dir: Path) -> list[str]:
    """What RUN holds besides what Hydra writes for this command and the lock: empty for a fresh folder."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()
                  if p.name not in (*WRITTEN_BY_HYDRA, LOCK_NAME))


def check_run_folder(run_dir: Path, resume: bool | str, overwrite: bool) -> None:
    """Refuse to train into a folder that holds files of something else than this run, unless told to continue
    that run (trainer.resume) or to replace it (trainer.overwrite)."""
    resume_here = resume is True or (isinstance(resume, str) and is_inside(Path(resume), run_dir))
    found = foreign_entries(run_dir)
    if not found or resume_here or overwrite:
        return
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    if is_seqvae_run(run_dir):
        raise SeqvaeError(f"{run_dir} already holds a run ({shown}); continue it with trainer.resume=true, replace "
                          f"it with trainer.overwrite=true, or leave run_dir unset for a fresh run directory")
    raise SeqvaeError(f"{run_dir} is not empty and holds no seqvae run ({shown}); choose another run_dir (or leave "
                      f"it unset for a fresh one), or write into it anyway with trainer.overwrite=true")


def clear_previous_run(run_dir: Path) -> None:
    """trainer.overwrite=true: remove a previous run's outputs (RUN_OUTPUTS only, and only from a folder that holds
    a seqvae run), so that the new run's checkpoints, TensorBoard events and metrics never mix with them."""
    if not is_seqvae_run(run_dir):
        return
    removed = []
    for name in RUN_OUTPUTS:
        target = run_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log.warning("trainer.overwrite=true: removed the previous run's %s from %s", ", ".join(removed), run_dir)


def discard_unused(folder: Path, task: str) -> bool:
    """A command that stopped before doing anything leaves no folder behind: remove `folder` when it holds only what
    Hydra wrote for this command (.hydra/, TASK.log) and the lock, then its parents that became empty below the
    working directory (outputs/NAME/DATE/, outputs/NAME/, outputs/) or below a run (RUN/logs/). Returns whether it was removed."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if any(p.name not in (".hydra", f"{task}.log", LOCK_NAME) for p in folder.iterdir()):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.resolve().parents:
        if (parent / "run_id").exists() or not is_inside(parent, Path.cwd()) or parent == Path.cwd().resolve():
            break
        try:
            parent.rmdir()   # only when empty
        except OSError:
            break
    return not folder.exists()


def is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
