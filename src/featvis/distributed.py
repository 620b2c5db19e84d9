"""DDP jobs under Hydra: Lightning's own launcher, plus what a multirun sweep needs from it.

Lightning's DDP launcher (`_SubprocessScriptLauncher`) starts ranks 1..N-1 of a node by
running the script again, and under Hydra it adds `hydra.run.dir=<the run dir>` and
`hydra.output_subdir=null`, so every rank shares the job's one run dir and only rank zero
writes `.hydra/`.  That is right for a single run.  In a multirun sweep it is not:

- the children would get the whole command line again, `-m` and every swept value, and each
  would start the entire sweep; and `hydra.run.dir` is not the job's dir (`hydra.sweep.dir/N`);
- the launcher leaves `LOCAL_RANK`, `MASTER_PORT`, ... in the environment and the process group
  open, so the next job of the sweep would think its processes were started for it and wait
  on the finished job's ranks.

`ddp_job` fixes both around `trainer.fit`: in a multirun job the children run the job's own
overrides (`hydra.overrides.task`) in its own dir, and afterwards the process group is
destroyed and the launch variables are put back.  A SLURM job (hydra/launcher=slurm) starts its
ranks itself (Lightning's SLURMEnvironment): nothing is launched here and nothing changes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import lightning as L

from featvis.errors import ConfigError

LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _hydra_mode() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return str(HydraConfig.get().mode).rsplit(".", 1)[-1]  # RUN or MULTIRUN


def child_command(local_rank: int) -> tuple[Sequence[str], str]:
    """The command line of DDP rank `local_rank` of a multirun job: the job's overrides, its dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += list(hydra_cfg.overrides.task)
    command += [f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
                f"hydra.job.name={hydra_cfg.job.name}_ddp_process_{local_rank}", "hydra.output_subdir=null"]
    return command, get_original_cwd()


def launches_subprocesses(trainer: L.Trainer) -> bool:
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    return isinstance(launcher, _SubprocessScriptLauncher) and not launcher.cluster_environment.creates_processes_externally


def check_launcher(trainer: L.Trainer) -> None:
    """DDP's launcher re-runs the script: not possible from a joblib worker, which has no script."""
    from hydra.core.hydra_config import HydraConfig

    if _hydra_mode() != "MULTIRUN" or not launches_subprocesses(trainer):
        return
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if "joblib" in launcher.lower():
        raise ConfigError("trainer=ddp under hydra/launcher=joblib; expected DDP jobs one after another "
                          "(the default launcher) or on SLURM (hydra/launcher=slurm), or joblib with "
                          "trainer=default")


@contextmanager
def ddp_job(trainer: L.Trainer) -> Iterator[None]:
    """Around `trainer.fit`: DDP children of a multirun job run that job; the next job starts clean."""
    if _hydra_mode() != "MULTIRUN" or not launches_subprocesses(trainer) or "LOCAL_RANK" in os.environ:
        yield  # a single run (Lightning's own handling is right), a SLURM rank, or a child
        return
    import torch.distributed as dist
    from lightning.pytorch.strategies.launchers import subprocess_script

    saved = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    original = subprocess_script._hydra_subprocess_cmd
    subprocess_script._hydra_subprocess_cmd = child_command
    try:
        yield
    finally:
        subprocess_script._hydra_subprocess_cmd = original
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def share_cpus_with_parallel_jobs() -> int | None:
    """Under hydra/launcher=joblib, give each of the n_jobs parallel jobs its share of the CPU threads.

    Every job would otherwise start torch with one thread per core, n_jobs times over. Returns
    the thread count set, or None when the job is not one of several parallel ones.
    """
    from hydra.core.hydra_config import HydraConfig

    if _hydra_mode() != "MULTIRUN":
        return None
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_jobs = int(launcher.get("n_jobs") or -1)
    n_jobs = cores if n_jobs < 1 else min(n_jobs, cores)
    threads = max(1, cores // n_jobs)
    torch.set_num_threads(threads)
    return threads
