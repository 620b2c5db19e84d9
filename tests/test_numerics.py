"""NaN/inf stops training and synthesis with the step and the term; no NaN checkpoint; GAN divergence."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch

import featvis.jobs.train
from featvis.callbacks import NumericsGuard
from featvis.checkpoints import load_classifier, read_checkpoint
from featvis.errors import ConfigError, NumericsError
from featvis.jobs.train import train
from featvis.synthesis.objectives import ObjectiveBatch, Term
from featvis.synthesis.sampler import Sampler, SamplerSettings

EVERY_STEP = ["+callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.monitor=null",
              "callbacks.model_checkpoint.save_top_k=-1"]


class PoisonAt(L.Callback):
    """Puts a NaN into the first weight just before training step `step`."""

    def __init__(self, step: int):
        self.step = step
        self.trainer = None

    def on_train_batch_start(self, trainer, pl_module, *args):
        self.trainer = trainer
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters())[0].fill_(float("nan"))


def test_nan_loss_stops_training_naming_step_and_term_and_no_nan_checkpoint(compose_cfg, tmp_path, monkeypatch):
    poison = PoisonAt(3)
    build = featvis.jobs.train.build_trainer

    def poisoned_trainer(cfg):
        trainer = build(cfg)
        trainer.callbacks.insert(0, poison)
        return trainer

    monkeypatch.setattr(featvis.jobs.train, "build_trainer", poisoned_trainer)
    with pytest.raises(NumericsError, match=r"training: train/loss=nan at step 4 \(epoch 0, batch 3\); "
                                            r"expected finite losses"):
        train(compose_cfg(*EVERY_STEP))
    saved = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    steps = sorted({read_checkpoint(p)["global_step"] for p in saved})
    assert steps == [1, 2, 3]  # the checkpoints before the NaN, none after
    for path in saved:
        net, _ = load_classifier(path)
        assert all(torch.isfinite(p).all() for p in net.parameters()), path

    # Saving by hand is refused too, and leaves no file behind.
    trainer = poison.trainer
    with pytest.raises(NumericsError, match=r"checkpoint at step 4 not written: net\.\S+ is not finite"):
        trainer.save_checkpoint(tmp_path / "by_hand.ckpt")
    assert not (tmp_path / "by_hand.ckpt").exists()


def _feed(guard, series, key="train/loss_d"):
    module = torch.nn.Linear(1, 1)
    for step, value in enumerate(series):
        trainer = SimpleNamespace(global_step=step, current_epoch=0,
                                  callback_metrics={key: torch.tensor(value), "train/loss_g": torch.tensor(1.0)})
        guard.on_train_batch_end(trainer, module, None, None, step)


def test_gan_divergence_is_detected_and_a_spike_is_not():
    calm = [0.7 + 0.2 * ((i * 7919) % 13) / 13 for i in range(300)]
    guard = NumericsGuard()
    _feed(guard, calm + [30.0] * 20 + calm[:100])  # a short spike of 20 steps: not divergence
    with pytest.raises(NumericsError, match=r"GAN diverged: train/loss_d=40 at step 349 .*for 50 steps"):
        _feed(NumericsGuard(), calm + [40.0] * 60)
    with pytest.warns(UserWarning, match="GAN diverged: train/loss_d"):
        _feed(NumericsGuard(on_divergence="warn"), calm + [40.0] * 60)
    # A loss that shrinks towards 0 and wobbles above 10x its median stays under the floor.
    _feed(NumericsGuard(), [0.01] * 200 + [0.5] * 100)


def test_guard_settings_are_checked():
    with pytest.raises(ConfigError, match="on_divergence='ignore'; expected stop or warn"):
        NumericsGuard(on_divergence="ignore")
    with pytest.raises(ConfigError, match="window >= 2 x patience"):
        NumericsGuard(divergence_patience=50, divergence_window=60)


def test_sampler_names_the_non_finite_term(small_classifier):
    net, _ = load_classifier(small_classifier[1]["best_checkpoint"])
    objectives = ObjectiveBatch([[Term("fc8", 0)], [Term("fc8", 1)]], {"fc8": 15})

    def prior(z):  # a prior that breaks down for the second row of the batch
        out = -z.clone()
        out[1] = float("nan")
        return out

    settings = SamplerSettings(steps=5, lr=0.01, eps2=0.1)
    with pytest.raises(NumericsError, match=r"synthesis: the prior term is not finite at step 0 \(batch rows \[1\]\)"):
        Sampler(net, objectives, settings, prior=prior).run(torch.full((2, 3, 32, 32), 0.5))
    huge = SamplerSettings(steps=5, lr=1e38, normalize_gradient=True)
    with pytest.raises(NumericsError, match=r"synthesis: the (objective|z after the update) is not finite at step \d"):
        Sampler(net, objectives, huge).run(torch.full((2, 3, 32, 32), 0.5))
