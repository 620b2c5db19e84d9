"""`shapes`: a procedural image classification set that needs no files.

Each class is a (shape, colour) pair.  Every image is a pure function of
(seed, split, index): position, scale, rotation, colour jitter, a textured
background (smooth colour blobs, stripes, clutter lines) and pixel noise are all
drawn from a generator seeded by that triple.  Colour alone does not decide the
class (three shapes share each colour) and the shape is rotated, scaled and
placed anywhere on a busy background, so a classifier needs real features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from featvis.errors import ConfigError

# Base RGB of each colour; every image jitters it in brightness and per channel.
COLOURS = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.12, 0.70, 0.16),
    "blue": (0.14, 0.26, 0.90),
    "yellow": (0.92, 0.80, 0.10),
    "magenta": (0.82, 0.16, 0.78),
    "cyan": (0.10, 0.78, 0.82),
}


def _regular_polygon(corners: int, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(corners) / corners
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular_polygon(2 * points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return outer * radii[:, None]


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
         (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=float)


# Outlines in a unit disc, centred at 0; None means a circle.
SHAPES = {
    "circle": None,
    "square": _regular_polygon(4, phase=math.pi / 4),
    "triangle": _regular_polygon(3),
    "star": _star(),
    "cross": _cross(),
    "hexagon": _regular_polygon(6),
}

SPLITS = {"train": 0, "val": 1, "test": 2}


class ShapesDataset(Dataset):
    """`size` images of `image_size` px; item i is (float image in [0, 1], CxHxW; label)."""

    def __init__(
        self,
        size: int,
        image_size: int = 64,
        seed: int = 0,
        split: str = "train",
        shapes: Sequence[str] = ("circle", "square", "triangle", "star", "cross"),
        colours: Sequence[str] = ("red", "green", "blue"),
        channel_order: Sequence[int] | None = None,
    ):
        if size < 1:
            raise ConfigError(f"shapes: size={size}; expected a positive number of images")
        if not 16 <= image_size <= 1024:
            raise ConfigError(f"shapes: image_size={image_size}; expected 16 to 1024 pixels")
        if split not in SPLITS:
            raise ConfigError(f"shapes: split={split!r}; expected one of {sorted(SPLITS)}")
        for name, known in (("shape", SHAPES), ("colour", COLOURS)):
            chosen = shapes if name == "shape" else colours
            unknown = [c for c in chosen if c not in known]
            if unknown or len(set(chosen)) != len(chosen) or not chosen:
                raise ConfigError(
                    f"shapes: {name}s={list(chosen)}; expected distinct names from {sorted(known)}")
        if channel_order is not None and sorted(channel_order) != [0, 1, 2]:
            raise ConfigError(
                f"shapes: channel_order={list(channel_order)}; expected a permutation of [0, 1, 2]")
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.shapes = list(shapes)
        self.colours = list(colours)
        self.channel_order = list(channel_order) if channel_order is not None else None

    @property
    def classes(self) -> list[str]:
        return [f"{c} {s}" for s in self.shapes for c in self.colours]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"shapes: index {index} out of range for {self.size} images")
        image, label = self.render(index)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        if self.channel_order is not None:
            tensor = tensor[self.channel_order]
        return tensor, label

    def render(self, index: int) -> tuple[np.ndarray, int]:
        """The uint8 HxWx3 RGB image and label of item `index` (before channel_order)."""
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        label = int(rng.integers(len(self.classes)))
        shape = self.shapes[label // len(self.colours)]
        colour = np.array(COLOURS[self.colours[label % len(self.colours)]])

        image = self._background(rng)
        alpha = self._shape_mask(rng, shape)[..., None]
        # Jitter brightness and each channel so colour is a range, not a value.
        fill = np.clip(colour * rng.uniform(0.7, 1.05) + rng.normal(0, 0.05, 3), 0, 1)
        shading = self._linear_ramp(rng, amplitude=rng.uniform(0.0, 0.25))[..., None]
        image = image * (1 - alpha) + np.clip(fill * (1 + shading), 0, 1) * alpha
        image += rng.normal(0, rng.uniform(0.01, 0.06), image.shape)
        return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label

    def _coords(self) -> tuple[np.ndarray, np.ndarray]:
        axis = (np.arange(self.image_size) + 0.5) / self.image_size
        return np.meshgrid(axis, axis, indexing="xy")

    def _linear_ramp(self, rng: np.random.Generator, amplitude: float) -> np.ndarray:
        x, y = self._coords()
        angle = rng.uniform(0, 2 * math.pi)
        return amplitude * ((x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        s = self.image_size
        # Smooth, low-saturation colour blobs around a random grey level.
        blobs = rng.uniform(0, 1, (4, 4, 3))
        low = Image.fromarray((blobs * 255).astype(np.uint8)).resize((s, s), Image.BICUBIC)
        blob_contrast = rng.uniform(0.15, 0.5)
        image = rng.uniform(0.2, 0.7) + blob_contrast * (np.asarray(low, dtype=np.float64) / 255 - 0.5)
        # Oriented stripes of random frequency and contrast.
        x, y = self._coords()
        angle, cycles = rng.uniform(0, math.pi), rng.uniform(2, 9)
        stripes = np.sin(2 * math.pi * cycles * (x * math.cos(angle) + y * math.sin(angle))
                         + rng.uniform(0, 2 * math.pi))
        image = image + rng.uniform(0.02, 0.12) * stripes[..., None]
        # Clutter: a few thin straight lines in muted colours.
        canvas = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(0, 4))):
            grey = rng.uniform(0.1, 0.9)
            tint = np.clip(grey + rng.normal(0, 0.08, 3), 0, 1)
            ends = rng.uniform(0, s, 4).tolist()
            draw.line(ends, fill=tuple(int(v * 255) for v in tint), width=max(1, s // 48))
        return np.asarray(canvas, dtype=np.float64) / 255

    def _shape_mask(self, rng: np.random.Generator, shape: str) -> np.ndarray:
        """Anti-aliased coverage in [0, 1] of a randomly placed, scaled and rotated shape."""
        s = self.image_size
        supersample = 4 if s <= 128 else 2
        big = s * supersample
        radius = rng.uniform(0.2, 0.38) * big
        centre = rng.uniform(radius, big - radius, 2)
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        outline = SHAPES[shape]
        if outline is None:
            draw.ellipse([*(centre - radius), *(centre + radius)], fill=255)
        else:
            angle = rng.uniform(0, 2 * math.pi)
            rotation = np.array([[math.cos(angle), -math.sin(angle)],
                                 [math.sin(angle), math.cos(angle)]])
            points = outline @ rotation.T * radius + centre
            draw.polygon([tuple(p) for p in points], fill=255)
        return np.asarray(mask.resize((s, s), Image.BOX), dtype=np.float64) / 255

