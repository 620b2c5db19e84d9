"""AlexNet/CaffeNet-layout classifiers whose layers carry Caffe's blob names.

Module names follow the CaffeNet prototxt: `conv1`..`conv5`, `pool1`, `pool2`,
`pool5`, `fc6`, `fc7`, `fc8`.  Caffe applies its ReLUs in place, so its `conv5`
or `fc6` blob is the *rectified* activation; here each of those layers is a small
`Sequential` (`conv`/`linear`, optional `bn`, `relu`) whose output is that same
post-ReLU activation, while the pre-ReLU value stays reachable as `fc6.linear`
or `conv5.conv`.  `fc8` is the logit layer.

Every network takes RGB images in [0, 1] and normalizes them itself (the
`input_mean`/`input_std` buffers), so generators, samplers and data all speak
one image range and any prior can drive any target.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from featvis.errors import ConfigError


def _conv_block(c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                groups: int, batch_norm: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=not batch_norm))
    if batch_norm:
        layers["bn"] = nn.BatchNorm2d(c_out)
    layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


def _fc_block(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(linear=nn.Linear(d_in, d_out), relu=nn.ReLU()))


class AlexNet(nn.Module):
    """conv1 -> pool1 -> conv2 -> pool2 -> conv3 -> conv4 -> conv5 -> pool5 -> fc6 -> fc7 -> fc8.

    The same class is `alexnet_mini` (64 px, narrow, batch norm) and `caffenet`
    (227 px, torchvision AlexNet widths, loadable from torchvision weights);
    only the arguments differ.  `spec` holds them as plain types so a
    checkpoint can rebuild the network without running any code it names.
    """

    arch = "alexnet"
    logits_layer = "fc8"

    def __init__(
        self,
        num_classes: int,
        image_size: int = 64,
        channels: Sequence[int] = (32, 64, 96, 96, 64),
        kernels: Sequence[int] = (5, 5, 3, 3, 3),
        strides: Sequence[int] = (2, 1, 1, 1, 1),
        paddings: Sequence[int] = (2, 2, 1, 1, 1),
        groups: Sequence[int] = (1, 1, 1, 1, 1),
        fc6_dim: int = 1024,
        fc7_dim: int = 1024,
        dropout: float = 0.5,
        batch_norm: bool = True,
        input_mean: Sequence[float] = (0.5, 0.5, 0.5),
        input_std: Sequence[float] = (0.5, 0.5, 0.5),
    ):
        super().__init__()
        per_layer = {"channels": channels, "kernels": kernels, "strides": strides,
                     "paddings": paddings, "groups": groups}
        for name, values in per_layer.items():
            if len(values) != 5:
                raise ConfigError(f"model.{name}={list(values)}; expected 5 values (conv1..conv5)")
        for name, value in (("num_classes", num_classes), ("fc6_dim", fc6_dim),
                            ("fc7_dim", fc7_dim), ("image_size", image_size)):
            if int(value) < 1:
                raise ConfigError(f"model.{name}={value}; expected a positive integer")
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.dropout={dropout}; expected a value in [0, 1)")
        if len(input_mean) != 3 or len(input_std) != 3 or min(input_std) <= 0:
            raise ConfigError(
                f"model.input_mean={list(input_mean)}, input_std={list(input_std)}; "
                "expected 3 values each, std positive")

        self.spec = {
            "arch": self.arch, "num_classes": int(num_classes), "image_size": int(image_size),
            **{k: [int(v) for v in vs] for k, vs in per_layer.items()},
            "fc6_dim": int(fc6_dim), "fc7_dim": int(fc7_dim), "dropout": float(dropout),
            "batch_norm": bool(batch_norm), "input_mean": [float(v) for v in input_mean],
            "input_std": [float(v) for v in input_std],
        }
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        # Not persistent: they are part of `spec`, so weights files stay plain layer weights.
        self.register_buffer("input_mean", torch.tensor(input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(input_std).view(1, 3, 1, 1), persistent=False)

        c_in = [3, *channels[:-1]]
        conv = [_conv_block(c_in[i], channels[i], kernels[i], strides[i], paddings[i], groups[i],
                            batch_norm) for i in range(5)]
        self.conv1, self.pool1 = conv[0], nn.MaxPool2d(3, 2)
        self.conv2, self.pool2 = conv[1], nn.MaxPool2d(3, 2)
        self.conv3, self.conv4, self.conv5 = conv[2], conv[3], conv[4]
        self.pool5 = nn.MaxPool2d(3, 2)

        side = image_size
        for i in range(5):
            side = (side + 2 * paddings[i] - kernels[i]) // strides[i] + 1
            if i in (0, 1, 4):  # pool1, pool2, pool5
                side = (side - 3) // 2 + 1
            if side < 1:
                raise ConfigError(f"model.image_size={image_size}; too small for this layout "
                                  f"(conv{i + 1} would have no pixels left)")
        self.fc6 = _fc_block(channels[-1] * side * side, fc6_dim)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = _fc_block(fc6_dim, fc7_dim)
        self.drop7 = nn.Dropout(dropout)
        self.fc8 = nn.Linear(fc7_dim, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        return self.pool5(self.conv5(self.conv4(self.conv3(x))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.input_mean) / self.input_std
        x = torch.flatten(self._features(x), 1)
        x = self.drop6(self.fc6(x))
        x = self.drop7(self.fc7(x))
        return self.fc8(x)


# torchvision.models.alexnet parameter names -> ours (same shapes when built with
# the `caffenet` preset, whose widths are torchvision's 64-192-384-256-256).
TORCHVISION_ALEXNET_KEYS = {
    "features.0": "conv1.conv", "features.3": "conv2.conv", "features.6": "conv3.conv",
    "features.8": "conv4.conv", "features.10": "conv5.conv",
    "classifier.1": "fc6.linear", "classifier.4": "fc7.linear", "classifier.6": "fc8",
}


def from_torchvision_alexnet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision AlexNet state dict to this layout's names."""
    renamed = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in TORCHVISION_ALEXNET_KEYS:
            raise ConfigError(
                f"weights: unexpected parameter {key!r}; expected a torchvision AlexNet state dict")
        renamed[f"{TORCHVISION_ALEXNET_KEYS[prefix]}.{leaf}"] = value
    return renamed
