"""Plain `nn.Module`s: no Lightning here, so samplers can use any of them."""

from __future__ import annotations

from pathlib import Path

from featvis.errors import ConfigError
from featvis.io import read_checkpoint
from featvis.nets.alexnet import AlexNet, from_torchvision_alexnet
from featvis.nets.codes import CodeDAE, CodeStatistics
from featvis.nets.deepsim_weights import from_upconv
from featvis.nets.encoder import Encoder
from featvis.nets.generator import Discriminator, Generator
from featvis.nets.layers import activations, layer_names, tap

__all__ = ["AlexNet", "CodeDAE", "CodeStatistics", "Discriminator", "Encoder", "Generator",
           "activations", "build_alexnet", "from_upconv", "layer_names", "tap"]


def build_alexnet(weights: str | None = None, **kwargs) -> AlexNet:
    """An `AlexNet`, optionally initialized from a local weights file.

    `weights` may be a torchvision AlexNet state dict (e.g. `alexnet-owt-7be5be79.pth`,
    for the `caffenet` preset) or a state dict in this layout's own names.
    Nothing is ever downloaded.
    """
    net = AlexNet(**kwargs)
    if weights is None:
        return net
    state = read_checkpoint(Path(weights))
    state = state.get("state_dict", state)
    if any(k.startswith("features.") for k in state):
        state = from_torchvision_alexnet(state)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip()  # line 0 only says "Error(s) in loading"
        raise ConfigError(f"model.weights={weights}: does not fit this network ({first}); "
                          "expected matching layer sizes") from None
    return net
