"""Data: the built-in procedural `shapes` set and folder-backed sets, as Lightning data modules."""

from featvis.data.datamodules import (
    CIFAR10DataModule,
    ImageDataModule,
    ImageFolderDataModule,
    ShapesDataModule,
)
from featvis.data.shapes import ShapesDataset

__all__ = ["CIFAR10DataModule", "ImageDataModule", "ImageFolderDataModule", "ShapesDataModule",
           "ShapesDataset"]
