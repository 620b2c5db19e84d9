"""Files in and out: every output written atomically, checkpoints read safely.

A file appears under its final name only once complete: writers use a temporary sibling
(`.name.partial<pid>.ext`) and rename it into place, so a killed job leaves at most
temporary files, which `remove_partials` clears when the job runs again.  Checkpoints and
weight files are read with `torch.load(weights_only=True)`: tensors and plain types, never code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from featvis.errors import CheckpointError, ConfigError


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


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """A dict of tensors (read back by read_checkpoint), written to a temporary name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)
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


def save_gif(frames: Sequence[torch.Tensor], path: Path, duration_ms: int = 120) -> Path:
    """An animated GIF of (3, H, W) frames; the last frame is held a little longer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = [to_pil_image(f.clamp(0, 1)) for f in frames]
    durations = [duration_ms] * (len(pil) - 1) + [duration_ms * 8]
    tmp = atomic_path(path)
    pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:], duration=durations, loop=0)
    return commit(tmp, path)


def writable_dir(out: Path, what: str = "output_dir") -> Path:
    """Create `out` and prove it takes a file; a ConfigError naming it otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what}={out} is not writable ({err.strerror}); expected a writable directory") from None
    return out


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, loaded with weights_only=True on the CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; expected a .ckpt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({reason[:160]}); "
                              "expected a featvis checkpoint of plain tensors and types") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}; expected a dict")
    return checkpoint
