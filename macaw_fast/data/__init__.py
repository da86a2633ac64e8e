"""Data: the Batch type, the on-disk store and the meta-batch sampler."""

from .batch import FIELDS, SCALAR_FIELDS, VECTOR_FIELDS, Batch

__all__ = ["Batch", "FIELDS", "SCALAR_FIELDS", "VECTOR_FIELDS"]
