"""Lightning checkpoints written like every featvis output: to a temporary sibling, then renamed.

Lightning's own `TorchCheckpointIO` writes through an fsspec transaction: the file goes to the
system temp dir and is moved into place at the end.  Where that temp dir is on another filesystem
than the run dir (a tmpfs /tmp, a scratch disk), the move is a copy onto the final name: a full
disk then leaves a torn `last.ckpt` in place of the good one, and the whole checkpoint behind in
/tmp.  `AtomicCheckpointIO` writes local checkpoints with featvis.io.save_bytes instead: in the
checkpoint's own folder (`.last.ckpt.partial<pid>.ckpt`, which `ckpt_path=last` never picks: its
name does not start with `last`), renamed over the old one once whole, and on a full disk the old
one stays and the error names the checkpoint and its size (featvis.errors.DiskFullError).
Remote paths (s3://, gs://, ...) keep Lightning's own writer.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from featvis.io import save_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """`Trainer(plugins=[AtomicCheckpointIO()])`: checkpoints renamed into place whole, full disks named."""

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        self._sweep(path.parent)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory, as Lightning does: the size is known before writing
        save_bytes(buffer.getbuffer(), path)

    def _sweep(self, folder: Path) -> None:
        """Once per folder: the temporary checkpoints a killed run left there (never this process's own)."""
        if folder in self._swept:
            return
        self._swept.add(folder)
        for stale in folder.glob(".*.partial*"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
