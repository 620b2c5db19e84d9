"""From a method config (conf/method/*.yaml) and checkpoints to the parts the Sampler runs,
and from a units spec to the objectives' units.

A method config's blocks (featvis.synthesis.settings.MethodConfig) are built here: the space,
the prior term and the post-step operators from their `_target_`s, given the run-time values
they take (the image size, generator.ckpt, prior.ckpt, real images, the space).  Units are
indices, class names or sums, of one layer or of a mapping of layers.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featvis.errors import ConfigError
from featvis.nets.layers import activations, frozen, layer_names, pre_activation, tap
from featvis.synthesis.objectives import Term, check_spatial, direction, match, receptive_place, reduce_units, token_grid
from featvis.synthesis.priors import PriorTerm
from featvis.synthesis.settings import PIXEL_SPACE, ObjectiveSettings, SamplerSettings, moved_key_message
from featvis.synthesis.spaces import starting_points

log = logging.getLogger(__name__)
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


def _split_place(token: str) -> tuple[str, str | None]:
    """"3@2,5" -> ("3", "2,5"); "red circle" -> ("red circle", None)."""
    name, sep, place = token.rpartition("@")
    return (name.strip(), place.strip()) if sep else (token.strip(), None)


def parse_units(spec: list[Any], layer: str, class_names: list[str], layer_size: int) -> list[Unit]:
    """Units as ints, class names, or sums like "3+7" (activate both) and "3-0.5*7" (suppress 7);
    each may say where a conv or token layer is read ("3@2,5", "12@cls", "4@mean")."""
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
            name, place = _split_place(token)
            terms.append(Term(layer, index(name), -value if sign == "-" else value, place))
        if not terms:
            raise ConfigError(f"unit {text!r} could not be read; expected e.g. 3, 'red circle', '3+7' or '3-7'")
        if named and len(terms) == 1 and re.fullmatch(r"\d+", _split_place(text)[0]):
            text = f"{text} {class_names[terms[0].unit]}"  # the grid shows what the unit is
        units.append(Unit(text, terms))
    return units


def read_direction(spec: str, layer: str, at: str | None) -> Term:
    """"cav.npy", "dictionary.pt#3" (row 3 of a matrix): a direction term from a .npy or .pt file."""
    path_text, _, row = spec.partition("#")
    path = Path(path_text).expanduser()
    label = f"{layer}:direction={spec}"
    if not path.is_file():
        raise ConfigError(f"{label}: {path} does not exist; expected a .npy or .pt file of a vector")
    try:
        if path.suffix == ".npy":
            import numpy as np

            values = torch.from_numpy(np.load(path, allow_pickle=False).astype("float32"))
        else:
            values = torch.load(path, map_location="cpu", weights_only=True)
            values = values.get("direction", values.get("vector")) if isinstance(values, Mapping) else values
    except Exception as err:  # noqa: BLE001 - numpy and torch raise many types for a bad file
        raise ConfigError(f"{label}: {path} cannot be read ({type(err).__name__}); expected a .npy array or a "
                          ".pt tensor") from None
    if not isinstance(values, torch.Tensor) or values.ndim not in (1, 2):
        found = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ConfigError(f"{label}: {path} holds {found}; expected a vector (C,) or a matrix (K, C) with #row")
    if values.ndim == 2:
        if not row.strip().isdigit() or int(row) >= len(values):
            raise ConfigError(f"{label}: {path} holds {len(values)} directions; expected one picked as "
                              f"{path_text}#K with K in 0..{len(values) - 1}")
        values = values[int(row)]
    return direction(layer, values, at=at, source=spec)


def read_image(path_text: str, size: int) -> torch.Tensor:
    """An image file as (1, 3, size, size) in [0, 1]: resized on its short side, centre-cropped."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    path = Path(path_text).expanduser()
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        raise ConfigError(f"invert={path_text}: not a readable image; expected a PNG or JPEG file") from None
    tensor = TF.to_dtype(TF.pil_to_tensor(rgb), torch.float32, scale=True)
    return TF.center_crop(TF.resize(tensor, [size], antialias=True), [size, size]).unsqueeze(0)


def special_unit(target: nn.Module, name: str, item: str) -> Unit | None:
    """A direction ("direction=cav.npy[#row][@place]") or a feature inversion ("invert=photo.png") of
    layer `name`, or None for a plain units spec."""
    text = item.strip()
    if text.startswith("direction="):
        spec, place = _split_place(text.removeprefix("direction="))
        return Unit(f"{name} direction {Path(spec).name}", [read_direction(spec, name, place)])
    if text.startswith("invert="):
        path = text.removeprefix("invert=")
        image = read_image(path, target.image_size)
        device = next(target.parameters()).device
        with frozen(target), torch.no_grad():
            reference = activations(target, image.to(device), [name])[name][0]
        return Unit(f"{name} invert {Path(path).name}", [match(name, reference, source=path)])
    return None


def layer_shapes(target: nn.Module, layers: list[str]) -> dict[str, tuple[int, ...]]:
    """The shape of one image's activation at each named layer; an unknown name is a one-line error."""
    known = layer_names(target)
    for layer in layers:
        if layer not in known:
            tap(target, [layer])  # raises the one-line error that lists the target's layers
    size = target.image_size
    device = next(target.parameters()).device
    with frozen(target), torch.no_grad():  # a network in training must not see the probe (BN stats)
        probe = activations(target, torch.zeros(1, 3, size, size, device=device), layers)
    return {name: tuple(value.shape[1:]) for name, value in probe.items()}


# Per network, per layer: where spatial=receptive reads it (a window "KxL", "mean", or None for a
# vector layer), probed once.  Weak keys: a network's entry goes with it.
_RECEPTIVE: weakref.WeakKeyDictionary[nn.Module, dict[str, str | None]] = weakref.WeakKeyDictionary()
PROBES = 4  # random images whose gradient supports are joined: a ReLU or a max pool closed on one is open on another


def receptive_fields(target: nn.Module, layers: list[str]) -> dict[str, tuple | None]:
    """Per layer, the input rows and columns (first, last) the centre unit of a conv or token layer
    sees, found from the network itself: the support of d(centre unit)/d(image), joined over all
    channels and a few random images; and the layer's map size (H, W) (the token grid of a token
    layer).  None for a vector layer (B, C), a token layer that is no square grid, or a centre unit
    no gradient reaches.  One forward pass for all the layers, one backward pass each."""
    size = target.image_size
    device = next(target.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(0)  # the caller's random streams are not drawn
    images = torch.rand(PROBES, 3, size, size, generator=generator, device="cpu").to(device).requires_grad_(True)
    prefix = int(getattr(target, "prefix_tokens", 0) or 0)
    found: dict[str, tuple | None] = {}
    with torch.inference_mode(False), torch.enable_grad(), frozen(target):
        read = tap(target, layers)(images)
        for layer in layers:
            activation, grid = read[layer], None
            if activation.ndim == 4:
                grid = tuple(activation.shape[2:])
            elif activation.ndim == 3 and token_grid(activation.shape[1] - prefix):
                grid = (token_grid(activation.shape[1] - prefix),) * 2
            found[layer] = None
            if grid is None or not activation.requires_grad:
                continue
            centre = reduce_units(activation, "center", prefix).float()
            weights = torch.randn(centre.shape[1], generator=generator, device="cpu").to(centre.device)
            gradient, = torch.autograd.grad((centre * weights).sum(), images, retain_graph=True, allow_unused=True)
            support = gradient.abs().sum((0, 1)).cpu() > 0 if gradient is not None else torch.zeros(1, dtype=torch.bool, device="cpu")
            if bool(support.any()):
                rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
                found[layer] = (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])), grid
    return found


def receptive_places(target: nn.Module, layers: list[str]) -> dict[str, str | None]:
    """Where spatial=receptive reads each layer (featvis.synthesis.objectives.receptive_place): a
    centred window the size of its centre unit's receptive field, "mean" where that covers the image,
    None for a vector layer.  Probed once per network and layer."""
    known = _RECEPTIVE.setdefault(target, {})
    missing = [layer for layer in dict.fromkeys(layers) if layer not in known]
    if missing:
        shapes = layer_shapes(target, missing)  # one forward pass without gradients; vectors need no probe
        maps = [layer for layer in missing if len(shapes[layer]) > 1]
        fields = receptive_fields(target, maps) if maps else {}
        for layer in missing:
            if len(shapes[layer]) == 1:
                known[layer] = None
            elif fields[layer] is None:
                known[layer] = "mean"
                log.warning("spatial=receptive: no receptive field found for layer %s %s (no gradient reaches its "
                            "centre unit, or its tokens are no square grid); reading its mean", layer, shapes[layer])
            else:
                rows, cols, grid = fields[layer]
                known[layer] = receptive_place(rows, cols, grid, target.image_size)
    return {layer: known[layer] for layer in layers}


def resolved_places(target: nn.Module, units: list[Unit], spatial: str) -> list[Unit]:
    """`units` with every unit or direction term read at `receptive` (its `at`, or the batch's
    `spatial` where it has none) read at its layer's place instead (receptive_places)."""

    def receptive(term: Term) -> bool:
        return term.kind in ("unit", "direction") and (term.at or spatial) == "receptive"

    layers = list(dict.fromkeys(t.layer for u in units for t in u.terms if receptive(t)))
    if not layers:
        return units
    places = receptive_places(target, layers)
    return [Unit(u.label, [dataclasses.replace(t, at=places[t.layer]) if receptive(t) else t for t in u.terms])
            for u in units]


def layer_sizes(target: nn.Module, layers: list[str], spatial: str = "center") -> dict[str, int]:
    """Units per named layer (conv layers: channels; token layers: features)."""
    return {name: shape[-1] if len(shape) == 2 else shape[0] for name, shape in layer_shapes(target, layers).items()}


def units_of(target: nn.Module, spec: Any, layer: str | None, class_names: list[str],
             spatial: str = "center", pre_relu: bool = False) -> tuple[list[Unit], dict[str, int]]:
    """`spec` is a list of units of `layer`, a list of "layer:unit" strings, or a mapping
    {layer: [units]} across layers; list items may also be `Term`s (featvis.synthesis.objectives:
    direction, match, custom) or `Unit`s.  A unit item may be a direction ("direction=cav.npy") or a
    feature inversion ("invert=photo.png") of its layer.

    Labels of units of other layers than the logits carry their layer name ("conv3 5").  With
    `pre_relu`, a layer that ends in a ReLU is read before it ("conv3" -> "conv3.bn 5").  Units read
    at `receptive` (`spatial`, or "@receptive") come back read at their layer's window
    (receptive_places: `at` "3x3" for a first conv layer, "mean" for a deep one).
    """
    check_spatial(spatial)
    built: list[tuple[int, Unit]] = []
    if not isinstance(spec, Mapping):
        spec = [spec] if isinstance(spec, (str, int, Term, Unit)) else list(spec)
        for position, item in enumerate(spec):
            if isinstance(item, Term):
                built.append((position, Unit(f"{item.layer} {item.kind} {item.source}".strip(), [item])))
            elif isinstance(item, Unit):
                built.append((position, item))
        spec = [item for item in spec if not isinstance(item, (Term, Unit))]
    prefixed = not isinstance(spec, Mapping) and any(":" in str(item) for item in spec)
    if isinstance(spec, Mapping):
        by_layer = dict(spec)
    elif prefixed:  # ["conv3:5", "fc8:red circle", ...]
        by_layer = {}
        for item in spec:
            name, sep, unit = str(item).partition(":")
            by_layer.setdefault(name.strip() if sep else layer, []).append(unit.strip() if sep else item)
    else:
        by_layer = {layer: list(spec)} if spec else {}
    if None in by_layer:
        raise ConfigError("units are given without a layer; expected layer=<name> or units={layer: [...]}")
    if pre_relu:
        renamed = {pre_activation(target, name): items for name, items in by_layer.items()}
        prefixed = prefixed or any(new != old for new, old in zip(renamed, by_layer))
        by_layer = renamed
    known = {t.layer for _, u in built for t in u.terms}
    sizes = layer_sizes(target, sorted(set(by_layer) | known), spatial) if by_layer or known else {}
    units = []
    for name, items in by_layer.items():
        plain = [item for item in items if special_unit_kind(item) is None]
        parsed = iter(parse_units(plain, name, class_names, sizes[name]) if plain else [])
        for item in items:
            unit = special_unit(target, name, str(item)) if special_unit_kind(item) else next(parsed)
            if not special_unit_kind(item) and (isinstance(spec, Mapping) or prefixed):
                unit = Unit(f"{name} {unit.label}", unit.terms)
            units.append(unit)
    for position, unit in built:
        units.insert(min(position, len(units)), unit)
    if not units:
        raise ConfigError("units=[]; expected at least one unit index or class name")
    return resolved_places(target, units, spatial), sizes


def special_unit_kind(item: Any) -> str | None:
    text = str(item).strip()
    return next((kind for kind in ("direction", "invert") if text.startswith(f"{kind}=")), None)


def method_config(name: str, *overrides: str) -> dict[str, Any]:
    """conf/method/<name>.yaml on the schema, with overrides of its keys such as "step.eps3=0.1"."""
    from omegaconf import OmegaConf

    from featvis.configs import compose_config

    for override in overrides:
        moved = moved_key_message(override.partition("=")[0].strip())
        if moved:
            raise ConfigError(moved)
    composed = compose_config("visualize", [f"method={name}", *(f"method.{o}" for o in overrides)])
    return OmegaConf.to_container(composed.method, resolve=True)


def build(block: Mapping[str, Any], where: str, **available: Any) -> Any:
    """The object of a config block with a `_target_`, given those of `available` (the image size,
    the checkpoints, the real images, the space) that its target takes by name."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not isinstance(block, Mapping) or "_target_" not in block:
        raise ConfigError(f"{where}={block!r}; expected a block with a _target_")
    try:
        factory = instantiate(dict(block), _partial_=True)
    except InstantiationException as err:
        raise ConfigError(f"{where}._target_={block['_target_']!r} cannot be built "
                          f"({str(err).splitlines()[0]}); expected an importable class or function") from None
    try:
        wanted = inspect.signature(factory).parameters
    except ValueError:  # the block names an argument its target does not take
        names = inspect.signature(factory.func).parameters
        unknown = [k for k in factory.keywords if k not in names]
        if not unknown:
            raise
        raise ConfigError(f"{where}.{unknown[0]}: {block['_target_']} takes no such argument; expected one of "
                          f"{', '.join(names)}") from None
    return factory(**{k: v for k, v in available.items() if k in wanted and k not in factory.keywords})


def sampler_settings(method: Mapping[str, Any], steps: int | None = None, record_every: int = 0) -> SamplerSettings:
    """A method config's step block, with its own step count unless `steps` is given."""
    values = {**(method.get("step") or {}), "record_every": record_every}
    if steps is not None:
        values["steps"] = int(steps)
    return SamplerSettings(**values)


def needs_real_spectrum(method: Mapping[str, Any]) -> bool:
    """Whether the method's space takes its magnitude spectrum from real images (MACO without a file)."""
    space = method.get("space") or {}
    return str(space.get("_target_", "")).endswith("MacoSpace.from_real") and not space.get("magnitude")


@dataclass
class Method:
    """A method as the sampler runs it: its config, and the parts built from it (a space that
    starts and renders z, a prior term, the post-step operators)."""

    config: dict[str, Any]
    space: nn.Module
    prior: PriorTerm | None = None
    operators: list[Any] = field(default_factory=list)
    search: Any = None  # a black-box strategy (featvis.blackbox.strategies), or None for gradient steps

    @property
    def name(self) -> str:
        return str(self.config.get("name"))

    @property
    def generator_record(self) -> dict[str, Any] | None:
        """Code methods: what G was trained on."""
        return getattr(self.space, "record", None)

    @property
    def objective(self) -> ObjectiveSettings:
        return ObjectiveSettings(**self.config.get("objective", {}))

    def modules(self) -> list[nn.Module]:
        """Every module the method runs (to move them to a device)."""
        return [m for m in (self.space, self.prior, *self.operators) if isinstance(m, nn.Module)]

    def sampler_kwargs(self) -> dict[str, Any]:
        return {"space": self.space, "prior": self.prior, "operators": self.operators}

    def settings(self, steps: int | None = None, record_every: int = 0) -> SamplerSettings:
        """The sampler's settings, with the method's own step count unless `steps` is given."""
        if self.search is not None and steps is not None:
            raise ConfigError(f"steps={steps} counts gradient steps, and method {self.name} searches without "
                              "gradients; expected method.search.evaluations=<image evaluations per seed>")
        return sampler_settings(self.config, steps, record_every)

    def start(self, units: int, seeds: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The starting points of `units` x `seeds` chains (see starting_points)."""
        return starting_points(self.space, units, seeds, device)


def load_method(method: Mapping[str, Any], generator_ckpt: str | None, prior_ckpt: str | None,
                image_size: int, real: Any = None, space: nn.Module | None = None) -> Method:
    """Build a method's parts from its config blocks: the space (G loaded from `generator_ckpt`
    for code methods; MACO's magnitude spectrum from `real`, batches of real images, when its file
    is not given; or `space`, one built already, such as a CodeSpace of a G in training), the
    prior term (a DAE from `prior_ckpt`) and the operators, in order."""
    config = dict(method)
    for key, value in config.items():  # a method config of the flat earlier form
        moved = None if key == "objective" and isinstance(value, Mapping) else moved_key_message(key)
        if moved:
            raise ConfigError(moved)
    available = {"image_size": image_size, "generator_ckpt": generator_ckpt, "prior_ckpt": prior_ckpt, "real": real}
    space = space if space is not None else build(config.get("space") or PIXEL_SPACE, "method.space", **available)
    prior = build(config["prior"], "method.prior", space=space, **available) if config.get("prior") else None
    operators = [build(block, f"method.operators.{name}", space=space, **available)
                 for name, block in (config.get("operators") or {}).items() if block]
    search = build(config["search"], "method.search", space=space, **available) if config.get("search") else None
    if search is not None and prior is not None:
        raise ConfigError("method.prior is a gradient term and method.search a gradient-free search; expected one "
                          "of them (method.prior=null for a search)")
    return Method(config, space, prior, operators, search)
