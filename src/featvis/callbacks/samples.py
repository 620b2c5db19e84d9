"""Pictures of a training generator: real x vs G(E(x)), and G on random codes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from featvis.io import remove_partials, save_png


class GeneratorSamples(L.Callback):
    """Every `every_n_steps` (and at the end), the module's `sample_grid(num_images)` to
    `<run dir>/samples/` and to wandb (GeneratorModule: real validation images, G(E(x)) and G
    on random codes, the same inputs at every call).
    """

    def __init__(self, every_n_steps: int = 200, num_images: int = 8, dirpath: str | None = None):
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.dirpath = dirpath

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:  # a resumed run: clear what the killed one was writing
            remove_partials(self.folder(trainer))

    def folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "samples")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_grid(trainer, pl_module)

    def log_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        image = pl_module.sample_grid(self.num_images)
        save_png(image, self.folder(trainer) / f"step{trainer.global_step:07d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("generator/samples", [image], step=trainer.global_step,
                                 caption=["rows: real, G(E(real)), G(random code)"])
