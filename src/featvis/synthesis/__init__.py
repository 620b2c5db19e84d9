"""Activation maximization: objectives, priors and the one sampler behind every method.

Names are imported on first use: `featvis.synthesis.settings` (the method schema) is read when
configs are composed, before torch is imported.
"""

from __future__ import annotations

from typing import Any

_HOMES = {"ObjectiveBatch": "featvis.synthesis.objectives", "Term": "featvis.synthesis.objectives",
          "Sampler": "featvis.synthesis.sampler", "SamplerResult": "featvis.synthesis.sampler",
          "SamplerSettings": "featvis.synthesis.settings"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'featvis.synthesis' has no attribute {name!r}")
