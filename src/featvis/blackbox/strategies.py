"""Gradient-free search strategies, batched over runs: every run (a unit's seed) moves in one tensor.

A strategy holds only its hyperparameters; what it learns lives in a `state`, a dict of tensors
that `torch.save` writes and `weights_only` loading reads back, so a closed-loop experiment can
stop after any generation and resume where it was.  Candidates are flat vectors (R runs x lambda
candidates x D dimensions); `scale` (D,) is each dimension's natural size (a code unit's std over
real codes), so one step size suits every dimension.

    state = strategy.init(start, scale, sample, generator)
    while ...:
        x = strategy.ask(state, generator, sample)            # (R, lambda, D)
        strategy.tell(state, x, responses, generator)         # responses (R, lambda): higher is better

`CMAES` is the separable CMA-ES of Ros & Hansen (2008): a diagonal covariance, whose learning
rates are (D + 2) / 3 times the full covariance's, so it adapts within the few hundred
generations an experiment affords; `GeneticAlgorithm` is XDream's (Ponce et al. 2019; Xiao &
Kreiman 2020); `RandomSearch` draws every candidate afresh from the space's starting distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from featvis.errors import ConfigError

# (n, generator) -> (n, D) draws from the space's starting distribution.
Sampler = Callable[[int, torch.Generator], torch.Tensor]
State = dict[str, torch.Tensor]


def _check(owner: str, **values: tuple[float, bool, str]) -> None:
    for name, (value, ok, expected) in values.items():
        if not ok or (isinstance(value, float) and value != value):
            raise ConfigError(f"method.search.{name}={value}; expected {expected} ({owner})")


def normal(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """N(0, 1) drawn on the host from `generator` (the same draws on every device), moved to `like`'s."""
    return torch.randn(shape, generator=generator, device="cpu").to(like.device)


@dataclass
class CMAES:
    """Separable CMA-ES (maximizing).  `sigma`: the first step, in units of each dimension's
    scale; `population`: candidates per generation (None: 4 + 3 ln D, Hansen's default)."""

    evaluations: int = 2000
    sigma: float = 1.0
    population: int | None = None

    def __post_init__(self) -> None:
        _check("CMAES", evaluations=(self.evaluations, isinstance(self.evaluations, int) and self.evaluations >= 1,
                                     "a positive number of image evaluations per run"),
               sigma=(self.sigma, self.sigma > 0, "a positive step size"),
               population=(self.population, self.population is None or self.population >= 2,
                           "at least 2 candidates per generation, or null"))

    def size(self, dim: int) -> int:
        return int(self.population or 4 + math.floor(3 * math.log(dim)))

    def constants(self, dim: int, device: torch.device) -> dict[str, float | torch.Tensor]:
        lam = self.size(dim)
        mu = lam // 2
        weights = math.log(mu + 0.5) - torch.log(torch.arange(1, mu + 1, dtype=torch.float32, device=device))
        weights = weights / weights.sum()
        mu_eff = float(1 / weights.square().sum())
        c_sigma = (mu_eff + 2) / (dim + mu_eff + 5)
        separable = (dim + 2) / 3  # sep-CMA: the diagonal learns this much faster than a full matrix
        c_1 = min(1.0, separable * 2 / ((dim + 1.3) ** 2 + mu_eff))
        c_mu = min(1 - c_1, separable * 2 * (mu_eff - 2 + 1 / mu_eff) / ((dim + 2) ** 2 + mu_eff))
        return {"lam": lam, "mu": mu, "weights": weights, "mu_eff": mu_eff, "c_sigma": c_sigma,
                "d_sigma": 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (dim + 1)) - 1) + c_sigma,
                "c_c": (4 + mu_eff / dim) / (dim + 4 + 2 * mu_eff / dim), "c_1": c_1, "c_mu": c_mu,
                "chi": math.sqrt(dim) * (1 - 1 / (4 * dim) + 1 / (21 * dim ** 2))}

    def init(self, start: torch.Tensor, scale: torch.Tensor, sample: Sampler, generator: torch.Generator) -> State:
        runs, dim = start.shape
        variance = scale.square().expand(runs, dim).clone()
        return {"mean": start.clone(), "sigma": torch.full((runs,), float(self.sigma), device=start.device),
                "variance": variance, "path_sigma": torch.zeros_like(start), "path_c": torch.zeros_like(start),
                "generation": torch.zeros((), dtype=torch.long, device="cpu")}

    def ask(self, state: State, generator: torch.Generator, sample: Sampler) -> torch.Tensor:
        mean = state["mean"]
        runs, dim = mean.shape
        steps = normal((runs, self.size(dim), dim), generator, mean) * state["variance"].sqrt()[:, None]
        return mean[:, None] + state["sigma"].view(-1, 1, 1) * steps

    def tell(self, state: State, candidates: torch.Tensor, values: torch.Tensor, generator: torch.Generator) -> None:
        mean, sigma, variance = state["mean"], state["sigma"], state["variance"]
        runs, dim = mean.shape
        k = self.constants(dim, mean.device)
        order = values.argsort(dim=1, descending=True)[:, :k["mu"]]
        chosen = candidates.gather(1, order[..., None].expand(-1, -1, dim))      # (R, mu, D), best first
        steps = (chosen - mean[:, None]) / sigma.view(-1, 1, 1)                  # in the search's own units
        step = (k["weights"].view(1, -1, 1) * steps).sum(1)
        generation = int(state["generation"]) + 1
        c_sigma, c_c, mu_eff = k["c_sigma"], k["c_c"], k["mu_eff"]
        whitened = step / variance.sqrt().clamp_min(1e-20)
        path_sigma = (1 - c_sigma) * state["path_sigma"] + math.sqrt(c_sigma * (2 - c_sigma) * mu_eff) * whitened
        norm = path_sigma.norm(dim=1)
        # h_sigma stalls the covariance path while the step-size path is long (a fast-growing sigma)
        stalled = norm / math.sqrt(1 - (1 - c_sigma) ** (2 * generation)) >= (1.4 + 2 / (dim + 1)) * k["chi"]
        h_sigma = (~stalled).float().view(-1, 1)
        path_c = (1 - c_c) * state["path_c"] + h_sigma * math.sqrt(c_c * (2 - c_c) * mu_eff) * step
        rank_mu = (k["weights"].view(1, -1, 1) * steps.square()).sum(1)
        variance = ((1 - k["c_1"] - k["c_mu"]) * variance
                    + k["c_1"] * (path_c.square() + (1 - h_sigma) * c_c * (2 - c_c) * variance)
                    + k["c_mu"] * rank_mu)
        state.update(mean=mean + sigma.view(-1, 1) * step, path_sigma=path_sigma, path_c=path_c,
                     variance=variance, sigma=sigma * torch.exp((c_sigma / k["d_sigma"]) * (norm / k["chi"] - 1)),
                     generation=torch.tensor(generation, device="cpu"))

    def center(self, state: State) -> torch.Tensor:
        """The search's current estimate of each run's best point: the distribution's mean."""
        return state["mean"]


@dataclass
class GeneticAlgorithm:
    """XDream's genetic algorithm (maximizing), with its defaults: each generation keeps its
    `elites` best candidates, and breeds the rest from two parents drawn by fitness, a softmax of
    the responses at temperature `selectivity` x their std; a child takes each dimension from its
    first parent with probability `parental_skew`, and `mutation_rate` of its dimensions move by
    N(0, (mutation_size x the dimension's scale)^2)."""

    evaluations: int = 2000
    population: int = 30
    elites: int = 10
    mutation_rate: float = 0.25
    mutation_size: float = 0.75
    selectivity: float = 2.0
    parental_skew: float = 0.75

    def __post_init__(self) -> None:
        _check("GeneticAlgorithm",
               evaluations=(self.evaluations, isinstance(self.evaluations, int) and self.evaluations >= 1,
                            "a positive number of image evaluations per run"),
               population=(self.population, isinstance(self.population, int) and self.population >= 2,
                           "at least 2 candidates per generation"),
               elites=(self.elites, isinstance(self.elites, int) and 0 <= self.elites < self.population,
                       f"0 to population - 1 = {self.population - 1} kept candidates"),
               mutation_rate=(self.mutation_rate, 0 <= self.mutation_rate <= 1, "a fraction in [0, 1]"),
               mutation_size=(self.mutation_size, self.mutation_size >= 0, "a non-negative size"),
               selectivity=(self.selectivity, self.selectivity > 0, "a positive temperature factor"),
               parental_skew=(self.parental_skew, 0.5 <= self.parental_skew <= 1, "a fraction in [0.5, 1]"))

    def size(self, dim: int) -> int:
        return self.population

    def init(self, start: torch.Tensor, scale: torch.Tensor, sample: Sampler, generator: torch.Generator) -> State:
        runs, dim = start.shape
        drawn = sample(runs * (self.population - 1), generator).to(start.device).view(runs, -1, dim)
        return {"population": torch.cat([start[:, None], drawn], 1), "scale": scale.expand(dim).clone(),
                "best": start.clone(), "generation": torch.zeros((), dtype=torch.long, device="cpu")}

    def ask(self, state: State, generator: torch.Generator, sample: Sampler) -> torch.Tensor:
        return state["population"]

    def tell(self, state: State, candidates: torch.Tensor, values: torch.Tensor, generator: torch.Generator) -> None:
        runs, size, dim = candidates.shape
        order = values.argsort(dim=1, descending=True)
        ranked = candidates.gather(1, order[..., None].expand(-1, -1, dim))
        spread = values.std(1, keepdim=True).clamp_min(1e-12)
        fitness = ((values - values.amax(1, keepdim=True)) / (self.selectivity * spread)).softmax(1)
        children = size - self.elites
        # a floor under the fitness: two distinct parents can always be drawn
        parents = torch.multinomial(fitness.cpu().repeat_interleave(children, 0) + 1e-12, 2, replacement=False,
                                    generator=generator).to(candidates.device).view(runs, children, 2)
        first = candidates.gather(1, parents[..., :1].expand(-1, -1, dim))
        second = candidates.gather(1, parents[..., 1:].expand(-1, -1, dim))
        from_first = torch.rand((runs, children, dim), generator=generator, device="cpu").to(candidates.device) < self.parental_skew
        child = torch.where(from_first, first, second)
        mutated = torch.rand((runs, children, dim), generator=generator, device="cpu").to(candidates.device) < self.mutation_rate
        noise = normal((runs, children, dim), generator, candidates) * self.mutation_size * state["scale"]
        child = child + mutated * noise
        state.update(population=torch.cat([ranked[:, :self.elites], child], 1), best=ranked[:, 0],
                     generation=state["generation"] + 1)

    def center(self, state: State) -> torch.Tensor:
        """The best candidate of the last generation told."""
        return state["best"]


@dataclass
class RandomSearch:
    """Every candidate drawn afresh from the space's starting distribution: the baseline a search
    has to beat."""

    evaluations: int = 2000
    population: int = 32

    def __post_init__(self) -> None:
        _check("RandomSearch",
               evaluations=(self.evaluations, isinstance(self.evaluations, int) and self.evaluations >= 1,
                            "a positive number of image evaluations per run"),
               population=(self.population, isinstance(self.population, int) and self.population >= 1,
                           "at least 1 candidate per generation"))

    def size(self, dim: int) -> int:
        return self.population

    def init(self, start: torch.Tensor, scale: torch.Tensor, sample: Sampler, generator: torch.Generator) -> State:
        return {"best": start.clone(), "generation": torch.zeros((), dtype=torch.long, device="cpu")}

    def ask(self, state: State, generator: torch.Generator, sample: Sampler) -> torch.Tensor:
        runs, dim = state["best"].shape
        return sample(runs * self.population, generator).to(state["best"].device).view(runs, self.population, dim)

    def tell(self, state: State, candidates: torch.Tensor, values: torch.Tensor, generator: torch.Generator) -> None:
        best = values.argmax(1)
        state.update(best=candidates[torch.arange(len(best), device=best.device), best], generation=state["generation"] + 1)

    def center(self, state: State) -> torch.Tensor:
        return state["best"]
