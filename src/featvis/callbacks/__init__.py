"""Lightning callbacks for the side jobs of training: generator sample grids, keeping the generator that
draws its classes, and numerics checks.
Feature evolution's callback is `featvis.evolution.FeatureEvolution`."""

from featvis.callbacks.numerics import NumericsGuard
from featvis.callbacks.samples import GeneratorSamples
from featvis.callbacks.selection import GeneratorSelection

__all__ = ["GeneratorSamples", "GeneratorSelection", "NumericsGuard"]
