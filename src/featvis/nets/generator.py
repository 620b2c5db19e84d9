"""The image prior: a generator G that inverts an encoder's code, and its discriminator D.

DeePSiM layout (Dosovitskiy & Brox 2016, the fc6 generator of DGN-AM and PPGN):
fully connected layers -> a 4x4 map -> stages of (2x up-convolution [+ 3x3
convolution]), LeakyReLU(0.3), linear output.  `upsample="nearest"` swaps each 4x4
stride-2 up-convolution for a nearest 2x resize and a 3x3 convolution (Odena et al. 2016):
the up-convolution's uneven kernel overlap prints a checkerboard that activation
maximization then amplifies.  G outputs RGB images in the [0, 1]
range the networks take (not clamped: the samplers clip where they need to).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from featvis.errors import ConfigError


def _positive(name: str, values: Sequence[int], allow_zero: bool = False) -> None:
    for value in values:
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{name}={list(values)}; expected positive sizes")


UPSAMPLE = ("deconv", "nearest")


class Generator(nn.Module):
    """code (B x code_dim) -> image (B x 3 x S x S), S = 4 * 2**len(stages)."""

    arch = "generator"

    def __init__(
        self,
        code_dim: int,
        fc_dims: Sequence[int] = (1024, 1024),
        start_channels: int = 256,
        stages: Sequence[Sequence[int]] = ((256, 256), (128, 128), (64, 64), (32, 0)),
        negative_slope: float = 0.3,
        upsample: str = "deconv",
    ):
        super().__init__()
        if upsample not in UPSAMPLE:
            raise ConfigError(f"generator.upsample={upsample!r}; expected one of {list(UPSAMPLE)}")
        _positive("generator.fc_dims", [code_dim, *fc_dims, start_channels])
        if not stages or any(len(s) != 2 for s in stages):
            raise ConfigError(f"generator.stages={[list(s) for s in stages]}; "
                              "expected [up_channels, conv_channels (0 for none)] pairs")
        _positive("generator.stages", [s[0] for s in stages])
        _positive("generator.stages", [s[1] for s in stages], allow_zero=True)
        self.spec = {"arch": self.arch, "code_dim": int(code_dim), "fc_dims": [int(d) for d in fc_dims],
                     "start_channels": int(start_channels),
                     "stages": [[int(a), int(b)] for a, b in stages],
                     "negative_slope": float(negative_slope), "upsample": upsample}
        self.code_dim = int(code_dim)
        self.image_size = 4 * 2 ** len(stages)
        self.start_channels = int(start_channels)

        fc: list[nn.Module] = []
        dims = [code_dim, *fc_dims, start_channels * 16]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            fc += [nn.Linear(d_in, d_out), nn.LeakyReLU(negative_slope)]
        self.fc = nn.Sequential(*fc)

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = start_channels
        for i, (up, conv) in enumerate(stages):
            if upsample == "deconv":
                layers[f"up{i}"] = nn.ConvTranspose2d(channels, up, 4, stride=2, padding=1)
            else:  # resize, then convolve: every output pixel sees the same kernel taps
                layers[f"resize{i}"] = nn.Upsample(scale_factor=2, mode="nearest")
                layers[f"up{i}"] = nn.Conv2d(channels, up, 3, padding=1)
            layers[f"act{i}"] = nn.LeakyReLU(negative_slope)
            channels = up
            if conv:
                layers[f"conv{i}"] = nn.Conv2d(channels, conv, 3, padding=1)
                layers[f"conv{i}_act"] = nn.LeakyReLU(negative_slope)
                channels = conv
        layers["to_rgb"] = nn.Conv2d(channels, 3, 3, padding=1)
        self.deconv = nn.Sequential(layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.fc(code).view(-1, self.start_channels, 4, 4)
        # Centre the linear output on mid-grey so an untrained G starts in range.
        return self.deconv(x) + 0.5


class Discriminator(nn.Module):
    """(image, code) -> one real/fake logit; the code branch is optional (`code_dim=0`)."""

    arch = "discriminator"

    def __init__(
        self,
        image_size: int,
        code_dim: int = 0,
        channels: Sequence[int] = (32, 64, 128, 256),
        code_hidden: int = 256,
        hidden: int = 256,
        negative_slope: float = 0.2,
    ):
        super().__init__()
        _positive("discriminator.channels", [image_size, *channels, hidden])
        self.spec = {"arch": self.arch, "image_size": int(image_size), "code_dim": int(code_dim),
                     "channels": [int(c) for c in channels], "code_hidden": int(code_hidden),
                     "hidden": int(hidden), "negative_slope": float(negative_slope)}
        convs: list[nn.Module] = []
        c_in = 3
        for c_out in channels:
            convs += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(negative_slope)]
            c_in = c_out
        self.image_branch = nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.code_branch = (nn.Sequential(nn.Linear(code_dim, code_hidden), nn.LeakyReLU(negative_slope))
                            if code_dim else None)
        joint = c_in + (code_hidden if code_dim else 0)
        self.head = nn.Sequential(nn.Linear(joint, hidden), nn.LeakyReLU(negative_slope),
                                  nn.Linear(hidden, 1))

    def forward(self, images: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        features = self.image_branch(images)
        if self.code_branch is not None:
            features = torch.cat([features, self.code_branch(code)], dim=1)
        return self.head(features).squeeze(1)
