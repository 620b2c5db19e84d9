"""What `train.py` and `visualize.py` check before Hydra runs the job.

Hydra reports its own errors (an unknown config option, an override it cannot parse, a
key that is not in the config, a run dir it cannot create) as a multi-line message or a
trimmed traceback. Composing the command line once beforehand turns each into featvis's
one line (`featvis: error: ...`, exit 2) before anything is written.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featvis.errors import ConfigError, FeatvisError

# Command-line flags after which Hydra does something other than run the job (help, printing
# the config, shell completion...): those are left to Hydra as they are.
HYDRA_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--resolve",
               "--package", "-p", "--shell-completion", "-sc", "--config-path", "-cp",
               "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


def one_line(text: str) -> str:
    return " ".join(text.split())


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The first point of a multirun sweep, plus one point per choice of every swept config group.

    Enough to catch an unknown option anywhere in the sweep without composing every point.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    first = [o.input_line if not o.is_sweep_override() else f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
             for o in parsed]
    points = [first]
    for i, override in enumerate(parsed):
        if override.is_sweep_override() and "." not in override.key_or_group:  # a config group sweep
            for value in list(override.sweep_string_iterator())[1:]:
                points.append([*first[:i], f"{override.get_key_element()}={value}", *first[i + 1:]])
    return points


def check_writable_dir(path: str, what: str) -> None:
    """Raise a ConfigError when `path` cannot be created as a directory (or is not writable)."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}={path} cannot be created: {existing} is a file; expected a writable directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}={path} is not writable ({existing} denies writing); expected a writable directory")


def writable_dir(out: Path, what: str = "output_dir") -> Path:
    """Create `out` and prove it takes a file; a ConfigError naming it otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what}={out} is not writable ({err.strerror}); expected a writable directory") from None
    return out


def check_command_line(config_dir: Path, config_name: str, argv: list[str]) -> None:
    """Compose the config the command line asks for; raise a one-line ConfigError if Hydra would fail."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf

    if any(arg.split("=")[0] in HYDRA_FLAGS for arg in argv):
        return
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    overrides = [arg for arg in argv if arg not in ("-m", "--multirun")]
    try:
        points = sweep_points(overrides) if multirun else [overrides]
    except HydraException as err:
        raise ConfigError(f"the command line does not parse: {one_line(str(err))}; expected overrides "
                          "of the form key=value (see --help)") from None
    except Exception:  # a sweep kind without a value list (e.g. an Optuna interval): left to Hydra
        return
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            for point in points:
                cfg = compose(config_name, overrides=point, return_hydra_config=True)
                if multirun:
                    check_parallel_ddp(cfg)
    except MissingConfigException as err:
        missing = (err.missing_cfg_file or "").split("/")
        if err.options and len(missing) == 2:
            raise ConfigError(f"{missing[0]}={missing[1]} is not a config option; expected one of "
                              f"{', '.join(sorted(err.options))}") from None
        raise ConfigError(one_line(str(err).split("Config search path")[0])) from None
    except HydraException as err:
        unknown = re.match(r"Could not override '([^']+)'", str(err))
        if unknown:
            key = unknown.group(1)
            raise ConfigError(f"{key} is not a key of the config; expected one it has (`--cfg job` lists "
                              f"them), or +{key}=... to add a new one") from None
        raise ConfigError(f"the command line does not compose: {one_line(str(err))}; expected overrides "
                          "of the form key=value (see --help)") from None
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        run_dir = str(OmegaConf.select(cfg, key, throw_on_missing=True))
    except Exception:  # noqa: BLE001 - interpolations only Hydra's runtime resolves: left to Hydra
        return
    check_writable_dir(run_dir, key)


def check_parallel_ddp(cfg: Any) -> None:
    """DDP's launcher starts its ranks by running the script again: joblib workers have no script."""
    from omegaconf import OmegaConf

    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    strategy = OmegaConf.select(cfg, "trainer.strategy", default=None)
    target = str(strategy.get("_target_", "")) if OmegaConf.is_dict(strategy) else str(strategy or "")
    if "joblib" in launcher.lower() and "ddp" in target.lower():
        raise ConfigError("trainer=ddp under hydra/launcher=joblib; expected DDP jobs one after another "
                          "(the default launcher) or on SLURM (hydra/launcher=slurm), or joblib with "
                          "trainer=default")


def exit_on_bad_command_line(config_dir: Path, config_name: str) -> None:
    """Run the checks on sys.argv; print one line and exit 2 when they fail."""
    try:
        check_command_line(config_dir, config_name, sys.argv[1:])
    except ConfigError as err:
        print(f"featvis: error: {err}", file=sys.stderr)
        sys.exit(2)


def featvis_cause(err: BaseException) -> FeatvisError | None:
    """The FeatvisError behind `err`, if any (Hydra's instantiate wraps what constructors raise)."""
    while err is not None:
        if isinstance(err, FeatvisError):
            return err
        err = err.__cause__ or err.__context__
    return None


def report_errors(job: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a Hydra task so a FeatvisError exits 2 with one line instead of a traceback."""

    @functools.wraps(job)
    def wrapped(cfg: Any) -> Any:
        try:
            return job(cfg)
        except Exception as err:
            cause = featvis_cause(err)
            if cause is None:
                raise
            print(f"featvis: error: {cause}", file=sys.stderr)
            sys.exit(2)

    return wrapped
