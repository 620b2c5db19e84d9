"""How faithful are the syntheses?  (The survey's open problem: evaluate AM rigorously.)

(a) each synthesis's activation against the unit's top-1 and top-9 activations over real
    validation images;
(b) judge transfer: how often an independent classifier (never the target) predicts the
    unit's class for the synthesis;
(c) diversity: mean pairwise distance among a unit's seeds in the judge's feature space, beside
    the same figure for as many real images of the unit's class (`real_diversity`; class units
    only): a sampler whose chains end at one image scores a small fraction of it;
(d) realism: KID (and FID when there are more syntheses than feature dimensions) between
    syntheses and real images in the judge's feature space, via torchmetrics.

`grid_artifact_score` measures what an up-sampling generator prints: the spectral power at its
periods relative to the neighbouring frequencies (about 1 for natural images).

`path_similarity` is the activation-path check of Geirhos et al. ("Don't trust your eyes", 2024):
a synthesis that drives the unit through other channels than natural images do is suspect.

The real images are a `featvis.synthesis.real.RealImages` pool (or batches, read into one); the
target's activations on it are read once for (a) and the path check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from featvis.nets.adapters import fit_images
from featvis.nets.layers import tap
from featvis.synthesis.objectives import Term, reduce_units, term_values
from featvis.synthesis.real import RealImages


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
def real_activations(target: nn.Module, terms: list[Term], real: Any, spatial: str = "center",
                     layers: Sequence[str] = (), max_images: int = 2000
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], RealImages]:
    """On the first `max_images` real images (a RealImages pool, or batches (images, labels)): each
    term's value (N, terms), each of `layers`' channels averaged over space (N, C), and the pool."""
    pool = RealImages.of(real, target.image_size, max_images).first(max_images)
    prefix = getattr(target, "prefix_tokens", 0)
    parts = pool.read(target, {t.layer for t in terms} | set(layers), lambda acts: (
        torch.stack([term_values(t, acts[t.layer], spatial, prefix) for t in terms], 1),
        {name: reduce_units(acts[name], "mean") for name in layers}))
    channels = {name: torch.cat([part[1][name] for part in parts]) for name in layers}
    return torch.cat([part[0] for part in parts]), channels, pool


def _top(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per term: the top-1 and the mean top-9 value over the real images."""
    top = values.topk(min(9, len(values)), dim=0).values
    return top[0], top.mean(0)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    return values.argsort(-1).argsort(-1).float()


def spearman(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Rank correlation of each row of `values` (N, C) with `reference` (C,): (N,)."""
    ranks, ref = _ranks(values), _ranks(reference)
    ranks, ref = ranks - ranks.mean(-1, keepdim=True), ref - ref.mean()
    return (ranks * ref).sum(-1) / (ranks.norm(dim=-1) * ref.norm()).clamp_min(1e-12)


@torch.no_grad()
def path_similarity(target: nn.Module, terms: list[Term], images: torch.Tensor, seeds: int, values: torch.Tensor,
                    real: dict[str, torch.Tensor], labels: torch.Tensor | None, class_units: Sequence[bool],
                    top_k: int = 9) -> dict[str, Any]:
    """Per unit and layer: the Spearman correlation over the layer's channels (each averaged over
    space) between a synthesis's activations and the mean activation of the unit's real reference
    images, averaged over the unit's seeds; `values`, `real` and `labels` are the real images'
    (real_activations: each term's value, each layer's channels, the pool's labels).  The
    reference is the unit's class's images where `class_units[u]` (a logits unit of the real
    data's classes), else its `top_k` real images by value.  The real images are split in two: the
    reference comes from one half, and the other half's class (or top-k) images, scored the same
    way, give the ceiling (`real_by_layer`)."""
    layers = list(real)
    if labels is None and any(class_units):
        raise ValueError("the path check of a class unit needs the real images' labels: batches of (images, labels)")
    halves = torch.arange(len(values), device=values.device) % 2 == 0  # reference half, and the hold-out
    made = tap(target, layers).eval()(fit_images(images, target.image_size))
    made = {name: reduce_units(made[name], "mean").view(len(terms), seeds, -1) for name in layers}
    per_unit, ceiling = [], []
    for u, term in enumerate(terms):
        rows, held = {}, {}
        for half, chosen in ((True, rows), (False, held)):
            mask = halves == half
            if class_units[u]:
                members = mask & (labels.to(mask.device) == term.unit)
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


@torch.no_grad()
def evaluate(target: nn.Module, judge: nn.Module | None, terms: list[Term], images: torch.Tensor,
             activations: torch.Tensor, seeds: int, real_batches: Any, spatial: str = "center",
             judge_layer: str = "fc7", judge_classes_match: bool = False, max_real: int = 2000,
             path_layers: Sequence[str] = (), class_units: Sequence[bool] | None = None) -> dict[str, Any]:
    """The figures (a)-(d) for syntheses `images` (units x seeds, unit-major) of `terms` (one per unit),
    and with `path_layers` and real images (`real_batches`: a RealImages pool, or batches (images,
    labels)) the activation-path check (`path_similarity`)."""
    units = len(terms)
    report: dict[str, Any] = {"per_unit": [{"unit_index": t.unit, "layer": t.layer} for t in terms],
                              "grid_artifact": grid_artifact_score(images)}
    per_sample = activations.view(units, seeds)
    medians = per_sample.median(1).values
    real_images = real_labels = None
    if real_batches is not None:
        values, channels, pool = real_activations(target, terms, real_batches, spatial, path_layers, max_real)
        (top1, top9), real_images, real_labels = _top(values), pool.floats(), pool.labels
        beats = medians > top1
        for u, row in enumerate(report["per_unit"]):
            row.update(real_top1=float(top1[u]), real_top9_mean=float(top9[u]),
                       median_activation=float(medians[u]), beats_real_top1=bool(beats[u]))
        report["beats_real_top1"] = float(beats.float().mean())
        report["real_grid_artifact"] = grid_artifact_score(fit_images(real_images, images.shape[-1]))
        if path_layers:
            path = path_similarity(target, terms, images, seeds, values, channels, pool.labels,
                                   class_units or [False] * units)
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
    if real_labels is not None and class_units and any(class_units) and seeds >= 2:
        # as many real images of each class unit's class as it has seeds, in the same space
        classes = [t.unit for t, is_class in zip(terms, class_units) if is_class]
        groups = [real_images[real_labels == c][:seeds] for c in classes]
        if all(len(g) == seeds for g in groups):
            real_diversity = pairwise_diversity(features(torch.cat(groups)), len(groups))
            for row, value in zip([r for r, c in zip(report["per_unit"], class_units) if c], real_diversity):
                row["real_diversity"] = float(value)
            report["real_diversity"] = float(real_diversity.mean())
            mine = diversity[torch.tensor(list(class_units), device=diversity.device)].mean()
            report["diversity_vs_real"] = float(mine / real_diversity.mean().clamp_min(1e-12))

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
