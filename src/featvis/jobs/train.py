"""The jobs behind `train.py`: plain functions of a composed Hydra config.

Tests call `train(cfg)` directly; `featvis.jobs.cli` only adds the Hydra app and the
one-line error report. The pipeline task and its stage cache are in `featvis.jobs.pipeline`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from featvis.checkpoints import encoder_record, load_classifier
from featvis.devices import use_channels_last, use_tf32
from featvis.jobs.distributed import check_launcher, ddp_job, peers_watched, share_cpus_with_parallel_jobs
from featvis.errors import ConfigError
from featvis.nets.codes import CodeStatistics, encode_all
from featvis.nets.encoder import Encoder
from featvis.io import read_checkpoint, save_text, writable_dir
from featvis.jobs.loggers import log_lines_once
from featvis.jobs.storage import AtomicCheckpointIO

log = logging.getLogger(__name__)
# The frozen encoder inside the prior modules stays in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the configured logger (or none), callbacks and the task's own callbacks."""
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    configured = {**(cfg.get("callbacks") or {}), **(cfg.task.get("callbacks") or {})}
    callbacks = [instantiate(c) for c in configured.values() if c]
    # Checkpoints written beside their final name and renamed: a full disk never tears last.ckpt.
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                          **step_budget(cfg))
    check_launcher(trainer)  # before the logger writes its run
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer


def finish_loggers(trainer: L.Trainer) -> str | None:
    """Close a wandb run so the next job of a multirun starts its own; returns the run's folder."""
    from lightning.pytorch.loggers import WandbLogger

    runs = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not runs:
        return None
    import wandb

    run = runs[0].experiment if trainer.is_global_zero else None
    # A disabled run (WANDB_MODE=disabled) writes nothing: there is no folder to name.
    folder = str(Path(run.dir).parent) if run is not None and not run.disabled else None
    wandb.finish()
    return folder


def _checkpoint_paths(trainer: L.Trainer) -> dict[str, str | None]:
    callback = trainer.checkpoint_callback
    if callback is None:
        return {"best_checkpoint": None, "last_checkpoint": None}
    # callbacks.last_checkpoint (conf/callbacks/default.yaml) writes last.ckpt; a config without
    # it may still have model_checkpoint's own
    newest = next((c.best_model_path for c in trainer.checkpoint_callbacks
                   if getattr(c, "filename", None) == "last" and c.monitor is None), None)
    return {"best_checkpoint": callback.best_model_path or None,
            "last_checkpoint": newest or getattr(callback, "last_model_path", None) or None}


def train_classifier(cfg: DictConfig) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model, num_classes=datamodule.num_classes)
    module = instantiate(cfg.task.module, net=net, class_names=datamodule.class_names)
    return _fit(cfg, module, datamodule)


def step_budget(cfg: DictConfig) -> dict[str, Any]:
    """The Trainer arguments of task.train_steps, none where trainer.max_epochs is given (it wins).

    A prior needs a number of training batches whatever the data set's size: `max_steps` (the
    GAN counts one optimizer step a batch, see GeneratorModule.training_step), validated (the best
    checkpoint, last.ckpt) every `task.val_every_steps` batches across epochs; null: at the end.
    """
    every = cfg.task.get("val_every_steps")
    if every is not None and not (isinstance(every, int) and every >= 1):
        raise ConfigError(f"task.val_every_steps={every}; expected a positive number of steps or null")
    steps = cfg.task.get("train_steps")
    if steps is None or cfg.trainer.get("max_epochs") is not None:
        return {}
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"task.train_steps={steps}; expected a positive number of training steps")
    every = min(every or steps, steps)
    # Lightning validates at val_check_interval's multiples, not at max_steps: whole ones, so the last step validates
    steps = -(-steps // every) * every
    log.info("%s: task.train_steps budget of %d steps, validated every %d", cfg.task.name, steps, every)
    return {"max_epochs": -1, "max_steps": steps, "val_check_interval": every, "check_val_every_n_epoch": None}


def _fit(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, Any]:
    trainer = build_trainer(cfg)
    use_channels_last(module, cfg.performance.get("channels_last", False))
    wandb_run = None
    try:
        # A resumed checkpoint may come from anywhere: tensors and plain types only, never code.
        with ddp_job(trainer), peers_watched(trainer):
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    finally:
        wandb_run = finish_loggers(trainer)
    result = {"metrics": metrics, **_checkpoint_paths(trainer), "wandb_run": wandb_run}
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


def check_selectors(task: DictConfig) -> None:
    """GeneratorSelection's selectors: given when G is kept by them, and none of them in G's losses."""
    selectors = [str(s) for s in task.get("selectors") or []]
    if task.monitor.startswith("val/selection") and not selectors:
        raise ConfigError(f"task.monitor={task.monitor} and task.selectors is empty; expected classifier "
                          "checkpoints to score G's syntheses (task=classifier seed=3, ...), or "
                          "task.monitor=val/loss_feature")
    in_losses = sorted(set(selectors) & {str(c) for c in task.get("comparators") or []})
    if in_losses:
        raise ConfigError(f"task.selectors: {in_losses[0]} is also in task.comparators (G's feature loss); "
                          "expected classifiers outside G's losses")


def train_generator(cfg: DictConfig) -> dict[str, Any]:
    check_selectors(cfg.task)
    L.seed_everything(cfg.seed, workers=True)
    encoder, record, datamodule, stats = _encoded_data(cfg)
    generator = instantiate(cfg.generator.net, code_dim=encoder.code_dim)
    code_branch = encoder.code_dim if cfg.generator.code_branch else 0
    discriminator = instantiate(cfg.generator.discriminator, image_size=encoder.image_size,
                                code_dim=code_branch)
    comparators = nn.ModuleList(load_classifier(path)[0] for path in cfg.task.get("comparators") or [])
    module = instantiate(cfg.task.module, generator=generator, discriminator=discriminator,
                         encoder=encoder, code_stats=stats, encoder_record=record, comparators=comparators)
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


# Overrides that belong to the pipeline job itself, not to its stages; and those for the target only.
# ckpt_path values Lightning resolves itself ("last": the newest last.ckpt of the run dir).
LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc", "registry")
TASKS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "classifier": train_classifier, "generator": train_generator, "prior": train_prior,
    "pipeline": lambda cfg: train_pipeline(cfg)}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the job named by `cfg.task.name`; returns its metrics and checkpoint paths.

    Rank zero writes `<output_dir>/metrics.json` last (the monitored value, every final metric,
    the checkpoints): a run dir that has it is complete, and `featvis.tools.summary` tables sweeps by it.
    """
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r}; expected one of {sorted(TASKS)}")
    resume = cfg.get("ckpt_path")
    if resume and resume not in LIGHTNING_CHECKPOINT_NAMES:
        read_checkpoint(resume)  # missing, truncated or unsafe: one line now, not a traceback later
    out = writable_dir(Path(cfg.output_dir))
    log_lines_once()
    share_cpus_with_parallel_jobs()
    use_tf32(cfg.performance.tf32)
    result = TASKS[name](cfg)
    if getattr(rank_zero_only, "rank", 0) == 0:
        summary = {"task": name, "monitor": cfg.task.monitor, "monitor_mode": cfg.task.monitor_mode,
                   "value": result["metrics"].get(cfg.task.monitor),
                   **{k: v for k, v in result.items() if isinstance(v, (str, int, float, dict, type(None)))}}
        save_text(json.dumps(summary, indent=2), out / "metrics.json")
    return result


from featvis.jobs.pipeline import train_pipeline  # noqa: E402  (the pipeline trains through train())
