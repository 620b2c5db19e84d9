"""Activation maximization: objectives, priors and the one sampler behind every method."""

from featvis.synthesis.objectives import ObjectiveBatch, Term
from featvis.synthesis.sampler import Sampler, SamplerResult, SamplerSettings

__all__ = ["ObjectiveBatch", "Sampler", "SamplerResult", "SamplerSettings", "Term"]
