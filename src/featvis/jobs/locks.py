"""Locks that keep concurrent runs from writing into one folder.

Both are `filelock` locks on a `.lock` file: the OS drops them when their process dies, so a
killed run never blocks the next one.  Under DDP only the launching process locks: the ranks it
starts write into the same folders with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback

from featvis.errors import ConfigError

log = logging.getLogger(__name__)


def launching_process() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


@contextlib.contextmanager
def stage_lock(path: Path, what: str) -> Iterator[None]:
    """Hold `path`'s lock while a pipeline stage trains; another run asking for the stage says so in
    one line and waits for it (then reuses the stage)."""
    if not launching_process():
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another run is training this stage; waiting for it (%s)", what.strip(), path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class RunDirLock(Callback):
    """A Hydra callback: a run refuses a run dir (`hydra.run.dir`) that another live run writes into.

    Taken in `on_run_start`, before Hydra writes the run's `.hydra/` record, so the refused run
    touches nothing of the other's.  Two runs would otherwise interleave their checkpoints, frames
    and metrics in one folder.  Sweep jobs each get a subdir of their own and are not locked.
    """

    def __init__(self) -> None:
        self.lock: FileLock | None = None

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from featvis.jobs.cli import fail

        if not launching_process():
            return
        run_dir = Path(str(config.hydra.run.dir))
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # Hydra creates the run dir next and tells its error in one line (featvis.jobs.cli)
        self.lock = FileLock(run_dir / ".lock")
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            self.lock = None
            # Exit here: Hydra turns a callback's exception into a warning and runs the job anyway.
            fail(ConfigError(f"hydra.run.dir={run_dir} is in use by another run; expected a run dir that no live "
                             "run writes into (another hydra.run.dir, or wait for that run to end)"))

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
