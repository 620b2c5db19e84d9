"""The jobs behind `train.py`: plain functions of a composed Hydra config.

Tests call `train(cfg)` directly; `train.py` only adds `@hydra.main` and the
one-line error report.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from featvis.errors import ConfigError, FeatvisError

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the configured logger (or none) and callbacks."""
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer


def finish_loggers(trainer: L.Trainer) -> None:
    """Close a wandb run so the next job of a multirun starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


def _checkpoint_paths(trainer: L.Trainer) -> dict[str, str | None]:
    callback = trainer.checkpoint_callback
    if callback is None:
        return {"best_checkpoint": None, "last_checkpoint": None}
    return {"best_checkpoint": callback.best_model_path or None,
            "last_checkpoint": getattr(callback, "last_model_path", None) or None}


def train_classifier(cfg: DictConfig) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model, num_classes=datamodule.num_classes)
    module = instantiate(cfg.task.module, net=net, class_names=datamodule.class_names)
    trainer = build_trainer(cfg)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    finally:
        finish_loggers(trainer)
    result = {"metrics": metrics, **_checkpoint_paths(trainer)}
    log.info("classifier: %s", result)
    return result


TASKS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {"classifier": train_classifier}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the job named by `cfg.task.name`; returns its metrics and checkpoint paths."""
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r}; expected one of {sorted(TASKS)}")
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    return TASKS[name](cfg)


def featvis_cause(err: BaseException) -> FeatvisError | None:
    """The FeatvisError behind `err`, if any (Hydra's instantiate wraps what constructors raise)."""
    while err is not None:
        if isinstance(err, FeatvisError):
            return err
        err = err.__cause__ or err.__context__
    return None


def report_errors(job: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task so a FeatvisError exits 2 with one line instead of a traceback."""

    @functools.wraps(job)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return job(cfg)
        except Exception as err:
            cause = featvis_cause(err)
            if cause is None:
                raise
            print(f"featvis: error: {cause}", file=sys.stderr)
            sys.exit(2)

    return wrapped
