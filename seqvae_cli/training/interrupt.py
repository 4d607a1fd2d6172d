"""Ctrl-C (SIGINT) and SIGTERM during training: finish the step in progress, then stop cleanly.

The first signal only sets a flag, which the trainer reads at each step boundary and after each checkpoint, so a
signal never tears a checkpoint write; a second one aborts at once (the write in progress, if any, is abandoned and
its temporary file removed; the last complete checkpoint stays)."""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from seqvae_cli.errors import SeqvaeError

log = logging.getLogger("seqvae")


# The shell's convention for a process ended by signal N: exit status 128 + N.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Stopped(SeqvaeError):
    """Training stopped on a signal; the CLI prints the line and exits with `exit_code` (130 or 143), even in a
    sweep, where the other jobs are not started either."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum, self.exit_code = signum, EXIT_CODES[signum]


class StopRequests:
    """While active (a `with` block in the main thread), SIGINT and SIGTERM set `signum` instead of ending the
    process; a second signal raises KeyboardInterrupt, which the trainer turns into a Stopped line too."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def name(self) -> str:
        return NAMES[self.signum or signal.SIGINT]   # no signal seen: a KeyboardInterrupt, i.e. Ctrl-C

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt   # the second signal: stop now
        self.signum = signum
        # Logged (stdout and train.log), not printed to stderr: stderr keeps the one line the stop ends with.
        log.warning("%s received: training stops after the step in progress (send it again to stop at once)",
                    NAMES[signum])

    def __enter__(self) -> "StopRequests":
        # Signal handlers can only be installed from the main thread (in-process tests may train in another).
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def stop_message(how: str, run_dir: object, step: int, saved_epoch: int | None, finished: bool,
                 mid_epoch: bool) -> str:
    """The line a stopped training ends with: where it stopped, what checkpoints/last.pt holds (`saved_epoch`; None:
    no last.pt yet) and how to carry on. finished: every epoch is trained and saved; mid_epoch: the epoch in
    progress was left unfinished (resuming redoes its steps from the epoch's start: checkpoints are written at
    epoch ends only, which is what keeps a resumed run an exact replay)."""
    where = f"training stopped by {how} after step {step}"
    resume = f"seqvae train run_dir={run_dir} trainer.resume=true"
    if saved_epoch is None:
        return (f"{where}, before its first checkpoint (written at the end of epoch 1): nothing to resume; start it "
                f"again with trainer.overwrite=true (run_dir={run_dir} may stay)")
    last = f"{run_dir}/checkpoints/last.pt"
    if finished:
        return f"{where}: every epoch is trained and saved in {last}; {resume} runs the test pass and writes " \
               f"metrics.json"
    redo = f" (the steps of epoch {saved_epoch + 1} done so far are redone)" if mid_epoch else ""
    return f"{where}; {last} holds the end of epoch {saved_epoch}: continue with {resume}, which starts at epoch " \
           f"{saved_epoch + 1}{redo}"
