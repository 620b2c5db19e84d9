"""Experiment loggers as the configs build them (`conf/logger/`)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)
PROBE_SECONDS = 5.0


def log_lines_once() -> None:
    """Let Lightning's records reach the terminal once.

    `import lightning` gives the "lightning" logger a stderr handler of its own, and its records
    also propagate to the root logger.  Under Hydra, whose root handlers print and file every
    record, each line came out twice; when the root has handlers, Lightning's own one goes.
    """
    if not logging.getLogger().handlers:
        return
    lightning_log = logging.getLogger("lightning")
    for handler in list(lightning_log.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_log.removeHandler(handler)


def wandb_server() -> str:
    """The wandb server an online run would talk to (WANDB_BASE_URL, `wandb login --host`, or the default).

    `wandb.setup()` is what `wandb.init` starts with anyway; its settings resolve the host the same way.
    """
    import wandb

    return str(wandb.setup().settings.base_url)


def unreachable(url: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why `url` (or the HTTPS proxy in between) cannot be reached within `timeout` s; None if it can."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    parts = urlsplit(proxy or url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return f"{parts.hostname}:{port}: {err.strerror or err}"
    return None


def wandb_mode(offline: bool) -> str | None:
    """The run's mode: WANDB_MODE when set, else `logger.offline`; None leaves it to wandb's settings."""
    mode = os.environ.get("WANDB_MODE")
    if mode == "disabled":
        return "disabled"
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode == "online" or not offline:
        return None if mode is None else "online"
    return "offline"


def wandb_logger(offline: bool = True, **kwargs) -> WandbLogger:
    """Lightning's WandbLogger; an online run whose server cannot be reached goes offline at once.

    wandb itself retries an unreachable server for about 90 s and then fails the job. A
    training job should not die for its logger: the run is kept offline in the run dir and
    `wandb sync` uploads it later. The mode goes to `wandb.init` as its `mode` argument:
    WandbLogger's own `offline=True` would set WANDB_MODE=dryrun for the whole process, over
    a WANDB_MODE=disabled that must write nothing.
    """
    mode = wandb_mode(offline)
    if mode in (None, "online"):
        server = wandb_server()
        problem = unreachable(server)
        if problem:
            print(f"featvis: warning: wandb server {server} is unreachable ({problem}); logging offline "
                  "instead (upload later with `wandb sync <run dir>/wandb/offline-run-*`)", file=sys.stderr)
            mode = "offline"
    if mode is not None:
        kwargs["mode"] = mode
    return WandbLogger(**kwargs)
