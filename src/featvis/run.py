"""The jobs behind `train.py`: plain functions of a composed Hydra config.

Tests call `train(cfg)` directly; `train.py` only adds `@hydra.main` and the
one-line error report.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from featvis.checkpoints import encoder_record, load_classifier
from featvis.errors import ConfigError, FeatvisError
from featvis.nets.codes import CodeStatistics, encode_all
from featvis.nets.encoder import Encoder

log = logging.getLogger(__name__)
# The frozen encoder inside the prior modules stays in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the configured logger (or none), callbacks and the task's own callbacks."""
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    configured = {**(cfg.get("callbacks") or {}), **(cfg.task.get("callbacks") or {})}
    callbacks = [instantiate(c) for c in configured.values() if c]
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
    return _fit(cfg, module, datamodule)


def _fit(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, Any]:
    trainer = build_trainer(cfg)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    finally:
        finish_loggers(trainer)
    result = {"metrics": metrics, **_checkpoint_paths(trainer)}
    log.info("%s: %s", cfg.task.name, result)
    return result


def load_encoder(cfg: DictConfig) -> tuple[Encoder, dict[str, Any]]:
    """The frozen encoder named by `cfg.encoder` and the record priors keep of it."""
    path = cfg.encoder.get("ckpt")
    weights = cfg.encoder.get("weights")
    if path:
        net, record = load_classifier(path)
    elif weights:  # encoder=caffenet: a torchvision AlexNet weights file
        net = instantiate(cfg.encoder.net, weights=weights).eval()
        record, path = {"class_names": [str(i) for i in range(net.num_classes)]}, weights
    else:
        raise ConfigError(f"encoder.ckpt is not set; expected a classifier checkpoint for "
                          f"task={cfg.task.name} (train one with task=classifier)")
    encoder = Encoder(net, cfg.encoder.code_layer, cfg.encoder.comparator_layer, cfg.encoder.logits_layer)
    if cfg.data.image_size != encoder.image_size:
        raise ConfigError(f"data.image_size={cfg.data.image_size} but the encoder {path} takes "
                          f"{encoder.image_size} px; expected image_size={encoder.image_size}")
    described = encoder_record(path, net, record["class_names"], cfg.encoder.code_layer,
                               cfg.encoder.comparator_layer, encoder.code_dim)
    return encoder, described


def _encoded_data(cfg: DictConfig) -> tuple[Encoder, dict[str, Any], Any, CodeStatistics]:
    """Encoder, its record, the set-up data module and the code statistics of its training set."""
    encoder, record = load_encoder(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    loader = DataLoader(datamodule.train_set, batch_size=datamodule.batch_size)
    codes = encode_all(encoder, loader, max_items=cfg.encoder.stats_images)
    return encoder, record, datamodule, CodeStatistics(encoder.code_dim).fit(codes)


def train_generator(cfg: DictConfig) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    encoder, record, datamodule, stats = _encoded_data(cfg)
    generator = instantiate(cfg.generator.net, code_dim=encoder.code_dim)
    code_branch = encoder.code_dim if cfg.generator.code_branch else 0
    discriminator = instantiate(cfg.generator.discriminator, image_size=encoder.image_size,
                                code_dim=code_branch)
    module = instantiate(cfg.task.module, generator=generator, discriminator=discriminator,
                         encoder=encoder, code_stats=stats, encoder_record=record)
    return _fit(cfg, module, datamodule)


def train_prior(cfg: DictConfig) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    encoder, record, datamodule, stats = _encoded_data(cfg)
    dae = instantiate(cfg.dae, code_dim=encoder.code_dim)
    if cfg.task.precompute_codes:
        # Encode once; the DAE then trains on code tensors, many epochs for the price of one.
        codes = {split: TensorDataset(encode_all(encoder, DataLoader(ds, batch_size=datamodule.batch_size)))
                 for split, ds in (("train", datamodule.train_set), ("val", datamodule.val_set))}
        datamodule = L.LightningDataModule.from_datasets(
            train_dataset=codes["train"], val_dataset=codes["val"], batch_size=cfg.task.batch_size)
        encoder = None
    module = instantiate(cfg.task.module, dae=dae, code_stats=stats, encoder_record=record,
                         encoder=encoder)
    return _fit(cfg, module, datamodule)


TASKS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "classifier": train_classifier, "generator": train_generator, "prior": train_prior}


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
