"""What raw data is: images and labels in every ImageNet layout, and the built-in sample dataset."""

from alexkit.datasets.layouts import (
    LAYOUTS,
    ClassInfo,
    Dataset,
    Sample,
    find_dataset,
    read_sample_bytes,
)
from alexkit.datasets.sample_place import write_sample_dataset

__all__ = [
    "LAYOUTS",
    "ClassInfo",
    "Dataset",
    "Sample",
    "find_dataset",
    "read_sample_bytes",
    "write_sample_dataset",
]
