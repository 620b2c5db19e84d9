"""`featvis.synthesize`: from a target network to preferred images of its units, in one call.

Every synthesis goes through here (visualize.py, `mode=evolution` and the FeatureEvolution
callback), and this is the one place that builds a Sampler:

    units -> objectives -> sampler -> starting points -> run -> per-image rows -> figures

    from featvis import synthesize
    found = synthesize(target, ["red circle", 4], "dgn_am", generator="G.ckpt", seeds=4)
    found.images        # (units x seeds, 3, S, S) in [0, 1], unit-major
    found.rows[0]       # unit, layer, seed, last/best objective, activation, probability, rank

The caller's networks, gradients and random streams are left as they were.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featvis.checkpoints import load_classifier
from featvis.errors import ConfigError
from featvis.nets.adapters import fit_images
from featvis.nets.layers import frozen, layer_names
from featvis.synthesis.evaluation import evaluate
from featvis.synthesis.filters import filter_matches
from featvis.nets.targets import as_target
from featvis.synthesis.methods import (Method, Unit, layer_shapes, load_method, method_config, needs_real_spectrum,
                                      units_of)
from featvis.synthesis.objectives import ObjectiveBatch, term_values
from featvis.synthesis.parametrizations import MACO_SPECTRUM_IMAGES
from featvis.synthesis.real import RealImages
from featvis.synthesis.sampler import Sampler, SamplerResult, SamplerSettings
from featvis.synthesis.settings import SynthesisSpec
from featvis.synthesis.spaces import multifaceted_starts

# A tile differs from its start image by less than this in mean |pixel| (or its pixels spread less):
# no gradient moved it, so it shows no feature.
BLANK_TOLERANCE = 2 / 255


def blank_tiles(images: torch.Tensor, starts: torch.Tensor, tolerance: float = BLANK_TOLERANCE) -> torch.Tensor:
    """(B,) flags: images still (nearly) their start image, or (nearly) one flat colour."""
    unchanged = (images - starts).abs().flatten(1).mean(1) < tolerance
    flat = images.flatten(1).std(1) < tolerance
    return unchanged | flat


@dataclass
class Judge:
    """An independent classifier that scores syntheses: judge transfer, and its feature space for
    diversity and KID/FID."""

    net: nn.Module
    class_names: list[str]
    feature_layer: str = "fc7"


def load_judge(ckpt: str, feature_layer: str = "fc7", target: nn.Module | None = None) -> Judge:
    """A judge from a classifier checkpoint; never the target's own weights."""
    net, record = load_classifier(ckpt)
    if target is not None and net.spec == getattr(target, "spec", None) and all(
            torch.equal(a, b.to(a.device)) for a, b in zip(net.state_dict().values(), target.state_dict().values())):
        raise ConfigError(f"judge.ckpt={ckpt} has the target's own weights; expected an independent "
                          "classifier (another seed or width)")
    if feature_layer not in layer_names(net):
        raise ConfigError(f"judge.feature_layer={feature_layer!r} not found in the judge; expected one of "
                          f"{', '.join(layer_names(net))}")
    return Judge(net, list(record["class_names"]), feature_layer)


@dataclass
class Synthesis:
    """What `synthesize` found: the sampler's result, one row per image and the figures."""

    units: list[Unit]
    seeds: int
    keep: str
    settings: SamplerSettings
    result: SamplerResult
    rows: list[dict[str, Any]]             # unit-major: image b is unit b // seeds, seed b % seeds
    evaluation: dict[str, Any] | None      # featvis.synthesis.evaluation.evaluate's report, when asked

    @property
    def images(self) -> torch.Tensor:
        """The images shown: the best iterate (by objective) or the last, as `keep` says."""
        return self.result.best if self.keep == "best" else self.result.last


def synthesize(target: nn.Module, units: Any, method: str | Mapping[str, Any] | Method,
               spec: SynthesisSpec | None = None, *, judge: Judge | None = None, real: Iterable | None = None,
               start: torch.Tensor | None = None, scorer: Any = None, progress: bool = False,
               **changes: Any) -> Synthesis:
    """Synthesize `units` x `seeds` preferred images of `target`'s units with `method`, as `spec`
    (a SynthesisSpec: conf/synthesis/default.yaml's keys) says, with `changes` to it as keywords
    (`seeds=2, steps=50, generator="G.ckpt"`).

    target: a featvis network, or any nn.Module wrapped with its input contract
        (featvis.as_target(module, image_size=..., mean=..., std=...)).
    units: a spec (indices, class names, sums like "3+7"; "layer:unit" strings or {layer: [...]})
        read against the spec's `layer` (default: the target's output, `logits_layer`) and
        `class_names` (default: the target's), objective terms (featvis.direction, featvis.match,
        featvis.custom), or parsed `Unit`s; None: the spec's units.
    method: a method's name ("dgn_am": conf/method/dgn_am.yaml), its config (a mapping, e.g.
        `method_config("ppgn", "step.eps3=0.1")`), with the spec's `generator`/`prior` naming the
        checkpoints it needs (and, for MACO without a saved spectrum, `real`); or a loaded `Method`
        (load_method: load once to synthesize many times).
    judge: asked about every single-class unit of `logits_layer` when its classes are the
        target's (each row's `judge_correct`).
    real: real validation images, a featvis.synthesis.real.RealImages pool or batches (images,
        labels), for the top-k comparison and KID; the spec's `evaluation` (default: when a judge or
        real images are given) adds featvis.synthesis.evaluation's report, with the activation-path
        check at `path_layers`; `real_classes` (the real data's class names) lets it compare a
        class unit with its class's real images rather than with its top-k.
    start: the starting points, one row per image (default: the method's, per seed).
    scorer: for a black-box method (one with a `search` block: dgn_cmaes, dgn_ga), what the search
        maximizes: a callable `(images, units) -> (N,)` (featvis.blackbox.search); default: the
        target's units read from forward passes only.  The figures are still the target's.
    """
    spec = (spec or SynthesisSpec()).but(**changes)
    seeds, steps, spatial, keep, max_real = spec.seeds, spec.steps, spec.spatial, spec.keep, spec.max_real
    units = spec.units if units is None else units
    target = as_target(target)
    logits_layer = spec.logits_layer or logits_layer_of(target)
    class_names = list(getattr(target, "class_names", []) if spec.class_names is None else spec.class_names)
    if isinstance(method, str):
        method = method_config(method)
    # The real images, read once for MACO's spectrum, the multifaceted starts and the evaluation.
    spectrum = not isinstance(method, Method) and needs_real_spectrum(method)
    real = RealImages.of(real, target.image_size, max(max_real, MACO_SPECTRUM_IMAGES if spectrum else 0))
    if not isinstance(method, Method):
        method = load_method(method, spec.generator.ckpt, spec.prior.ckpt, target.image_size, real=real)
    if not (isinstance(units, list) and units and all(isinstance(u, Unit) for u in units)):
        units, _ = units_of(target, units, spec.layer or logits_layer, class_names, spatial, spec.pre_relu)
    device = next(target.parameters()).device
    multifaceted = start is None and getattr(method.space, "init", None) == "multifaceted"
    if multifaceted and real is None:
        raise ConfigError("method.space.init=multifaceted needs real images; expected evaluation.real_images > 0 "
                          "(or real= in Python)")
    # The judge can only be asked for a unit's class when its classes are the target's.
    asked = judge is not None and judge.class_names == class_names
    devices = [device] if device.type == "cuda" else []
    judge_net = judge.net if judge is not None else None
    # Every network in eval mode without parameter grads while it is read (the caller's modes, flags and
    # BN statistics come back as they were), the global random streams forked (a DataLoader draws
    # from them when iterated), gradients on even under inference mode.
    with (torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=devices),
          frozen(target, judge_net, *method.modules())):
        for module in method.modules():
            module.to(device)
        if multifaceted:
            values, images = unit_values(target, units, real, spatial, max_real)
            start = multifaceted_starts(method.space, values, images, seeds, method.space.top_k)
        if start is None:
            start = method.start(len(units), seeds)
        if len(start) != len(units) * seeds:
            raise ConfigError(f"start has {len(start)} rows; expected one per image ({len(units)} units x "
                              f"{seeds} seeds)")
        sampler = sampler_for(target, units, method, seeds=seeds, steps=steps, record_every=spec.record_every,
                              spatial=spatial, performance=spec.performance)
        objectives = sampler.objectives
        z0 = start.to(device)
        if method.search is not None:
            from featvis.blackbox.search import TargetScorer, search

            result = search(method.search, method.space, scorer or TargetScorer(target, units, method.objective, spatial),
                            z0, torch.arange(len(units), device="cpu").repeat_interleave(seeds), method.operators,
                            target.image_size, seed=spec.noise_seed, progress=progress,
                            record_every=spec.record_every)
        else:
            result = sampler.run(z0, seed=spec.noise_seed, progress=progress)
        with torch.no_grad(), frozen(sampler.taps):
            metrics = {kind: objectives.to(device).unit_metrics(sampler.taps(images.to(device)))
                       for kind, images in (("last", result.last), ("best", result.best))}
            shown = result.best if keep == "best" else result.last
            blank = blank_tiles(shown, sampler.render(z0).cpu())
            judged = None
            if asked:
                judged = judge_net.to(device)(fit_images(shown.to(device), judge_net.image_size)).argmax(1).cpu()
        matches = filter_matches(target, units, shown, seeds)  # units affine in the image: their filter
        rows = []
        for b in range(len(units) * seeds):
            unit = units[b // seeds]
            row = {"unit": unit.label, "layer": unit.layer, "seed": b % seeds,
                   "terms": [t.record() for t in unit.terms],
                   "last": {"objective": float(result.last_value[b]), **_metric_row(metrics["last"], b)},
                   "best": {"objective": float(result.best_value[b]), "step": int(result.best_step[b]),
                            **_metric_row(metrics["best"], b)},
                   "blank": bool(blank[b])}
            if judged is not None and is_class_unit(unit, logits_layer):
                row["judge_correct"] = bool(judged[b] == unit.terms[0].unit)
            row.update(matches[b] or {})
            rows.append(row)
        found = Synthesis(units, seeds, keep, sampler.settings, result, rows, None)
        evaluated = spec.evaluation if spec.evaluation is not None else (judge is not None or real is not None)
        if evaluated and any(t.kind != "unit" for u in units for t in u.terms):
            found.evaluation = {"skipped": "the faithfulness figures compare units with real images; this "
                                           "synthesis has directions, matches or callables"}
        elif evaluated:
            class_units = [is_class_unit(u, logits_layer) for u in units]
            same_data = spec.real_classes is not None and list(spec.real_classes) == class_names
            found.evaluation = _evaluate(target, found, metrics[keep], judge, asked and all(class_units), real,
                                         spatial, max_real, spec.path_layers, [same_data and c for c in class_units])
    return found


def sampler_for(target: nn.Module, units: list[Unit], method: Method, *, seeds: int = 1, steps: int | None = None,
                record_every: int = 0, spatial: str = "center",
                performance: Mapping[str, Any] | None = None) -> Sampler:
    """The Sampler for `units` x `seeds` (unit-major); building one checks everything the sampler
    would refuse, so a caller can check a synthesis before it writes anything."""
    target = as_target(target)
    layers = {t.layer for u in units for t in u.terms}
    objective = method.objective
    if objective.diversity and objective.diversity_layer in layer_names(target):
        layers.add(objective.diversity_layer)
    shapes = layer_shapes(target, sorted(layers))
    objectives = ObjectiveBatch([u.terms for u in units for _ in range(seeds)], shapes,
                                mode=objective.kind, spatial=spatial, selectivity=objective.selectivity,
                                diversity=objective.diversity, diversity_layer=objective.diversity_layer, group=seeds,
                                prefix_tokens=getattr(target, "prefix_tokens", 0))
    return Sampler(target, objectives, method.settings(steps, record_every), **method.sampler_kwargs(),
                   **(performance or {}))


def unit_values(target: nn.Module, units: list[Unit], real: Any, spatial: str,
                max_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit's objective (its terms' weighted sum, raw) on the first `max_images` real images (a
    RealImages pool, or batches (images, labels)): (N, units), and the images."""
    pool = RealImages.of(real, target.image_size, max_images).first(max_images)
    prefix = getattr(target, "prefix_tokens", 0)
    values = pool.read(target, {t.layer for u in units for t in u.terms}, lambda acts: torch.stack(
        [sum(t.weight * term_values(t, acts[t.layer], spatial, prefix) for t in u.terms) for u in units], 1).cpu())
    return torch.cat(values), pool.floats()


def is_class_unit(unit: Unit, logits_layer: str) -> bool:
    """One unit of the logits layer: a class, whose images a judge can name."""
    return len(unit.terms) == 1 and unit.layer == logits_layer and unit.terms[0].kind == "unit"


def logits_layer_of(target: nn.Module) -> str:
    """The layer whose units are the target's classes: what it declares (featvis's networks: fc8; a
    Target: its output, `logits`)."""
    return getattr(target, "logits_layer", "fc8")


def _metric_row(metrics: dict[str, torch.Tensor], b: int) -> dict[str, float | int | None]:
    """A row's figures; probability and rank are None for terms that have neither (directions,
    matches, callables)."""
    probability, rank = float(metrics["probability"][b]), int(metrics["rank"][b])
    return {"activation": float(metrics["activation"][b]),
            "probability": None if math.isnan(probability) else probability, "rank": None if rank < 0 else rank}


def _evaluate(target: nn.Module, found: Synthesis, metrics: dict[str, torch.Tensor], judge: Judge | None,
              classes_match: bool, real: Iterable | None, spatial: str, max_real: int,
              path_layers: Sequence[str], class_units: list[bool]) -> dict[str, Any]:
    """Faithfulness figures of the shown images, on the CPU (see featvis.synthesis.evaluation);
    judge transfer only when every unit is a single class the judge knows (`classes_match`)."""
    units = found.units
    device = next(target.parameters()).device
    try:
        report = evaluate(target.cpu(), judge.net.cpu() if judge else None, [u.terms[0] for u in units],
                          found.images, metrics["activation"], found.seeds, real, spatial=spatial,
                          judge_layer=judge.feature_layer if judge else "fc7",
                          judge_classes_match=classes_match, max_real=max_real, path_layers=path_layers,
                          class_units=class_units)
    finally:
        target.to(device)
    for row, unit in zip(report["per_unit"], units):
        row["unit"] = unit.label
    return report
