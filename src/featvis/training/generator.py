"""Training the image prior G (and its discriminator D) to invert a frozen encoder (DeePSiM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.utils import make_grid

from featvis.checkpoints import generator_record
from featvis.nets.adapters import fit_images
from featvis.nets.codes import CodeStatistics
from featvis.nets.encoder import Encoder
from featvis.training.classifier import OptimizerFactory, SchedulerFactory
from featvis.training.losses import (Comparator, GanBalance, LossWeights, discriminator_loss,
                                     generator_losses)


# The comparator layers and weights of the feature loss: pool5 fixes the class, conv2 the edges.
FEATURE_LAYERS = MappingProxyType({"conv2": 2.0, "pool5": 1.0})


class GeneratorModule(L.LightningModule):
    """Manual optimization: one D step (unless paused by the balance), then one G step."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        encoder: Encoder,
        code_stats: CodeStatistics,
        encoder_record: dict[str, Any],
        optimizer: OptimizerFactory,
        loss_weights: dict[str, float],
        discriminator_optimizer: OptimizerFactory | None = None,
        balance: dict[str, float] | None = None,
        ema_decay: float | None = 0.95,
        feature_layers: Mapping[str, float] | None = FEATURE_LAYERS,
        comparators: Sequence[nn.Module] = (),
        scheduler: SchedulerFactory | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.encoder = encoder
        self.code_stats = code_stats
        self.encoder_record = encoder_record
        # Several comparator layers (name -> weight) instead of the encoder's single one, and
        # more networks (frozen classifiers) whose features the reconstruction must match too.
        if comparators and not feature_layers:
            feature_layers = {encoder.roles["features"]: 1.0}
        self.comparator = Comparator(encoder, dict(feature_layers), comparators) if feature_layers else None
        self.optimizer_factory = optimizer
        self.discriminator_optimizer_factory = discriminator_optimizer or optimizer
        self.scheduler_factory = scheduler
        self.weights = LossWeights(**loss_weights)
        self.balance = GanBalance(**(balance or {}))
        # The averaged G is what samplers should use when it exists: smoother, fewer artefacts.
        self.generator_ema = (AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
                              if ema_decay else None)
        if self.generator_ema is not None:
            # Averaged, never trained by gradients: no grads to compute, none for DDP to wait for.
            self.generator_ema.requires_grad_(False)

    def configure_optimizers(self) -> Any:
        optimizers = [self.optimizer_factory(self.generator.parameters()),
                      self.discriminator_optimizer_factory(self.discriminator.parameters())]
        if self.scheduler_factory is None:
            return optimizers
        # Manual optimization: training_step steps these once a batch, whichever nets it updated.
        total = self.trainer.estimated_stepping_batches
        return optimizers, [self.scheduler_factory(o, total_steps=total) for o in optimizers]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images = batch[0]
        opt_g, opt_d = self.optimizers()
        # Lightning counts each LightningOptimizer.step() in global_step (lightning#17958): one a batch is
        # counted, G's (or D's while G pauses), so global_step, max_steps and every callback count batches.
        self.toggle_optimizer(opt_g)
        losses = generator_losses(self.generator, self.discriminator, self.compared, images, self.weights)
        if self.balance.train_g:
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(losses["total"])
            opt_g.step()
            if self.generator_ema is not None:
                self.generator_ema.update_parameters(self.generator)
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        with torch.set_grad_enabled(self.balance.train_d):
            d_loss = discriminator_loss(self.discriminator, images, losses["fake"], losses["target"]["code"])
        if self.balance.train_d:
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            if self.balance.train_g:  # G's step was counted: D's goes to the strategy (precision, DDP) uncounted
                self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=lambda: None)
            else:
                opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.balance.update(d_loss.item(), losses["adversarial"].item())
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()
        self.log_dict({f"train/loss_{k}": losses[k]
                       for k in ("image", "feature", "adversarial", "spectral")}, prog_bar=False)
        self.log_dict({"train/loss_g": losses["total"], "train/loss_d": d_loss,
                       "train/d_active": float(self.balance.train_d),
                       "train/g_active": float(self.balance.train_g)}, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images = batch[0]
        losses = generator_losses(self.sampling_generator, self.discriminator, self.compared, images,
                                  self.weights)
        # Does the encoder's own classifier see the reconstruction as the same class?
        agreement = (losses["fake_logits"].argmax(1) == losses["target"]["logits"].argmax(1)).float().mean()
        self.log_dict({"val/loss_image": losses["image"], "val/loss_feature": losses["feature"],
                       "val/loss_spectral": losses["spectral"],
                       "val/agreement": agreement}, prog_bar=True, sync_dist=True)  # mean over DDP ranks

    @property
    def compared(self) -> nn.Module:
        return self.comparator if self.comparator is not None else self.encoder

    @property
    def sampling_generator(self) -> nn.Module:
        return self.generator_ema.module if self.generator_ema is not None else self.generator

    def on_fit_start(self) -> None:
        # The fixed real images of sample_grid: the first validation batch, read aside from the global RNG
        # (a loader draws its seed from it) so that training goes on as without the grids.
        datamodule = self.trainer.datamodule
        with torch.random.fork_rng(devices=[]):
            self.sample_images = next(iter(datamodule.val_dataloader()))[0] if datamodule is not None else None

    @torch.no_grad()
    def sample_grid(self, count: int = 8) -> torch.Tensor:
        """Rows: `count` fixed validation images, G(E(x)) of them, and G on `count` fixed random
        codes from the code statistics, so successive grids show how G changes, not the inputs."""
        real = self.sample_images[:count].to(self.device)
        codes = self.code_stats.sample(len(real), torch.Generator(device="cpu").manual_seed(0)).to(self.device)
        generator = self.sampling_generator
        was_training = generator.training
        generator.eval()
        rows = [real, *(fit_images(generator(c), real.shape[-1]) for c in (self.encoder.code(real), codes))]
        generator.train(was_training)
        return make_grid(torch.cat(rows).clamp(0, 1).cpu(), nrow=len(real), padding=2, pad_value=1.0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["featvis"] = generator_record(self.generator, self.discriminator, self.encoder_record,
                                                 ema=self.generator_ema is not None)
        checkpoint["gan_balance"] = self.balance.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "gan_balance" in checkpoint:
            self.balance.load_state_dict(checkpoint["gan_balance"])


def linear_decay(optimizer: torch.optim.Optimizer, total_steps: int | float,
                 fraction: float = 0.5) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant learning rate, then linearly down to 0 over the last `fraction` of `total_steps`
    (the schedule of pix2pix and CycleGAN): a GAN's last updates settle instead of ending
    wherever the adversarial game happens to be."""
    if not 0 < fraction <= 1:
        raise ValueError(f"linear_decay: fraction={fraction}; expected a number in (0, 1]")
    if not 0 < total_steps < float("inf"):
        raise ValueError(f"linear_decay: total_steps={total_steps}; expected a finite number of "
                         "steps (set task.train_steps or trainer.max_epochs)")
    decay_steps = fraction * total_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, max(0.0, (total_steps - step) / decay_steps)))

