"""Fit images from one network's input size to another's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import center_crop


def fit_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop larger images (DeePSiM's 256 -> 227), resize smaller ones; identity when equal."""
    side = images.shape[-1]
    if side == size:
        return images
    if side > size:
        return center_crop(images, [size, size])
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
