"""featvis: feature visualization of trained networks (activation maximization, DGN-AM, PPGN).

    from featvis import synthesize, method_config, load_judge   # see featvis.synthesis.synthesize
"""

from __future__ import annotations

from typing import Any

__all__ = ["Synthesis", "load_judge", "load_method", "method_config", "synthesize"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the command-line tools load the package before they parse their
    # arguments, and a bad argument should not wait for torch to import.
    if name in __all__:
        from featvis.synthesis import methods, synthesize

        return getattr(methods if name in ("load_method", "method_config") else synthesize, name)
    raise AttributeError(f"module 'featvis' has no attribute {name!r}")
