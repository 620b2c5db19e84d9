"""Runs that meet: two train.py pipelines asking for the same stages (and a third of another config),
two visualize.py runs into one run dir, a DDP rank SIGKILLed mid-epoch.  Shared by
tests/test_contention.py and benchmarks/faults.py (which describes the figures)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

from featvis.checkpoints import read_checkpoint
from featvis.evolution.callback import scheduled_steps
from featvis.tools.integrity import scan
from tests.checks import frame_check
from tests.faults import ERROR_PREFIX, SMALL_PRIOR, _visualize_args, command, environment

# -- two pipelines on one stages folder, a third of another config ---------------------------------

EVOLUTION = "callbacks.feature_evolution"
PIPELINE = ["task=pipeline", "logger=none", "task.stage_logger=none", *SMALL_PRIOR, "trainer.enable_progress_bar=false",
            "model.fc6_dim=128", "model.channels=[16,32,48,48,32]", "model.fc7_dim=128",
            # the target's callback, forwarded to the target stage alone
            f"task.overrides=['{EVOLUTION}.steps=2','{EVOLUTION}.log_frames=2','{EVOLUTION}.units=[fc8:0]']"]
OTHER_CONFIG = ["dae.hidden=[64,64]"]
TRAINING = re.compile(r"\] (\S+): training in (\S+) ")


def _stage_folders(stages: Path) -> list[Path]:
    return sorted(d for d in stages.iterdir() if d.is_dir()) if stages.is_dir() else []


def concurrent_pipelines(inputs: dict[str, str], workdir: Path, given: tuple[str, ...] = ("encoder",)) -> dict:
    """Three `train.py` pipelines started together on one stages folder: two of one config, one of
    another, each with the `given` stages as checkpoints (task.<stage>.ckpt).  Clean when all three
    finish, every stage folder was trained by exactly one of them (the other of its config waited
    and reused it), and nothing in any folder is torn."""
    stages = workdir / "stages"
    runs = {"a": [], "b": [], "other": OTHER_CONFIG}
    checkpoints = {"encoder": inputs["classifier"], "generator": inputs["generator"]}
    procs = {}
    for name, extra in runs.items():
        args = [*PIPELINE, f"task.stages_dir={stages}", *(f"task.{s}.ckpt={checkpoints[s]}" for s in given), *extra]
        log = open(workdir / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(command("train.py", workdir / name, args), env=environment(), stdout=log,
                                        stderr=subprocess.STDOUT, cwd=workdir), log)
    codes = {}
    for name, (proc, log) in procs.items():
        codes[name] = proc.wait(timeout=900)
        log.close()
    logs = {name: (workdir / f"{name}.log").read_text() for name in runs}
    trained: dict[str, list[str]] = {}
    for name, text in logs.items():
        for _stage, folder in TRAINING.findall(text):
            trained.setdefault(str(Path(folder).resolve()), []).append(name)
    folders = _stage_folders(stages)
    waited = [name for name, text in logs.items() if "another run is training this stage; waiting for it" in text]
    problems = [f"{name} exited {code}" for name, code in codes.items() if code != 0]
    problems += [f"{f.name} trained by {trained.get(str(f.resolve()), [])}" for f in folders
                 if len(trained.get(str(f.resolve()), [])) != 1]
    problems += [f"{f.name} has no done.json" for f in folders if not (f / "done.json").is_file()]
    problems += [f"{name} has no evolution/index.html" for name in runs
                 if not (workdir / name / "evolution" / "index.html").is_file()]
    torn = [p for d in [*folders, *(workdir / name for name in runs)] for p in scan(d)["broken"] + scan(d)["partial"]]
    problems += torn
    # a and b share each trained stage's folder, other has its own
    if len(folders) != 2 * (3 - len(given)):
        problems.append(f"{len(folders)} stage folders: {[f.name for f in folders]}")
    return {"clean": not problems, "stage_folders": len(folders), "waited": waited, "problems": problems}


# -- two visualize.py runs into one run dir ----------------------------------------------------------

def shared_run_dir(inputs: dict[str, str], workdir: Path) -> dict:
    """A second `visualize.py` into the run dir of a live one is refused with one line; the first
    completes untouched."""
    run_dir = workdir / "shared_run"
    args = _visualize_args(inputs)
    with open(workdir / "first.log", "w") as log:
        first = subprocess.Popen(command("visualize.py", run_dir, args), env=environment(), stdout=log,
                                 stderr=subprocess.STDOUT, cwd=workdir)
        deadline = time.monotonic() + 120
        while not (run_dir / ".hydra" / "config.yaml").is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the first run holds the lock once Hydra writes its record
        second = subprocess.run(command("visualize.py", run_dir, args), env=environment(), capture_output=True,
                                text=True, cwd=workdir, timeout=120)
        first_still_running = first.poll() is None
        first_code = first.wait(timeout=600)
    errors = [line for line in second.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    metrics = run_dir / "metrics.json"
    results = json.loads(metrics.read_text())["results"] if metrics.is_file() else []
    integrity = scan(run_dir)
    problems = [not first_still_running and "the first run ended before the second started",
                first_code != 0 and f"the first run exited {first_code}",
                second.returncode != 2 and f"the second run exited {second.returncode}",
                len(errors) != 1 and f"the second run printed {len(errors)} error lines",
                errors and f"hydra.run.dir={run_dir} is in use" not in errors[0] and f"unexpected error: {errors[0]}",
                len(results) != 18 and f"metrics.json has {len(results)} results",
                *integrity["broken"], *integrity["partial"]]
    problems = [p for p in problems if p]
    return {"clean": not problems, "error": errors[0] if errors else "", "problems": problems}


# -- a DDP rank SIGKILLed mid-epoch -----------------------------------------------------------------

DDP_STEPS = 16 * (384 // (2 * 32))  # epochs x batches per rank: some seconds of training after the first checkpoint
DDP_FRAMES = 4
DDP_BOUND_S = 30  # the survivor must end within this after the kill (it ends in seconds: gloo sees the peer go)
DDP_CLASSIFIER = ["task=classifier", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                  "trainer.max_epochs=16", "trainer.enable_progress_bar=false", "logger=none", "image_size=32",
                  "data.train_size=384", "data.val_size=64", "data.batch_size=32", "model.fc6_dim=64",
                  "model.fc7_dim=64", "model.channels=[8,16,16,16,16]", "callbacks=evolution",
                  f"{EVOLUTION}.steps=2", f"{EVOLUTION}.log_frames={DDP_FRAMES}", f"{EVOLUTION}.units=[fc8:0,fc8:1]",
                  "callbacks.model_checkpoint.monitor=null", "+callbacks.model_checkpoint.every_n_train_steps=6"]


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def ddp_rank_kill(inputs: dict[str, str], run_dir: Path, victim: int, delay: float) -> dict:
    """SIGKILL rank `victim` `delay` s after the first checkpoint of a 2-process DDP classifier with
    feature evolution; time until every rank has ended; then `ckpt_path=last` (DDP again)."""
    args = [*DDP_CLASSIFIER, f"{EVOLUTION}.generator.ckpt={inputs['generator']}"]
    log_path = run_dir.parent / f"{run_dir.name}.log"
    with open(log_path, "w") as log:
        rank0 = subprocess.Popen(command("train.py", run_dir, args), env=environment(), stdout=log,
                                 stderr=subprocess.STDOUT, cwd=run_dir.parent)
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "last.ckpt").is_file() and rank0.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(delay)
        rank1 = [p for p in _children(rank0.pid) if "train.py" in Path(f"/proc/{p}/cmdline").read_text()]
        if rank0.poll() is not None or not rank1:
            rank0.wait()
            return {"victim": victim, "killed": False, "ended_s": 0.0, "named": False, "recovered": False,
                    "frames_lost": 0, "frames_duplicated": 0, "truncated": 0, "problems": ["ended before the kill"]}
        ranks = [rank0.pid, rank1[0]]
        killed_at = time.monotonic()
        os.kill(ranks[victim], signal.SIGKILL)
        while any(_alive(p) for p in ranks) and time.monotonic() - killed_at < 120:
            rank0.poll()  # reaps rank 0 once it ends
            time.sleep(0.05)
        ended_s = time.monotonic() - killed_at
        rank0.wait()
        survivor = 1 - victim
        text = log_path.read_text()
        if "`Trainer.fit` stopped" in text:  # the kill came after training: not a kill mid-epoch
            return {"victim": victim, "killed": False, "ended_s": 0.0, "named": False, "recovered": False,
                    "frames_lost": 0, "frames_duplicated": 0, "truncated": 0, "problems": ["trained before the kill"]}
        errors = [line for line in text.splitlines() if line.startswith(ERROR_PREFIX)]
        named = any(f"rank {victim} of the 2 DDP processes is gone (rank {survivor}" in line for line in errors)
        rerun = subprocess.run(command("train.py", run_dir, [*args, "ckpt_path=last"]), env=environment(),
                               stdout=log, stderr=subprocess.STDOUT, cwd=run_dir.parent, timeout=600)
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt") if rerun.returncode == 0 else {}
    expected = {0} | scheduled_steps(DDP_STEPS, DDP_FRAMES)
    lost, duplicated = frame_check(run_dir / "evolution", expected) if rerun.returncode == 0 else (0, 0)
    integrity = scan(run_dir)
    complete = rerun.returncode == 0 and last.get("global_step") == DDP_STEPS
    problems = [ended_s > DDP_BOUND_S and f"ranks ended {ended_s:.0f} s after the kill",
                not named and f"no line naming rank {victim}: {errors[:1]}",
                not complete and f"the resume exited {rerun.returncode} at step {last.get('global_step')}",
                *integrity["broken"], *integrity["partial"]]
    return {"victim": victim, "killed": True, "ended_s": round(ended_s, 1), "named": named,
            "recovered": complete and named and ended_s <= DDP_BOUND_S and not lost and not duplicated,
            "frames_lost": lost, "frames_duplicated": duplicated,
            "truncated": len(integrity["broken"]) + len(integrity["partial"]), "problems": [p for p in problems if p]}


def ddp_rank_kills(inputs: dict[str, str], workdir: Path, trials: int, seed: int = 0) -> list[dict]:
    """`trials` kills, alternating rank 0 (the launching process) and rank 1, 0-3 s after the first checkpoint."""
    rng = random.Random(seed)
    return [ddp_rank_kill(inputs, workdir / f"ddp_{trial}", trial % 2, rng.uniform(0.0, 3.0))
            for trial in range(trials)]
