"""Watch a classifier's features evolve while it trains: DGN-AM/PPGN at a cadence of steps.

At every trigger the callback synthesizes the configured units with initial codes and
noise seeds drawn once (kept in the callback's checkpoint state), so what changes from
frame to frame is the network; beside each synthesis go the validation images that
activate the unit most at that step.  Frames, grids, videos, a strip, a settling plot,
`evolution.json` and `index.html` go to `dirpath` (see featvis.reports.evolution); grids,
per-unit scalars and images (in one panel section per layer), videos and a summary table
go to wandb when a WandbLogger is attached.

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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import WandbLogger

from featvis.errors import ConfigError
from featvis.reports.evolution import grid_file
from featvis.synthesis.evolution import EvolutionRecorder

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
    checkpoint save), plus step 0 (`at_start`).

    What each frame synthesizes (`units`, `method`, `generator={"ckpt": G}`, `prior`, `judge`,
    `seeds`, `steps`, ...: conf/synthesis/'s keys) goes to featvis.synthesis.evolution.EvolutionRecorder.
    """

    def __init__(
        self,
        units: Mapping[str, list] | list,
        method: Mapping[str, Any],
        dirpath: str | None = None,
        log_frames: int = 10,
        linear_frames: int | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        on_checkpoint: bool = False,
        at_start: bool = True,
        live_report: bool = False,
        target_attribute: str = "net",
        **synthesis: Any,
    ):
        for name, value in (("log_frames", log_frames), ("linear_frames", linear_frames),
                            ("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and int(value) < 0:
                raise ConfigError(f"callbacks.feature_evolution.{name}={value}; expected a non-negative integer")
        self.recorder = EvolutionRecorder(units, method, output_dir=dirpath or "evolution", **synthesis)
        self.dirpath = dirpath
        self.log_frames, self.linear_frames = log_frames, linear_frames
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.on_checkpoint, self.at_start = on_checkpoint, at_start
        self.live_report = live_report  # rebuild strip/videos/index.html after every frame, not only at the end
        self.target_attribute = target_attribute
        self.scheduled: set[int] = set()
        self.seconds = 0.0  # spent in this callback by this process: its cost to the training run

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.recorder.output_dir = Path(trainer.default_root_dir) / "evolution"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule  # the top-k real images come from its validation set, when there is one
        real = data.val_dataloader() if data is not None and self.recorder.top_k else None
        with self.timed():
            self.recorder.prepare(self._net(pl_module), getattr(pl_module, "class_names", []), real)
        if trainer.is_global_zero:
            self.recorder.reconcile_disk()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = int(trainer.estimated_stepping_batches)
        self.scheduled = scheduled_steps(total, self.log_frames, self.linear_frames, self.every_n_steps)
        if self.at_start and trainer.global_step == 0:
            self.capture(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        epoch_end = batch_idx + 1 == trainer.num_training_batches
        due_epoch = bool(self.every_n_epochs) and epoch_end and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if trainer.global_step in self.scheduled or due_epoch:
            self.capture(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.on_checkpoint and not self.recorder.has_frame(trainer.global_step):
            self.capture(trainer, pl_module)
            # The state was taken before this hook: store it again with the new frame.
            checkpoint.setdefault("callbacks", {})[self.state_key] = self.state_dict()

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

    def _net(self, pl_module: L.LightningModule) -> torch.nn.Module:
        net = getattr(pl_module, self.target_attribute, None) if self.target_attribute else pl_module
        if net is None:
            raise ConfigError(f"callbacks.feature_evolution.target_attribute={self.target_attribute!r} is not an "
                              f"attribute of {type(pl_module).__name__}; expected the name of the network")
        return net

    def capture(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Synthesize one frame at the current step (this rank's shard of units), gather, record."""
        step = trainer.global_step
        if self.recorder.has_frame(step):
            return
        with self.timed():
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
                metrics[f"evolution-{unit.layer}/{unit.slug}/{key}"] = sum(r[key] for r in mine) / len(mine)
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
        """Each layer's settle step to every logger; per unit a video of its evolution and one table
        of the run (wandb only)."""
        figures = {f"evolution-{layer}/settle_step": v["settle_step"] for layer, v in summary["layers"].items()
                   if v["settle_step"] is not None}
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
            rows.append([unit.label, unit.layer, sum(first) / len(first), sum(last) / len(last), settle, video])
            for logger in loggers:
                logger.experiment.log({f"evolution/video/{unit.slug}": video})
        for logger in loggers:
            logger.log_table("evolution/summary", columns=["unit", "layer", f"activation@{steps[0]}",
                                                           f"activation@{steps[-1]}", "layer settle step",
                                                           "evolution"], data=rows)
