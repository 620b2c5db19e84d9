"""LightningModules: the step logic of each training job, nothing else."""

from featvis.training.classifier import ClassifierModule

__all__ = ["ClassifierModule"]
