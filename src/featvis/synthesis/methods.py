"""From a method config (conf/method/*.yaml) and checkpoints to a ready Sampler.

Shared by `visualize.py` and the feature-evolution callback, so both read the
same configs the same way: units (indices, class names, sums; one layer or a
mapping of layers), the prior named by `method.prior`, the generator and its
code statistics, the starting points.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featvis.checkpoints import check_same_code, load_classifier, load_generator, load_prior
from featvis.errors import ConfigError
from featvis.nets.codes import CodeStatistics
from featvis.nets.encoder import Encoder
from featvis.nets.layers import activations, layer_names, tap
from featvis.synthesis.objectives import Term, reduce_units
from featvis.synthesis.parametrizations import FourierImage
from featvis.synthesis.priors import (CenteredGaussianPrior, DAEPrior, EncoderLoopPrior, GaussianPrior,
                                      ImageOperators, TotalVariationPrior)
from featvis.synthesis.sampler import SamplerSettings, frozen

SETTINGS_KEYS = ("steps", "lr", "lr_end", "eps1", "eps2", "eps3", "normalize_gradient",
                 "clip_quantile", "decay", "jitter", "scale", "rotate")
TERM = re.compile(r"\s*([+-]?)\s*(?:(\d*\.?\d+)\s*\*\s*)?([^+-]+?)\s*(?=[+-]|$)")


@dataclass
class Unit:
    """One row of a grid: a label, the layer it belongs to and the objective terms behind it."""

    label: str
    terms: list[Term]

    @property
    def layer(self) -> str:
        return self.terms[0].layer

    @property
    def slug(self) -> str:
        """A file-name-safe name: "fc8-3_blue_circle", "conv3-5"."""
        label = self.label.removeprefix(f"{self.layer} ")
        return f"{self.layer}-" + re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)


def parse_units(spec: list[Any], layer: str, class_names: list[str], layer_size: int) -> list[Unit]:
    """Units as ints, class names, or sums like "3+7" (activate both) and "3-0.5*7" (suppress 7)."""
    if not spec:
        raise ConfigError("units=[]; expected at least one unit index or class name")
    named = bool(class_names) and len(class_names) == layer_size

    def index(token: str) -> int:
        if re.fullmatch(r"\d+", token):
            if int(token) >= layer_size:
                raise ConfigError(f"unit {token} out of range for layer {layer!r}; expected 0 to {layer_size - 1}")
            return int(token)
        if named and token in class_names:
            return class_names.index(token)
        raise ConfigError(f"unit {token!r} is not an index or a class name of layer {layer!r}; "
                          f"expected 0..{layer_size - 1}" + (f" or one of {class_names}" if named else ""))

    units = []
    for item in spec:
        text = str(item)
        terms = []
        for sign, weight, token in TERM.findall(text):
            value = float(weight) if weight else 1.0
            terms.append(Term(layer, index(token.strip()), -value if sign == "-" else value))
        if not terms:
            raise ConfigError(f"unit {text!r} could not be read; expected e.g. 3, 'red circle', '3+7' or '3-7'")
        if named and len(terms) == 1 and re.fullmatch(r"\d+", text.strip()):
            text = f"{text} {class_names[terms[0].unit]}"  # the grid shows what the unit is
        units.append(Unit(text, terms))
    return units


def layer_sizes(target: nn.Module, layers: list[str], spatial: str = "center") -> dict[str, int]:
    """Units per named layer (conv layers: channels); an unknown name is a one-line error."""
    known = layer_names(target)
    for layer in layers:
        if layer not in known:
            tap(target, [layer])  # raises the one-line error that lists the target's layers
    size = target.image_size
    device = next(target.parameters()).device
    with frozen(target), torch.no_grad():  # a network in training must not see the probe (BN stats)
        probe = activations(target, torch.zeros(1, 3, size, size, device=device), layers)
    return {name: reduce_units(value, spatial).shape[1] for name, value in probe.items()}


def units_of(target: nn.Module, spec: Any, layer: str | None, class_names: list[str],
             spatial: str = "center") -> tuple[list[Unit], dict[str, int]]:
    """`spec` is a list of units of `layer`, a list of "layer:unit" strings, or a mapping
    {layer: [units]} across layers.

    Labels of units of other layers than the logits carry their layer name ("conv3 5").
    """
    prefixed = not isinstance(spec, Mapping) and any(":" in str(item) for item in spec)
    if isinstance(spec, Mapping):
        by_layer = dict(spec)
    elif prefixed:  # ["conv3:5", "fc8:red circle", ...]
        by_layer = {}
        for item in spec:
            name, sep, unit = str(item).partition(":")
            by_layer.setdefault(name.strip() if sep else layer, []).append(unit.strip() if sep else item)
    else:
        by_layer = {layer: list(spec)}
    if None in by_layer:
        raise ConfigError("units are given without a layer; expected layer=<name> or units={layer: [...]}")
    sizes = layer_sizes(target, list(by_layer), spatial)
    units = []
    for name, items in by_layer.items():
        parsed = parse_units(list(items), name, class_names, sizes[name])
        if isinstance(spec, Mapping) or prefixed:
            parsed = [Unit(f"{name} {u.label}", u.terms) for u in parsed]
        units.extend(parsed)
    return units, sizes


def sampler_settings(method: Mapping[str, Any], steps: int | None = None, record_every: int = 0) -> SamplerSettings:
    values = {k: method[k] for k in SETTINGS_KEYS}
    # optional: method configs written before them keep a constant prior weight and noise
    values.update(eps2_end=method.get("eps2_end"), eps3_end=method.get("eps3_end"))
    if steps is not None:
        values["steps"] = int(steps)
    return SamplerSettings(**values, record_every=record_every)


@dataclass
class MethodParts:
    """What a method adds to the target: the renderer, the prior term, operators and code bounds."""

    generator: nn.Module | None = None
    stats: CodeStatistics | None = None
    generator_record: dict[str, Any] | None = None
    prior: Any = None
    image_operators: ImageOperators | None = None
    code_upper: torch.Tensor | None = None

    def modules(self) -> list[nn.Module]:
        """Every network the method runs (to move them to a device)."""
        found = [self.generator, getattr(self.prior, "dae", None), getattr(self.prior, "encoder", None)]
        return [m for m in found if m is not None]

    def sampler_kwargs(self) -> dict[str, Any]:
        return {"generator": self.generator, "prior": self.prior, "code_upper": self.code_upper,
                "image_operators": self.image_operators}


def load_method(method: Mapping[str, Any], generator_ckpt: str | None, prior_ckpt: str | None,
                image_size: int) -> MethodParts:
    """Load what `method` needs (a generator for code methods, a DAE for prior=dae)."""
    if method["space"] not in ("pixel", "fft", "code"):
        raise ConfigError(f"method.space={method['space']!r}; expected pixel, fft or code")
    parts = MethodParts()
    if method["space"] == "code":
        if not generator_ckpt:
            raise ConfigError(f"method={method['name']} optimizes a generator's code; expected generator.ckpt")
        parts.generator, parts.stats, parts.generator_record = load_generator(generator_ckpt)
    elif method["space"] == "fft":  # a fixed, parameter-free "generator": spectrum -> image
        parts.generator = FourierImage(image_size)
    parts.prior = prior_term(method.get("prior"), parts.generator, prior_ckpt, parts.generator_record)
    if method.get("image_operators"):
        parts.image_operators = ImageOperators(**method["image_operators"])
    if parts.stats is not None and method.get("clip_quantile"):
        parts.code_upper = parts.stats.quantile(method["clip_quantile"])
    return parts


def prior_term(name: str | None, generator: nn.Module | None, prior_ckpt: str | None,
               g_record: dict[str, Any] | None) -> Any:
    """The eps2 term named by method.prior."""
    if name in (None, "none"):
        return None
    if name == "l2":
        return CenteredGaussianPrior(0.5) if generator is None else GaussianPrior()
    if name == "tv":
        return TotalVariationPrior()
    if name == "dae":
        if not prior_ckpt:
            raise ConfigError("method.prior=dae needs prior.ckpt; expected a checkpoint from task=prior")
        dae, _, record = load_prior(prior_ckpt)
        check_same_code(g_record, record)
        return DAEPrior(dae)
    if name == "encoder_loop":
        net, _ = load_classifier(g_record["encoder"]["checkpoint"])
        return EncoderLoopPrior(generator, Encoder(net, g_record["encoder"]["code_layer"]))
    raise ConfigError(f"method.prior={name!r}; expected none, l2, tv, dae or encoder_loop")


def initial_z(method: Mapping[str, Any], stats: CodeStatistics | None, units: int, seeds: int,
              image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per seed k the same start for every unit, so a grid column shares its starting point.

    Drawn on the host, so a seed gives the same starts on every device."""
    starts = []
    for seed in range(seeds):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        if method["space"] == "pixel":
            starts.append((0.5 + 0.05 * torch.randn(1, 3, image_size, image_size, generator=gen, device="cpu")).clamp(0, 1))
        elif method["space"] == "fft":
            starts.append(FourierImage(image_size).initial(1, gen))
        elif method["init"] == "stats":
            starts.append(stats.sample(1, gen).cpu())
        elif method["init"] == "zeros":
            starts.append(torch.zeros(1, stats.mean.numel(), device="cpu"))
        else:
            raise ConfigError(f"method.init={method['init']!r}; expected stats or zeros for code methods")
    z = torch.cat(starts)  # (seeds, ...)
    return z.repeat(units, *([1] * (z.ndim - 1))).to(device)
