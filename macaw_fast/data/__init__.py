"""Data: the Batch type, the on-disk store and the meta-batch sampler."""

from .batch import FIELDS, SCALAR_FIELDS, VECTOR_FIELDS, Batch
from .store import Dataset, DatasetError, DatasetWriter, TaskData, open_dataset, verify_dataset

__all__ = ["Batch", "FIELDS", "SCALAR_FIELDS", "VECTOR_FIELDS", "Dataset", "DatasetError", "DatasetWriter",
           "TaskData", "open_dataset", "verify_dataset"]
