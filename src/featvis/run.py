"""The jobs behind `train.py`: plain functions of a composed Hydra config.

Tests call `train(cfg)` directly; `train.py` only adds `@hydra.main` and the
one-line error report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from featvis.checkpoints import encoder_record, load_classifier
from featvis.configs import compose_config
from featvis.devices import use_channels_last, use_tf32
from featvis.distributed import check_launcher, ddp_job, share_cpus_with_parallel_jobs
from featvis.errors import ConfigError
from featvis.nets.codes import CodeStatistics, encode_all
from featvis.nets.encoder import Encoder
from featvis.io import read_checkpoint, save_text, writable_dir
from featvis.loggers import log_lines_once

log = logging.getLogger(__name__)
# The frozen encoder inside the prior modules stays in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the configured logger (or none), callbacks and the task's own callbacks."""
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    configured = {**(cfg.get("callbacks") or {}), **(cfg.task.get("callbacks") or {})}
    callbacks = [instantiate(c) for c in configured.values() if c]
    # A budget in steps (task.train_steps) sets the epochs once the data is known: see _fit.
    epochs = {"max_epochs": -1} if _step_budget(cfg) else {}
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, **epochs)
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


def _step_budget(cfg: DictConfig) -> int | None:
    """task.train_steps, unless trainer.max_epochs is given (an explicit epoch count wins)."""
    steps = cfg.task.get("train_steps")
    if steps is None or cfg.trainer.get("max_epochs") is not None:
        return None
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"task.train_steps={steps}; expected a positive number of training steps")
    return steps


def budget_epochs(steps: int, per_epoch: int, val_every_steps: int | None) -> tuple[int, int]:
    """(epochs, validate every n epochs) for a budget of `steps` at `per_epoch` steps an epoch."""
    interval = max(1, round(val_every_steps / per_epoch)) if val_every_steps else 1
    return max(1, round(steps / (per_epoch * interval))) * interval, interval


def _epochs_for_budget(cfg: DictConfig, trainer: L.Trainer, datamodule: L.LightningDataModule) -> int | None:
    """Turn task.train_steps into whole epochs of this data set on this many processes; returns
    the steps per epoch (None without a budget).

    The budget is what a prior needs, whatever the data set's size; whole epochs, because
    validation (which picks the best checkpoint and writes last.ckpt) comes at an epoch's end.
    `task.val_every_steps` spaces validations by about that many steps: on a small data set an
    epoch is a few steps, and validating the whole validation set after each can cost as much
    as the training.  The epoch count is then a multiple of the interval, so the last epoch validates.
    """
    every = cfg.task.get("val_every_steps")
    if every is not None and not (isinstance(every, int) and every >= 1):
        raise ConfigError(f"task.val_every_steps={every}; expected a positive number of steps or null")
    steps = _step_budget(cfg)
    if steps is None:
        return None
    datamodule.setup("fit")
    per_epoch = max(1, len(datamodule.train_dataloader()) // trainer.world_size)
    trainer.fit_loop.max_epochs, trainer.check_val_every_n_epoch = budget_epochs(steps, per_epoch, every)
    log.info("%s: task.train_steps=%d is %d epochs of %d steps, validated every %d", cfg.task.name, steps,
             trainer.fit_loop.max_epochs, per_epoch, trainer.check_val_every_n_epoch)
    return per_epoch


def _fit(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, Any]:
    trainer = build_trainer(cfg)
    steps_per_epoch = _epochs_for_budget(cfg, trainer, datamodule)
    use_channels_last(module, cfg.performance.get("channels_last", False))
    wandb_run = None
    try:
        # A resumed checkpoint may come from anywhere: tensors and plain types only, never code.
        with ddp_job(trainer):
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    finally:
        wandb_run = finish_loggers(trainer)
    result = {"metrics": metrics, **_checkpoint_paths(trainer), "wandb_run": wandb_run}
    if steps_per_epoch is not None:
        result["steps_per_epoch"] = steps_per_epoch
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
PIPELINE_ONLY = ("task", "output_dir", "ckpt_path", "hydra", "seed", "logger")
TARGET_ONLY = ("callbacks", "method")


def _key(override: str) -> str:
    return override.lstrip("~+").split("=")[0].split(".")[0].split("@")[0]


def compose_stage(overrides: list[str]) -> DictConfig:
    """The config of one stage: `config` composed again with the stage's overrides."""
    return compose_config("config", overrides)


def forwarded_overrides(cfg: DictConfig) -> list[str]:
    """The command line's overrides that every stage shares (data, model, trainer, ...)."""
    from hydra.core.hydra_config import HydraConfig

    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return [o for o in given if _key(o) not in PIPELINE_ONLY] + list(cfg.task.overrides)


STAGE_FOLDER = re.compile(r"-[0-9a-f]{8}")
# Keys that say where a stage writes and how it logs or runs, not what it trains.
NOT_TRAINED = ("output_dir", "ckpt_path", "logger")
NOT_TRAINED_TRAINER = ("accelerator", "devices", "num_nodes", "strategy", "enable_progress_bar", "default_root_dir")


def stage_record(overrides: list[str]) -> dict[str, Any]:
    """What a stage trains: its composed config, less where it writes and how it logs or runs, and
    the size and modification time of every checkpoint or weights file it reads."""
    config = OmegaConf.to_container(compose_stage([*overrides, "output_dir=."]), resolve=True)
    for key in NOT_TRAINED:
        config.pop(key, None)
    for key in NOT_TRAINED_TRAINER:
        config.get("trainer", {}).pop(key, None)
    inputs: dict[str, list[int]] = {}

    def find_inputs(value: Any) -> None:
        if isinstance(value, dict | list):
            for item in value.values() if isinstance(value, dict) else value:
                find_inputs(item)
        elif isinstance(value, str) and value.endswith((".ckpt", ".pth", ".pt")) and Path(value).is_file():
            stat = Path(value).stat()
            inputs[value] = [stat.st_size, stat.st_mtime_ns]

    find_inputs(config)
    return {"config": config, "inputs": inputs}


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        flat.update(_flat(value, f"{name}.") if isinstance(value, dict) and value else {name: value})
    return flat


def stage_changes(before: dict[str, Any], now: dict[str, Any], most: int = 3) -> str:
    """The first keys in which two stage records differ, as "key: old -> new"."""
    old, new = _flat(before), _flat(now)
    changed = [f"{k.removeprefix('config.')}: {old.get(k, '(none)')} -> {new.get(k, '(none)')}"
               for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return "; ".join(changed[:most]) + (f"; and {len(changed) - most} more" if len(changed) > most else "")


def _trained(folder: Path) -> dict[str, Any]:
    """The stage record a complete stage folder was trained with."""
    done = json.loads((folder / "done.json").read_text())
    return {key: done.get(key, {}) for key in ("config", "inputs")}


def run_stage(stages: Path, name: str, overrides: list[str], banner: str = "") -> str:
    """Train one stage, or reuse it when a stage of the same config and inputs is complete; resume
    it when interrupted.

    Each config has its own folder, <name>-<hash of stage_record>: stages trained for other
    configs (a sweep's other points, other data) stay where they are and are reused when asked
    for again, and two configs never share a folder.
    """
    record = stage_record(overrides)
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:8]
    folder = stages / f"{name}-{digest}"
    done = folder / "done.json"
    if done.is_file():
        checkpoint = json.loads(done.read_text()).get("checkpoint")
        if checkpoint and Path(checkpoint).is_file():
            log.info("%s %s: reusing %s (same config and inputs)", banner, name, checkpoint)
            return checkpoint
    last = folder / "checkpoints" / "last.ckpt"
    earlier = sorted((d for d in stages.glob(f"{name}-*") if STAGE_FOLDER.fullmatch(d.name.removeprefix(name))
                      and (d / "done.json").is_file() and d != folder), key=lambda d: (d / "done.json").stat().st_mtime)
    why = ("resuming its last.ckpt" if last.is_file() else
           f"{earlier[-1].name} was trained with {stage_changes(_trained(earlier[-1]), record)}"
           if earlier else "no earlier stage")
    log.info("%s %s: training in %s (%s)", banner, name, folder, why)
    resume = [f"ckpt_path={last}"] if last.is_file() else []
    result = train(compose_stage([*overrides, f"output_dir={folder}", *resume]))
    checkpoint = result["best_checkpoint"] or result["last_checkpoint"]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".done.json.partial"
    tmp.write_text(json.dumps({"checkpoint": checkpoint, "metrics": result["metrics"], **record}, indent=1,
                              default=str))
    tmp.replace(done)  # written last: a stage with done.json is complete
    return checkpoint


def comparator_seeds(cfg: DictConfig) -> list[int]:
    """The pipeline's comparator classifiers' seeds: each a network other than the encoder and the target."""
    seeds = list(cfg.task.get("comparator_seeds") or [])
    taken = {int(cfg.seed): "the encoder's seed", int(cfg.task.target_seed): "task.target_seed"}
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"task.comparator_seeds={seeds}: {seed!r} is not an integer; expected seeds")
        if seed in taken or seed in seeds[:i]:
            raise ConfigError(f"task.comparator_seeds={seeds}: {seed} is "
                              f"{taken.get(seed, 'given twice')}; expected other seeds")
    return seeds


def train_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Encoder [-> comparators] -> generator -> DAE prior -> target classifier with the FeatureEvolution callback."""
    task, stages = cfg.task, Path(cfg.task.stages_dir)
    seeds = comparator_seeds(cfg)  # checked before any stage trains
    forwarded = forwarded_overrides(cfg)
    shared = [o for o in forwarded if _key(o) not in TARGET_ONLY]
    stage_logger = f"logger={task.stage_logger}"
    prior_stage = [*shared, stage_logger, f"seed={cfg.seed}"]
    # One banner per stage, "[k/n] name: ...": the stages given as checkpoints do not count.
    trained = [not task.encoder.ckpt, *[not task.generator.ckpt] * (len(seeds) + 1), not task.prior.ckpt, True]
    total = sum(trained)
    banners = iter(f"[{k}/{total}]" for k in range(1, total + 1))
    encoder = task.encoder.ckpt or run_stage(stages, "encoder", [*prior_stage, "task=classifier"], next(banners))
    on_encoder = f"encoder.ckpt={encoder}"
    generator = task.generator.ckpt
    if not generator:
        comparators = [run_stage(stages, f"comparator-{seed}", [*shared, stage_logger, f"seed={seed}",
                                                               "task=classifier"], next(banners)) for seed in seeds]
        name = "-".join(["generator", *(f"c{seed}" for seed in seeds)])
        generator = run_stage(stages, name, [*prior_stage, "task=generator", on_encoder,
                                             f"task.comparators=[{','.join(comparators)}]"], next(banners))
    prior = task.prior.ckpt or run_stage(stages, "prior", [*prior_stage, "task=prior", on_encoder], next(banners))
    evolution = "callbacks.feature_evolution"
    target = compose_stage([
        *shared, "task=classifier", f"seed={task.target_seed}", f"output_dir={cfg.output_dir}",
        "callbacks=evolution", f"{evolution}.generator.ckpt={generator}", f"{evolution}.prior.ckpt={prior}",
        f"{evolution}.judge.ckpt={encoder}", *[o for o in forwarded if _key(o) in TARGET_ONLY],
        *([f"ckpt_path={cfg.ckpt_path}"] if cfg.get("ckpt_path") else [])])
    with open_dict(target):
        target.logger = cfg.get("logger")  # the pipeline's own logger (wandb by default) records the target
    log.info("%s target: training in %s with feature evolution", next(banners), cfg.output_dir)
    result = train(target)
    index = Path(target.callbacks.feature_evolution.dirpath) / "index.html"
    if getattr(rank_zero_only, "rank", 0) == 0:  # under DDP every rank runs the pipeline; one reports
        print(f"feature evolution: {index}")
    if result.get("wandb_run"):
        print(f"wandb run: {result['wandb_run']}  (offline runs upload with: wandb sync {result['wandb_run']})")
    return {**result, "index": str(index), "encoder": encoder, "generator": generator, "prior": prior}


# ckpt_path values Lightning resolves itself ("last": the newest last.ckpt of the run dir).
LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc", "registry")
TASKS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "classifier": train_classifier, "generator": train_generator, "prior": train_prior,
    "pipeline": train_pipeline}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the job named by `cfg.task.name`; returns its metrics and checkpoint paths.

    Rank zero writes `<output_dir>/metrics.json` last (the monitored value, every final metric,
    the checkpoints): a run dir that has it is complete, and `featvis.summary` tables sweeps by it.
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
