"""Training the code prior: a denoising autoencoder over an encoder's codes (PPGN-h)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from featvis.checkpoints import prior_record
from featvis.nets.codes import CodeDAE, CodeStatistics
from featvis.nets.encoder import Encoder
from featvis.training.classifier import OptimizerFactory


class CodePriorModule(L.LightningModule):
    """Batches are codes, or images when an encoder is given (codes computed on the fly)."""

    def __init__(self, dae: CodeDAE, code_stats: CodeStatistics, encoder_record: dict[str, Any],
                 optimizer: OptimizerFactory, encoder: Encoder | None = None):
        super().__init__()
        self.dae = dae
        self.code_stats = code_stats
        self.encoder_record = encoder_record
        self.optimizer_factory = optimizer
        self.encoder = encoder

    def _codes(self, batch: Any) -> torch.Tensor:
        data = batch[0] if isinstance(batch, (list, tuple)) else batch
        if self.encoder is None:
            return data
        with torch.no_grad():
            return self.encoder.code(data)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.dae.loss(self._codes(batch))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        codes = self._codes(batch)
        loss = self.dae.loss(codes)
        # Relative denoising error: 1.0 means no better than returning the noisy code.
        noise_energy = self.dae.sigma**2
        self.log_dict({"val/loss": loss, "val/relative_error": loss / noise_energy}, prog_bar=True,
                      sync_dist=True)  # mean over DDP ranks

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.dae.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["featvis"] = prior_record(self.dae, self.encoder_record)
