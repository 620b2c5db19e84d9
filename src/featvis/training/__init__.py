"""LightningModules: the step logic of each training job, nothing else."""

from featvis.training.classifier import ClassifierModule
from featvis.training.generator import GeneratorModule, linear_decay
from featvis.training.prior import CodePriorModule

__all__ = ["ClassifierModule", "CodePriorModule", "GeneratorModule", "linear_decay"]
