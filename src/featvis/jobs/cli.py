"""The command-line apps and their one-line errors: `featvis: error: ...` and exit code 2.

The training and visualize Hydra apps are defined here once, on the packaged configs
(pkg://featvis.conf); `train.py`, `visualize.py`, `python -m featvis.train|visualize` and the
console scripts `featvis-train|visualize` all run them through `train_main` / `visualize_main`.

Two ways in, one way out (`fail`):

- `report_errors` wraps the Hydra task: a FeatvisError from the job stops it with one line, and
  so does a full disk (featvis.errors.DiskFullError from the writers, or an OSError ENOSPC from
  another library's), with what to run once space is freed.
- `run` calls the `@hydra.main` function: Hydra's own errors (an unknown config option, an
  override it cannot parse, a key the config does not have, a run dir it cannot create) come
  out of Hydra as exceptions and are told in one line from their fields.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from featvis.configs import CONFIG_PATH
from featvis.errors import NO_SPACE, DiskFullError, FeatvisError

EXIT_CODE = 2
# Set once the task function runs: an OSError before it is Hydra failing to create its run dir.
_job_started = False


def fail(message: object) -> NoReturn:
    print(f"featvis: error: {message}", file=sys.stderr)
    sys.exit(EXIT_CODE)


def one_line(text: str) -> str:
    return " ".join(text.split())


def featvis_cause(err: BaseException | None) -> FeatvisError | None:
    """The FeatvisError behind `err`, if any (Hydra's instantiate wraps what constructors raise)."""
    while err is not None:
        if isinstance(err, FeatvisError):
            return err
        err = err.__cause__ or err.__context__
    return None


def no_space_cause(err: BaseException | None) -> OSError | None:
    """The OSError ENOSPC (or EDQUOT) behind `err`, if any."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


def rerun_hint(name: str | None, cfg: Any) -> str:
    """What to run once space is freed: training resumes from last.ckpt, visualize.py starts over."""
    if name != "train":
        return "then run the same command again"
    task = cfg.get("task") or {}
    if cfg.get("ckpt_path") == "last" or task.get("name") == "pipeline":  # the pipeline resumes its stages itself
        return "then the same command resumes"
    return "then the same command with ckpt_path=last resumes"


def disk_full_line(err: BaseException, cfg: Any, name: str | None) -> str | None:
    """The one line for a job stopped by a full disk; None if `err` is not one."""
    cause = featvis_cause(err)
    if isinstance(cause, DiskFullError):
        return f"{cause}, {rerun_hint(name, cfg)}"
    if cause is not None:
        return None
    raw = no_space_cause(err)
    if raw is None:
        return None
    # Another library's writer (a logger, a checkpoint writer of its own): it may not name its file.
    folder = cfg.get("output_dir") or "the run dir"
    what = f"writing {raw.filename}" if raw.filename else f"writing an output of {folder}"
    return (f"{(raw.strerror or 'no space left on device').lower()} {what}; expected more free space on the "
            f"filesystem of {folder}, {rerun_hint(name, cfg)}")


def quiet_full_disk_logs() -> None:
    """A log file on a full disk: its failed lines are dropped instead of printing a traceback each.

    logging reports a handler's failed write on stderr with a traceback and goes on; on a full
    disk that buries the one line the job ends with.  Only ENOSPC/EDQUOT are dropped: any other
    failing handler still reports.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and not getattr(handler, "_featvis_quiet", False):
            handler.handleError = functools.partial(_handle_log_error, handler.handleError)
            handler._featvis_quiet = True


def _handle_log_error(report: Callable[[logging.LogRecord], None], record: logging.LogRecord) -> None:
    if no_space_cause(sys.exc_info()[1]) is None:
        report(record)


def report_errors(job: Callable[[Any], Any], name: str | None = None) -> Callable[[Any], Any]:
    """Wrap a Hydra task so a FeatvisError (or a full disk) exits 2 with one line instead of a traceback.

    `name`: the app ("train", "visualize"), for what to run again after a full disk.
    SystemExit passes Hydra's job runner untouched, so Hydra adds no lines of its own; under
    hydra/launcher=joblib the worker's exit code reaches the sweep the same way.
    """

    @functools.wraps(job)
    def wrapped(cfg: Any) -> Any:
        global _job_started
        _job_started = True
        quiet_full_disk_logs()  # Hydra has set up the job's log file by now
        try:
            return job(cfg)
        except Exception as err:
            line = disk_full_line(err, cfg, name)
            if line is not None:
                fail(line)
            cause = featvis_cause(err)
            if cause is None:
                raise
            fail(cause)

    return wrapped


def hydra_error(err: BaseException) -> str | None:
    """The one line for an error Hydra raised before (or instead of) running the job; None if not one."""
    from hydra.errors import (ConfigCompositionException, HydraException, MissingConfigException,
                              OverrideParseException)
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from featvis.synthesis.settings import moved_key_message

    if _job_started:  # the job's own errors are the job's: Hydra has composed the config by then
        return None
    if isinstance(err, MissingConfigException):  # before OSError: it is one too
        group, _, name = (err.missing_cfg_file or "").rpartition("/")
        if group and err.options:
            return f"{group}={name} is not a config option; expected one of {', '.join(sorted(err.options))}"
        return f"config {err.missing_cfg_file!r} not found; expected a config in the config path (conf/)"
    if isinstance(err, OverrideParseException):
        return (f"{err.override} does not parse ({one_line(err.message)}); expected overrides of the form "
                "key=value (see --help)")
    cause = err.__cause__
    if isinstance(err, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException) and cause.full_key:
        key = cause.full_key
        moved = moved_key_message(key.removeprefix("method.")) if key.startswith("method.") else None
        if moved:
            return moved
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            return (f"{key} is not a key of the config; expected one it has (`--cfg job` lists them), "
                    f"or +{key}=... to add a new one")
        return f"{key}: {one_line(str(cause).splitlines()[0])}; expected a value the config accepts (see --cfg job)"
    if isinstance(err, HydraException):
        return f"the command line does not compose: {one_line(str(err))}; expected overrides of the form key=value (see --help)"
    if isinstance(err, OSError) and err.errno in NO_SPACE:  # Hydra writing .hydra/ on a full disk
        where = f"writing {err.filename}" if err.filename else "writing the hydra run dir's .hydra/ record"
        return (f"{(err.strerror or 'no space left on device').lower()} {where}; expected free space on the "
                "filesystem of the run dir (hydra.run.dir), then run the same command again")
    if isinstance(err, OSError) and err.filename:
        return (f"hydra run dir {err.filename} cannot be written ({err.strerror}); expected a writable "
                "directory (hydra.run.dir, or hydra.sweep.dir with -m)")
    return None


def run(main: Callable[[], Any]) -> None:
    """Call a `@hydra.main` function; its errors, Hydra's and featvis's, end as one line and exit 2.

    HYDRA_FULL_ERROR=1 is Hydra's documented switch to raise its errors instead of printing them
    (several lines, exit 1); anything that is neither a featvis error nor Hydra's is re-raised.
    """
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as err:  # noqa: BLE001 - re-raised unless it is told in one line
        cause = featvis_cause(err)
        message = str(cause) if cause is not None else hydra_error(err)
        if message is None:
            raise
        fail(message)


def hydra_app(name: str, config_name: str, job: Callable[[Any], Any]) -> Callable[[], Any]:
    """`job` as a `@hydra.main` app on the packaged configs, its FeatvisErrors told in one line.

    Hydra names the job (hydra.job.name: the help's title, `<name>.log`) after the module of the
    task function, so the job takes the entry module's name: "train" and "visualize", as when the
    top-level scripts defined the apps themselves.
    """
    import hydra

    job.__module__ = f"featvis.{name}"
    return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(report_errors(job, name))


def _train(cfg: Any) -> float | None:
    from featvis.jobs.train import train  # torch and Lightning load once Hydra has composed the config

    result = train(cfg)
    # Returned for Hydra sweepers that optimize a metric.
    return result["metrics"].get(cfg.task.monitor)


def _visualize(cfg: Any) -> float | None:
    from featvis.jobs.visualize import visualize  # torch loads once Hydra has composed the config

    summary = visualize(cfg)
    # Returned for Hydra sweepers that optimize a figure (hparams_search=...): see `sweep.objective`.
    return summary.get("sweep", {}).get("objective")


train_app = hydra_app("train", "config", _train)
visualize_app = hydra_app("visualize", "visualize", _visualize)


def train_main() -> None:
    """`featvis-train`, `python -m featvis.train`, `python train.py`: task=classifier [overrides]."""
    run(train_app)


def visualize_main() -> None:
    """`featvis-visualize`, `python -m featvis.visualize`, `python visualize.py`: method=... [overrides]."""
    run(visualize_app)
