"""Lightning callbacks for the side jobs of training: generator sample grids and numerics checks.
Feature evolution's callback is `featvis.evolution.FeatureEvolution`."""

from featvis.callbacks.numerics import NumericsGuard
from featvis.callbacks.samples import GeneratorSamples

__all__ = ["GeneratorSamples", "NumericsGuard"]
