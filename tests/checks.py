"""Checks against known answers, shared by the tests and the benchmarks: the DAE prior's score on
a Gaussian, a FeatureEvolution folder against its schedule, and the scales the quality benchmark
reads the faithfulness figures against (featvis.synthesis.evaluation): the judge on G's
reconstructions of real images (`reconstruction_transfer`, bounding judge transfer from above),
the diversity of real images per class (`per_class_diversity`) and the judge's misreadings."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from featvis.nets.adapters import fit_images
from featvis.nets.codes import CodeDAE, CodeStatistics
from featvis.synthesis.evaluation import pairwise_diversity
from featvis.training.prior import CodePriorModule


def dae_gaussian_score_check(dim: int = 16, samples: int = 20000, sigma: float = 0.3, epochs: int = 15,
                             seed: int = 0) -> dict[str, float]:
    """Train the DAE prior (the real module and Trainer) on a Gaussian; compare its score with the truth.

    For p = N(mu, S) the score is -S^-1 (h - mu).  A DAE trained at noise sigma
    estimates the score of p smoothed by that noise, -(S + sigma^2 I)^-1 (h - mu);
    both are reported as the mean cosine over fresh samples.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=gen, device="cpu") / dim**0.5
    covariance = mixing @ mixing.T + 0.5 * torch.eye(dim, device="cpu")
    mean = torch.randn(dim, generator=gen, device="cpu")
    chol = torch.linalg.cholesky(covariance)

    def draw(n: int) -> torch.Tensor:
        return mean + torch.randn(n, dim, generator=gen, device="cpu") @ chol.T

    train = draw(samples)
    dae = CodeDAE(dim, hidden=[128, 128], sigma=sigma)
    module = CodePriorModule(dae, CodeStatistics(dim).fit(train), encoder_record={},
                             optimizer=partial(torch.optim.Adam, lr=1e-3))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(train), batch_size=256, shuffle=True))

    test = draw(2000)
    with torch.no_grad():
        estimate = dae.eval().score(test)
    centred = test - mean
    true_score = -centred @ torch.linalg.inv(covariance)
    smoothed_score = -centred @ torch.linalg.inv(covariance + sigma**2 * torch.eye(dim, device="cpu"))
    return {"cosine_to_true_score": F.cosine_similarity(estimate, true_score, dim=1).mean().item(),
            "cosine_to_smoothed_score": F.cosine_similarity(estimate, smoothed_score, dim=1).mean().item()}


def frame_check(folder: Path, expected_steps: set[int]) -> tuple[int, int]:
    """(frames lost, frames duplicated) of a FeatureEvolution folder: lost are the (step, unit, seed)
    frames of `expected_steps` that evolution.json lacks; duplicated are frames it records twice
    plus frame images (syntheses, top-k real images) on disk that it does not name."""
    doc = json.loads((folder / "evolution.json").read_text())
    keys = [(f["step"], f["unit"], f["seed"]) for f in doc["frames"]]
    expected = {(s, u["label"], k) for s in expected_steps for u in doc["units"] for k in range(doc["seeds"])}
    named = {f["file"] for f in doc["frames"]} | {f["top_file"] for f in doc["frames"] if "top_file" in f}
    stray = [p for p in (folder / "frames").rglob("*.png") if str(p.relative_to(folder)) not in named]
    return len(expected - set(keys)), (len(keys) - len(set(keys))) + len(stray)


def per_class_diversity(features: torch.Tensor, labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """(c) for data instead of syntheses: the diversity among the first `per_class` items of each class.

    The scale that a unit's `per_class` seeds are read against: real images, or G's
    reconstructions of them, score what a sampler drawing like the data would.  One value per
    class that has `per_class` items.
    """
    groups = [features[labels == c][:per_class] for c in labels.unique().tolist()]
    groups = [g for g in groups if len(g) == per_class]
    if not groups:
        raise ValueError(f"per_class={per_class}: no class has that many items; expected at most "
                         f"{int(labels.bincount().max()) if len(labels) else 0}")
    return pairwise_diversity(torch.cat(groups), len(groups))


def judge_misreadings(per_unit: Sequence[dict[str, Any]], class_names: Sequence[str]) -> list[str]:
    """For each unit whose seeds the judge did not all read as the unit's class, its most common
    wrong reading: "blue square as blue circle 6/8".  Colour right and shape wrong, say, points at
    what G or the target gets wrong, which a transfer figure alone hides."""
    found = []
    for row in per_unit:
        read = row.get("judge_classes", [])
        wrong = Counter(c for c in read if c != row["unit_index"])
        if wrong:
            label, count = wrong.most_common(1)[0]
            found.append(f"{class_names[row['unit_index']]} as {class_names[label]} {count}/{len(read)}")
    return found


@torch.no_grad()
def reconstruction_transfer(generator: nn.Module, encoder: nn.Module, judge: nn.Module, batches: Iterable,
                            num_classes: int, max_images: int = 1000) -> dict[str, Any]:
    """The judge's accuracy on real images and on their reconstructions G(E(x)): overall and per class.

    The code methods can only show what G draws; a class whose reconstructions the judge misreads
    is one whose syntheses it will misread too, however well the sampler maximizes the unit.
    `encoder` is the `Encoder` whose codes G inverts.
    """
    judge = judge.eval()
    metrics = {name: {"overall": MulticlassAccuracy(num_classes, average="micro"),
                      "per_class": MulticlassAccuracy(num_classes, average="none")}
               for name in ("real", "reconstruction")}
    count = 0
    for images, labels in batches:
        images, labels = images[: max_images - count], labels[: max_images - count]
        codes = encoder.code(fit_images(images, encoder.image_size or images.shape[-1]))
        reconstructions = generator(codes).clamp(0, 1)
        for name, shown in (("real", images), ("reconstruction", reconstructions)):
            predicted = judge(fit_images(shown, judge.image_size)).argmax(1)
            for metric in metrics[name].values():
                metric.update(predicted, labels)
        count += len(images)
        if count >= max_images:
            break
    return {name: {"overall": float(m["overall"].compute()), "per_class": m["per_class"].compute().tolist()}
            for name, m in metrics.items()} | {"images": count}


class PlainClassifier(L.LightningModule):
    """A LightningModule as a user writes one: no featvis attribute anywhere."""

    def __init__(self, net: nn.Module, lr: float = 0.05):
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_loss", F.cross_entropy(self.net(images), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def shapes_folder(root: Path, size: int = 32, classes: int = 4, per_class: int = 12, pool: int = 15) -> Path:
    """An ImageFolder tree of shape PNGs, as a user's own small data set: the first `per_class`
    images of each of `classes` classes among `per_class * pool` drawn."""
    import numpy as np
    from PIL import Image

    from featvis.data.shapes import ShapesDataset

    data = ShapesDataset(per_class * pool, image_size=size, seed=3)
    counts: dict[int, int] = {}
    for index in range(len(data)):
        image, label = data[index]
        if label >= classes or counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / data.classes[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"{index}.png")
    return root
