"""Data: the Batch type, the on-disk store and the meta-batch sampler."""

from .batch import FIELDS, SCALAR_FIELDS, VECTOR_FIELDS, Batch
from .loader import MetaBatchLoader
from .sampler import MetaBatchSampler, choose_tasks
from .store import Dataset, DatasetError, DatasetWriter, TaskData, open_dataset, verify_dataset

__all__ = ["Batch", "FIELDS", "SCALAR_FIELDS", "VECTOR_FIELDS", "Dataset", "DatasetError", "DatasetWriter",
           "MetaBatchLoader", "MetaBatchSampler", "TaskData", "choose_tasks", "open_dataset", "verify_dataset"]
