"""Activation maximization: objectives (objectives), spaces (spaces), prior terms and operators
(priors), the one sampler behind every method (sampler), the method and synthesis schemas
(settings), method configs to parts (methods) and `synthesize` (synthesize)."""
