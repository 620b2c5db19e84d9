"""featvis's command-line entry points, each run in a fresh process forked from one that has
already imported them.

A run is still a process of its own (its argv, environment, working directory, stdout, stderr and
exit status), as `python train.py ...` would be; what it skips is importing torch, torchvision and
Lightning again, most of the seconds of a run that stops at a bad input. For tables of many short
runs (tests/faults.py's bad inputs); the scripts themselves stay covered by plain subprocesses
elsewhere (tests/test_cli.py).
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENTRY_POINTS = {"train.py": "train_main", "visualize.py": "visualize_main"}

# Reads one JSON request a line, forks, and in the child runs the entry point as the script would.
SERVER = r"""
import json, os, sys, traceback
import featvis.jobs.cli as cli
import featvis.jobs.train, featvis.jobs.visualize  # what the entry points import before any check
requests = sys.stdin.buffer
for line in requests:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                                    (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)):
                os.dup2(os.open(path, flags), fd)
            sys.stdin = open(os.devnull)
            sys.argv = request["argv"]
            try:
                getattr(cli, request["entry"])()
                code = 0
            except SystemExit as stop:
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            except BaseException:
                traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class TimedOut(Exception):
    pass


class Server:
    """One preloaded interpreter; runs one command at a time."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.runs = 0

    def _reply(self, timeout: float | None) -> dict | None:
        if not self.selector.select(timeout):
            return None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the preloaded interpreter exited ({self.process.wait()})")
        return json.loads(line)

    def start(self, script: str, args: list[str], env: dict[str, str], cwd: Path, stdout: Path,
              stderr: Path | None = None) -> None:
        """Start `python <script> <args>` in `cwd` with exactly `env`, its output appended to
        `stdout` (and `stderr`; default: the same file)."""
        request = {"entry": ENTRY_POINTS[script], "argv": [script, *args], "env": env, "cwd": str(cwd),
                   "stdout": str(stdout), "stderr": str(stderr or stdout)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        self.pid = self._reply(120)["pid"]

    def wait(self, timeout: float | None = None) -> int | None:
        """The started run's exit status; None if it is still running after `timeout` seconds."""
        reply = self._reply(timeout)
        return None if reply is None else reply["returncode"]

    def kill(self) -> int:
        """SIGKILL the started run; its exit status."""
        os.kill(self.pid, signal.SIGKILL)
        return self.wait(60)

    def run(self, script: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        """`python <script> <args>` to its end, as subprocess.run; TimedOut after `timeout` seconds."""
        self.runs += 1
        stdout, stderr = (self.workdir / f"run{id(self)}-{self.runs}.{name}" for name in ("out", "err"))
        self.start(script, args, env, cwd, stdout, stderr)
        returncode = self.wait(timeout)
        if returncode is None:
            self.kill()
            raise TimedOut(f"no answer within {timeout:.0f} s")
        found = subprocess.CompletedProcess([script, *args], returncode, stdout.read_text(), stderr.read_text())
        stdout.unlink()
        stderr.unlink()
        return found

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@contextmanager
def servers(count: int, workdir: Path) -> Iterator[queue.Queue]:
    """`count` preloaded interpreters (started together) in a queue: take one, run, put it back."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = [Server(workdir) for _ in range(count)]
    pool: queue.Queue = queue.Queue()
    for server in started:
        pool.put(server)
    try:
        yield pool
    finally:
        for server in started:
            server.close()
