"""Training stops at the first NaN/inf instead of writing it into checkpoints."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from featvis.errors import ConfigError, NumericsError


def first_non_finite(named: Any) -> str | None:
    """The name of the first tensor of (name, tensor) pairs holding a NaN or inf; None when all are finite."""
    named = list(named)
    floating = [t.detach() for _, t in named if torch.is_tensor(t) and t.is_floating_point()]
    # One fused reduction for the common, all-finite case; the per-tensor search only when it is not
    # finite (a NaN/inf, or a sum of huge finite values that overflowed).
    if not floating or math.isfinite(float(torch.nn.utils.get_total_norm(floating, norm_type=1.0))):
        return None
    return next((name for name, t in named
                 if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()), None)


class NumericsGuard(L.Callback):
    """Checks every training step: logged `train/*` values and the weights are finite, and GAN losses
    have not exploded; refuses to write a checkpoint that holds a NaN/inf weight.

    Divergence: a watched loss above `divergence_factor` x its median over the last
    `divergence_window` steps (and above `divergence_floor`) for `divergence_patience` steps in a
    row. A D or G loss that runs away like this does not come back; `on_divergence=stop` ends the
    run with a message, `warn` only reports it.
    """

    def __init__(self, check_weights: bool = True,
                 divergence_keys: Sequence[str] = ("train/loss_d", "train/loss_g"),
                 divergence_factor: float = 10.0, divergence_floor: float = 1.0,
                 divergence_patience: int = 50, divergence_window: int = 200, on_divergence: str = "stop"):
        if on_divergence not in ("stop", "warn"):
            raise ConfigError(f"on_divergence={on_divergence!r}; expected stop or warn")
        if divergence_factor <= 1 or divergence_patience < 1 or divergence_window < 2 * divergence_patience:
            raise ConfigError(f"divergence_factor={divergence_factor}, divergence_patience={divergence_patience}, "
                              f"divergence_window={divergence_window}; expected factor > 1, patience >= 1 and "
                              "window >= 2 x patience")
        self.check_weights = check_weights
        self.divergence_keys = tuple(divergence_keys)
        self.factor, self.floor = float(divergence_factor), float(divergence_floor)
        self.patience, self.window = int(divergence_patience), int(divergence_window)
        self.on_divergence = on_divergence
        self.history: dict[str, deque[float]] = {}
        self.streak: dict[str, int] = {}
        self.reported: set[str] = set()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        where = f"at step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        problem = self._problem(trainer, pl_module, outputs, where)
        if getattr(trainer, "world_size", 1) > 1:
            # Stop every process together: one that stops alone leaves the others waiting in the
            # next all-reduce.
            anywhere = trainer.strategy.reduce_boolean_decision(problem is not None, all=False)
            if anywhere and problem is None:
                problem = f"training: stopped {where}: another process found a problem (its message says which)"
        if problem is not None:
            raise NumericsError(problem)

    def _problem(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, where: str) -> str | None:
        logged = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad = first_non_finite([*logged.items(), ("the training_step loss", loss)])
        if bad is not None:
            value = float(logged[bad]) if bad in logged else float(loss)
            return (f"training: {bad}={value} {where}; expected finite losses (lower the learning rate, or "
                    "check the data for NaN)")
        if self.check_weights:
            bad = first_non_finite(pl_module.named_parameters())
            if bad is not None:
                return f"training: weight {bad} is not finite {where}; expected finite weights (lower the learning rate)"
        diverged = [self._diverged(key, float(logged[key]), where) for key in self.divergence_keys if key in logged]
        message = next((m for m in diverged if m), None)
        if message is not None and self.on_divergence == "warn":
            rank_zero_warn(message)
            return None
        return message

    def _diverged(self, key: str, value: float, where: str) -> str | None:
        """The divergence message the first time `key` has run away; None otherwise."""
        history = self.history.setdefault(key, deque(maxlen=self.window))
        message = None
        if len(history) >= self.window // 2:
            limit = max(self.factor * statistics.median(history), self.floor)
            self.streak[key] = self.streak.get(key, 0) + 1 if value > limit else 0
            if self.streak[key] >= self.patience and key not in self.reported:
                self.reported.add(key)
                message = (f"training: GAN diverged: {key}={value:.4g} {where} has stayed above {limit:.4g} "
                           f"({self.factor:g} x its running median) for {self.patience} steps; expected it to "
                           "stay bounded (lower the learning rates or tune task.module.balance)")
        history.append(value)
        return message

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Runs before the file is written: raising here leaves no checkpoint behind.
        bad = first_non_finite(checkpoint.get("state_dict", {}).items())
        if bad is not None:
            raise NumericsError(f"checkpoint at step {trainer.global_step} not written: {bad} is not finite; "
                                "expected finite weights")

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}, "streak": dict(self.streak)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: deque(v, maxlen=self.window) for k, v in state_dict.get("history", {}).items()}
        self.streak = dict(state_dict.get("streak", {}))
