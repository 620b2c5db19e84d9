"""Any network as a target: an `nn.Module` plus its input contract.

featvis draws RGB images in [0, 1] at one size; a target says what it reads instead.  A
`Target` wraps a module with that contract (input size, normalization, colour channels) so
every sampler, callback and report can feed it the images they draw:

    target = featvis.as_target(torchvision.models.resnet18(num_classes=10), image_size=64,
                               mean=IMAGENET_MEAN, std=IMAGENET_STD)

Layers keep the module's own paths (`layer4`, `layer4.1.relu`, `encoder.layers.encoder_layer_3`,
`blocks.5`): `layer_prefix` tells featvis.nets.layers that they live under `net.`.  The module's
output, whatever it is called inside, is the layer `logits`.  featvis's own networks already
declare their contract (`image_size` and their own normalization), so `as_target` returns them
as they are.  Weights come from local files only; nothing is downloaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featvis.errors import ConfigError
from featvis.io import read_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What a target that declares no normalization reads: the images as drawn, in [0, 1].
UNIT_RANGE = ((0.0,), (1.0,))


def declares_contract(module: nn.Module) -> bool:
    """featvis's networks and Targets: they read [0, 1] RGB at `image_size` and normalize themselves."""
    return isinstance(module, Target) or (int(getattr(module, "image_size", 0) or 0) > 0
                                          and hasattr(module, "input_mean"))


def _per_channel(name: str, values: Any, channels: int) -> tuple[float, ...]:
    values = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ConfigError(f"{name}={list(values)}; expected {channels} values (one per input channel) or one")
    return values


class Target(nn.Module):
    """`net` behind its input contract: [0, 1] RGB images of `image_size` in, `net`'s output out.

    The images are turned into `channels` (1: their luminance, as torchvision's rgb_to_grayscale),
    then normalized by `mean` and `std` (per channel, what the module was trained on).
    `prefix_tokens`: how many leading tokens of a token layer (B, N, C) are not patches (a ViT's
    class token; read from the module when it says, else 0).
    """

    layer_prefix = "net."
    logits_layer = "logits"

    def __init__(self, net: nn.Module, image_size: int, mean: Sequence[float] | float = 0.0,
                 std: Sequence[float] | float = 1.0, channels: int = 3, class_names: Sequence[str] = (),
                 prefix_tokens: int | None = None):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ConfigError(f"target {type(net).__name__}; expected a torch.nn.Module")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"image_size={image_size!r}; expected the side in pixels of the images the target "
                              "reads (as_target(module, image_size=...))")
        if channels not in (1, 3):
            raise ConfigError(f"channels={channels!r}; expected 3 (RGB) or 1 (grayscale)")
        mean, std = _per_channel("mean", mean, channels), _per_channel("std", std, channels)
        if min(std) <= 0:
            raise ConfigError(f"std={list(std)}; expected positive values")
        self.net = net
        self.logits = nn.Identity()  # the module's output, addressable as the layer `logits`
        self.image_size, self.channels = int(image_size), int(channels)
        self.class_names = list(class_names)
        self.prefix_tokens = int(prefix_tokens if prefix_tokens is not None else module_prefix_tokens(net))
        self.register_buffer("input_mean", torch.tensor(mean, device="cpu").view(1, channels, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std, device="cpu").view(1, channels, 1, 1), persistent=False)

    @property
    def contract(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": self.channels,
                "mean": self.input_mean.flatten().tolist(), "std": self.input_std.flatten().tolist()}

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> what the module reads."""
        if self.channels == 1:
            weights = torch.tensor([0.2989, 0.587, 0.114], device=images.device, dtype=images.dtype)
            images = (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
        return (images - self.input_mean) / self.input_std

    def to_display(self, inputs: torch.Tensor) -> torch.Tensor:
        """What the module reads (normalized, 1 or 3 channels) -> [0, 1] RGB, to show or to read again."""
        images = (inputs.float() * self.input_std.to(inputs.device) + self.input_mean.to(inputs.device))
        return images.expand(-1, 3, -1, -1).clamp(0, 1) if images.shape[1] == 1 else images.clamp(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.net(self.prepare(images)))


def module_prefix_tokens(net: nn.Module) -> int:
    """Leading non-patch tokens of a ViT: timm says `num_prefix_tokens`; torchvision's has a class token."""
    if hasattr(net, "num_prefix_tokens"):
        return int(net.num_prefix_tokens)
    return 1 if isinstance(getattr(net, "class_token", None), torch.Tensor) else 0


def as_target(module: nn.Module, image_size: int | None = None, mean: Sequence[float] | float | None = None,
              std: Sequence[float] | float | None = None, channels: int | None = None,
              class_names: Sequence[str] | None = None, prefix_tokens: int | None = None) -> nn.Module:
    """`module` with its input contract declared, as every featvis entry point takes a target.

    image_size: the side of the (square) images it reads; mean / std: the normalization it was
    trained with (default: none, it reads [0, 1]); channels: 3 or 1; class_names: names of the
    output units (optional).  featvis's own networks and Targets come back unchanged (a contract
    given for one must agree with the one it declares).
    """
    if declares_contract(module):
        _check_agrees(module, image_size, mean, std, channels)
        if class_names is not None and isinstance(module, Target):
            module.class_names = list(class_names)
        return module
    if image_size is None:
        raise ConfigError(f"{type(module).__name__} declares no input contract; expected "
                          "featvis.as_target(module, image_size=..., mean=..., std=...) (the size and "
                          "normalization it was trained on)")
    channels = 3 if channels is None else channels
    return Target(module, image_size, UNIT_RANGE[0] if mean is None else mean,
                  UNIT_RANGE[1] if std is None else std, channels, class_names or (), prefix_tokens)


def _check_agrees(module: nn.Module, image_size: Any, mean: Any, std: Any, channels: Any) -> None:
    declared = {"image_size": module.image_size, "channels": int(getattr(module, "channels", 3)),
                "mean": module.input_mean.flatten().tolist(), "std": module.input_std.flatten().tolist()}
    for name, given in (("image_size", image_size), ("channels", channels), ("mean", mean), ("std", std)):
        if given is None:
            continue
        want = declared[name]
        if isinstance(want, list):
            given = list(_per_channel(name, given, len(want)))
            same = all(abs(a - b) < 1e-6 for a, b in zip(given, want))
        else:
            same = given == want
        if not same:
            raise ConfigError(f"{name}={given} disagrees with the {type(module).__name__}'s own {name}={want}; "
                              "expected it left out (the network declares its contract)")


# -- building a target from a config (visualize.py's `target` block) ------------------------------
def load_weights(net: nn.Module, path: str | Path, what: str) -> None:
    """A local weights file into `net`: a state dict (.pt/.pth, weights only, or .safetensors) or a
    Lightning checkpoint of a module holding `net` as an attribute (its `state_dict` under that
    attribute's prefix, e.g. `net.`)."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ConfigError(f"target.weights={path} does not exist; expected a local weights file")
        from safetensors.torch import load_file

        state: Mapping[str, Any] = load_file(str(path))
    else:
        state = read_checkpoint(path)
        state = state.get("state_dict", state)
    state = strip_module_prefix(state, set(net.state_dict()))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        lines = str(err).splitlines()
        detail = lines[1].strip() if len(lines) > 1 else str(err)
        raise ConfigError(f"target.weights={path} does not fit {what} ({detail[:160]})") from None


def strip_module_prefix(state: Mapping[str, Any], wanted: set[str]) -> Mapping[str, Any]:
    """A LightningModule's state dict ("net.layer1.0.conv1.weight", ...) as its network's, when
    removing the one prefix its keys share gives the network's keys."""
    if set(state) == wanted or not state:
        return state
    prefixes = {key.split(".", 1)[0] for key in state if "." in key}
    for prefix in sorted(prefixes):
        inner = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if set(inner) == wanted:
            return inner
    return state


def torchvision_module(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ConfigError(f"target.torchvision={name!r} is not a torchvision model; expected e.g. "
                          "alexnet, resnet18, vit_b_16") from None
    return builder(weights=None, num_classes=num_classes, **kwargs)


def timm_module(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"target.timm={name!r} needs timm; expected `pip install timm`") from None
    if not timm.is_model(name):
        raise ConfigError(f"target.timm={name!r} is not a timm model; expected a name from timm.list_models()")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def factory_module(path: str, **kwargs: Any) -> nn.Module:
    module_name, _, attribute = path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"target._target_={path!r} cannot be imported; expected an importable "
                          "function or class, e.g. my_project.models.make_net") from None
    net = factory(**kwargs)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"target._target_={path!r} returned {type(net).__name__}; expected a torch.nn.Module")
    return net


def default_normalization(net: nn.Module, family: str) -> tuple[Sequence[float], Sequence[float]]:
    """What a library's models are trained on when the config does not say: timm's models carry it
    (pretrained_cfg); torchvision's classifiers are ImageNet's; a factory's reads [0, 1]."""
    if family == "timm":
        cfg = getattr(net, "pretrained_cfg", None) or {}
        return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if family == "torchvision":
        return IMAGENET_MEAN, IMAGENET_STD
    return UNIT_RANGE


# The target block's own keys; under `_target_` every other key is the factory's argument.
CONTRACT_KEYS = ("ckpt", "ckpt_dir", "torchvision", "timm", "_target_", "weights", "image_size", "mean", "std",
                 "channels", "num_classes", "class_names", "kwargs")


def build_target(cfg: Mapping[str, Any]) -> Target:
    """A Target from visualize.py's `target` block: `torchvision`, `timm` or `_target_` names the
    module, `weights` a local file, and the contract keys what it reads."""
    kinds = [k for k in ("torchvision", "timm", "_target_") if cfg.get(k)]
    if len(kinds) != 1:
        raise ConfigError(f"target: {' and '.join(kinds) or 'nothing'} given; expected one of target.ckpt, "
                          "target.torchvision=<name>, target.timm=<name> or target._target_=<factory>")
    kind = kinds[0]
    kwargs = dict(cfg.get("kwargs") or {})
    if kind == "_target_":
        kwargs.update({k: v for k, v in cfg.items() if k not in CONTRACT_KEYS})
        net = factory_module(cfg["_target_"], **kwargs)
    else:
        build = torchvision_module if kind == "torchvision" else timm_module
        net = build(cfg[kind], int(cfg.get("num_classes") or 1000), **kwargs)
    if cfg.get("weights"):
        load_weights(net, cfg["weights"], f"target.{kind}={cfg[kind]}")
    mean, std = default_normalization(net, "factory" if kind == "_target_" else kind)
    if cfg.get("mean") is not None:
        mean = cfg["mean"]
    if cfg.get("std") is not None:
        std = cfg["std"]
    channels = int(cfg.get("channels") or 3)
    if kind != "_target_" and len(mean) != channels:  # a grayscale target of an RGB library's statistics
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    net.eval()
    return Target(net, int(cfg.get("image_size") or 224), mean, std, channels, class_names_of(cfg.get("class_names")))


def class_names_of(value: Any) -> list[str]:
    """Class names as a list, or a text file of one name a line."""
    if not value:
        return []
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"target.class_names={value}; expected a list of names or a text file of one name a line")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [str(v) for v in value]
