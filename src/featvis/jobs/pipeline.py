"""The pipeline task: encoder [-> comparators, selectors] -> generator -> DAE prior -> target with feature evolution.

Each stage trains once per config in a folder of its own (`<stages_dir>/<name>-<hash>`), is
reused when asked for again and resumed when interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from featvis.configs import compose_config
from featvis.errors import ConfigError
from featvis.jobs import train as training
from featvis.jobs.locks import stage_lock

log = logging.getLogger(__name__)


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
    for again, and two configs never share a folder.  Two runs asking for one stage at once take
    turns: the first trains it, the second waits for it and then reuses it.
    """
    record = stage_record(overrides)
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:8]
    folder = stages / f"{name}-{digest}"
    with stage_lock(folder / ".lock", f"{banner} {name}"):
        return _run_stage(folder, name, overrides, record, banner)


def _run_stage(folder: Path, name: str, overrides: list[str], record: dict[str, Any], banner: str) -> str:
    stages = folder.parent
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
    result = training.train(compose_stage([*overrides, f"output_dir={folder}", *resume]))
    checkpoint = result["best_checkpoint"] or result["last_checkpoint"]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".done.json.partial"
    tmp.write_text(json.dumps({"checkpoint": checkpoint, "metrics": result["metrics"], **record}, indent=1,
                              default=str))
    tmp.replace(done)  # written last: a stage with done.json is complete
    return checkpoint


def classifier_seeds(cfg: DictConfig) -> dict[str, list[int]]:
    """The seeds of the pipeline's comparator and selector classifiers (task.comparator_seeds,
    task.selector_seeds): each a network other than the encoder, the target and one another."""
    taken = {int(cfg.seed): "the encoder's seed", int(cfg.task.target_seed): "task.target_seed"}
    found = {}
    for key in ("comparator_seeds", "selector_seeds"):
        seeds = list(cfg.task.get(key) or [])
        for i, seed in enumerate(seeds):
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ConfigError(f"task.{key}={seeds}: {seed!r} is not an integer; expected seeds")
            if seed in taken or seed in seeds[:i]:
                raise ConfigError(f"task.{key}={seeds}: {seed} is "
                                  f"{taken.get(seed, 'given twice')}; expected other seeds")
        taken.update({seed: f"in task.{key}" for seed in seeds})
        found[key] = seeds
    return found


def train_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Encoder [-> comparators, selectors] -> generator -> DAE prior -> target classifier with the FeatureEvolution callback."""
    task, stages = cfg.task, Path(cfg.task.stages_dir)
    seeds = classifier_seeds(cfg)  # checked before any stage trains
    forwarded = forwarded_overrides(cfg)
    shared = [o for o in forwarded if _key(o) not in TARGET_ONLY]
    stage_logger = f"logger={task.stage_logger}"
    prior_stage = [*shared, stage_logger, f"seed={cfg.seed}"]
    # One banner per stage, "[k/n] name: ...": the stages given as checkpoints do not count.
    extra = len(seeds["comparator_seeds"]) + len(seeds["selector_seeds"])
    trained = [not task.encoder.ckpt, *[not task.generator.ckpt] * (extra + 1), not task.prior.ckpt, True]
    total = sum(trained)
    banners = iter(f"[{k}/{total}]" for k in range(1, total + 1))
    encoder = task.encoder.ckpt or run_stage(stages, "encoder", [*prior_stage, "task=classifier"], next(banners))
    on_encoder = f"encoder.ckpt={encoder}"
    generator = task.generator.ckpt
    if not generator:
        def classifiers(kind: str) -> list[str]:
            return [run_stage(stages, f"{kind}-{seed}", [*shared, stage_logger, f"seed={seed}", "task=classifier"],
                              next(banners)) for seed in seeds[f"{kind}_seeds"]]

        comparators, selectors = classifiers("comparator"), classifiers("selector")
        # G kept for what it draws, as the selectors see it (featvis.callbacks.GeneratorSelection)
        selection = [f"task.selectors=[{','.join(selectors)}]", "task.monitor=val/selection",
                     "task.monitor_mode=max"] if selectors else []
        name = "-".join(["generator", *(f"c{seed}" for seed in seeds["comparator_seeds"]),
                         *(f"s{seed}" for seed in seeds["selector_seeds"])])
        generator = run_stage(stages, name, [*prior_stage, "task=generator", on_encoder,
                                             f"task.comparators=[{','.join(comparators)}]", *selection], next(banners))
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
    result = training.train(target)
    index = Path(target.callbacks.feature_evolution.dirpath) / "index.html"
    if getattr(rank_zero_only, "rank", 0) == 0:  # under DDP every rank runs the pipeline; one reports
        print(f"feature evolution: {index}")
    if result.get("wandb_run"):
        print(f"wandb run: {result['wandb_run']}  (offline runs upload with: wandb sync {result['wandb_run']})")
    return {**result, "index": str(index), "encoder": encoder, "generator": generator, "prior": prior}
