"""Lightning callbacks: the side jobs of training (pictures, evolution records, numerics checks)."""

from featvis.callbacks.evolution import FeatureEvolution
from featvis.callbacks.numerics import NumericsGuard
from featvis.callbacks.samples import GeneratorSamples

__all__ = ["FeatureEvolution", "GeneratorSamples", "NumericsGuard"]
