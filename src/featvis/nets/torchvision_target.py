"""Any torchvision classifier as a target: local weights, [0, 1] input, its own layer names."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from featvis.errors import ConfigError
from featvis.io import read_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionTarget(nn.Module):
    """torchvision.models.<name> behind the input normalization every featvis network does itself.

    Layers keep torchvision's module paths (`features.10`, `layer4.1.relu`): `layer_prefix`
    tells `featvis.nets.layers` that they live under `net.`.  Weights come from a local
    state-dict file only; nothing is downloaded.
    """

    layer_prefix = "net."

    def __init__(self, name: str, weights: str | None = None, image_size: int = 224, num_classes: int = 1000,
                 input_mean: Sequence[float] = IMAGENET_MEAN, input_std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        try:
            builder = torchvision.models.get_model_builder(name)
        except ValueError:
            raise ConfigError(f"target.torchvision={name!r} is not a torchvision model; expected e.g. "
                              "alexnet, resnet18, vgg16") from None
        self.net = builder(weights=None, num_classes=num_classes)
        if weights:
            state = read_checkpoint(weights)
            try:
                self.net.load_state_dict(state.get("state_dict", state))
            except RuntimeError as err:
                detail = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
                raise ConfigError(f"target.weights={weights} does not fit {name} ({detail[:160]})") from None
        self.image_size, self.num_classes = int(image_size), int(num_classes)
        self.register_buffer("input_mean", torch.tensor(input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(input_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.input_mean) / self.input_std)
