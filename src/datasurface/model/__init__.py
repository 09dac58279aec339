"""The model: stores, datasets, columns and keys (contract §1). Data only, never code."""

from datasurface.model.schema import Column, Dataset, Model, Source, Store

__all__ = ["Column", "Dataset", "Model", "Source", "Store"]
