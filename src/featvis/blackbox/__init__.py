"""Black-box activation maximization: gradient-free search in a generator's code space.

`method=dgn_cmaes` (CMA-ES) and `method=dgn_ga` (XDream's genetic algorithm) search G's codes
with a scorer featvis never differentiates: units of any featvis target (forward passes only), a
simulated neuron, or, through `Session`'s ask/tell loop, responses recorded outside featvis.
"""

from featvis.blackbox.search import NoisyNeuron, SearchResult, TargetScorer, search
from featvis.blackbox.session import Session, read_responses
from featvis.blackbox.strategies import CMAES, GeneticAlgorithm, RandomSearch

__all__ = ["CMAES", "GeneticAlgorithm", "NoisyNeuron", "RandomSearch", "SearchResult", "Session", "TargetScorer", "read_responses",
           "search"]
