"""A full disk (ENOSPC) while a job writes, shared by tests/test_full_disk.py and benchmarks/faults.py.

Each trial runs train.py (the classifier with FeatureEvolution, as the kill trials of
tests/faults.py) or visualize.py with its run dir on a tmpfs of its own, and fills that tmpfs with
a ballast file at a chosen moment so that one kind of write fails: a checkpoint, an evolution frame,
evolution.json, visualize.py's grid.png or metrics.json.  The job must end with one
`featvis: error:` line naming the file and the space it needed, exit 2 and leave nothing torn;
then the ballast is deleted and the same command runs again (`ckpt_path=last` for training): it
must complete with no frame lost or repeated and nothing torn.  Mounting needs root: where it is
refused, `enospc_trials` raises NoTmpfs, saying why.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featvis.checkpoints import read_checkpoint
from featvis.evolution.callback import scheduled_steps
from featvis.tools.integrity import scan
from tests.checks import frame_check
from tests.faults import (ERROR_PREFIX, _check_classifier, _check_visualize, _classifier_args, _visualize_args, command,
                          environment)

PAGE = 4096          # tmpfs counts whole pages: a file of 10 kB takes 12 kB
DISK_SIZE = "32m"    # each trial's tmpfs, far larger than a run: the ballast sets what is left
KINDS = ("checkpoint", "frame", "evolution.json", "grid", "metrics.json")


class NoTmpfs(RuntimeError):
    """A tmpfs cannot be mounted here (not root, or mount refused): the trials cannot run."""


# -- the disk ------------------------------------------------------------------------------------

def mount_tmpfs(folder: Path, size: str = DISK_SIZE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NoTmpfs(f"mount -t tmpfs is not available here ({err})") from None
    if proc.returncode != 0:
        raise NoTmpfs(f"mount -t tmpfs refused: {(proc.stderr or proc.stdout).strip()}")


def unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # busy: detach now, free when unused


def tmpfs_refused(workdir: Path) -> str | None:
    """Why a tmpfs cannot be mounted under `workdir`; None where it can."""
    probe = workdir / ".tmpfs-probe"
    try:
        mount_tmpfs(probe, "1m")
    except NoTmpfs as err:
        return str(err)
    unmount(probe)
    probe.rmdir()
    return None


def free_space(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def fill(disk: Path, leave: int) -> int:
    """Write a ballast file on `disk` so that `leave` bytes (whole pages) stay free; returns what is free."""
    leave = -(-leave // PAGE) * PAGE
    chunk = b"\0" * (1 << 20)
    with open(disk / "ballast", "ab", buffering=0) as f:  # unbuffered: nothing left over to fail at close()
        try:
            while (room := free_space(disk) - leave) > 0:
                f.write(chunk[:min(room, len(chunk))])
        except OSError:  # the disk filled first: the job took the rest meanwhile
            pass
    return free_space(disk)


def pages(path: Path) -> int:
    return -(-path.stat().st_size // PAGE) * PAGE


# -- the runs ------------------------------------------------------------------------------------

def with_overrides(args: list[str], changes: list[str]) -> list[str]:
    """`args` with `changes` in place of the overrides of the same key (a `+` of the original kept)."""
    def key(arg: str) -> str:
        return arg.split("=", 1)[0].lstrip("+")

    changed = {key(c): c for c in changes}
    kept = []
    for arg in args:
        if key(arg) in changed:
            new = changed.pop(key(arg))
            arg = f"+{new.lstrip('+')}" if arg.startswith("+") else new
        kept.append(arg)
    return [*kept, *changed.values()]


# A smaller classifier run for CI: 8 steps, one unit, a frame every 2 steps, a checkpoint every 3.
QUICK_STEPS, QUICK_EVERY = 8, 2
QUICK = ["data.train_size=256", "data.val_size=64", "callbacks.feature_evolution.units=[fc8:0]",
         "callbacks.feature_evolution.real_images=64", "callbacks.feature_evolution.log_frames=0",
         "callbacks.feature_evolution.linear_frames=0", f"callbacks.feature_evolution.every_n_steps={QUICK_EVERY}",
         "callbacks.feature_evolution.live_report=false", "callbacks.model_checkpoint.every_n_train_steps=3"]


def _check_quick_classifier(run_dir: Path) -> dict:
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    lost, duplicated = frame_check(run_dir / "evolution", {0} | scheduled_steps(QUICK_STEPS, 0, 0, QUICK_EVERY))
    return {"complete": last["global_step"] == QUICK_STEPS and (run_dir / "evolution" / "index.html").is_file(),
            "frames_lost": lost, "frames_duplicated": duplicated}


@dataclass(frozen=True)
class Job:
    script: str
    args: list[str]
    rerun: list[str]
    check: Callable[[Path], dict]


def training_job(inputs: dict[str, str], quick: bool) -> Job:
    args = _classifier_args(inputs)
    if quick:
        return Job("train.py", with_overrides(args, QUICK), ["ckpt_path=last"], _check_quick_classifier)
    return Job("train.py", args, ["ckpt_path=last"], _check_classifier)


def visualize_job(inputs: dict[str, str]) -> Job:
    return Job("visualize.py", _visualize_args(inputs), [], _check_visualize)


# -- when to fill the disk -----------------------------------------------------------------------

class AfterCheckpoints:
    """True once last.ckpt has been (re)written `count` times: between a checkpoint and the next frame."""

    def __init__(self, count: int):
        self.count, self.seen, self.stamp = count, 0, None

    def __call__(self, run_dir: Path) -> bool:
        try:
            stamp = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if stamp != self.stamp:
            self.stamp, self.seen = stamp, self.seen + 1
        return self.seen >= self.count


def job_started(run_dir: Path) -> bool:
    """Hydra has written its record (overrides.yaml is its last file): the job itself runs now."""
    return (run_dir / ".hydra" / "overrides.yaml").is_file()


def newest_frame_pages(run_dir: Path) -> int:
    """The space the newest evolution frame (its images and grid) takes: the next one takes about as much."""
    frames = sorted((run_dir / "evolution" / "frames").glob("step*"))
    if not frames:
        return 0
    grid = run_dir / "evolution" / "grids" / f"{frames[-1].name}.png"
    return sum(pages(p) for p in frames[-1].glob("*.png")) + (pages(grid) if grid.is_file() else 0)


@dataclass(frozen=True)
class Aim:
    """Fill the disk once `trigger(run_dir)`, leaving `leave(run_dir)` bytes free."""
    job: Job
    trigger: Callable[[Path], bool]
    leave: Callable[[Path], int]


def aim(kind: str, moment: int, inputs: dict[str, str], quick: bool, reference: int = 0) -> Aim:
    """How to make a `kind` of write fail, at the `moment`-th chance (1, 2, ...).

    checkpoint: after a checkpoint, leave half its size: the frames before the next one fit, it does not.
    frame: after a checkpoint, leave nothing: the next write is the next frame's first image.
    evolution.json: after a checkpoint, leave what one frame's images take and a page: the next
    frame's images fit, its evolution.json (several pages) does not.
    grid, metrics.json (visualize.py): once the job runs, leave nothing (grid.png is its first
    output) or what an uninterrupted run's other outputs take (`reference`) and a page (metrics.json
    is its last).
    """
    train = training_job(inputs, quick)
    if kind == "checkpoint":
        return Aim(train, AfterCheckpoints(moment), lambda run: (run / "checkpoints" / "last.ckpt").stat().st_size // 2)
    if kind == "frame":
        return Aim(train, AfterCheckpoints(moment), lambda run: 0)
    if kind == "evolution.json":
        return Aim(train, AfterCheckpoints(moment), lambda run: newest_frame_pages(run) + PAGE)
    if kind == "grid":
        return Aim(visualize_job(inputs), job_started, lambda run: 0)
    if kind == "metrics.json":
        return Aim(visualize_job(inputs), job_started, lambda run: reference + PAGE)
    raise ValueError(f"kind={kind!r}; expected one of {', '.join(KINDS)}")


def visualize_reference(inputs: dict[str, str], run_dir: Path) -> int:
    """The pages an uninterrupted visualize.py run writes once its job runs (its log included), metrics.json aside."""
    job = visualize_job(inputs)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(command(job.script, run_dir, job.args), env=environment(), capture_output=True, text=True,
                          cwd=run_dir.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"visualize.py failed without a fault:\n{proc.stderr[-3000:]}")
    outputs = [p for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts and p.name != "metrics.json"]
    return sum(pages(p) for p in outputs)


# -- one trial -----------------------------------------------------------------------------------

def writer_of(relative: str) -> str:
    """The kind of write a path (relative to the run dir) belongs to."""
    if relative.startswith("checkpoints/") and relative.endswith(".ckpt"):
        return "checkpoint"
    if relative.startswith("evolution/frames/"):
        return "frame"
    if relative.startswith("evolution/grids/") or relative == "grid.png":
        return "grid"
    if relative in ("evolution/evolution.json", "metrics.json"):
        return relative.rsplit("/", 1)[-1]
    return f"other ({relative})"


WRITING = re.compile(r" writing (\S+?)[ ;,]")


def error_problems(proc: subprocess.CompletedProcess, run_dir: Path) -> tuple[list[str], str | None]:
    """What is wrong with how a job ended on a full disk, and the file its error line names."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    found = WRITING.search(errors[0]) if errors else None
    named = found.group(1) if found else None
    try:
        relative = str(Path(named).resolve().relative_to(run_dir.resolve())) if named else None
    except ValueError:
        relative = None
    problems = [proc.returncode != 2 and f"exit {proc.returncode}",
                len(errors) != 1 and f"{len(errors)} error lines",
                errors and relative is None and f"error names no file of the run dir: {errors[0][:200]}",
                errors and not re.search(r"expected at least \d", errors[0]) and "error does not say the space needed",
                "Traceback" in proc.stderr and "a traceback",
                "Logging error" in proc.stderr and "a logging error"]
    return [p for p in problems if p], relative


def enospc_trial(kind: str, moment: int, inputs: dict[str, str], workdir: Path, name: str, quick: bool = False,
                 reference: int = 0, timeout: float = 600) -> dict:
    """Fill the disk so that a `kind` of write fails, then free it and run again: one row of the table."""
    start = time.perf_counter()
    target = aim(kind, moment, inputs, quick, reference)
    disk = workdir / name
    run_dir = disk / "run"
    mount_tmpfs(disk)
    row = {"writer": kind, "moment": moment}
    try:
        proc = subprocess.Popen(command(target.job.script, run_dir, target.job.args), env=environment(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=disk)
        filled: list[int] = []

        def watch() -> None:
            while proc.poll() is None:
                if target.trigger(run_dir):
                    free = fill(disk, target.leave(run_dir))
                    if proc.poll() is None:  # filled while the job still runs
                        filled.append(free)
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        watcher.join()
        ended = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
        problems, failed_at = error_problems(ended, run_dir)
        if not filled:
            problems.insert(0, "the run ended before the disk was filled")
        after_error = scan(run_dir)
        torn = after_error["broken"]
        problems += [f"torn after the error: {p}" for p in torn]
        row.update(failed_writer=writer_of(failed_at) if failed_at else None, failed_at=failed_at,
                   clean_error=not problems, error_line=next((line for line in stderr.splitlines()
                                                              if line.startswith(ERROR_PREFIX)), None),
                   partials_after_error=len(after_error["partial"]))
        (disk / "ballast").unlink(missing_ok=True)  # space freed: the same command again
        try:
            rerun = subprocess.run(command(target.job.script, run_dir, [*target.job.args, *target.job.rerun]),
                                   env=environment(), capture_output=True, text=True, cwd=disk, timeout=timeout)
        except subprocess.TimeoutExpired:
            rerun = subprocess.CompletedProcess([], None, "", f"no end within {timeout:.0f} s")
        check = (target.job.check(run_dir) if rerun.returncode == 0
                 else {"complete": False, "frames_lost": 0, "frames_duplicated": 0})
        after_rerun = scan(run_dir)
        left = after_rerun["broken"] + after_rerun["partial"]
        recovered = rerun.returncode == 0 and check["complete"] and not left and not (
            check["frames_lost"] or check["frames_duplicated"])
        if rerun.returncode != 0:
            problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip().splitlines()[-1:]}")
        elif not check["complete"]:
            problems.append("rerun incomplete")
        problems += [f"after the rerun: {p}" for p in left]
        row.update(recovered=recovered, frames_lost=check["frames_lost"],
                   frames_duplicated=check["frames_duplicated"], truncated=len(torn) + len(left),
                   why="; ".join(problems) if problems else row["error_line"])
        (workdir / f"{name}.log").write_text(f"$ {' '.join(proc.args)}\n{stderr}\n$ rerun\n{rerun.stderr}")
        if problems:  # keep the run dir to look at: the tmpfs goes
            shutil.copytree(run_dir, workdir / f"{name}_run", dirs_exist_ok=True)
    finally:
        unmount(disk)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def enospc_trials(inputs: dict[str, str], workdir: Path, trials: int, seed: int = 0, quick: bool = False,
                  kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """`trials` full-disk trials, the writer that fails going round `kinds` (checkpoint, frame,
    evolution.json, then visualize.py's grid.png and metrics.json), each at a moment drawn from
    `seed` (after the 1st..4th checkpoint of training).  Rows: trial, writer (aimed at),
    failed_writer and failed_at (what the error line names), clean_error, recovered, frames_lost,
    frames_duplicated, truncated (torn outputs after the error or the rerun, temporary files after
    the rerun), why (the error line, or what went wrong), seconds.  `quick`: a smaller training run
    (tests).  Raises NoTmpfs where a tmpfs cannot be mounted."""
    workdir.mkdir(parents=True, exist_ok=True)
    refused = tmpfs_refused(workdir)
    if refused:
        raise NoTmpfs(refused)
    rng = random.Random(seed)
    chosen = [kinds[trial % len(kinds)] for trial in range(trials)]
    # measured before the trials: the trial's job must not run on while the reference runs
    reference = visualize_reference(inputs, workdir / "visualize_reference") if "metrics.json" in chosen else 0
    rows = []
    for trial, kind in enumerate(chosen):
        moment = rng.randint(1, 2 if quick else 4)
        rows.append({"trial": trial, **enospc_trial(kind, moment, inputs, workdir, f"enospc_{trial}", quick,
                                                    reference)})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'trial':>5}  {'writer':<15}{'failed':<15}{'clean':>6}{'recovered':>10}{'lost':>6}{'dup':>5}"
          f"{'trunc':>6}{'s':>7}  error line / problem")
    for row in rows:
        print(f"{row['trial']:>5}  {row['writer']:<15}{str(row['failed_writer']):<15}"
              f"{'yes' if row['clean_error'] else 'NO':>6}{'yes' if row['recovered'] else 'NO':>10}"
              f"{row['frames_lost']:>6}{row['frames_duplicated']:>5}{row['truncated']:>6}{row['seconds']:>7.1f}  "
              f"{row['why'][:160]}")
