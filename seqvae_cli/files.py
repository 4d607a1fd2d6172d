"""Writing files so that neither a kill nor a full or read-only disk leaves a half-written one behind.

Every file seqvae writes for later reading (checkpoints, metrics.json, eval.json, report.csv, ...) goes to
NAME.tmp in the same folder, is flushed to the disk, then renamed over NAME: a reader sees the old file or the
new one, never a torn one. When the write fails, NAME.tmp is removed (a 3-5 MB checkpoint left behind would keep
a full disk full) and the failure becomes one SeqvaeError line naming the file, the cause and the cure.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

from seqvae_cli.errors import SeqvaeError

# errno -> (what happened, what to do about it)
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free space on that disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space within your quota"),
    errno.EROFS: ("the file system is read-only", "make that folder writable or choose another one"),
    errno.EACCES: ("permission denied", "make that folder writable (chmod u+w) or choose another one"),
    errno.EPERM: ("operation not permitted", "make that folder writable or choose another one"),
}


class WriteFailed(SeqvaeError):
    """A file could not be written for a reason of the disk (full, read-only, no permission); nothing was left
    half-written. `cure` says what to do; callers may add how to carry on (e.g. how to resume)."""

    def __init__(self, path: Path, cause: str, cure: str) -> None:
        self.path, self.cause, self.cure = path, cause, cure
        super().__init__(f"could not write {path}: {cause}; {cure}")


class _RecordingFile:
    """A file whose write errors are remembered: torch.save swallows the OSError of a failed write and raises
    RuntimeError('[enforce fail at inline_container.cc:...] unexpected pos ...') without its errno."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def as_write_failure(exc: BaseException, path: Path, recorded: OSError | None = None) -> WriteFailed | None:
    """The WriteFailed that `exc` (raised while writing `path`) amounts to, or None when it is no disk error."""
    cause = recorded if recorded is not None else exc
    if isinstance(cause, OSError) and cause.errno in DISK_ERRORS:
        what, cure = DISK_ERRORS[cause.errno]
        return WriteFailed(path, f"{what} ({errno.errorcode[cause.errno]})", f"{cure} in {path.parent}")
    torch_write_error = isinstance(exc, RuntimeError) and "inline_container" in str(exc)
    if isinstance(exc, OSError) or torch_write_error:   # another errno (EIO, ...), or torch's without one
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return WriteFailed(path, f"the write failed ({first})", f"check free space and permissions in {path.parent}")
    return None


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(file) on PATH.tmp, fsync, and rename it over `path`. On any failure (a Ctrl-C too) PATH.tmp is
    removed and `path` keeps its old content; a disk failure raises WriteFailed (one line)."""
    tmp = path.with_name(path.name + ".tmp")
    recorder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            recorder = _RecordingFile(f)
            write(recorder)   # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        failure = as_write_failure(exc, path, recorder.error if recorder is not None else None)
        if failure is not None:
            raise failure from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: Path, obj: Any) -> None:
    """`obj` as indented JSON, written atomically (a reader never sees a truncated file)."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def read_json(path: Path) -> Any:
    """The JSON in `path`; a truncated or otherwise unreadable file raises SeqvaeError naming it."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SeqvaeError(f"{path} is unreadable (truncated or not JSON: {str(exc)[:120]}); delete it or write it "
                          f"again") from None
