"""Keep the G that draws its classes: at every validation, a short DGN-AM of the encoder's class
units through the training G, scored by held-out classifiers, for ModelCheckpoint to monitor."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from featvis.checkpoints import load_classifier
from featvis.errors import ConfigError
from featvis.io import remove_partials, save_png
from featvis.nets.adapters import fit_images
from featvis.reports.grids import labelled_grid
from featvis.synthesis.evaluation import grid_artifact_score
from featvis.synthesis.methods import load_method, method_config
from featvis.synthesis.spaces import CodeSpace
from featvis.synthesis.synthesize import load_judge, logits_layer_of, synthesize


class GeneratorSelection(L.Callback):
    """At each validation of a GeneratorModule: `method` (DGN-AM) through the sampling G on every
    class unit of the encoder, `seeds` images each, `steps` sampler steps; each selector classifier
    names the images' classes, and their mean share named right is `val/selection_transfer`.

    The selectors must be networks of the encoder's classes that neither judge the syntheses
    later nor appear in G's losses (not the encoder, not task.comparators): G is kept for what
    other networks see in its images, not for what it was trained to please.  Two gates: the
    encoder's agreement on G(E(x)) (`val/agreement` >= `min_agreement`) and the grid artefacts of
    the syntheses over the real validation images' (`val/selection_grid_ratio` <=
    `max_grid_ratio`; null: no gate).  `val/selection` is the transfer where both hold and the
    transfer - 1 where one fails, so any G that passes ranks above every G that does not, plus a
    tie-break below the transfer's resolution that keeps the later of equal G's: monitor it with
    mode max (`val/selection_seconds`: the time it took so far).  Each
    validation's syntheses go to `<run dir>/selection/` and to wandb (rows: seeds, columns:
    classes).  No selectors: the callback does nothing.
    """

    def __init__(self, selectors: Sequence[str] = (), method: str = "dgn_am", seeds: int = 2, steps: int | None = 100,
                 min_agreement: float = 0.8, max_grid_ratio: float | None = 3.0, dirpath: str | None = None):
        if not (isinstance(seeds, int) and seeds >= 1):
            raise ConfigError(f"GeneratorSelection seeds={seeds}; expected a positive number of images per class")
        if steps is not None and not (isinstance(steps, int) and steps >= 1):
            raise ConfigError(f"GeneratorSelection steps={steps}; expected a positive number of sampler steps or null")
        if not 0 <= min_agreement <= 1:
            raise ConfigError(f"GeneratorSelection min_agreement={min_agreement}; expected a share in [0, 1]")
        self.selector_paths = [str(p) for p in selectors or []]
        self.method_name, self.seeds, self.steps = method, seeds, steps
        self.min_agreement, self.max_grid_ratio, self.dirpath = min_agreement, max_grid_ratio, dirpath
        self.seconds = 0.0  # spent selecting in this process, all validations together

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.selector_paths:
            return
        record = getattr(pl_module, "encoder_record", None)
        path = (record or {}).get("checkpoint")
        if not path or not Path(path).is_file():
            raise ConfigError(f"GeneratorSelection synthesizes the encoder's classes and its checkpoint {path!r} "
                              "is not a file; expected a task=generator run on a featvis classifier (encoder.ckpt)")
        self.target, target_record = load_classifier(path)
        self.class_names = list(target_record["class_names"])
        self.selectors = []
        for selector in self.selector_paths:
            if Path(selector).resolve() == Path(path).resolve():
                raise ConfigError(f"task.selectors: {selector} is the encoder G is trained on; expected "
                                  "classifiers outside G's losses")
            judge = load_judge(selector, target=self.target)
            if judge.class_names != self.class_names:
                raise ConfigError(f"task.selectors: {selector} names the classes {judge.class_names[:3]}...; expected "
                                  f"the encoder's {self.class_names[:3]}...")
            self.selectors.append(judge.net.eval().requires_grad_(False))
        self.method = method_config(self.method_name)

    def folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "selection")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.selector_paths and trainer.is_global_zero:  # a resumed run: clear what the killed one was writing
            remove_partials(self.folder(trainer))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.selector_paths or trainer.sanity_checking:
            return
        start = time.perf_counter()
        device = pl_module.device
        self.target.to(device)
        space = CodeSpace(pl_module.sampling_generator, pl_module.code_stats)
        method = load_method(self.method, None, None, self.target.image_size, space=space)
        units = list(range(len(self.class_names)))
        images = synthesize(self.target, units, method, layer=logits_layer_of(self.target),
                            class_names=self.class_names, seeds=self.seeds, steps=self.steps,
                            evaluation=False).images
        labels = torch.arange(len(units), device="cpu").repeat_interleave(self.seeds)
        with torch.no_grad():
            named = [float((net.to(device)(fit_images(images.to(device), net.image_size)).argmax(1).cpu() == labels)
                           .float().mean()) for net in self.selectors]
        transfer = sum(named) / len(named)
        # The selectors' shares move in steps of 1 / (images x selectors) and often tie (all named
        # right at most validations); among equals the later G, which has trained longer: a
        # tie-break below half that step, growing with the share of the step budget done.
        budget = trainer.estimated_stepping_batches
        done = min(trainer.global_step / budget, 1.0) if math.isfinite(budget) and budget > 0 else 0.0
        later = 0.5 * done / (len(labels) * len(named))
        grid_ratio = grid_artifact_score(images) / grid_artifact_score(pl_module.sample_images)
        agreement = float(trainer.callback_metrics.get("val/agreement", float("nan")))
        passed = agreement >= self.min_agreement and (self.max_grid_ratio is None or grid_ratio <= self.max_grid_ratio)
        if trainer.is_global_zero:
            self.save_grid(trainer, images)
        self.seconds += time.perf_counter() - start
        pl_module.log_dict({"val/selection": (transfer if passed else transfer - 1.0) + later,
                            "val/selection_transfer": transfer, "val/selection_grid_ratio": grid_ratio,
                            "val/selection_seconds": self.seconds}, sync_dist=True)

    def save_grid(self, trainer: L.Trainer, images: torch.Tensor) -> None:
        classes = len(self.class_names)
        by_seed = images.cpu().view(classes, self.seeds, *images.shape[1:]).transpose(0, 1).flatten(0, 1)
        grid = labelled_grid(by_seed, self.seeds, [f"seed {k}" for k in range(self.seeds)],
                             [c.replace(" ", "\n") for c in self.class_names])
        save_png(grid, self.folder(trainer) / f"step{trainer.global_step:07d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("generator/selection", [grid], step=trainer.global_step,
                                 caption=[f"{self.method_name} through G: rows seeds, columns classes"])
