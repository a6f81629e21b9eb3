"""Training data: cached slices, the paper's augmentation, a deterministic sampler, and the case split."""

from selflabel.data.augment import RandomRot90Flip, RandomRotate, build_augmentation
from selflabel.data.dataset import SliceDataset, Source
from selflabel.data.sampling import SliceSampler
from selflabel.data.split import read_split, split_cases, split_record

__all__ = [
    "RandomRot90Flip",
    "RandomRotate",
    "SliceDataset",
    "SliceSampler",
    "Source",
    "build_augmentation",
    "read_split",
    "split_cases",
    "split_record",
]
