"""One pool of real validation images, read once and shared by all that compares with them: the
evaluation (top-k, KID, the activation-path check), the multifaceted starts, the feature
evolution's top-k real images and MACO's magnitude spectrum.  Each keeps its own cap (`first`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from torch import nn

from featvis.errors import ConfigError
from featvis.nets.adapters import fit_images
from featvis.nets.layers import tap


class RealImages:
    """The first `max_images` images of `batches` ((images, labels, ...), a mapping with one
    (B, C, H, W) tensor, or the images alone), in order, each batch turned back into [0, 1] by
    `to_display` where given and fitted to `image_size` (fit_images), on the CPU (as uint8 with
    `uint8`: a 227 px pool stays small).  Read on first use; read out in chunks of `batch_size`
    (default: the batches' own size)."""

    def __init__(self, batches: Iterable, image_size: int, max_images: int, *, to_display: Any = None,
                 uint8: bool = False, batch_size: int | None = None):
        self.image_size, self.batch_size = int(image_size), batch_size
        self._source = batches, int(max_images), to_display, uint8

    @classmethod
    def of(cls, real: Any, image_size: int, max_images: int) -> RealImages | None:
        """`real` as a pool: a pool as it is, batches read into one (on first use), None as None."""
        if isinstance(real, RealImages) and real.image_size != image_size:
            raise ValueError(f"a pool of real images at {real.image_size} px; expected {image_size} px")
        return real if real is None or isinstance(real, RealImages) else cls(real, image_size, max_images)

    @cached_property
    def _read(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        (batches, limit, to_display, uint8), self._source = self._source, None  # nothing of the data kept
        images, labels, count = [], [], 0
        for batch in batches if limit > 0 else ():
            found = batch_images(batch).float()
            self.batch_size = self.batch_size or len(found)
            found = fit_images(to_display(found) if to_display is not None else found, self.image_size)[: limit - count]
            images.append(((found.clamp(0, 1) * 255).round().to(torch.uint8) if uint8 else found).cpu())
            label = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
            labels.append(label[: len(found)].cpu() if isinstance(label, torch.Tensor) else None)
            count += len(found)
            if count >= limit:
                break
        self.batch_size = self.batch_size or 64
        empty = torch.empty(0, 3, self.image_size, self.image_size, dtype=torch.uint8 if uint8 else torch.float, device="cpu")
        return (torch.cat(images) if images else empty,
                torch.cat(labels) if labels and all(x is not None for x in labels) else None)

    images = property(lambda self: self._read[0], doc="(N, C, S, S) as read: float, or uint8 with `uint8`")
    labels = property(lambda self: self._read[1], doc="(N,) the batches' labels; None where a batch had none")

    def __len__(self) -> int:
        return len(self.images)

    def floats(self, index: Any = slice(None)) -> torch.Tensor:
        """The images at `index` as floats in [0, 1]."""
        images = self.images[index]
        return images.float() / 255 if images.dtype == torch.uint8 else images

    def first(self, count: int) -> RealImages:
        """The first `count` images (all of them where there are fewer)."""
        if count >= len(self):
            return self
        pool = RealImages((), self.image_size, count, batch_size=self.batch_size)
        pool.__dict__["_read"] = (self.images[:count], None if self.labels is None else self.labels[:count])
        return pool

    def batches(self) -> Iterator[torch.Tensor]:
        """The images as floats in [0, 1], in chunks of `batch_size`."""
        for start in range(0, len(self), self.batch_size):
            yield self.floats(slice(start, start + self.batch_size))

    @torch.no_grad()
    def read(self, target: nn.Module, layers: Sequence[str], reduce: Callable[[dict[str, torch.Tensor]], Any]) -> list:
        """`reduce` of `target`'s activations at `layers`, one result per chunk, on the target's device."""
        taps = tap(target, sorted(set(layers))).eval()
        weight = next(target.parameters(), None)
        return [reduce(taps(images.to(weight.device if weight is not None else "cpu"))) for images in self.batches()]


def batch_images(batch: Any) -> torch.Tensor:
    """The images of a data loader's batch: an (images, labels, ...) sequence, a mapping with one
    4-d tensor (e.g. {"image": ..., "label": ...}), or the images alone."""
    parts = [v for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim == 4] if isinstance(batch, Mapping) \
        else batch if isinstance(batch, (list, tuple)) else [batch]
    found = parts[0] if parts else None
    if not isinstance(found, torch.Tensor) or found.ndim != 4:
        raise ConfigError(f"a validation batch of {type(batch).__name__} holds no images; expected (images, labels) "
                          "or a mapping with one (B, C, H, W) tensor")
    return found
