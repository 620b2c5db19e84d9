"""The image prior: a generator G that inverts an encoder's code, and its discriminator D.

DeePSiM layout (Dosovitskiy & Brox 2016, the fc6 generator of DGN-AM and PPGN):
fully connected layers -> a 4x4 map -> stages of (2x up-convolution [+ 3x3
convolution]), LeakyReLU(0.3), linear output.  `upsample="nearest"` (or "bilinear") swaps each
4x4 stride-2 up-convolution for a 2x resize and a 3x3 convolution (Odena et al. 2016): the
up-convolution's uneven kernel overlap prints a checkerboard that activation maximization then
amplifies; a bilinear resize also leaves no 2x2 blocks for it to find.  `norm="group"` puts a
GroupNorm before each activation of the up-stages: the same in training and in eval, so an
averaged (EMA) copy needs no running statistics.  `noise=True` adds StyleGAN's per-pixel noise
after each up-stage convolution (`NoiseInjection`).  G outputs RGB images in the [0, 1]
range the networks take (not clamped: the samplers clip where they need to).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from featvis.errors import ConfigError


def _positive(name: str, values: Sequence[int], allow_zero: bool = False) -> None:
    for value in values:
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{name}={list(values)}; expected positive sizes")


UPSAMPLE = ("deconv", "nearest", "bilinear")
NORMS = ("none", "group")


TO_RGB = ("conv", "up")


class NoiseInjection(nn.Module):
    """Per-pixel Gaussian noise times a learned per-channel scale that starts at 0 (Karras et
    al. 2019): a source for texture that the code does not carry, such as random backgrounds,
    which G otherwise derives from the code, with a pattern at its up-sampling periods.  Fresh
    noise in training; in eval one fixed map, so that G(h) is a function of h for the samplers."""

    def __init__(self, channels: int, size: int, seed: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        fixed = torch.randn(1, 1, size, size, device="cpu",
                            generator=torch.Generator(device="cpu").manual_seed(seed))
        self.register_buffer("fixed", fixed, persistent=False)  # rebuilt from the seed, not stored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = (torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype) if self.training
                 else self.fixed.to(x.dtype))
        return x + self.scale * noise


class Generator(nn.Module):
    """code (B x code_dim) -> image (B x 3 x S x S), S = 4 * 2**len(stages) (x 2 with to_rgb="up").

    `to_rgb`: the output layer, a 3x3 convolution ("conv") or one more 2x up-convolution
    straight to RGB ("up": DeePSiM's deconv0, conf/generator/deepsim.yaml).
    """

    arch = "generator"

    def __init__(
        self,
        code_dim: int,
        fc_dims: Sequence[int] = (1024, 1024),
        start_channels: int = 256,
        stages: Sequence[Sequence[int]] = ((256, 256), (128, 128), (64, 64), (32, 0)),
        negative_slope: float = 0.3,
        upsample: str = "deconv",
        to_rgb: str = "conv",
        norm: str = "none",
        noise: bool = False,
    ):
        super().__init__()
        if upsample not in UPSAMPLE:
            raise ConfigError(f"generator.upsample={upsample!r}; expected one of {list(UPSAMPLE)}")
        if to_rgb not in TO_RGB:
            raise ConfigError(f"generator.to_rgb={to_rgb!r}; expected one of {list(TO_RGB)}")
        if norm not in NORMS:
            raise ConfigError(f"generator.norm={norm!r}; expected one of {list(NORMS)}")
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
        for key, value, default in (("to_rgb", to_rgb, "conv"), ("norm", norm, "none"),
                                    ("noise", bool(noise), False)):
            if value != default:  # older checkpoints have no key: the default
                self.spec[key] = value
        self.code_dim = int(code_dim)
        self.image_size = 4 * 2 ** (len(stages) + (to_rgb == "up"))
        self.start_channels = int(start_channels)

        fc: list[nn.Module] = []
        dims = [code_dim, *fc_dims, start_channels * 16]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            fc += [nn.Linear(d_in, d_out), nn.LeakyReLU(negative_slope)]
        self.fc = nn.Sequential(*fc)

        def resize() -> nn.Module:  # resize, then convolve: every output pixel sees the same kernel taps
            return nn.Upsample(scale_factor=2, mode=upsample, **({} if upsample == "nearest" else
                                                                  {"align_corners": False}))

        def after_conv(name: str, width: int, size: int) -> None:  # before the activation
            if norm == "group":
                layers[f"{name}_norm"] = nn.GroupNorm(math.gcd(8, width), width)
            if noise:
                layers[f"{name}_noise"] = NoiseInjection(width, size, seed=len(layers))

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = start_channels
        for i, (up, conv) in enumerate(stages):
            if upsample == "deconv":
                layers[f"up{i}"] = nn.ConvTranspose2d(channels, up, 4, stride=2, padding=1)
            else:
                layers[f"resize{i}"] = resize()
                layers[f"up{i}"] = nn.Conv2d(channels, up, 3, padding=1)
            after_conv(f"up{i}", up, 8 * 2 ** i)
            layers[f"act{i}"] = nn.LeakyReLU(negative_slope)
            channels = up
            if conv:
                layers[f"conv{i}"] = nn.Conv2d(channels, conv, 3, padding=1)
                after_conv(f"conv{i}", conv, 8 * 2 ** i)
                layers[f"conv{i}_act"] = nn.LeakyReLU(negative_slope)
                channels = conv
        if to_rgb == "conv":
            layers["to_rgb"] = nn.Conv2d(channels, 3, 3, padding=1)
        elif upsample == "deconv":
            layers["to_rgb"] = nn.ConvTranspose2d(channels, 3, 4, stride=2, padding=1)
        else:
            layers["to_rgb_resize"] = resize()
            layers["to_rgb"] = nn.Conv2d(channels, 3, 3, padding=1)
        self.deconv = nn.Sequential(layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.fc(code).view(-1, self.start_channels, 4, 4)
        # Centre the linear output on mid-grey so an untrained G starts in range.
        return self.deconv(x) + 0.5


class Discriminator(nn.Module):
    """(image, code) -> one real/fake logit; the code branch is optional (`code_dim=0`).

    Image branch: convolutions (`kernels`, `strides`; default 4x4 stride 2) and a global average
    pool; code branch: fully connected layers `code_hidden` (an int: one layer); both joined by
    a hidden layer of `hidden` and the logit.
    """

    arch = "discriminator"

    def __init__(
        self,
        image_size: int,
        code_dim: int = 0,
        channels: Sequence[int] = (32, 64, 128, 256),
        code_hidden: int | Sequence[int] = 256,
        hidden: int = 256,
        negative_slope: float = 0.2,
        kernels: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
    ):
        super().__init__()
        _positive("discriminator.channels", [image_size, *channels, hidden])
        kernels = list(kernels) if kernels is not None else [4] * len(channels)
        strides = list(strides) if strides is not None else [2] * len(channels)
        if len(kernels) != len(channels) or len(strides) != len(channels):
            raise ConfigError(f"discriminator.kernels={kernels} and strides={strides}; expected one per "
                              f"channel count ({len(channels)})")
        _positive("discriminator.kernels", [*kernels, *strides])
        code_layers = [int(code_hidden)] if isinstance(code_hidden, int) else [int(h) for h in code_hidden]
        _positive("discriminator.code_hidden", code_layers)
        self.spec = {"arch": self.arch, "image_size": int(image_size), "code_dim": int(code_dim),
                     "channels": [int(c) for c in channels],
                     "code_hidden": code_hidden if isinstance(code_hidden, int) else code_layers,
                     "hidden": int(hidden), "negative_slope": float(negative_slope)}
        if kernels != [4] * len(channels) or strides != [2] * len(channels):  # older checkpoints: the default
            self.spec.update(kernels=[int(k) for k in kernels], strides=[int(s) for s in strides])
        convs: list[nn.Module] = []
        c_in = 3
        for c_out, k, stride in zip(channels, kernels, strides):
            padding = 1 if (k, stride) == (4, 2) else (k - 1) // 2
            convs += [nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding), nn.LeakyReLU(negative_slope)]
            c_in = c_out
        self.image_branch = nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        code: list[nn.Module] = []
        for d_in, d_out in zip([code_dim, *code_layers[:-1]], code_layers):
            code += [nn.Linear(d_in, d_out), nn.LeakyReLU(negative_slope)]
        self.code_branch = nn.Sequential(*code) if code_dim else None
        joint = c_in + (code_layers[-1] if code_dim else 0)
        self.head = nn.Sequential(nn.Linear(joint, hidden), nn.LeakyReLU(negative_slope),
                                  nn.Linear(hidden, 1))

    def forward(self, images: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        features = self.image_branch(images)
        if self.code_branch is not None:
            features = torch.cat([features, self.code_branch(code)], dim=1)
        return self.head(features).squeeze(1)
