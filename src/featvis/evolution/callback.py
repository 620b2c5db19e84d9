"""Watch a classifier's features evolve while it trains: DGN-AM/PPGN at a cadence of steps.

At every trigger the callback synthesizes the configured units with initial codes and
noise seeds drawn once (kept in the callback's checkpoint state), so what changes from
frame to frame is the network; beside each synthesis go the validation images that
activate the unit most at that step.  Frames, grids, videos, a strip, a settling plot,
`evolution.json` and `index.html` go to `dirpath` (see featvis.evolution.report); grids,
per-unit scalars and images (in one panel section per layer), videos and a summary table
go to wandb when a WandbLogger is attached.

Any LightningModule: `target` names the attribute holding the network (or is a callable
`pl_module -> network`).  What the network reads (its input contract: size, normalization,
channels) is its own when it declares one (featvis's networks, `featvis.as_target`), else what the
callback is told (`image_size`, `mean`, `std`, `channels`), else read from the validation data:
the batch's size and channels, and the `Normalize` of its dataset's transform.  The top-k real
images come from the trainer's validation data, with or without a datamodule, shown de-normalized.

Training is not disturbed: the synthesis runs on a copy of the network with its own RNG
streams (the global ones are restored), with gradients enabled even where Lightning runs
under inference mode.  Every trigger happens before any checkpoint of the same step is
written, so a resumed run (`ckpt_path=last`) neither loses nor repeats a frame.  Under DDP
the units are sharded across ranks and gathered; rank zero writes and logs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import WandbLogger

from featvis.errors import ConfigError
from featvis.nets.targets import as_target, declares_contract
from featvis.evolution.report import grid_file
from featvis.evolution.recorder import EvolutionRecorder
from featvis.synthesis.objectives import check_spatial
from featvis.synthesis.settings import SynthesisSpec
from featvis.synthesis.real import batch_images

log = logging.getLogger(__name__)


def scheduled_steps(total: int, log_frames: int = 0, linear_frames: int = 0, every_n_steps: int = 0) -> set[int]:
    """The training steps in 1..total a cadence names (step 0 and epoch ends come on top)."""
    if total < 1:
        return set()
    steps = log_spaced_steps(total, int(log_frames or 0))
    linear = int(linear_frames or 0)
    steps |= {round(total * (i + 1) / linear) for i in range(linear)}
    if every_n_steps:
        steps |= set(range(every_n_steps, total + 1, every_n_steps))
    return steps


def log_spaced_steps(total: int, frames: int) -> set[int]:
    """About `frames` steps in 1..total, log-spaced so early training is sampled densely."""
    if total < 1 or frames < 1:
        return set()
    return {int(round(float(s))) for s in torch.logspace(0, torch.log10(torch.tensor(float(total), device="cpu")), frames, device="cpu")}


class FeatureEvolution(L.Callback):
    """Record preferred images of `units` over training.

    Cadence (the union of those set): `log_frames` log-spaced steps up to the last one,
    `linear_frames` evenly spaced ones (late training, where log-spaced frames are sparse),
    `every_n_steps`, `every_n_epochs` (at the epoch's last batch), `on_checkpoint` (each
    validation and ModelCheckpoint `every_n_train_steps` step, before its checkpoints), plus step 0 (`at_start`).

    What each frame synthesizes (`units`, `method` (a name such as "dgn_am" or a method config),
    `generator` (a checkpoint path or {"ckpt": G}), `prior`, `judge`, `seeds`, `steps`, ...:
    conf/synthesis/'s keys) goes to featvis.evolution.recorder.EvolutionRecorder.  Conv units are
    read before their ReLU by default (`pre_relu`): a rectified unit that is zero everywhere on the
    start image passes no gradient, and its tile stays blank.  They are read over a window that
    depends on the layer (`spatial="receptive"`, featvis.synthesis.objectives): the centred window
    of the size of the unit's receptive field, so a first conv layer's unit is read near the map's
    centre (and its synthesis shows its filter, not the colour wash a channel's mean over the whole
    map gives) and a deep one over its whole map.

    `target`: the attribute holding the network, or a callable pl_module -> network; `image_size`,
    `mean`, `std`, `channels`: its input contract where neither it nor the validation data says.
    """

    def __init__(
        self,
        units: Mapping[str, list] | list,
        method: Mapping[str, Any] | str,
        dirpath: str | None = None,
        log_frames: int = 4,
        linear_frames: int | None = 3,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        on_checkpoint: bool = False,
        at_start: bool = True,
        live_report: bool = False,
        target: str | Callable[[L.LightningModule], torch.nn.Module] = "net",
        image_size: int | None = None,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        channels: int | None = None,
        seeds: int = 1,
        steps: int | None = 48,
        spatial: str = "receptive",
        pre_relu: bool = True,
        real_images: int = 256,
        **synthesis: Any,
    ):
        if "target_attribute" in synthesis:
            raise ConfigError(f"callbacks.feature_evolution.target_attribute={synthesis['target_attribute']!r} is now "
                              "spelled target=...; expected target=<attribute> (or a callable pl_module -> network)")
        for name, value in (("log_frames", log_frames), ("linear_frames", linear_frames),
                            ("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and int(value) < 0:
                raise ConfigError(f"callbacks.feature_evolution.{name}={value}; expected a non-negative integer")
        check_spatial(spatial, "callbacks.feature_evolution.spatial")
        spec = SynthesisSpec.of(None, units=units, seeds=seeds, steps=steps, spatial=spatial, pre_relu=pre_relu,
                                **synthesis)
        self.recorder = EvolutionRecorder(spec, method, output_dir=dirpath or "evolution", real_images=real_images)
        self.dirpath = dirpath
        self.log_frames, self.linear_frames = log_frames, linear_frames
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.on_checkpoint, self.at_start = on_checkpoint, at_start
        self.live_report = live_report  # rebuild strip/videos/index.html after every frame, not only at the end
        self.target = target
        self.contract = {"image_size": image_size, "mean": mean, "std": std, "channels": channels}
        self.scheduled: set[int] = set()
        self.seconds = 0.0  # spent in this callback by this process: its cost to the training run

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.recorder.output_dir = Path(trainer.default_root_dir) / "evolution"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The validation data is set up by now (Lightning loads it before this hook), whatever its source.
        real = validation_loader(trainer)
        with self.timed():
            if self.recorder.parts is None:
                self.contract = resolve_contract(self._module(pl_module), self.contract, real)
            net = self._net(pl_module)
            self.recorder.prepare(net, class_names_of(pl_module, net, real), real)
        if trainer.is_global_zero:
            self.recorder.reconcile_disk()
        total = int(trainer.estimated_stepping_batches)
        self.scheduled = scheduled_steps(total, self.log_frames, self.linear_frames, self.every_n_steps)
        if self.at_start and trainer.global_step == 0:
            self.capture(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        epoch_end = batch_idx + 1 == trainer.num_training_batches
        due_epoch = bool(self.every_n_epochs) and epoch_end and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        # ModelCheckpoints saving every n train steps do so in this hook, after this callback (as below)
        saves = self.on_checkpoint and any(getattr(c, "_every_n_train_steps", 0) and
                                           trainer.global_step % c._every_n_train_steps == 0
                                           for c in trainer.checkpoint_callbacks)
        if trainer.global_step in self.scheduled or due_epoch or saves:
            self.capture(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs ModelCheckpoint hooks after every other callback's (_reorder_callbacks): the best
        # and last.ckpt that this validation saves hold its frame.
        if self.on_checkpoint and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.capture(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.recorder.frames:
            with self.timed():
                summary = self.recorder.report()
            summary["callback_seconds"] = round(self.seconds, 2)
            self.recorder.write_json(summary)
            self._log_summary(trainer, summary)
            log.info("feature evolution: %s", self.recorder.output_dir / "index.html")

    def state_dict(self) -> dict[str, Any]:
        return self.recorder.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state_dict)

    # -- the work -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def _module(self, pl_module: L.LightningModule) -> torch.nn.Module:
        """The network studied, as the LightningModule holds it."""
        if callable(self.target) and not isinstance(self.target, torch.nn.Module):
            net = self.target(pl_module)
        else:
            net = getattr(pl_module, self.target, None) if self.target else pl_module
        if not isinstance(net, torch.nn.Module):
            raise ConfigError(f"callbacks.feature_evolution.target={self.target!r} gives "
                              f"{type(net).__name__} on {type(pl_module).__name__}; expected the name of the "
                              "attribute holding the network (or a callable pl_module -> network)")
        return net

    def _net(self, pl_module: L.LightningModule) -> torch.nn.Module:
        """The network behind its input contract (featvis.as_target), as the samplers read it."""
        return as_target(self._module(pl_module), **{k: v for k, v in self.contract.items() if v is not None})

    def capture(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Synthesize one frame at the current step (this rank's shard of units), gather, record."""
        step = trainer.global_step
        if self.recorder.has_frame(step):
            return
        with self.timed(), fx_sources_released():
            self._capture(trainer, pl_module, step)

    def _capture(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        count = len(self.recorder.units)
        shard = list(range(trainer.global_rank, count, trainer.world_size))
        images, rows = self.recorder.synthesize(self._net(pl_module), shard)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, (images, rows))
            labels = [u.label for u in self.recorder.units]
            pairs = [(img, row) for imgs, rws in gathered for img, row in zip(imgs, rws)]
            pairs.sort(key=lambda p: (labels.index(p[1]["unit"]), p[1]["seed"]))
            images, rows = torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]
        writer = trainer.is_global_zero
        self.recorder.record(step, trainer.current_epoch, images, rows, write=writer)
        if writer:
            if self.live_report:
                self.recorder.report()
            self._log_frame(trainer, step, rows)

    def _log_frame(self, trainer: L.Trainer, step: int, rows: list[dict]) -> None:
        # wandb makes a panel section of each key's first path part: one section per layer.
        metrics: dict[str, float] = {}
        for unit in self.recorder.units:
            mine = [r for r in rows if r["unit"] == unit.label]
            for key in ("activation", "probability"):
                values = [r[key] for r in mine if r[key] is not None]  # directions have no probability
                if values:
                    metrics[f"evolution-{unit.layer}/{unit.slug}/{key}"] = sum(values) / len(values)
            judged = [r["judge_correct"] for r in mine if "judge_correct" in r]
            if judged:
                metrics[f"evolution-{unit.layer}/{unit.slug}/judge_transfer"] = sum(judged) / len(judged)
        # tiles still showing their start image: units no gradient reached at this step
        metrics["evolution/blank_tile_fraction"] = sum(r["blank"] for r in rows) / len(rows)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, WandbLogger):
                self._log_images(logger, step)

    def _log_images(self, logger: WandbLogger, step: int) -> None:
        """The frame's grid, and per layer its units' syntheses (seed 0) beside their top-k real images."""
        root = self.recorder.output_dir
        logger.log_image("evolution/grid", [str(root / grid_file(step))], step=step, caption=[f"step {step}"])
        shown = [f for f in self.recorder.frames if f["step"] == step and f["seed"] == 0]
        for layer in dict.fromkeys(u.layer for u in self.recorder.units):
            mine = [f for f in shown if f["layer"] == layer]
            logger.log_image(f"evolution-{layer}/syntheses", [str(root / f["file"]) for f in mine], step=step,
                             caption=[f["unit"] for f in mine])
            if all("top_file" in f for f in mine):
                logger.log_image(f"evolution-{layer}/top_real", [str(root / f["top_file"]) for f in mine],
                                 step=step, caption=[f["unit"] for f in mine])

    def _log_summary(self, trainer: L.Trainer, summary: dict[str, Any]) -> None:
        """Each layer's settle step, the difference between its units and their change over training
        to every logger; per unit a video of its evolution and one table of the run (wandb only)."""
        figures = {f"evolution-{layer}/{key}": v[key] for layer, v in summary["layers"].items()
                   for key in ("settle_step", "unit_difference", "change", "filter_match", "filter_match_other")
                   if v.get(key) is not None}
        figures["evolution/callback_seconds"] = summary["callback_seconds"]
        if summary.get("lower_layers_settle_first_confidence") is not None:
            figures["evolution/lower_layers_settle_first_confidence"] = summary["lower_layers_settle_first_confidence"]
        for logger in trainer.loggers:
            logger.log_metrics(figures, step=trainer.global_step)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        root, frames = self.recorder.output_dir, self.recorder.frames
        steps = self.recorder.recorded_steps()
        rows = []
        for unit in self.recorder.units:
            video = wandb.Video(str(root / "videos" / f"{unit.slug}.gif"), format="gif")
            first = [f["activation"] for f in frames if f["unit"] == unit.label and f["step"] == steps[0]]
            last = [f["activation"] for f in frames if f["unit"] == unit.label and f["step"] == steps[-1]]
            settle = summary["layers"].get(unit.layer, {}).get("settle_step")
            change = summary.get("differences", {}).get("units", {}).get(unit.label, {}).get("change")
            rows.append([unit.label, unit.layer, sum(first) / len(first), sum(last) / len(last), settle, change,
                         video])
            for logger in loggers:
                logger.experiment.log({f"evolution/video/{unit.slug}": video})
        for logger in loggers:
            logger.log_table("evolution/summary", columns=["unit", "layer", f"activation@{steps[0]}",
                                                           f"activation@{steps[-1]}", "layer settle step",
                                                           "change (grey RMS)", "evolution"], data=rows)


@contextlib.contextmanager
def fx_sources_released() -> Iterator[None]:
    """Inside, GraphModules compiled by torch.fx have their source dropped on the way out.

    torch.fx keeps the generated source of every GraphModule it compiles (in its loader and in
    linecache, for tracebacks) for the life of the process.  A frame compiles graphs of its copy of
    the network many times (taps, redirected ReLUs, the top-k pass: 19 for two units of a small
    CNN), and they die with the frame; without this a long run holds every frame's sources (about
    1 kB a graph for a small CNN, 15 kB for a ResNet-50)."""
    import linecache

    from torch.fx import graph_module

    cache = getattr(getattr(graph_module, "_loader", None), "eval_cache", None)
    before = set(cache) if isinstance(cache, dict) else None
    try:
        yield
    finally:
        if before is not None:
            for key in set(cache) - before:
                cache.pop(key, None)
                linecache.cache.pop(key, None)


def validation_loader(trainer: L.Trainer) -> Any:
    """The trainer's (first) validation data in its own order, or None when there is none.

    A map-style dataset is read by a plain loader of its own, not the trainer's: under DDP the
    trainer's holds each rank's shard, and every rank must hold the same pool of real images.
    """
    loader = trainer.val_dataloaders
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    elif isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    dataset = getattr(loader, "dataset", None)
    if loader is None or dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return loader
    return torch.utils.data.DataLoader(dataset, batch_size=loader.batch_size or 64, shuffle=False,
                                       collate_fn=loader.collate_fn)


def normalize_of(transform: Any, depth: int = 0) -> tuple[list[float], list[float]] | None:
    """The mean and std of the first torchvision `Normalize` in a transform (a Compose of them)."""
    if transform is None or depth > 8:
        return None
    from torchvision.transforms import Normalize, v2

    if isinstance(transform, (Normalize, v2.Normalize)):
        return [float(v) for v in torch.as_tensor(transform.mean).flatten()], \
            [float(v) for v in torch.as_tensor(transform.std).flatten()]
    for inner in getattr(transform, "transforms", None) or []:
        found = normalize_of(inner, depth + 1)
        if found is not None:
            return found
    return None


def unwrapped(dataset: Any) -> Iterator[Any]:
    """A dataset, then the datasets it wraps (Subsets and other wrappers with a `dataset`)."""
    for _ in range(8):
        if dataset is None:
            return
        yield dataset
        dataset = getattr(dataset, "dataset", None)


def dataset_normalization(dataset: Any) -> tuple[list[float], list[float]] | None:
    """The Normalize of a dataset's transform, looking through Subsets and wrappers."""
    for inner in unwrapped(dataset):
        found = normalize_of(getattr(inner, "transform", None)) or normalize_of(getattr(inner, "transforms", None))
        if found is not None:
            return found
    return None


def resolve_contract(module: torch.nn.Module, given: dict[str, Any], loader: Any) -> dict[str, Any]:
    """What the network reads: its own declaration, else the callback's arguments, else the
    validation data's image size, channels and Normalize (images already in [0, 1] need none)."""
    if declares_contract(module):
        return given
    contract = dict(given)
    if loader is None:
        if contract["image_size"] is None:
            raise ConfigError(f"FeatureEvolution: {type(module).__name__} declares no input contract and there is no "
                              "validation data to read it from; expected FeatureEvolution(image_size=..., mean=..., "
                              "std=...) or featvis.as_target(net, ...)")
        return contract
    images = batch_images(next(iter(loader)))
    if images.shape[-1] != images.shape[-2] and contract["image_size"] is None:
        raise ConfigError(f"FeatureEvolution: validation images of {images.shape[-2]}x{images.shape[-1]} px; expected "
                          "square images or FeatureEvolution(image_size=...)")
    contract["image_size"] = contract["image_size"] or int(images.shape[-1])
    contract["channels"] = contract["channels"] or int(images.shape[1])
    if contract["mean"] is None and contract["std"] is None:
        found = dataset_normalization(getattr(loader, "dataset", None))
        low, high = float(images.min()), float(images.max())
        if found is not None:
            contract["mean"], contract["std"] = found
        elif low < -0.01 or high > 1.01:
            raise ConfigError(f"FeatureEvolution: validation images range over [{low:.2f}, {high:.2f}] and their "
                              "dataset has no torchvision Normalize to undo; expected FeatureEvolution(mean=..., "
                              "std=...) (the normalization the network reads)")
    return contract


def class_names_of(pl_module: L.LightningModule, net: torch.nn.Module, loader: Any) -> list[str]:
    """The module's `class_names`, the target's, or the validation dataset's `classes` (ImageFolder)."""
    for names in (getattr(pl_module, "class_names", None), getattr(net, "class_names", None)):
        if names:
            return list(names)
    for dataset in unwrapped(getattr(loader, "dataset", None)):
        if isinstance(getattr(dataset, "classes", None), (list, tuple)):
            return [str(c) for c in dataset.classes]
    return []
