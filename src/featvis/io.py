"""Files in and out: every output written atomically, checkpoints read safely.

A file appears under its final name only once complete: writers use a temporary sibling
(`.name.partial<pid>.ext`) and rename it into place, so a killed job leaves at most
temporary files, which `remove_partials` clears when the job runs again.  Checkpoints and
weight files are read with `torch.load(weights_only=True)`: tensors and plain types, never code.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from featvis.errors import NO_SPACE, CheckpointError, ConfigError, DiskFullError


def atomic_path(path: Path) -> Path:
    """A temporary sibling of `path`; rename it onto `path` once written (see `commit`)."""
    return path.with_name(f".{path.name}.partial{os.getpid()}{path.suffix}")


def commit(tmp: Path, path: Path) -> Path:
    tmp.replace(path)
    return path


def save_bytes(data: bytes | memoryview, path: Path) -> Path:
    """`data` written to a temporary sibling and renamed into place.

    Every writer encodes its file in memory first and writes it here, so a full disk is told as a
    DiskFullError naming `path` and its size (the OSError of a failed write() names no file), and
    the temporary file is removed: nothing torn is left, under the final name or any other.
    """
    tmp = atomic_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:  # close() flushes: a late ENOSPC is raised here too
            f.write(data)
        return commit(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in NO_SPACE:
            raise DiskFullError(path, len(data), free_bytes(path.parent), err.strerror) from err
        raise


def free_bytes(folder: Path) -> int | None:
    """The space an unprivileged writer has left on the filesystem of `folder` (or its nearest parent)."""
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def save_text(text: str, path: Path) -> Path:
    """A text file (JSON, HTML, SVG) written to a temporary name and renamed into place."""
    return save_bytes(text.encode(), path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """A dict of tensors (read back by read_checkpoint), written to a temporary name and renamed."""
    # torch.save to a path writes from C++: a full disk would be a RuntimeError naming no file
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
    return save_bytes(buffer.getbuffer(), path)


def remove_partials(folder: Path) -> int:
    """Delete the temporary files a killed writer left in `folder` (recursively); returns how many."""
    stale = [p for p in folder.rglob(".*.partial*") if p.is_file()] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def save_png(image: torch.Tensor | Image.Image, path: Path) -> Path:
    pil = image if isinstance(image, Image.Image) else to_pil_image(image.clamp(0, 1))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return save_bytes(buffer.getbuffer(), path)


def save_gif(frames: Sequence[torch.Tensor], path: Path, duration_ms: int = 120) -> Path:
    """An animated GIF of (3, H, W) frames; the last frame is held a little longer."""
    pil = [to_pil_image(f.clamp(0, 1)) for f in frames]
    durations = [duration_ms] * (len(pil) - 1) + [duration_ms * 8]
    buffer = io.BytesIO()
    pil[0].save(buffer, format="GIF", save_all=True, append_images=pil[1:], duration=durations, loop=0)
    return save_bytes(buffer.getbuffer(), path)


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
    if path.stat().st_size == 0:  # torch's own error for it is a bare EOFError
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); expected a featvis checkpoint "
                              "(an interrupted copy or download leaves an empty file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({reason[:160]}); "
                              "expected a featvis checkpoint of plain tensors and types") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}; expected a dict")
    record = checkpoint.get("featvis")
    found = record.get("format") if isinstance(record, dict) else None
    if isinstance(found, int):
        from featvis.checkpoints import FORMAT_VERSION  # here, as featvis.checkpoints imports this module

        if found > FORMAT_VERSION:
            # a newer layout read by this version would fail later, on some key, with no hint why
            raise CheckpointError(f"checkpoint {path} is featvis format {found}; expected format "
                                  f"<= {FORMAT_VERSION} (it was written by a newer featvis: upgrade featvis)")
    return checkpoint
