"""What activation maximization maximizes: weighted terms over named layers (the survey's Table 1).

A *term* reads one layer: a unit (a class logit, a conv channel, a token feature), a direction in
the layer's activation space (a CAV, a dictionary row), a match of the layer's activation to a
reference one (feature inversion: what a layer keeps of an image), or any callable on the
activation.  An *objective* is a list of terms, so "activate A" is one term, "activate A and B" two
positive terms and "activate A, suppress B" a positive and a negative one.

Conv maps (B, C, H, W) and token layers (B, N, C) are read at a place (`at`, or the batch's
`spatial`): `center` (the centre pixel, or the centre patch token), `mean` (over space, or over the
patch tokens), `cls` (a ViT's class token), `y,x` (one pixel, or one patch of the token grid), a
patch index, or `KxL` (the mean over the centred window of K rows and L columns of the map, or of
the token grid).  `receptive` depends on the layer: it is resolved when units are parsed
(featvis.synthesis.methods.units_of, with the network at hand) to the centred window of the map
positions whose centres lie inside the centre unit's receptive field (receptive_place): a window
of a few positions, close to the centre unit, for a first conv layer whose units see a few pixels;
`mean` for a deep one whose centre unit sees the whole image.  A first-layer channel's mean over
space is close to linear in the image's mean colour, so its maximum is a colour wash whatever the
filter; a small window shows the filter.

`mode` picks the survey's three variants for units: the raw activation, its softmax across the
layer, or the log of that softmax.  `selectivity` adds that many times the units'
log-softmax to any mode, on fully connected layers (whose units compete as classes; conv channels
do not): the term is ~0 while a unit leads its layer and pulls away from the leading unit while it
does not, so a raw objective cannot be raised by drawing another class harder.

Units and directions of a whole batch become one dense weight matrix per (layer, place), so
evaluating them is a few tensor ops, with no Python loop over units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from featvis.errors import ConfigError

MODES = ("raw", "softmax", "log_softmax")
SPATIAL = ("center", "mean", "cls", "receptive")
KINDS = ("unit", "direction", "match", "custom")
PLACE = re.compile(r"(center|mean|cls|receptive|\d+|\d+,\d+|\d+x\d+)")
WINDOW = re.compile(r"(\d+)x(\d+)")


@dataclass(frozen=True)
class Term:
    """One layer's contribution to an objective, `weight` times:

    kind=unit: unit `unit` (a logit, a channel, a token feature); direction: the projection on
    `value` (a (C,) vector, unit length); match: 1 - |a - r|^2 / |r|^2 for the reference
    activation r = `value` (1 at a perfect match); custom: `value(activation) -> (B,)`.
    `at`: where a conv or token layer is read (None: the batch's `spatial`); `source`: what the
    value was read from (a file; for the records).
    """

    layer: str
    unit: int = 0
    weight: float = 1.0
    at: str | None = None
    kind: str = "unit"
    source: str = ""
    value: Any = field(default=None, compare=False, repr=False)

    def record(self) -> dict[str, Any]:
        """JSON-safe: what a metrics or evolution file says of the term."""
        out: dict[str, Any] = {"layer": self.layer, "unit": self.unit, "weight": self.weight}
        if self.at is not None:
            out["at"] = self.at
        if self.kind != "unit":
            out.update(kind=self.kind, source=self.source)
        return out


def direction(layer: str, vector: Any, weight: float = 1.0, at: str | None = None, source: str = "python") -> Term:
    """Maximize the projection of `layer`'s activation (read at `at`) on `vector` (normalized)."""
    vector = torch.as_tensor(vector, dtype=torch.float32, device="cpu").flatten()
    norm = float(vector.norm())
    if not math.isfinite(norm) or norm == 0:
        raise ConfigError(f"direction {source} for layer {layer!r} has norm {norm}; expected a non-zero finite vector")
    return Term(layer, -1, float(weight), at, "direction", source, vector / norm)


def match(layer: str, reference: torch.Tensor, weight: float = 1.0, source: str = "python") -> Term:
    """Make `layer`'s whole activation match `reference` (one image's activation there, no batch dim)."""
    reference = reference.detach().float().cpu()
    if not bool(reference.square().sum() > 0):
        raise ConfigError(f"the reference activation of layer {layer!r} ({source}) is all zeros; expected a "
                          "layer the reference image activates (e.g. one before its ReLU)")
    return Term(layer, -1, float(weight), None, "match", source, reference)


def custom(layer: str, fn: Callable[[torch.Tensor], torch.Tensor], weight: float = 1.0, source: str = "") -> Term:
    """Any differentiable `fn(activation of layer) -> (B,)` to maximize."""
    if not callable(fn):
        raise ConfigError(f"custom objective for layer {layer!r} is {type(fn).__name__}; expected a callable")
    return Term(layer, -1, float(weight), None, "custom", source or getattr(fn, "__name__", "callable"), fn)


def token_grid(tokens: int) -> int:
    """The side of a square patch grid of `tokens` patches (0 when they are not a square)."""
    side = math.isqrt(tokens)
    return side if side * side == tokens else 0


def reduce_units(activation: torch.Tensor, spatial: str = "center", prefix_tokens: int = 0) -> torch.Tensor:
    """(B, C, H, W) maps and (B, N, C) tokens -> (B, C), read at `spatial` (see the module doc);
    (B, C) passes through."""
    if activation.ndim == 2:
        return activation
    if spatial == "receptive" and activation.ndim in (3, 4):
        raise ConfigError("spatial=receptive depends on the layer and is resolved when units are parsed "
                          "(featvis.synthesis.methods.units_of); expected units parsed with the network, or a "
                          "place: center, mean, a window KxL or a position y,x")
    window = WINDOW.fullmatch(spatial)
    if activation.ndim == 3:
        patches = activation[:, prefix_tokens:]
        if spatial == "mean":
            return patches.mean(1)
        if window:
            side = token_grid(patches.shape[1])
            if not side:
                raise ConfigError(f"window {spatial} on {patches.shape[1]} tokens that are no square grid; "
                                  "expected mean, center or a patch index")
            grid = patches.reshape(len(patches), side, side, patches.shape[-1])
            return _window_mean(grid.permute(0, 3, 1, 2), spatial, window)
        if spatial == "cls":
            if not prefix_tokens:
                raise ConfigError("spatial=cls reads a class token, and this token layer has none; expected "
                                  "center, mean or a patch index")
            return activation[:, 0]
        if spatial == "center":
            side = token_grid(patches.shape[1])
            index = (side // 2) * side + side // 2 if side else patches.shape[1] // 2
            return patches[:, index]
        return patches[:, _patch_index(spatial, patches.shape[1])]
    if activation.ndim != 4:
        return activation.flatten(1)
    if spatial == "center":
        return activation[:, :, activation.shape[2] // 2, activation.shape[3] // 2]
    if spatial == "mean":
        return activation.mean((2, 3))
    if window:
        return _window_mean(activation, spatial, window)
    if "," not in spatial:
        raise ConfigError(f"spatial={spatial!r} on a conv map; expected center, mean, a window KxL or a position y,x")
    y, x = (int(v) for v in spatial.split(","))
    if not (0 <= y < activation.shape[2] and 0 <= x < activation.shape[3]):
        raise ConfigError(f"position {spatial} outside a {activation.shape[2]}x{activation.shape[3]} map; "
                          f"expected y in 0..{activation.shape[2] - 1}, x in 0..{activation.shape[3] - 1}")
    return activation[:, :, y, x]


def _window_mean(maps: torch.Tensor, place: str, window: re.Match) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): the mean over the centred window of `place` ("KxL": K rows, L columns;
    it holds the centre pixel, H // 2, W // 2)."""
    rows, cols = int(window[1]), int(window[2])
    height, width = maps.shape[2], maps.shape[3]
    if not (1 <= rows <= height and 1 <= cols <= width):
        raise ConfigError(f"window {place} on a {height}x{width} map; expected 1x1 to {height}x{width} "
                          "(or mean: the whole map)")
    top, left = height // 2 - rows // 2, width // 2 - cols // 2
    return maps[:, :, top:top + rows, left:left + cols].mean((2, 3))


def receptive_place(rows: tuple[int, int], cols: tuple[int, int], map_size: tuple[int, int],
                    image_size: int | tuple[int, int]) -> str:
    """Where spatial=receptive reads a (H, W) map whose centre unit (H // 2, W // 2) sees the input
    rows rows[0]..rows[1] and columns cols[0]..cols[1] (its receptive field, inclusive): the mean
    over the centred window of the map positions whose centres lie inside that field, as "KxL", or
    "mean" when the window is the whole map.

    A map position is `image_size / H` input pixels from the next.  A field cut by one border of the
    image is measured on its other side (from the unit's centre in the image); cut by both, it
    covers the image."""
    image = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    size = []
    for (low, high), cells, pixels, centre in zip((rows, cols), map_size, image, (map_size[0] // 2, map_size[1] // 2)):
        stride = pixels / cells
        if low <= 0 and high >= pixels - 1:
            size.append(cells)
            continue
        middle = (centre + 0.5) * stride - 0.5  # the unit's centre in input pixels
        if low <= 0 or high >= pixels - 1:
            half = max(middle - low, high - middle)
        else:
            half = (high - low) / 2
        size.append(min(cells, 2 * int(half // stride + 1e-6) + 1))
    return "mean" if tuple(size) == tuple(map_size) else f"{size[0]}x{size[1]}"


def _patch_index(place: str, patches: int) -> int:
    if "," in place:
        side = token_grid(patches)
        if not side:
            raise ConfigError(f"position {place} on {patches} tokens that are no square grid; expected a patch index")
        y, x = (int(v) for v in place.split(","))
        index = y * side + x if 0 <= y < side and 0 <= x < side else patches
    else:
        index = int(place)
    if not 0 <= index < patches:
        raise ConfigError(f"patch {place} out of range; expected 0..{patches - 1} (or y,x on the token grid)")
    return index


def check_place(place: str) -> str:
    if not PLACE.fullmatch(place):
        raise ConfigError(f"spatial={place!r}; expected one of {list(SPATIAL)}, a window KxL, a position y,x or a "
                          "patch index")
    return place


def check_spatial(spatial: Any, where: str = "spatial") -> str:
    """A batch's `spatial` (one of SPATIAL), or a one-line error naming `where` it was set."""
    if not isinstance(spatial, str) or spatial not in SPATIAL:
        raise ConfigError(f"{where}={spatial!r}; expected one of {list(SPATIAL)} (receptive: a window the size of "
                          "the unit's receptive field, the whole map for deep layers)")
    return spatial


def gram_similarity(activation: torch.Tensor, group: int) -> torch.Tensor:
    """(B,): each row's mean cosine similarity of its Gram matrix (channels x channels, over space)
    to those of the other rows of its group (consecutive rows of `group`)."""
    features = activation.flatten(2) if activation.ndim > 2 else activation.unsqueeze(-1)
    gram = features @ features.transpose(1, 2) / features.shape[-1]
    gram = torch.nn.functional.normalize(gram.flatten(1), dim=1).view(-1, group, gram[0].numel())
    similarity = gram @ gram.transpose(1, 2)  # (units, group, group), ones on the diagonal
    return ((similarity.sum(-1) - 1) / (group - 1)).flatten()


def term_values(term: Term, activation: torch.Tensor, spatial: str = "center", prefix_tokens: int = 0) -> torch.Tensor:
    """(B,): a term's raw value on each image of a batch of `term.layer` activations (its weight
    not applied): a unit's value, a direction's projection, a match's score, a callable's value."""
    if term.kind == "custom":
        return term.value(activation).reshape(len(activation)).float()
    if term.kind == "match":
        made, wanted = activation.float().flatten(1), term.value.to(activation.device).flatten()
        return 1 - (made - wanted).square().sum(1) / wanted.square().sum()
    units = reduce_units(activation, term.at or spatial, prefix_tokens).float()
    return units @ term.value.to(units.device) if term.kind == "direction" else units[:, term.unit]


class ObjectiveBatch:
    """B objectives over one network, evaluated together.

    layer_sizes: per layer, its number of units (channels), or the shape of one image's
    activation there ((C,), (C, H, W) or (N, C)); prefix_tokens: leading non-patch tokens of
    token layers (a ViT's class token).
    """

    def __init__(self, objectives: list[list[Term]], layer_sizes: dict[str, Any],
                 mode: str = "raw", spatial: str = "center", selectivity: float = 0.0,
                 diversity: float = 0.0, diversity_layer: str | None = None, group: int = 1,
                 prefix_tokens: int = 0):
        if mode not in MODES:
            raise ConfigError(f"objective mode {mode!r}; expected one of {list(MODES)}")
        try:
            self.selectivity = float(selectivity)
        except (TypeError, ValueError):
            self.selectivity = float("nan")
        if not self.selectivity >= 0:  # NaN too
            raise ConfigError(f"method.objective.selectivity={selectivity}; expected a non-negative number")
        check_spatial(spatial, "objective spatial")
        if not objectives or any(not terms for terms in objectives):
            raise ConfigError("objectives: an empty objective; expected at least one unit each")
        self.mode, self.spatial, self.prefix_tokens = mode, spatial, int(prefix_tokens)
        self.layers = list(dict.fromkeys(t.layer for terms in objectives for t in terms))
        # lucid's diversity term: each of a unit's `group` chains (consecutive rows) is pushed away
        # from the others' Gram matrices at `diversity_layer`, so the seeds show different facets.
        if not (isinstance(diversity, (int, float)) and diversity >= 0):  # NaN too
            raise ConfigError(f"method.objective.diversity={diversity}; expected a non-negative number")
        self.diversity, self.diversity_layer, self.group = float(diversity), diversity_layer, int(group)
        if self.diversity and self.group > 1:
            if diversity_layer not in layer_sizes:
                raise ConfigError(f"method.objective.diversity_layer={diversity_layer!r} is not available; expected one of "
                                  f"{sorted(layer_sizes)}")
            if len(objectives) % self.group:
                raise ConfigError(f"objectives: {len(objectives)} rows in groups of {self.group}; expected whole groups")
            self.layers = list(dict.fromkeys([*self.layers, diversity_layer]))
        shapes = {name: (size,) if isinstance(size, int) else tuple(size) for name, size in layer_sizes.items()}
        # Dense rows per (layer, place, transformed): units are read through `mode`, directions raw.
        self.weights: dict[tuple[str, str, bool], torch.Tensor] = {}
        self.matches: dict[str, tuple[list[int], list[float], list[torch.Tensor]]] = {}
        # Custom terms grouped by (layer, callable): each callable sees all of its rows at once.
        self.customs: dict[tuple[str, int], tuple[Any, list[int], list[float]]] = {}
        for row, terms in enumerate(objectives):
            for term in terms:
                if term.layer not in shapes:
                    raise ConfigError(f"layer {term.layer!r} not available; expected one of {sorted(shapes)}")
                self._add(row, term, shapes[term.layer], len(objectives))
        # Matches and custom terms as tensors once (rows, weights, references), moved by .to(): the
        # step builds nothing on the host.
        self.matches = {layer: (torch.tensor(rows, device="cpu"), torch.tensor(weights, device="cpu"),
                                torch.stack(refs).flatten(1))
                        for layer, (rows, weights, refs) in self.matches.items()}
        self.customs = {key: (fn, torch.tensor(rows, device="cpu"), torch.tensor(weights, device="cpu"))
                        for key, (fn, rows, weights) in self.customs.items()}
        # The term each objective is "about" (its first positive term), for metrics.
        self.primary = [next((t for t in terms if t.weight > 0), terms[0]) for terms in objectives]

    def _add(self, row: int, term: Term, shape: tuple[int, ...], rows: int) -> None:
        if term.kind not in KINDS:
            raise ConfigError(f"objective term of kind {term.kind!r}; expected one of {list(KINDS)}")
        if term.kind == "custom":
            fn, rows_, weights = self.customs.setdefault((term.layer, id(term.value)), (term.value, [], []))
            rows_.append(row), weights.append(term.weight)
            return
        if term.kind == "match":
            if tuple(term.value.shape) != shape:
                raise ConfigError(f"the reference activation of layer {term.layer!r} has shape "
                                  f"{tuple(term.value.shape)}; expected {shape}")
            rows_, weights, refs = self.matches.setdefault(term.layer, ([], [], []))
            rows_.append(row), weights.append(term.weight), refs.append(term.value)
            return
        channels = shape[-1] if len(shape) == 2 else shape[0]
        place = check_place(term.at) if term.at is not None else self.spatial
        if len(shape) == 1 and term.at not in (None, "center", "mean"):
            raise ConfigError(f"{term.layer}@{term.at}: layer {term.layer!r} is a vector of {channels} units; "
                              "expected no position (positions read conv maps and token layers)")
        key = (term.layer, place, term.kind == "unit")
        if len(shape) > 1 and key not in self.weights:
            self.read(torch.zeros(1, *shape, device="cpu"), place)  # a bad position fails here, before any step
        weights = self.weights.setdefault(key, torch.zeros(rows, channels, device="cpu"))  # moved by .to()
        if term.kind == "direction":
            if term.value.numel() != channels:
                raise ConfigError(f"direction {term.source} has {term.value.numel()} values; expected {channels}, "
                                  f"one per unit of layer {term.layer!r}")
            weights[row] += term.weight * term.value
            return
        if not 0 <= term.unit < channels:
            raise ConfigError(f"unit {term.unit} out of range for layer {term.layer!r}; "
                              f"expected 0 to {channels - 1}")
        weights[row, term.unit] += term.weight

    def __len__(self) -> int:
        return len(self.primary)

    def to(self, device: torch.device) -> ObjectiveBatch:
        self.weights = {k: w.to(device) for k, w in self.weights.items()}
        self.matches = {k: tuple(t.to(device) for t in v) for k, v in self.matches.items()}
        self.customs = {k: (fn, rows.to(device), weights.to(device)) for k, (fn, rows, weights) in self.customs.items()}
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

    def read(self, activation: torch.Tensor, place: str) -> torch.Tensor:
        return reduce_units(activation, place, self.prefix_tokens)

    def __call__(self, activations: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective value of each sample, (B,)."""
        total = 0
        for (layer, place, transformed), weights in self.weights.items():
            activation = activations[layer]
            units = self.read(activation, place)
            if transformed:
                units = self.transform(units, fully_connected=activation.ndim == 2)
            total = total + (weights * units.to(weights.dtype)).sum(1)
        if self.matches or self.customs:
            first = next(iter(activations.values()))
            extra = torch.zeros(len(first), device=first.device, dtype=torch.float32)
            for layer, (rows, weights, wanted) in self.matches.items():
                made = activations[layer][rows].float().flatten(1)
                score = 1 - (made - wanted).square().sum(1) / wanted.square().sum(1)
                extra = extra.index_add(0, rows, weights * score)
            for (layer, _), (fn, rows, weights) in self.customs.items():
                value = fn(activations[layer][rows]).reshape(-1)
                if value.numel() != len(rows):
                    raise ConfigError(f"custom objective {getattr(fn, '__name__', fn)} returned {value.numel()} values for "
                                      f"{len(rows)} images; expected one per image, shape (B,)")
                extra = extra.index_add(0, rows, weights * value.float())
            total = total + extra
        if self.diversity and self.group > 1:
            total = total - self.diversity * gram_similarity(activations[self.diversity_layer], self.group)
        return total

    @torch.no_grad()
    def unit_metrics(self, activations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per sample, of its primary term: the raw value (term_values), and for units their softmax
        probability and rank in their layer (NaN and -1 for the other kinds, which have neither)."""
        out = {"activation": [], "probability": [], "rank": []}
        for row, term in enumerate(self.primary):
            activation = activations[term.layer][row:row + 1]
            value = term_values(term, activation, self.spatial, self.prefix_tokens)[0]
            probability, rank = torch.tensor(float("nan"), device="cpu"), torch.tensor(-1, device="cpu")
            if term.kind == "unit":
                units = self.read(activation, term.at or self.spatial)[0].float()
                probability, rank = units.softmax(0)[term.unit], (units > value).sum()
            out["activation"].append(value.float().cpu())
            out["probability"].append(probability.float().cpu())
            out["rank"].append(rank.cpu())
        return {k: torch.stack(v).cpu() for k, v in out.items()}
