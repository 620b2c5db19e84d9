"""A black-box search run: render every run's candidates, score them in one call, tell the strategy.

The scorer is any callable `scorer(images, units) -> (N,) responses` for images (N, 3, S, S) in
[0, 1], where `units[n]` is the index of the unit image n is meant for; featvis never
differentiates it.  `TargetScorer` makes units of any featvis target such a scorer (forward passes
only), `NoisyNeuron` turns a scorer into a simulated recorded neuron (Poisson spike counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from featvis.devices import to_host
from featvis.errors import ConfigError
from featvis.nets.adapters import fit_images
from featvis.nets.layers import frozen, tap
from featvis.synthesis.objectives import ObjectiveBatch
from featvis.synthesis.sampler import SamplerResult
from featvis.synthesis.settings import ObjectiveSettings

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TargetScorer:
    """Units of a target network as a black box: each image's objective for its unit, from
    forward passes under no_grad (the objective settings of the method: raw, softmax, selectivity)."""

    def __init__(self, target: nn.Module, units: Sequence[Any], objective: ObjectiveSettings | None = None,
                 spatial: str = "center"):
        from featvis.nets.targets import as_target
        from featvis.synthesis.methods import layer_shapes

        self.target = as_target(target)
        self.units = list(units)
        self.objective = objective or ObjectiveSettings()
        self.spatial = spatial
        layers = sorted({t.layer for u in self.units for t in u.terms})
        self.taps = tap(self.target, layers)
        self.shapes = layer_shapes(self.target, layers)
        self._batches: dict[tuple[int, ...], ObjectiveBatch] = {}  # one per layout of units, built once

    def objectives(self, units: torch.Tensor) -> ObjectiveBatch:
        key = tuple(units.tolist())
        if key not in self._batches:
            o = self.objective
            self._batches[key] = ObjectiveBatch([self.units[u].terms for u in key], self.shapes, mode=o.kind,
                                                spatial=self.spatial, selectivity=o.selectivity,
                                                prefix_tokens=getattr(self.target, "prefix_tokens", 0))
        return self._batches[key]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        device = next(self.target.parameters()).device
        with frozen(self.target, self.taps):
            acts = self.taps(fit_images(images.to(device), self.target.image_size))
            return self.objectives(units).to(device)(acts).float()


class NoisyNeuron:
    """A simulated recorded neuron: the scorer's response, rectified and times `gain`, is a firing
    rate in spikes per presentation, and each presentation returns a Poisson count of it."""

    def __init__(self, scorer: Scorer, gain: float = 1.0, seed: int = 0):
        if not gain > 0:
            raise ConfigError(f"gain={gain}; expected a positive number of spikes per unit of response")
        self.scorer, self.gain = scorer, float(gain)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def __call__(self, images: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        rate = self.scorer(images, units).float().cpu().clamp_min(0) * self.gain
        return torch.poisson(rate, generator=self.generator)


def dimension_scale(space: nn.Module, dim: int) -> torch.Tensor:
    """Each dimension's natural size, the unit of a search's step: a code unit's std over real codes
    (floored at a thousandth of their rms, so a unit that never fires can still move); 1 in other
    spaces."""
    stats = getattr(space, "stats", None)
    if stats is None:
        return torch.ones(dim, device="cpu")
    std = stats.std.detach().float().cpu().flatten()
    return std.clamp_min(1e-3 * float(std.square().mean().sqrt()) + 1e-12)


def space_sampler(space: nn.Module) -> Callable[[int, torch.Generator], torch.Tensor]:
    """(n, generator) -> n flat draws from the space's starting distribution."""
    return lambda n, generator: torch.cat([space.start(generator) for _ in range(n)]).flatten(1)


def repaired(x: torch.Tensor, shape: torch.Size, operators: Sequence[Any], step: int) -> torch.Tensor:
    """Candidates (..., D) as z of `shape`, through the method's operators (DGN-AM's clip): what is
    rendered, and what the strategy learns from."""
    z = x.reshape(-1, *shape)
    for operator in operators:
        z = operator(z, step)
    return z


def best_kept(best_value: torch.Tensor, best_z: torch.Tensor, candidates: torch.Tensor,
              values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each run's best response and candidate so far, after a generation (candidates (R, lambda, D),
    values (R, lambda)); and which runs improved."""
    top, index = values.max(1)
    improved = top > best_value
    chosen = candidates[torch.arange(len(index), device=index.device), index]
    return torch.where(improved, top, best_value), torch.where(improved[:, None], chosen, best_z), improved


@dataclass
class SearchResult(SamplerResult):
    """The sampler's result fields (best: the best-scored candidate; last: the search's final
    estimate, CMA-ES's mean), and the search's course."""

    evaluations: list[int] = field(default_factory=list)  # per run, after each generation
    best_so_far: torch.Tensor | None = None                # (generations, runs): the best response by then


def search_record(strategy: Any, result: SearchResult) -> dict[str, Any]:
    """What metrics.json says of a search: the strategy and its settings, the evaluations spent per
    run, and each run's best response after each generation (unit-major, like the results)."""
    from dataclasses import asdict

    return {"strategy": type(strategy).__name__, **asdict(strategy),
            "population": result.evaluations[0] if result.evaluations else None,
            "generations": len(result.evaluations), "evaluations": result.evaluations[-1] if result.evaluations else 0,
            "best_so_far": result.best_so_far.T.tolist() if result.best_so_far is not None else []}


def generations_of(strategy: Any, dim: int) -> int:
    """Generations that fit the budget of `strategy.evaluations` image evaluations per run."""
    return max(1, strategy.evaluations // strategy.size(dim))


def search(strategy: Any, space: nn.Module, scorer: Scorer, start: torch.Tensor, units: torch.Tensor,
           operators: Sequence[Any] = (), target_size: int | None = None, seed: int = 0, progress: bool = False,
           record_every: int = 0, batch_size: int | None = None,
           on_generation: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> SearchResult:
    """Maximize `scorer` over each row of `start` (one run each; run r for unit `units[r]`) with
    `strategy` in `space`, for `strategy.evaluations` evaluations per run.  `operators` (the
    method's, e.g. DGN-AM's clip to the real codes' range) repair every candidate before it is
    rendered, and the strategy learns from the repaired ones.  `on_generation(evaluations, best_z,
    best_value)`, when given, sees each run's best candidate after every generation (e.g. to keep the
    best image at several budgets from one run).  `batch_size`: images rendered and scored per call
    (None: a generation at once on a GPU, 64 on the CPU, where larger batches fall out of its caches)."""
    shape = start.shape[1:]
    flat = start.detach().flatten(1).float()
    runs, dim = flat.shape
    device = flat.device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sample = space_sampler(space)
    state = strategy.init(flat, dimension_scale(space, dim).to(device), sample, generator)
    size = strategy.size(dim)
    if batch_size is None:
        batch_size = runs * size if device.type == "cuda" else 64
    image_units = units.to(device).repeat_interleave(size)

    def repair(x: torch.Tensor, step: int) -> torch.Tensor:
        return repaired(x, shape, operators, step)

    def render(z: torch.Tensor) -> torch.Tensor:
        images = space(z)
        return (fit_images(images, target_size) if target_size else images).clamp(0, 1)

    def score(z: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        values = [scorer(render(part), which[i:i + batch_size]).to(device).float().reshape(-1)
                  for i, part in zip(range(0, len(z), batch_size), z.split(batch_size))]
        values = torch.cat(values)
        if len(values) != len(z):
            raise ConfigError(f"the scorer returned {len(values)} responses for {len(z)} images; expected one each")
        return values

    best_value = torch.full((runs,), -math.inf, device=device)
    best_z, best_step = flat.clone(), torch.zeros(runs, dtype=torch.long, device=device)
    evaluations, curve, frames, frame_steps = [], [], [], []
    with torch.no_grad(), frozen(space, *[o for o in operators if isinstance(o, nn.Module)]):
        for generation in tqdm(range(generations_of(strategy, dim)), desc="search", disable=not progress, leave=False):
            z = repair(strategy.ask(state, generator, sample), generation)
            candidates = z.reshape(runs, size, dim)
            values = score(z, image_units).view(runs, size)
            if not bool(torch.isfinite(values).all()):
                raise ConfigError(f"the scorer returned a response that is not finite at generation {generation}; "
                                  "expected finite numbers")
            strategy.tell(state, candidates, values, generator)
            best_value, best_z, improved = best_kept(best_value, best_z, candidates, values)
            best_step = torch.where(improved, generation, best_step)
            evaluations.append((generation + 1) * size)
            curve.append(best_value.clone())
            if on_generation is not None:
                on_generation(evaluations[-1], best_z.reshape(-1, *shape), best_value)
            if record_every and generation % record_every == 0:
                frames.append(to_host(render(repair(strategy.center(state), generation))))
                frame_steps.append(generation)
        last_z = repair(strategy.center(state), generations_of(strategy, dim)).reshape(runs, dim)
        last_value = score(last_z.reshape(-1, *shape), units.to(device))
        last, best = render(last_z.reshape(-1, *shape)), render(best_z.reshape(-1, *shape))
    if record_every:
        frames.append(to_host(last))
        frame_steps.append(len(evaluations))
    return SearchResult(last=to_host(last), best=to_host(best), last_value=to_host(last_value),
                        best_value=to_host(best_value), best_step=to_host(best_step),
                        last_z=to_host(last_z.reshape(-1, *shape)), best_z=to_host(best_z.reshape(-1, *shape)),
                        frames=frames, frame_steps=frame_steps, evaluations=evaluations,
                        best_so_far=to_host(torch.stack(curve)))
