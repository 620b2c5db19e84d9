"""Lightning callbacks: the side jobs of training (pictures, evolution records)."""

from featvis.callbacks.evolution import FeatureEvolution
from featvis.callbacks.samples import GeneratorSamples

__all__ = ["FeatureEvolution", "GeneratorSamples"]
