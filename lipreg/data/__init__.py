"""Data modules that hold their splits as tensors in memory and serve sliced batches."""

from lipreg.data.base import InMemoryDataModule, ShuffledBatches, TensorBatches
from lipreg.data.mnist import FashionMNISTDataModule, MNISTDataModule
from lipreg.data.regression import RegressionDataModule

__all__ = [
    "FashionMNISTDataModule",
    "InMemoryDataModule",
    "MNISTDataModule",
    "RegressionDataModule",
    "ShuffledBatches",
    "TensorBatches",
]
