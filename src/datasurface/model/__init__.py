"""The model: stores, datasets, columns and keys (docs/model.md). Data only, never code."""

from datasurface.model.loader import load_model
from datasurface.model.schema import Column, Dataset, Model, Source, Store, Workspace, WorkspaceDataset, find_store
from datasurface.model.validate import parse_model

__all__ = ["Column", "Dataset", "Model", "Source", "Store", "Workspace", "WorkspaceDataset", "find_store",
           "load_model", "parse_model"]
