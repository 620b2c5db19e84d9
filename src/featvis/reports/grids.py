"""Pictures people look at: labelled grids of images (written by featvis.io's atomic writers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid


def labelled_grid(images: torch.Tensor, rows: int, row_labels: Sequence[str], column_labels: Sequence[str],
                  scale: int = 2) -> Image.Image:
    """A rows x columns grid of (rows*columns, 3, H, W) images with text labels on the left and top."""
    columns = len(images) // rows
    grid = make_grid(images.clamp(0, 1), nrow=columns, padding=2, pad_value=1.0)
    body = to_pil_image(grid)
    body = body.resize((body.width * scale, body.height * scale), Image.NEAREST)
    font = ImageFont.load_default()
    left = 12 + 7 * max((len(label) for label in row_labels), default=0)
    top = 10 + 12 * max((label.count("\n") + 1 for label in column_labels), default=1)
    canvas = Image.new("RGB", (left + body.width, top + body.height), "white")
    canvas.paste(body, (left, top))
    draw = ImageDraw.Draw(canvas)
    cell_h = body.height / rows
    cell_w = body.width / columns
    for r, label in enumerate(row_labels):
        draw.text((6, top + cell_h * (r + 0.5) - 6), label, fill="black", font=font)
    for c, label in enumerate(column_labels):
        draw.text((left + cell_w * c + 4, 5), label, fill="black", font=font)
    return canvas
