"""DDP jobs under Hydra, and CPU threads for parallel sweep jobs.

Lightning's DDP launcher starts ranks 1..N-1 of a node by running the script again with the
command line it was given (plus the run dir): right for a single run, where every rank joins
the job's run dir. A job of a local multirun cannot be started that way, since the command
line is the whole sweep (and a joblib worker has no script at all), so `check_launcher` refuses
it with one line. DDP sweeps run on SLURM (hydra/launcher=slurm), where SLURM starts the ranks
and Lightning reads them from its environment; on one machine, DDP jobs run as single runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # visualize.py imports this module and needs no Lightning: its bad input fails fast
    import lightning as L

from featvis.errors import ConfigError, RankLostError

LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _hydra_mode() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return str(HydraConfig.get().mode).rsplit(".", 1)[-1]  # RUN or MULTIRUN


def starts_its_own_ranks(trainer: L.Trainer) -> bool:
    """Whether Lightning would start this node's other ranks itself (not SLURM, not torchrun)."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return trainer.num_devices > 1 and environment is not None and not environment.creates_processes_externally


def check_launcher(trainer: L.Trainer) -> None:
    """In a local multirun job, refuse a strategy whose ranks Lightning would start by re-running the script."""
    from hydra.core.hydra_config import HydraConfig

    if _hydra_mode() != "MULTIRUN" or not starts_its_own_ranks(trainer):
        return
    launcher = HydraConfig.get().runtime.choices.get("hydra/launcher", "basic")
    raise ConfigError(f"trainer=ddp with trainer.devices={trainer.num_devices} in a multirun under "
                      f"hydra/launcher={launcher}; expected DDP sweeps on SLURM (hydra/launcher=slurm), "
                      "DDP jobs as single runs, or trainer=default in a local sweep")


@contextmanager
def ddp_job(trainer: L.Trainer) -> Iterator[None]:
    """Around `trainer.fit` in a multirun job: the next job of the sweep starts clean.

    A DDP job of one process leaves its process group open and `LOCAL_RANK`, `MASTER_PORT`, ...
    in the environment; the next job would take them for ranks started for it.
    """
    if _hydra_mode() != "MULTIRUN":
        yield
        return
    import torch.distributed as dist

    saved = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# How a collective tells that a peer is gone: gloo names its transport ("Connection closed by
# peer", "Connection reset by peer", "Timed out waiting ... for recv"), NCCL raises DistError.
PEER_GONE = ("gloo/transport", "remote worker", "Connection closed by peer", "Connection reset by peer")


@contextmanager
def peers_watched(trainer: L.Trainer) -> Iterator[None]:
    """Around `trainer.fit`: when another rank dies (or hangs past the strategy's `timeout`), this
    rank's collective fails; end with one line naming the lost rank instead of a traceback."""
    import torch.distributed as dist

    try:
        yield
    except RuntimeError as err:
        text = str(err)
        if trainer.world_size < 2 or not (isinstance(err, dist.DistError) or any(s in text for s in PEER_GONE)):
            raise
        others = [rank for rank in range(trainer.world_size) if rank != trainer.global_rank]
        lost = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {others}"
        first = next((line.split("] ", 1)[-1].split(". ")[0] for line in text.splitlines() if line.strip()),
                     type(err).__name__)
        raise RankLostError(f"{lost} of the {trainer.world_size} DDP processes is gone (rank "
                            f"{trainer.global_rank} at step {trainer.global_step}: {first[:120]}); expected every "
                            "rank to run to the end: resume with ckpt_path=last and the same hydra.run.dir") from None


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
