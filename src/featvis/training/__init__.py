"""LightningModules: the step logic of each training job, nothing else."""

from featvis.training.classifier import ClassifierModule
from featvis.training.generator import GeneratorModule
from featvis.training.prior import CodePriorModule

__all__ = ["ClassifierModule", "CodePriorModule", "GeneratorModule"]
