"""Pictures of a training generator: real x vs G(E(x)), and G on random codes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torchvision.utils import make_grid

from featvis.nets.adapters import fit_images
from featvis.io import remove_partials, save_png


class GeneratorSamples(L.Callback):
    """Every `every_n_steps` (and at the end), a grid to `<run dir>/samples/` and to wandb.

    Rows: real validation images, their reconstructions G(E(x)), and G on random
    codes drawn from the code statistics.  The images and codes are fixed at the
    first call, so successive grids show how G changes, not the inputs.
    """

    def __init__(self, every_n_steps: int = 200, num_images: int = 8, dirpath: str | None = None):
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.dirpath = dirpath
        self._real: torch.Tensor | None = None
        self._codes: torch.Tensor | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:  # a resumed run: clear what the killed one was writing
            remove_partials(self.folder(trainer))

    def folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "samples")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_grid(trainer, pl_module)

    @torch.no_grad()
    def grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        if self._real is None:
            val_set = trainer.datamodule.val_set
            count = min(self.num_images, len(val_set))
            self._real = torch.stack([val_set[i][0] for i in range(count)])
            self._codes = pl_module.code_stats.sample(count, torch.Generator(device="cpu").manual_seed(0))
        real = self._real.to(pl_module.device)
        generator = pl_module.sampling_generator
        was_training = generator.training
        generator.eval()
        reconstructed = fit_images(generator(pl_module.encoder.code(real)), real.shape[-1])
        random = fit_images(generator(self._codes.to(pl_module.device)), real.shape[-1])
        generator.train(was_training)
        rows = torch.cat([real, reconstructed, random]).clamp(0, 1).cpu()
        return make_grid(rows, nrow=len(real), padding=2, pad_value=1.0)

    def log_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        image = self.grid(trainer, pl_module)
        save_png(image, self.folder(trainer) / f"step{trainer.global_step:07d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("generator/samples", [image], step=trainer.global_step,
                                 caption=["rows: real, G(E(real)), G(random code)"])
