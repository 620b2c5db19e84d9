"""Where the sampler's z lives: each space owns both its starting point and its render z -> image.

`PixelSpace`: z is the image (pixel AM).  `FourierSpace`: z is a 1/f-scaled spectrum in a
decorrelated colour space (featvis.synthesis.parametrizations.FourierImage).  `MacoSpace`: z
is the phase of a spectrum whose magnitude is the real images' (MacoImage).  `CodeSpace`: z
is the code h of a generator G (DGN-AM, PPGN).  A space is an `nn.Module` whose forward is the
render, so the sampler moves, freezes and traces it like any network.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from featvis.checkpoints import load_classifier, load_generator
from featvis.errors import CheckpointError, ConfigError
from featvis.io import read_checkpoint
from featvis.nets.adapters import fit_images
from featvis.nets.codes import CodeStatistics
from featvis.nets.encoder import Encoder
from featvis.synthesis.parametrizations import FourierImage, MacoImage, magnitude_spectrum, mean_colour


class PixelSpace(nn.Module):
    """z is the image in [0, 1]; a chain starts at mid-grey plus a little noise of its seed."""

    def __init__(self, image_size: int, noise: float = 0.05):
        super().__init__()
        self.size, self.noise = int(image_size), float(noise)

    def start(self, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(1, 3, self.size, self.size, generator=generator, device=generator.device)
        return (0.5 + self.noise * noise).clamp(0, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


class FourierSpace(FourierImage):
    """z is a spectrum (see FourierImage); a chain starts from a small random spectrum."""

    def __init__(self, image_size: int, decay: float = 1.0):
        super().__init__(image_size, decay)

    def start(self, generator: torch.Generator) -> torch.Tensor:
        return self.initial(1, generator)


class MacoSpace(MacoImage):
    """z is the phase of the spectrum (see MacoImage); a chain starts from a uniformly random phase:
    a random image with the real images' spectrum."""

    @classmethod
    def from_real(cls, image_size: int, real: Any = None, magnitude: str | None = None,
                  standardize: bool = False, real_mean: bool = False) -> MacoSpace:
        """The spectrum of `magnitude` (a maco_magnitude.pt a run wrote), else of the real images;
        with `real_mean`, centred on the real images' mean colour (saved in the same file)."""
        spectrum, colour = maco_magnitude(magnitude, real, image_size)
        if real_mean and colour is None:
            raise ConfigError(f"method.space.real_mean=true, and method.space.magnitude={magnitude} holds no mean colour "
                              "(an earlier version wrote it); expected a maco_magnitude.pt of this version, or real images")
        space = cls(spectrum, standardize, colour if real_mean else None)
        space.real_colour = colour  # saved beside the spectrum (maco_magnitude.pt), used or not
        return space

    def start(self, generator: torch.Generator) -> torch.Tensor:
        shape = (1, *self.magnitude.shape)
        return (2 * torch.rand(shape, generator=generator, device=generator.device) - 1) * math.pi


class CodeSpace(nn.Module):
    """z is the code h of a generator; a chain starts at codes drawn from the real codes'
    statistics (`init=stats`), at zero, or (`init=multifaceted`, with the `encoder` whose codes G
    inverts) at the codes of the unit's most activating real images nearest the centres of their
    clusters, one cluster per seed (see multifaceted_starts)."""

    def __init__(self, generator: nn.Module, stats: CodeStatistics, init: str = "stats",
                 encoder: nn.Module | None = None, top_k: int = 50, record: dict[str, Any] | None = None):
        super().__init__()
        if init not in ("stats", "zeros", "multifaceted"):
            raise ConfigError(f"method.space.init={init!r}; expected stats, zeros or multifaceted for code methods")
        self.generator, self.stats, self.init, self.encoder = generator, stats, init, encoder
        self.top_k = int(top_k)
        self.record = record  # what G was trained on (its checkpoint's record)

    @classmethod
    def from_checkpoint(cls, generator_ckpt: str | None, init: str = "stats", top_k: int = 50) -> CodeSpace:
        """G and its code statistics from `generator_ckpt` (task=generator, or published DeePSiM
        weights); multifaceted starts also load the encoder whose codes G inverts."""
        if not generator_ckpt:
            raise ConfigError("this method optimizes a generator's code; expected generator.ckpt")
        generator, stats, record = load_generator(generator_ckpt)
        encoder = record_encoder(record, "method.space.init=multifaceted") if init == "multifaceted" else None
        return cls(generator, stats, init, encoder, top_k, record)

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


def kmeans(points: torch.Tensor, k: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """k centres of `points` (N, D) by Lloyd's algorithm from a k-means++ start; the centres of
    the largest clusters first."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    points = points.cpu()
    centres = points[torch.randint(len(points), (1,), generator=generator, device="cpu")]
    while len(centres) < k:  # k-means++: far points are likelier next centres
        distance = torch.cdist(points, centres).min(1).values.square()
        pick = torch.multinomial(distance + 1e-12, 1, generator=generator)
        centres = torch.cat([centres, points[pick]])
    for _ in range(iterations):
        nearest = torch.cdist(points, centres).argmin(1)
        for c in range(k):
            if (nearest == c).any():
                centres[c] = points[nearest == c].mean(0)
    sizes = torch.bincount(torch.cdist(points, centres).argmin(1), minlength=k)
    return centres[sizes.argsort(descending=True)]


@torch.no_grad()
def multifaceted_starts(space: CodeSpace, unit_values: torch.Tensor, images: torch.Tensor, seeds: int,
                        top_k: int = 50) -> torch.Tensor:
    """(units x seeds, code_dim) starts, unit-major: per unit, the codes of its `top_k` most
    activating real images (`unit_values` (N, units) over `images` (N, 3, S, S)) clustered into
    `seeds` clusters (Nguyen et al. 2016's multifaceted feature visualization), each cluster
    represented by its member nearest the centre: a real image's code, where a mean of rectified
    codes is a code G has not seen (a blurred average image)."""
    if space.encoder is None:
        raise ConfigError("method.init=multifaceted needs the encoder G was trained on; expected a "
                          "generator checkpoint that records it")
    k = min(top_k, len(images))
    if k < seeds:
        raise ConfigError(f"method.init=multifaceted with {len(images)} real images and seeds={seeds}; "
                          "expected at least one real image per seed")
    device = next(space.encoder.parameters()).device
    starts = []
    for column in unit_values.T:
        top = images[column.topk(k).indices]
        codes = space.encoder.code(fit_images(top.to(device), space.encoder.image_size)).cpu()
        centres = kmeans(codes, seeds, seed=0)
        starts.append(codes[torch.cdist(centres, codes).argmin(1)])
    return torch.cat(starts)


def maco_magnitude(path: str | None, real: Any, image_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MACO's magnitude spectrum at `image_size` and the real images' mean colour: read from `path`
    (a file that visualize.py wrote as maco_magnitude.pt; files of earlier versions hold no colour,
    None), or the means over the images of `real` (batches of (images, ...))."""
    expected = (3, image_size, image_size // 2 + 1)
    if path:
        try:
            saved = read_checkpoint(path)
        except CheckpointError as err:
            raise ConfigError(f"method.space.magnitude: {err}") from None
        magnitude = saved.get("magnitude")
        if not isinstance(magnitude, torch.Tensor) or tuple(magnitude.shape) != expected:
            found = tuple(magnitude.shape) if isinstance(magnitude, torch.Tensor) else type(magnitude).__name__
            raise ConfigError(f"method.space.magnitude={path} holds a magnitude of {found}; expected a spectrum of "
                              f"shape {expected} (maco_magnitude.pt of a run at {image_size} px)")
        colour = saved.get("mean_colour")
        if colour is not None and (not isinstance(colour, torch.Tensor) or tuple(colour.shape) != (3,)):
            raise ConfigError(f"method.space.magnitude={path} holds a mean_colour that is not 3 numbers; expected "
                              "a maco_magnitude.pt that visualize.py wrote")
        return magnitude, colour
    if real is None:
        raise ConfigError("method.space=MacoSpace needs the magnitude spectrum of real images; expected "
                          "method.space.magnitude=<maco_magnitude.pt> or real images (evaluation.real_images > 0; "
                          "for FeatureEvolution, validation data)")
    return magnitude_spectrum(real, image_size), mean_colour(real, image_size)


def record_encoder(g_record: dict[str, Any], needed_by: str) -> Encoder:
    """The encoder a generator was trained on, as its record names it."""
    if not (g_record.get("encoder") or {}).get("checkpoint"):
        raise ConfigError(f"{needed_by} needs the encoder G was trained on, and this generator records "
                          "none; expected a generator checkpoint of task=generator")
    net, _ = load_classifier(g_record["encoder"]["checkpoint"])
    return Encoder(net, g_record["encoder"]["code_layer"])
