"""Training speed of the tiny preset's networks, NCHW against channels-last, side by side in one run.

    python benchmarks/train_speed.py [--steps 12] [--warmup 3] [--rounds 2] [--generator-steps N]

Times Lightning training steps of the two convolutional tasks as train.py builds them (the
generator task with one comparator classifier, batch 64, as `benchmarks/quality.py` trains it;
the classifier task at its batch size), on random images and untrained networks: the cost of a
step does not depend on what the networks learned.  Each layout is timed in alternating rounds
and the fastest round kept, so a noisy machine slows both alike.

Prints a table, then, as its last line, one JSON object:
  generator_step_speedup    generator-task step time NCHW / channels-last  (performance.channels_last)
  classifier_step_speedup   the same for the classifier task
  generator_ms_nchw, generator_ms_channels_last, classifier_ms_nchw, classifier_ms_channels_last
                            the step times behind the ratios
  generator_minutes_at_<N>  N steps (--generator-steps; default task.train_steps of
                            conf/task/generator.yaml) at the channels-last step time: the training
                            alone, without validation or the code statistics
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from report import print_figures
from torch import nn
from torch.utils.data import DataLoader

from featvis.devices import use_channels_last
from featvis.nets import CodeStatistics, Encoder

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 15  # shapes


class StepTimer(L.Callback):
    """Wall time of the training steps after the first `warmup`."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def compose_task(task: str) -> object:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"task={task}", "logger=none"])


def generator_module(cfg) -> L.LightningModule:
    """GeneratorModule with an encoder and one comparator classifier, as run.train_generator builds it."""
    encoder = Encoder(instantiate(cfg.model, num_classes=CLASSES), cfg.encoder.code_layer,
                      cfg.encoder.comparator_layer, cfg.encoder.logits_layer)
    stats = CodeStatistics(encoder.code_dim).fit(torch.rand(1024, encoder.code_dim).relu_() * 2)
    generator = instantiate(cfg.generator.net, code_dim=encoder.code_dim)
    discriminator = instantiate(cfg.generator.discriminator, image_size=encoder.image_size,
                                code_dim=encoder.code_dim if cfg.generator.code_branch else 0)
    comparators = nn.ModuleList([instantiate(cfg.model, num_classes=CLASSES).eval()])
    return instantiate(cfg.task.module, generator=generator, discriminator=discriminator, encoder=encoder,
                       code_stats=stats, encoder_record={}, comparators=comparators)


def classifier_module(cfg) -> L.LightningModule:
    net = instantiate(cfg.model, num_classes=CLASSES)
    return instantiate(cfg.task.module, net=net, class_names=[str(i) for i in range(CLASSES)])


def step_seconds(module: L.LightningModule, batch_size: int, image_size: int, warmup: int, steps: int) -> float:
    images = torch.rand(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, CLASSES, (batch_size,))
    # The same random batch every step: what the step costs does not depend on the pixels.
    loader = DataLoader([(images, labels)] * (warmup + steps), batch_size=None)
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory(prefix="featvis-train-speed-") as root:
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=0,
                            num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                            callbacks=[timer], default_root_dir=root)
        trainer.fit(module, train_dataloaders=loader)
    return (timer.end - timer.start) / steps


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per layout")
    parser.add_argument("--generator-steps", type=int,
                        help="the budget whose minutes are printed (default: task.train_steps)")
    args = parser.parse_args()
    builders = {"generator": (generator_module, compose_task("generator")),
                "classifier": (classifier_module, compose_task("classifier"))}
    if args.generator_steps is None:
        args.generator_steps = builders["generator"][1].task.train_steps
    if min(args.steps, args.rounds, args.generator_steps) < 1 or args.warmup < 0:
        parser.error("expected positive --steps, --rounds and --generator-steps and a non-negative --warmup")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(module\(s\) in eval mode|does not have many workers|"
                                              r"smaller than the logging interval|no `val_dataloader`).*")
    best: dict[tuple[str, bool], float] = {}
    for _ in range(args.rounds):
        for task, (build, cfg) in builders.items():
            for channels_last in (False, True):
                torch.manual_seed(0)
                module = use_channels_last(build(cfg), channels_last)
                seconds = step_seconds(module, cfg.data.batch_size, cfg.data.image_size, args.warmup, args.steps)
                key = (task, channels_last)
                best[key] = min(best.get(key, float("inf")), seconds)
                print(f"  {task}, {'channels-last' if channels_last else 'NCHW'}: {1e3 * seconds:.1f} ms/step",
                      flush=True)
    figures = {
        "generator_step_speedup": round(best["generator", False] / best["generator", True], 3),
        "classifier_step_speedup": round(best["classifier", False] / best["classifier", True], 3),
        **{f"{task}_ms_{'channels_last' if cl else 'nchw'}": round(1e3 * s, 1) for (task, cl), s in best.items()},
        f"generator_minutes_at_{args.generator_steps}": round(args.generator_steps * best["generator", True] / 60, 2),
        "torch_threads": torch.get_num_threads(),
    }
    print_figures(figures, {})
    return figures


if __name__ == "__main__":
    print(json.dumps(main()))
