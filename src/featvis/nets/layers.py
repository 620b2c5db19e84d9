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
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

from featvis.errors import ConfigError


def _prefix(model: nn.Module) -> str:
    return getattr(model, "layer_prefix", "")


def _node(model: nn.Module, name: str) -> str:
    """The node name behind a layer name: the wrapped module's paths carry the wrapper's prefix, and a
    wrapper's own `logits_layer` (its output) does not."""
    prefix = _prefix(model)
    return name if not prefix or name == getattr(model, "logits_layer", None) else prefix + name


def _traced_nodes(model: nn.Module) -> list[str] | None:
    """The eval-mode graph's node names, or None when the model cannot be traced."""
    try:
        return list(get_graph_node_names(model)[1])
    except Exception:  # noqa: BLE001 - any tracing failure: the module paths are read instead
        return None


def layer_names(model: nn.Module) -> list[str]:
    """Every name `tap` accepts for this model, in forward order (eval-mode graph).

    A model with a `layer_prefix` (a wrapper such as featvis.nets.targets.Target) is addressed by
    the names of what it wraps, without the prefix, plus its own output layer (`logits`).  A
    model that torch.fx cannot trace is addressed by its module paths (read through forward hooks).
    """
    nodes = _traced_nodes(model)
    containers = {name for name, module in model.named_modules() if name and len(module._modules)}
    if nodes is None:
        nodes = [name for name, _ in model.named_modules() if name and name not in containers]
    named = list(nodes)
    seen = set(named)
    for node in nodes:
        parts = node.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if prefix in containers and prefix not in seen:
                seen.add(prefix)
                named.append(prefix)
    strip = _prefix(model)
    if not strip:
        return named
    own = getattr(model, "logits_layer", None)
    return [n[len(strip):] for n in named if n.startswith(strip)] + ([own] if own in seen else [])


def _check_names(model: nn.Module, names: Sequence[str]) -> None:
    if not names:
        raise ConfigError("layers: no layer names given; expected at least one (e.g. fc8)")
    known = set(layer_names(model))
    for name in names:
        if name not in known:
            inner = model.get_submodule(_prefix(model).rstrip(".")) or model
            top = [n for n, _ in inner.named_children()]
            own = getattr(model, "logits_layer", None) if _prefix(model) else None
            raise ConfigError(
                f"layer {name!r} not found in {type(inner).__name__}; expected one of {top} "
                f"or a module path inside them" + (f" ({own!r}: its output)" if own else ""))


class _Captured(Exception):
    """Raised by the last hook a HookTaps forward needs: the layers after it are not run."""


class HookTaps(nn.Module):
    """`tap` for a model torch.fx cannot trace: forward hooks on named modules."""

    def __init__(self, model: nn.Module, return_nodes: dict[str, str]):
        super().__init__()
        self.model, self.return_nodes = model, dict(return_nodes)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        found: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
                found[name] = output
                if len(found) == len(self.return_nodes):
                    raise _Captured
            return keep

        handles = [self.model.get_submodule(path).register_forward_hook(hook(name))
                   for path, name in self.return_nodes.items()]
        try:
            self.model(images)
        except _Captured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {name: found[name] for name in self.return_nodes.values()}


def tap(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A module sharing `model`'s weights whose forward returns {name: activation}.

    Gradients flow through it, so samplers can differentiate a unit with respect
    to the input image.
    """
    names = list(dict.fromkeys(names))
    _check_names(model, names)
    return_nodes = {_node(model, n): n for n in names}
    try:
        return create_feature_extractor(model, return_nodes=return_nodes)
    except Exception as err:  # noqa: BLE001 - not traceable: module paths through hooks
        modules = dict(model.named_modules())
        missing = [n for n in return_nodes if n not in modules]
        if missing:
            raise ConfigError(f"layer {missing[0]!r} is an operation, and {type(model).__name__} cannot be traced "
                              f"by torch.fx ({type(err).__name__}); expected a module path") from None
        return HookTaps(model, return_nodes)


def _is_relu(node: Any, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (torch.relu, F.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


class RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for an image where the ReLU passes none back at all, is let through
    wherever it would not push an inactive input further down (lucid's redirected_relu_grad): a
    unit that is dead on the start image still gets a direction to move in."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        active = x > 0
        ctx.save_for_backward(active)
        return x * active

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        active, = ctx.saved_tensors
        relu_grad = grad * active
        rows = relu_grad.reshape(len(relu_grad), -1) if relu_grad.ndim > 1 else relu_grad.reshape(1, -1)
        passed = (rows != 0).any(1)
        # On the host the common case (every image passes a gradient) is read at no cost; on a GPU
        # reading it would wait for the device, so the redirected gradient is computed and selected.
        if grad.device.type == "cpu" and bool(passed.all()):
            return relu_grad
        redirected = grad.masked_fill(~active & (grad < 0), 0)
        if relu_grad.ndim < 2:
            return torch.where(passed[0], relu_grad, redirected)
        return torch.where(passed.view(-1, *([1] * (grad.ndim - 1))), relu_grad, redirected)


def redirected_relu(x: torch.Tensor) -> torch.Tensor:
    return RedirectedReLU.apply(x)


def redirected_copy(taps: nn.Module) -> nn.Module | None:
    """A copy of a traced `tap` module (its eval-mode graph, sharing its weights) whose ReLUs compute
    RedirectedReLU's gradient, the same forward; None for hook-based taps."""
    if not isinstance(taps, torch.fx.GraphModule):
        return None
    graph = copy.deepcopy(getattr(taps, "eval_graph", None) or taps.graph)
    for node in graph.nodes:
        if _is_relu(node, taps):
            node.op, node.target, node.args, node.kwargs = "call_function", redirected_relu, node.args[:1], {}
    return torch.fx.GraphModule(taps, graph).eval()


def pre_activation(model: nn.Module, name: str) -> str:
    """The name of what feeds `name`'s final ReLU (`conv3` -> `conv3.bn`, `fc6` -> `fc6.linear`,
    a ResNet's `layer2` -> `layer2.1.add`), or `name` itself when its last operation is no ReLU.

    A rectified unit that is zero everywhere on an image passes no gradient back; its input does.
    """
    wanted = _node(model, name)
    try:
        tracer = NodePathTracer()
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model is read as it is
        return name
    qualname = tracer.node_to_qualname
    last = None
    for node in graph.nodes:
        path = qualname.get(node)
        if path is not None and (path == wanted or path.startswith(wanted + ".")):
            last = node
    if last is None or not _is_relu(last, model) or not last.args or last.args[0] not in qualname:
        return name
    feeding = qualname[last.args[0]]
    prefix = _prefix(model)
    return feeding[len(prefix):] if prefix and feeding.startswith(prefix) else feeding


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
