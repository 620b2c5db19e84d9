"""Pictures people look at: labelled grids and optimization GIFs; every output written atomically.

A file appears under its final name only once complete: writers use a temporary sibling
(`.name.partial<pid>.ext`) and rename it into place, so a killed job leaves at most
temporary files, which `remove_partials` clears when the job runs again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid


def atomic_path(path: Path) -> Path:
    """A temporary sibling of `path`; rename it onto `path` once written (see `commit`)."""
    return path.with_name(f".{path.name}.partial{os.getpid()}{path.suffix}")


def commit(tmp: Path, path: Path) -> Path:
    tmp.replace(path)
    return path


def save_text(text: str, path: Path) -> Path:
    """A text file (JSON, HTML, SVG) written to a temporary name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    tmp.write_text(text)
    return commit(tmp, path)


def remove_partials(folder: Path) -> int:
    """Delete the temporary files a killed writer left in `folder` (recursively); returns how many."""
    stale = [p for p in folder.rglob(".*.partial*") if p.is_file()] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def save_png(image: torch.Tensor | Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = image if isinstance(image, Image.Image) else to_pil_image(image.clamp(0, 1))
    tmp = atomic_path(path)
    pil.save(tmp, format="PNG")
    return commit(tmp, path)


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


def save_gif(frames: Sequence[torch.Tensor], path: Path, duration_ms: int = 120) -> Path:
    """An animated GIF of (3, H, W) frames; the last frame is held a little longer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = [to_pil_image(f.clamp(0, 1)) for f in frames]
    durations = [duration_ms] * (len(pil) - 1) + [duration_ms * 8]
    tmp = atomic_path(path)
    pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:], duration=durations, loop=0)
    return commit(tmp, path)
