"""Address any layer of any network by name and read its activations; `frozen` reads a network
without changing it.

Names are torchvision feature-extraction node names: a module path (`conv5`,
`fc6.linear`, `features.10`, `layer4.1.relu`) or any traced operation.  A path to
a container module means the output of its last operation, so for our AlexNet
`fc6` is the post-ReLU fc6 code and `fc6.linear` the pre-ReLU one.  The
extractor is truncated after the deepest requested layer, so asking for `conv3`
does not run conv4..fc8.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from featvis.errors import ConfigError


def layer_names(model: nn.Module) -> list[str]:
    """Every name `tap` accepts for this model, in forward order (eval-mode graph).

    A model with a `layer_prefix` (a wrapper such as `TorchvisionTarget`) is addressed
    by the names of what it wraps, without the prefix.
    """
    _, eval_nodes = get_graph_node_names(model)
    containers = {name for name, module in model.named_modules() if name and len(module._modules)}
    named = list(eval_nodes)
    seen = set(named)
    for node in eval_nodes:
        parts = node.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if prefix in containers and prefix not in seen:
                seen.add(prefix)
                named.append(prefix)
    strip = getattr(model, "layer_prefix", "")
    return [n[len(strip):] for n in named if n.startswith(strip)] if strip else named


def _check_names(model: nn.Module, names: Sequence[str]) -> None:
    if not names:
        raise ConfigError("layers: no layer names given; expected at least one (e.g. fc8)")
    known = set(layer_names(model))
    for name in names:
        if name not in known:
            inner = model.get_submodule(getattr(model, "layer_prefix", "").rstrip(".")) or model
            top = [n for n, _ in inner.named_children()]
            raise ConfigError(
                f"layer {name!r} not found in {type(inner).__name__}; expected one of {top} "
                f"or a module path inside them")


def tap(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A module sharing `model`'s weights whose forward returns {name: activation}.

    Gradients flow through it, so samplers can differentiate a unit with respect
    to the input image.
    """
    names = list(dict.fromkeys(names))
    _check_names(model, names)
    prefix = getattr(model, "layer_prefix", "")
    return create_feature_extractor(model, return_nodes={prefix + n: n for n in names})


def pre_activation(model: nn.Module, name: str) -> str:
    """The name of what feeds `name`'s final ReLU (`conv3` -> `conv3.bn`, `fc6` -> `fc6.linear`), or
    `name` itself when it is not a container ending in a ReLU.

    A rectified unit that is zero everywhere on an image passes no gradient back; its input does.
    """
    prefix = getattr(model, "layer_prefix", "")
    try:
        module = model.get_submodule(prefix + name)
    except AttributeError:
        return name
    children = list(module.named_children())
    if len(children) >= 2 and isinstance(children[-1][1], nn.ReLU):
        return f"{name}.{children[-2][0]}"
    return name


@torch.no_grad()
def activations(model: nn.Module, images: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations of the named layers for a batch of images (no gradients)."""
    return tap(model, names)(images)


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Eval mode and no parameter grads inside; every module's mode and flags restored after."""
    modules = [m for m in modules if m is not None]
    modes = [[(sub, sub.training) for sub in m.modules()] for m in modules]
    flags = [[(p, p.requires_grad) for p in m.parameters()] for m in modules]
    try:
        for m in modules:
            m.eval().requires_grad_(False)
        yield
    finally:
        for saved in modes:
            for sub, mode in saved:
                sub.training = mode
        for saved in flags:
            for p, flag in saved:
                p.requires_grad_(flag)
