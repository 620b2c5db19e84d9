"""Lightning callbacks: the side jobs of training (pictures, evolution records)."""

from featvis.callbacks.samples import GeneratorSamples

__all__ = ["GeneratorSamples"]
