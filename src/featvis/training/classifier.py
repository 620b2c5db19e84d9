"""Supervised training of a target classifier (also the encoder E of the priors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from featvis.checkpoints import classifier_record

OptimizerFactory = Callable[..., torch.optim.Optimizer]
# Called as scheduler(optimizer, total_steps=...); OneCycleLR fits as is.
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        class_names: list[str],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.net = net
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.train_acc = MulticlassAccuracy(num_classes=len(class_names), average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=len(class_names), average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self.net(images)
        self.val_acc(logits, labels)
        self.log("val/loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)  # mean over DDP ranks
        self.log("val/acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["featvis"] = classifier_record(self.net, self.class_names)
