"""Train alexnet_mini on `shapes` with the default tiny preset on the CPU; report accuracy and time.

    python benchmarks/classifier.py [hydra overrides...]

Prints a table, then, as its last line, one JSON object of the named figures
(`val_accuracy`, `wall_minutes`, ...).  Targets on a 2-core machine:
val_accuracy >= 0.95 with wall_minutes <= 5.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import print_figures
from hydra import compose, initialize_config_dir

from featvis.checkpoints import load_classifier
from featvis.data import ShapesDataset
from featvis.jobs.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"


def per_class_accuracy(checkpoint: str, cfg) -> torch.Tensor:
    net, record = load_classifier(checkpoint)
    val = ShapesDataset(cfg.data.val_size, cfg.image_size, seed=cfg.data.seed, split="val",
                        shapes=cfg.data.shapes, colours=cfg.data.colours)
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        predicted = torch.cat([net(chunk).argmax(1) for chunk in images.split(500)])
    hits = torch.zeros(len(record["class_names"]))
    totals = torch.zeros_like(hits)
    hits.index_add_(0, labels, (predicted == labels).float())
    totals.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float))
    return hits / totals.clamp(min=1)


def main(overrides: list[str]) -> dict:
    os.environ.setdefault("WANDB_MODE", "disabled")
    out = Path(tempfile.mkdtemp(prefix="featvis-bench-classifier-"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"output_dir={out}", "task=classifier", "logger=csv", *overrides])
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    per_class = per_class_accuracy(result["best_checkpoint"], cfg)
    figures = {
        "val_accuracy": round(result["metrics"]["val/acc"], 4),
        "wall_minutes": round(wall / 60, 2),
        "worst_class_accuracy": round(per_class.min().item(), 4),
        "train_images_per_second": round(cfg.data.train_size * cfg.trainer.max_epochs / wall, 1),
        "epochs": cfg.trainer.max_epochs,
        "train_size": cfg.data.train_size,
        "torch_threads": torch.get_num_threads(),
    }
    targets = {"val_accuracy": ">= 0.95", "wall_minutes": "<= 5"}
    print_figures(figures, targets)
    print(f"(run dir: {out})")
    return figures


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
