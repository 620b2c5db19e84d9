"""featvis: feature visualization of trained networks (activation maximization, DGN-AM, PPGN).

    import featvis
    target = featvis.as_target(my_net, image_size=64, mean=..., std=...)  # any nn.Module
    found = featvis.synthesize(target, ["layer4:3", "logits:7"], "pixel_fft")
"""

from __future__ import annotations

from typing import Any

from featvis.synthesis.settings import register

register()  # the structured schemas (method/_base) every composition of featvis's configs starts from

# Where each public name lives; imported on first use: the command-line tools load the package
# before they parse their arguments, and a bad argument should not wait for torch to import.
_HOMES = {"Synthesis": "featvis.synthesis.synthesize", "synthesize": "featvis.synthesis.synthesize",
          "load_judge": "featvis.synthesis.synthesize", "load_method": "featvis.synthesis.methods",
          "method_config": "featvis.synthesis.methods", "as_target": "featvis.nets.targets",
          "Target": "featvis.nets.targets", "direction": "featvis.synthesis.objectives",
          "match": "featvis.synthesis.objectives", "custom": "featvis.synthesis.objectives",
          "FeatureEvolution": "featvis.evolution"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'featvis' has no attribute {name!r}")
