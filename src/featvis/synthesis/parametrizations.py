"""Image parametrizations for pixel AM: z need not be the pixels themselves.

`FourierImage` (Olah et al. 2017, lucid): z is a 2-D spectrum per channel, scaled by
1/frequency so that gradient steps favour low frequencies, in a decorrelated colour
space that is mapped back to RGB, and squashed into [0, 1] by a sigmoid.  The same
update rule then acts as a strong natural-image prior without any operator.
"""

from __future__ import annotations

import torch
from torch import nn

# Square root of the RGB colour correlation of ImageNet (lucid's constant), columns normalized
# by their largest norm: maps decorrelated channels back to RGB.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                             [0.27, 0.00, -0.05],
                             [0.27, -0.09, 0.03]], device="cpu")
COLOUR_SQRT = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()


class FourierImage(nn.Module):
    """spectrum z of shape (B, 3, S, S // 2 + 1, 2) -> images (B, 3, S, S) in [0, 1]."""

    def __init__(self, size: int, decay: float = 1.0):
        super().__init__()
        self.size = size
        fy = torch.fft.fftfreq(size).view(-1, 1)
        fx = torch.fft.rfftfreq(size).view(1, -1)
        frequency = (fx**2 + fy**2).sqrt().clamp(min=1.0 / size)
        self.register_buffer("scale", (1.0 / frequency**decay) / size)

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, 3, self.size, self.size // 2 + 1, 2)

    def initial(self, batch: int, generator: torch.Generator, std: float = 0.01) -> torch.Tensor:
        return std * torch.randn(self.shape(batch), generator=generator, device=generator.device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        spectrum = torch.view_as_complex(z.contiguous()) * self.scale
        decorrelated = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        rgb = torch.einsum("ij,bjhw->bihw", COLOUR_SQRT.to(z.device), decorrelated)
        return torch.sigmoid(rgb * 4.0)
