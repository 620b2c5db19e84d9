"""Train both priors with the tiny preset on `shapes` and measure them.

    python benchmarks/priors.py [--encoder CLASSIFIER.ckpt] [--docs]

Without --encoder it first trains the encoder classifier (the classifier benchmark's job).
Prints a table, then, as its last line, one JSON object:
  recon_agreement          fraction of val images x whose reconstruction G(E(x)) the encoder's
                           classifier labels like x                        (target >= 0.90)
  lightning_vs_plain       generator training images/s under Lightning / a plain PyTorch loop
                           doing the same step (same nets, batch, data)    (target >= 0.90)
  dae_score_cosine         mean cosine between the DAE score and the analytic score of a
                           Gaussian it was trained on                      (target >= 0.90)
  generator_train_minutes  wall time of `train.py task=generator`          (target <= 15)
--docs copies the final reconstruction grid to docs/generator_samples.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from report import print_figures
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared checks live in tests/
from featvis.checkpoints import load_classifier, load_generator
from tests.checks import dae_gaussian_score_check  # noqa: E402
from featvis.nets import CodeStatistics, Encoder
from featvis.nets.adapters import fit_images
from featvis.jobs.train import train
from featvis.training.losses import GanBalance, LossWeights, discriminator_loss, generator_losses

ROOT = Path(__file__).resolve().parents[1]


def compose_cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"output_dir={out}", "logger=csv", *overrides])


@torch.no_grad()
def reconstruction_agreement(generator_ckpt: str, encoder_ckpt: str, cfg) -> float:
    generator, _, _ = load_generator(generator_ckpt)
    net, _ = load_classifier(encoder_ckpt)
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    encoder = Encoder(net, cfg.encoder.code_layer)
    agree = total = 0
    for images, _ in datamodule.val_dataloader():
        code = encoder.code(images)
        same = net(fit_images(generator(code), images.shape[-1])).argmax(1) == net(images).argmax(1)
        agree += int(same.sum())
        total += len(images)
    return agree / total


class _BatchTimer(L.Callback):
    """Wall time of training batches after the first `warmup`."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds = warmup, None, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def lightning_vs_plain(cfg, steps: int = 12, warmup: int = 3, rounds: int = 3) -> dict[str, float]:
    """Images/s of the generator step under Lightning and in a plain loop, interleaved rounds."""
    net, _ = load_classifier(cfg.encoder.ckpt)
    encoder = Encoder(net)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = datamodule.batch_size
    images_timed = (steps - warmup) * batch

    def fresh_module():
        torch.manual_seed(0)
        generator = instantiate(cfg.generator.net, code_dim=encoder.code_dim)
        discriminator = instantiate(cfg.generator.discriminator, image_size=encoder.image_size,
                                    code_dim=encoder.code_dim)
        return instantiate(cfg.task.module, generator=generator, discriminator=discriminator,
                           encoder=encoder, code_stats=CodeStatistics(encoder.code_dim),
                           encoder_record={})

    def run_lightning() -> float:
        timer = _BatchTimer(warmup)
        trainer = L.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[timer], accelerator="cpu")
        trainer.fit(fresh_module(), train_dataloaders=DataLoader(datamodule.train_set, batch_size=batch,
                                                                 shuffle=True, drop_last=True))
        return images_timed / timer.seconds

    def run_plain() -> float:
        module = fresh_module()
        g, d = module.generator, module.discriminator
        opt_g, opt_d = module.configure_optimizers()
        weights, balance = LossWeights(**cfg.task.module.loss_weights), GanBalance(**(cfg.task.module.balance or {}))
        loader = DataLoader(datamodule.train_set, batch_size=batch, shuffle=True, drop_last=True)
        start = None
        for i, (images, _) in enumerate(loader):
            if i == warmup:
                start = time.perf_counter()
            if i == steps:
                break
            d.requires_grad_(False)
            losses = generator_losses(g, d, encoder, images, weights)
            if balance.train_g:
                opt_g.zero_grad(set_to_none=True)
                losses["total"].backward()
                opt_g.step()
                module.generator_ema.update_parameters(g)
            d.requires_grad_(True)
            g.requires_grad_(False)
            with torch.set_grad_enabled(balance.train_d):
                d_loss = discriminator_loss(d, images, losses["fake"], losses["target"]["code"])
            if balance.train_d:
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            g.requires_grad_(True)
            balance.update(d_loss.item(), losses["adversarial"].item())
        return images_timed / (time.perf_counter() - start)

    plain, lightning = [], []
    for _ in range(rounds):
        plain.append(run_plain())
        lightning.append(run_lightning())
    p, lt = statistics.median(plain), statistics.median(lightning)
    return {"plain_images_per_second": round(p, 1), "lightning_images_per_second": round(lt, 1),
            "lightning_vs_plain": round(lt / p, 3)}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", help="classifier checkpoint to use instead of training one")
    parser.add_argument("--docs", action="store_true", help="update docs/generator_samples.png")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    out = Path(tempfile.mkdtemp(prefix="featvis-bench-priors-"))
    figures: dict[str, float] = {}

    encoder = args.encoder
    if encoder is None:
        start = time.perf_counter()
        encoder = train(compose_cfg(out / "classifier", "task=classifier"))["best_checkpoint"]
        figures["classifier_train_minutes"] = round((time.perf_counter() - start) / 60, 2)

    gen_cfg = compose_cfg(out / "generator", "task=generator", f"encoder.ckpt={encoder}")
    start = time.perf_counter()
    generator = train(gen_cfg)
    figures["generator_train_minutes"] = round((time.perf_counter() - start) / 60, 2)
    figures["recon_agreement"] = round(reconstruction_agreement(generator["best_checkpoint"], encoder, gen_cfg), 4)

    prior_cfg = compose_cfg(out / "prior", "task=prior", f"encoder.ckpt={encoder}")
    start = time.perf_counter()
    prior = train(prior_cfg)
    figures["prior_train_minutes"] = round((time.perf_counter() - start) / 60, 2)
    figures["prior_val_relative_error"] = round(prior["metrics"]["val/relative_error"], 4)

    score = dae_gaussian_score_check()
    figures["dae_score_cosine"] = round(score["cosine_to_true_score"], 4)
    figures.update(lightning_vs_plain(gen_cfg))

    grids = sorted((out / "generator" / "samples").glob("step*.png"))
    if args.docs and grids:
        shutil.copy(grids[-1], ROOT / "docs" / "generator_samples.png")

    targets = {"recon_agreement": ">= 0.90", "lightning_vs_plain": ">= 0.90",
               "dae_score_cosine": ">= 0.90", "generator_train_minutes": "<= 15"}
    print_figures(figures, targets)
    print(f"(run dir: {out}; last grid: {grids[-1] if grids else 'none'})")
    return figures


if __name__ == "__main__":
    print(json.dumps(main()))
