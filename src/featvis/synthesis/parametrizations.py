"""Image parametrizations for pixel AM: z need not be the pixels themselves.

`FourierImage` (Olah et al. 2017, lucid): z is a 2-D spectrum per channel, scaled by
1/frequency so that gradient steps favour low frequencies, in a decorrelated colour
space that is mapped back to RGB, and squashed into [0, 1] by a sigmoid.  The same
update rule then acts as a strong natural-image prior without any operator.

`MacoImage` (Fel et al. 2023, MACO): z is only the phase of the spectrum; its magnitude is fixed
to the mean magnitude spectrum of real images (`magnitude_spectrum`), so every synthesis has
the real images' distribution of energy over frequencies and only where things are is optimized.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from featvis.errors import ConfigError
from featvis.synthesis.real import RealImages

# Square root of the RGB colour correlation of ImageNet (lucid's constant), columns normalized
# by their largest norm: maps decorrelated channels back to RGB.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                             [0.27, 0.00, -0.05],
                             [0.27, -0.09, 0.03]], device="cpu")
COLOUR_SQRT = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()


def recorrelate(decorrelated: torch.Tensor) -> torch.Tensor:
    """Decorrelated colour channels (B, 3, H, W) -> RGB offsets."""
    return torch.einsum("ij,bjhw->bihw", COLOUR_SQRT.to(decorrelated.device), decorrelated)


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
        return torch.sigmoid(recorrelate(decorrelated) * 4.0)


# The real images whose mean magnitude spectrum MACO fixes (MacoSpace without method.space.magnitude).
MACO_SPECTRUM_IMAGES = 1000


@torch.no_grad()
def magnitude_spectrum(real: Any, size: int, max_images: int = MACO_SPECTRUM_IMAGES) -> torch.Tensor:
    """The mean Fourier magnitude (3, size, size // 2 + 1) of the first `max_images` real images
    (a RealImages pool, or batches (images, ...) in [0, 1]), in the decorrelated colour space
    MacoImage renders from."""
    pool = RealImages.of(real, size, max_images).first(max_images)
    if not len(pool):
        raise ConfigError("MACO's magnitude spectrum needs real images, and the data gave none; expected "
                          "a data set with validation images or method.space.magnitude=<maco_magnitude.pt>")
    decorrelate = torch.linalg.inv(COLOUR_SQRT)
    total = torch.zeros(3, size, size // 2 + 1, device="cpu")
    for images in pool.batches():
        centred = images - images.mean((1, 2, 3), keepdim=True)
        decorrelated = torch.einsum("ij,bjhw->bihw", decorrelate, centred)
        total += torch.fft.rfft2(decorrelated, norm="ortho").abs().sum(0)
    return total / len(pool)


@torch.no_grad()
def mean_colour(real: Any, size: int, max_images: int = MACO_SPECTRUM_IMAGES) -> torch.Tensor:
    """The mean RGB colour (3,) of the first `max_images` real images (as magnitude_spectrum reads them)."""
    pool = RealImages.of(real, size, max_images).first(max_images)
    total = torch.zeros(3, device="cpu")
    for images in pool.batches():
        total += images.mean((2, 3)).sum(0)
    return total / max(len(pool), 1)


class MacoImage(nn.Module):
    """phase z of shape (B, 3, S, S // 2 + 1) -> images (B, 3, S, S) in [0, 1], with the spectrum's
    magnitude fixed to `magnitude` (3, S, S // 2 + 1; see magnitude_spectrum).

    The magnitude fixes each image's energy whatever its phase (Parseval), so a synthesis has the
    real images' contrast; the sigmoid (slope 1 at mid-grey, as in FourierImage) only keeps the
    rare outliers in range.  With `standardize`, as the published MACO does, each image is
    instead scaled to zero mean and unit variance before the colours are recorrelated and the
    sigmoid (slope 1/4) squashes it.

    The magnitude holds no mean (it is the spectrum of mean-centred images), so a synthesis is
    centred on mid-grey; given `mean` (a (3,) colour in (0, 1), the real images' mean colour) it
    is centred there instead: the sigmoid's input is offset by the colour's logit, so a digit's
    black background or a photo's colour cast is where an image starts.
    """

    def __init__(self, magnitude: torch.Tensor, standardize: bool = False, mean: torch.Tensor | None = None):
        super().__init__()
        if magnitude.ndim != 3 or magnitude.shape[0] != 3 or magnitude.shape[2] != magnitude.shape[1] // 2 + 1:
            raise ValueError(f"magnitude of shape {tuple(magnitude.shape)}; expected (3, S, S // 2 + 1)")
        self.size = int(magnitude.shape[1])
        self.standardize = bool(standardize)
        self.register_buffer("magnitude", magnitude.float())
        offset = torch.zeros(3, device="cpu") if mean is None else torch.logit(mean.float().clamp(0.02, 0.98))
        self.register_buffer("offset", offset.view(1, 3, 1, 1))

    def decorrelated(self, phase: torch.Tensor) -> torch.Tensor:
        """The image of a phase in the decorrelated colour space, centred on zero."""
        spectrum = torch.complex(self.magnitude * torch.cos(phase), self.magnitude * torch.sin(phase))
        return torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")

    def forward(self, phase: torch.Tensor) -> torch.Tensor:
        image = self.decorrelated(phase)
        if self.standardize:
            centred = image - image.mean((1, 2, 3), keepdim=True)
            return torch.sigmoid(recorrelate(centred / centred.std((1, 2, 3), keepdim=True).clamp_min(1e-4))
                                 + self.offset)
        return torch.sigmoid(recorrelate(image) * 4.0 + self.offset)
