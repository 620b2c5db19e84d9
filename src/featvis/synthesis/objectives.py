"""What activation maximization maximizes: weighted units of named layers (the survey's Table 1).

A *term* is (layer, unit index, weight); an *objective* is a list of terms, so
"activate A" is one term, "activate A and B" two positive terms and "activate A,
suppress B" a positive and a negative one.  A conv unit is one channel, read at
the spatial centre (the DGN-AM convention) or averaged over space.  `mode` picks
the survey's three variants: the raw activation, its softmax across the layer,
or the log of that softmax.  `selectivity` adds that many times the units' log-softmax to
any mode, on fully connected layers (whose units compete as classes; conv channels do not): the
term is ~0 while a unit leads its layer and pulls away from the leading unit while it does not,
so a raw objective cannot be raised by drawing another class harder.

Objectives for a whole batch are turned into one dense weight matrix per layer,
so evaluating them is a few tensor ops, with no Python loop over units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from featvis.errors import ConfigError

MODES = ("raw", "softmax", "log_softmax")
SPATIAL = ("center", "mean")


@dataclass(frozen=True)
class Term:
    layer: str
    unit: int
    weight: float = 1.0


def reduce_units(activation: torch.Tensor, spatial: str = "center") -> torch.Tensor:
    """(B, C, H, W) -> (B, C) by the centre pixel or the spatial mean; (B, C) passes through."""
    if activation.ndim == 2:
        return activation
    if activation.ndim != 4:
        return activation.flatten(1)
    if spatial == "center":
        return activation[:, :, activation.shape[2] // 2, activation.shape[3] // 2]
    return activation.mean((2, 3))


def gram_similarity(activation: torch.Tensor, group: int) -> torch.Tensor:
    """(B,): each row's mean cosine similarity of its Gram matrix (channels x channels, over space)
    to those of the other rows of its group (consecutive rows of `group`)."""
    features = activation.flatten(2) if activation.ndim > 2 else activation.unsqueeze(-1)
    gram = features @ features.transpose(1, 2) / features.shape[-1]
    gram = torch.nn.functional.normalize(gram.flatten(1), dim=1).view(-1, group, gram[0].numel())
    similarity = gram @ gram.transpose(1, 2)  # (units, group, group), ones on the diagonal
    return ((similarity.sum(-1) - 1) / (group - 1)).flatten()


class ObjectiveBatch:
    """B objectives over one network, evaluated together."""

    def __init__(self, objectives: list[list[Term]], layer_sizes: dict[str, int],
                 mode: str = "raw", spatial: str = "center", selectivity: float = 0.0,
                 diversity: float = 0.0, diversity_layer: str | None = None, group: int = 1):
        if mode not in MODES:
            raise ConfigError(f"objective mode {mode!r}; expected one of {list(MODES)}")
        try:
            self.selectivity = float(selectivity)
        except (TypeError, ValueError):
            self.selectivity = float("nan")
        if not self.selectivity >= 0:  # NaN too
            raise ConfigError(f"method.selectivity={selectivity}; expected a non-negative number")
        if spatial not in SPATIAL:
            raise ConfigError(f"objective spatial {spatial!r}; expected one of {list(SPATIAL)}")
        if not objectives or any(not terms for terms in objectives):
            raise ConfigError("objectives: an empty objective; expected at least one unit each")
        self.mode, self.spatial = mode, spatial
        self.layers = list(dict.fromkeys(t.layer for terms in objectives for t in terms))
        self.weights: dict[str, torch.Tensor] = {}
        # lucid's diversity term: each of a unit's `group` chains (consecutive rows) is pushed away
        # from the others' Gram matrices at `diversity_layer`, so the seeds show different facets.
        if not (isinstance(diversity, (int, float)) and diversity >= 0):  # NaN too
            raise ConfigError(f"method.diversity={diversity}; expected a non-negative number")
        self.diversity, self.diversity_layer, self.group = float(diversity), diversity_layer, int(group)
        if self.diversity and self.group > 1:
            if diversity_layer not in layer_sizes:
                raise ConfigError(f"method.diversity_layer={diversity_layer!r} is not available; expected one of "
                                  f"{sorted(layer_sizes)}")
            if len(objectives) % self.group:
                raise ConfigError(f"objectives: {len(objectives)} rows in groups of {self.group}; expected whole groups")
            self.layers = list(dict.fromkeys([*self.layers, diversity_layer]))
        for layer in dict.fromkeys(t.layer for terms in objectives for t in terms):
            if layer not in layer_sizes:
                raise ConfigError(f"layer {layer!r} not available; expected one of {sorted(layer_sizes)}")
            self.weights[layer] = torch.zeros(len(objectives), layer_sizes[layer], device="cpu")  # moved by .to()
        for row, terms in enumerate(objectives):
            for term in terms:
                size = layer_sizes[term.layer]
                if not 0 <= term.unit < size:
                    raise ConfigError(f"unit {term.unit} out of range for layer {term.layer!r}; "
                                      f"expected 0 to {size - 1}")
                self.weights[term.layer][row, term.unit] += term.weight
        # The unit each objective is "about" (its first positive term), for metrics.
        self.primary = [next((t for t in terms if t.weight > 0), terms[0]) for terms in objectives]

    def __len__(self) -> int:
        return len(self.primary)

    def to(self, device: torch.device) -> ObjectiveBatch:
        self.weights = {k: w.to(device) for k, w in self.weights.items()}
        return self

    def transform(self, units: torch.Tensor, fully_connected: bool = True) -> torch.Tensor:
        if self.mode == "softmax":
            value = units.softmax(1)
        elif self.mode == "log_softmax":
            value = units.log_softmax(1)
        else:
            value = units
        if self.selectivity and fully_connected:
            value = value + self.selectivity * units.log_softmax(1)
        return value

    def __call__(self, activations: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """The objective value of each sample, (B,); `rows` selects objectives for a sub-batch."""
        total = 0
        for layer, weights in self.weights.items():
            weights = weights if rows is None else weights[rows]
            activation = activations[layer]
            units = self.transform(reduce_units(activation, self.spatial), fully_connected=activation.ndim == 2)
            total = total + (weights * units).sum(1)
        if self.diversity and self.group > 1 and rows is None:
            total = total - self.diversity * gram_similarity(activations[self.diversity_layer], self.group)
        return total

    @torch.no_grad()
    def unit_metrics(self, activations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per sample: the primary unit's raw activation, softmax probability and rank in its layer."""
        out = {"activation": [], "probability": [], "rank": []}
        for row, term in enumerate(self.primary):
            units = reduce_units(activations[term.layer][row:row + 1], self.spatial)[0]
            value = units[term.unit]
            out["activation"].append(value)
            out["probability"].append(units.softmax(0)[term.unit])
            out["rank"].append((units > value).sum())
        return {k: torch.stack(v).cpu() for k, v in out.items()}
