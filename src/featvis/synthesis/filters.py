"""Does a first-layer unit's synthesis show its filter?

A unit that is affine in the image (a first conv layer read before its ReLU, batch norm in eval
mode folded in) computes <w, patch> + b over its receptive field, so its preferred image is its
filter w (in the image space the network reads: [0, 1] RGB, the input normalization folded into
w).  `linear_filters` reads w from the network itself, as the gradient of the map's centre unit
with respect to the image, and returns nothing for a layer that is not affine in the image (the
gradient differs between two random images).  `filter_matches` scores each synthesis by the
correlation between the patch the centre unit sees and the unit's own filter, beside the mean
correlation with the other units' filters of its layer: a synthesis that shows its filter matches
its own far better than its neighbours'; a colour wash that every unit of the layer draws alike
matches all of them about equally.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from featvis.nets.adapters import fit_images
from featvis.nets.layers import frozen, tap
from featvis.synthesis.methods import Unit
from featvis.synthesis.objectives import reduce_units

AFFINE_TOLERANCE = 1e-4  # relative: gradients at two images that differ by less are the same filter
PROBE_SCALE = 100.0


@dataclass
class Filters:
    """Per channel of one layer, the centre unit's filter over the image rows and columns its
    receptive field covers (the union over the channels): weights (channels, 3, h, w)."""

    channels: list[int]
    weights: torch.Tensor
    rows: slice
    cols: slice

    def of(self, channel: int) -> torch.Tensor:
        return self.weights[self.channels.index(channel)]


def linear_filters(target: nn.Module, layer: str, channels: list[int]) -> Filters | None:
    """The filters of `channels` of `layer` (a conv map, or a token grid) at its centre unit, or
    None when the layer is not affine in the image or no gradient reaches its centre unit.  One
    forward and backward pass of two images decides; an affine layer then costs one more, of one
    image per channel."""
    channels = list(dict.fromkeys(int(c) for c in channels))
    size = target.image_size
    device = next(target.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(0)  # the caller's random streams are not drawn
    # An image and its negative, far outside [0, 1]: a rectified or max-pooled unit is closed on one
    # of them (its bias is small beside the input), so its gradients there differ; an affine one's agree.
    probe = torch.randn(1, 3, size, size, generator=generator, device="cpu") * PROBE_SCALE
    prefix = int(getattr(target, "prefix_tokens", 0) or 0)
    read = tap(target, [layer])
    with torch.inference_mode(False), torch.enable_grad(), frozen(target):
        images = torch.cat([probe, -probe]).to(device).requires_grad_(True)
        activation = read(images)[layer]
        if activation.ndim == 2 or not activation.requires_grad:
            return None  # a vector layer has no centre unit; a layer no gradient reaches has no filter
        centre = reduce_units(activation, "center", prefix).float()
        weights = torch.randn(centre.shape[1], generator=generator, device="cpu").to(device)  # every channel at once
        gradient, = torch.autograd.grad((centre * weights).sum(), images, allow_unused=True)
        if gradient is None:
            return None
        first, second = gradient.detach().float().cpu()
        scale = float(first.abs().max())
        if scale == 0 or float((first - second).abs().max()) > AFFINE_TOLERANCE * scale:
            return None
        # Affine: each channel's gradient, one image per channel, is its filter.
        images = probe.repeat(len(channels), 1, 1, 1).to(device).requires_grad_(True)
        centre = reduce_units(read(images)[layer], "center", prefix).float()
        picked = centre[torch.arange(len(channels), device=device), torch.tensor(channels, device=device)]
        gradient, = torch.autograd.grad(picked.sum(), images)
    found = gradient.detach().float().cpu()
    support = found.abs().sum((0, 1)) > 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    window = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    return Filters(channels, found[:, :, window[0], window[1]], *window)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two tensors' elements (0 when either is flat)."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm > 0 else 0.0


def filter_matches(target: nn.Module, units: list[Unit], images: torch.Tensor, seeds: int
                   ) -> list[dict[str, float | None] | None]:
    """Per image (units x seeds, unit-major): {"filter_match": the correlation between the patch its
    unit's centre unit sees and that unit's filter, "filter_match_other": the mean correlation of
    the same patch with the filters of the other units of its layer (None without any)}, or None
    for an image whose unit is no single channel of a layer affine in the image."""
    channels: dict[str, list[int]] = defaultdict(list)
    for unit in units:
        if len(unit.terms) == 1 and unit.terms[0].kind == "unit":
            channels[unit.layer].append(unit.terms[0].unit)
    filters = {layer: linear_filters(target, layer, found) for layer, found in channels.items()}
    shown = fit_images(images.float(), target.image_size).cpu()
    out: list[dict[str, float | None] | None] = []
    for u, unit in enumerate(units):
        layer_filters = filters.get(unit.layer) if len(unit.terms) == 1 and unit.terms[0].kind == "unit" else None
        for k in range(seeds):
            if layer_filters is None:
                out.append(None)
                continue
            patch = shown[u * seeds + k][:, layer_filters.rows, layer_filters.cols]
            own = unit.terms[0].unit
            others = [correlation(patch, layer_filters.of(c)) for c in layer_filters.channels if c != own]
            out.append({"filter_match": round(correlation(patch, layer_filters.of(own)), 4),
                        "filter_match_other": round(sum(others) / len(others), 4) if others else None})
    return out
