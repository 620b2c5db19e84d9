"""Where the sampler's z lives: each space owns both its starting point and its render z -> image.

`PixelSpace`: z is the image (pixel AM).  `FourierSpace`: z is a 1/f-scaled spectrum in a
decorrelated colour space (featvis.synthesis.parametrizations.FourierImage).  `CodeSpace`: z
is the code h of a generator G (DGN-AM, PPGN).  A space is an `nn.Module` whose forward is the
render, so the sampler moves, freezes and traces it like any network.
"""

from __future__ import annotations

import torch
from torch import nn

from featvis.errors import ConfigError
from featvis.nets.codes import CodeStatistics
from featvis.synthesis.parametrizations import FourierImage


class PixelSpace(nn.Module):
    """z is the image in [0, 1]; a chain starts at mid-grey plus a little noise of its seed."""

    def __init__(self, size: int, noise: float = 0.05):
        super().__init__()
        self.size, self.noise = int(size), float(noise)

    def start(self, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(1, 3, self.size, self.size, generator=generator, device=generator.device)
        return (0.5 + self.noise * noise).clamp(0, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


class FourierSpace(FourierImage):
    """z is a spectrum (see FourierImage); a chain starts from a small random spectrum."""

    def start(self, generator: torch.Generator) -> torch.Tensor:
        return self.initial(1, generator)


class CodeSpace(nn.Module):
    """z is the code h of a generator; a chain starts at codes drawn from the real codes'
    statistics (`init=stats`) or at zero."""

    def __init__(self, generator: nn.Module, stats: CodeStatistics, init: str = "stats"):
        super().__init__()
        if init not in ("stats", "zeros"):
            raise ConfigError(f"method.init={init!r}; expected stats or zeros for code methods")
        self.generator, self.stats, self.init = generator, stats, init

    def start(self, generator: torch.Generator) -> torch.Tensor:
        if self.init == "zeros":
            return torch.zeros(1, self.stats.mean.numel(), device="cpu")
        return self.stats.sample(1, generator).cpu()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


def starting_points(space: nn.Module, units: int, seeds: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(units x seeds, ...) starts, unit-major: per seed k the same start for every unit, so a grid
    column shares its starting point.  Drawn on the host from seed k, so a seed gives the same
    starts on every device."""
    starts = torch.cat([space.start(torch.Generator(device="cpu").manual_seed(k)) for k in range(seeds)])
    return starts.repeat(units, *([1] * (starts.ndim - 1))).to(device)
