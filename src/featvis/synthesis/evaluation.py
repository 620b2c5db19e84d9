"""How faithful are the syntheses?  (The survey's open problem: evaluate AM rigorously.)

(a) each synthesis's activation against the unit's top-1 and top-9 activations over real
    validation images;
(b) judge transfer: how often an independent classifier (never the target) predicts the
    unit's class for the synthesis;
(c) diversity: mean pairwise distance among a unit's seeds in the judge's feature space;
(d) realism: KID (and FID when there are more syntheses than feature dimensions) between
    syntheses and real images in the judge's feature space, via torchmetrics.

`grid_artifact_score` measures what an up-sampling generator prints: the spectral power at its
periods relative to the neighbouring frequencies (about 1 for natural images).

`path_similarity` is the activation-path check of Geirhos et al. ("Don't trust your eyes", 2024):
a synthesis that drives the unit through other channels than natural images do is suspect.

`reconstruction_transfer` bounds (b) for the code methods from above: how often the judge
recognises G's reconstructions G(E(x)) of real images; `per_class_diversity` puts (c) on a
scale: the diversity of as many real images (or their reconstructions) per class as seeds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from featvis.nets.adapters import fit_images
from featvis.nets.layers import tap
from featvis.synthesis.objectives import Term, reduce_units, term_values


class JudgeFeatures(nn.Module):
    """A judge classifier read at one layer, resizing any input to its size: (N, d) features."""

    def __init__(self, judge: nn.Module, layer: str = "fc7"):
        super().__init__()
        self.layer = layer
        self.features = tap(judge, [layer]).eval()
        self.image_size = judge.image_size

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        return self.features(fit_images(images, self.image_size))[self.layer].flatten(1)


@torch.no_grad()
def real_top_activations(target: nn.Module, terms: list[Term], batches: Iterable, spatial: str = "center",
                         max_images: int = 2000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per term: top-1 and mean top-9 activation over real images, and the images seen."""
    layers = sorted({t.layer for t in terms})
    taps = tap(target, layers).eval()
    columns: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []
    count = 0
    for batch in batches:
        images = fit_images(batch[0], target.image_size)
        acts = taps(images)
        prefix = getattr(target, "prefix_tokens", 0)
        columns.append(torch.stack([term_values(t, acts[t.layer], spatial, prefix) for t in terms], dim=1))
        seen.append(images)
        count += len(images)
        if count >= max_images:
            break
    values = torch.cat(columns)[:max_images]
    top = values.topk(min(9, len(values)), dim=0).values
    return top[0], top.mean(0), torch.cat(seen)[:max_images]


def _ranks(values: torch.Tensor) -> torch.Tensor:
    return values.argsort(-1).argsort(-1).float()


def spearman(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Rank correlation of each row of `values` (N, C) with `reference` (C,): (N,)."""
    ranks, ref = _ranks(values), _ranks(reference)
    ranks, ref = ranks - ranks.mean(-1, keepdim=True), ref - ref.mean()
    return (ranks * ref).sum(-1) / (ranks.norm(dim=-1) * ref.norm()).clamp_min(1e-12)


@torch.no_grad()
def path_similarity(target: nn.Module, terms: list[Term], images: torch.Tensor, seeds: int, real_batches: Iterable,
                    layers: Sequence[str], class_units: Sequence[bool], spatial: str = "center",
                    max_images: int = 2000, top_k: int = 9) -> dict[str, Any]:
    """Per unit and layer: the Spearman correlation over the layer's channels (each averaged over
    space) between a synthesis's activations and the mean activation of the unit's real reference
    images, averaged over the unit's seeds.  The reference is the unit's class's images where
    `class_units[u]` (a logits unit of the real data's classes), else its `top_k` real images by
    activation.  The real images are split in two: the reference comes from one half, and the
    other half's class (or top-k) images, scored the same way, give the ceiling (`real`)."""
    wanted = sorted(set(layers) | {t.layer for t in terms})
    taps = tap(target, wanted).eval()
    channels: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    unit_values, labels, count = [], [], 0
    for batch in real_batches:
        acts = taps(fit_images(batch[0], target.image_size))
        for name in layers:
            channels[name].append(reduce_units(acts[name], "mean"))
        prefix = getattr(target, "prefix_tokens", 0)
        unit_values.append(torch.stack([term_values(t, acts[t.layer], spatial, prefix) for t in terms], 1))
        labels.append(batch[1])
        count += len(batch[0])
        if count >= max_images:
            break
    real = {name: torch.cat(v)[:max_images] for name, v in channels.items()}
    values, labels = torch.cat(unit_values)[:max_images], torch.cat(labels)[:max_images]
    halves = torch.arange(len(labels), device=labels.device) % 2 == 0  # reference half, and the hold-out
    made = taps(fit_images(images, target.image_size))
    made = {name: reduce_units(made[name], "mean").view(len(terms), seeds, -1) for name in layers}
    per_unit, ceiling = [], []
    for u, term in enumerate(terms):
        rows, held = {}, {}
        for half, chosen in ((True, rows), (False, held)):
            mask = halves == half
            if class_units[u]:
                members = mask & (labels == term.unit)
            else:
                order = values[:, u].masked_fill(~mask, -torch.inf).topk(min(top_k, int(mask.sum()))).indices
                members = torch.zeros_like(mask).index_fill_(0, order, True)
            chosen["members"] = members
        for name in layers:
            reference = real[name][rows["members"]].mean(0)
            rows[name] = float(spearman(made[name][u], reference).mean())
            held[name] = float(spearman(real[name][held["members"]], reference).mean()) \
                if held["members"].any() else float("nan")
        per_unit.append({name: rows[name] for name in layers})
        ceiling.append({name: held[name] for name in layers})

    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        return {name: float(torch.tensor([r[name] for r in rows], device="cpu").nanmean()) for name in layers}

    return {"per_unit": per_unit, "by_layer": mean(per_unit), "real_by_layer": mean(ceiling)}


def grid_artifact_score(images: torch.Tensor, periods: Sequence[int] = (2, 4, 8, 16)) -> float:
    """Spectral power at the periods of 2x up-sampling over that of the neighbouring frequencies.

    A 2x up-sampling stage that does not hide its pixel grid leaves a pattern of period 2 in its
    output, of period 2, 4, 8, ... pixels in the final image: peaks of the power spectrum at the
    frequencies S/p on both axes and the diagonal.  The score is the geometric mean over those
    peaks of the power at the peak over the mean power of the 8 bins around it, with the spectrum
    averaged over the batch (grey levels, each image's mean removed): about 1 where the spectrum
    is smooth, as for natural images, and far above 1 for a grid.
    """
    size = images.shape[-1]
    grey = images.float().mean(1)
    grey = grey - grey.mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(grey).abs().square().mean(0)
    floor = power.mean() * 1e-6 + 1e-30  # keeps a blank image's 0 / 0 at 1
    ratios = []
    for period in (p for p in periods if 2 <= p <= size // 2):
        k = round(size / period)
        peaks, around = [], []
        for fy, fx in ((0, k), (k, 0), (k, k)):
            peaks.append(power[fy, fx])
            around += [power[(fy + dy) % size, (fx + dx) % size] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
        ratios.append((torch.stack(peaks).mean() + floor) / (torch.stack(around).mean() + floor))
    if not ratios:
        raise ValueError(f"grid_artifact_score: images of {size} px; expected at least 4 px")
    return float(torch.stack(ratios).max())


def pairwise_diversity(features: torch.Tensor, groups: int) -> torch.Tensor:
    """Mean pairwise L2 distance within each of `groups` consecutive equal-size groups."""
    per_group = features.view(groups, -1, features.shape[1])
    n = per_group.shape[1]
    if n < 2:
        return torch.zeros(groups, device=features.device)
    distances = torch.cdist(per_group, per_group)
    return distances.sum((1, 2)) / (n * (n - 1))


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
def evaluate(target: nn.Module, judge: nn.Module | None, terms: list[Term], images: torch.Tensor,
             activations: torch.Tensor, seeds: int, real_batches: Iterable | None, spatial: str = "center",
             judge_layer: str = "fc7", judge_classes_match: bool = False, max_real: int = 2000,
             path_layers: Sequence[str] = (), class_units: Sequence[bool] | None = None) -> dict[str, Any]:
    """The figures (a)-(d) for syntheses `images` (units x seeds, unit-major) of `terms` (one per unit),
    and with `path_layers` and real images the activation-path check (`path_similarity`)."""
    units = len(terms)
    report: dict[str, Any] = {"per_unit": [{"unit_index": t.unit, "layer": t.layer} for t in terms],
                              "grid_artifact": grid_artifact_score(images)}
    per_sample = activations.view(units, seeds)
    medians = per_sample.median(1).values
    real_images = None
    if real_batches is not None:
        top1, top9, real_images = real_top_activations(target, terms, real_batches, spatial, max_real)
        beats = medians > top1
        for u, row in enumerate(report["per_unit"]):
            row.update(real_top1=float(top1[u]), real_top9_mean=float(top9[u]),
                       median_activation=float(medians[u]), beats_real_top1=bool(beats[u]))
        report["beats_real_top1"] = float(beats.float().mean())
        report["real_grid_artifact"] = grid_artifact_score(fit_images(real_images, images.shape[-1]))
        if path_layers:
            path = path_similarity(target, terms, images, seeds, real_batches, path_layers,
                                   class_units or [False] * units, spatial, max_real)
            for row, by_layer in zip(report["per_unit"], path["per_unit"]):
                row["path_similarity"] = by_layer
            report["path_similarity"], report["real_path_similarity"] = path["by_layer"], path["real_by_layer"]
            for key in ("path_similarity", "real_path_similarity"):
                report[f"{key}_mean"] = float(torch.tensor(list(report[key].values()), device="cpu").nanmean())
    if judge is None:
        return report

    judge = judge.eval()
    if judge_classes_match:
        predicted = judge(fit_images(images, judge.image_size)).argmax(1).view(units, seeds)
        wanted = torch.tensor([t.unit for t in terms], device=predicted.device).view(units, 1)
        transfer = (predicted == wanted).float()
        for u, row in enumerate(report["per_unit"]):
            row["judge_transfer"] = float(transfer[u].mean())
            row["judge_classes"] = predicted[u].tolist()  # what the judge read each seed as
        report["judge_transfer"] = float(transfer.mean())
    features = JudgeFeatures(judge, judge_layer)
    diversity = pairwise_diversity(features(images), units)
    for u, row in enumerate(report["per_unit"]):
        row["diversity"] = float(diversity[u])
    report["diversity"] = float(diversity.mean())

    if real_images is not None and len(real_images) >= 2 and len(images) >= 2:
        subset = min(len(images), len(real_images), 100)
        kid = KernelInceptionDistance(feature=features, subset_size=subset, subsets=20)
        kid.update(real_images, real=True)
        kid.update(images, real=False)
        kid_mean, kid_std = kid.compute()
        report["kid_mean"], report["kid_std"] = float(kid_mean), float(kid_std)
        dims = features(images[:1]).shape[1]
        if len(images) > dims and len(real_images) > dims:
            fid = FrechetInceptionDistance(feature=features)
            fid.update(real_images, real=True)
            fid.update(images, real=False)
            report["fid"] = float(fid.compute())
        else:
            report["fid"] = None  # fewer samples than feature dimensions: the covariance is singular
    return report


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
