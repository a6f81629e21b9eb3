"""Training data: cached slices, the paper's augmentation, a deterministic sampler, and the case split."""

from selflabel.data.augment import (
    IntensityScale,
    RandomContents,
    RandomDistension,
    RandomElastic,
    RandomPhase,
    RandomRot90Flip,
    RandomRotate,
    RandomScale,
    build_augmentation,
    build_intensity_augmentation,
    build_organ_intensity_augmentation,
)
from selflabel.data.dataset import SliceDataset, Source, paste_box
from selflabel.data.sampling import SliceSampler
from selflabel.data.split import read_split, split_cases, split_record

__all__ = [
    "IntensityScale",
    "RandomContents",
    "RandomDistension",
    "RandomElastic",
    "RandomPhase",
    "RandomRot90Flip",
    "RandomRotate",
    "RandomScale",
    "SliceDataset",
    "SliceSampler",
    "Source",
    "build_augmentation",
    "build_intensity_augmentation",
    "build_organ_intensity_augmentation",
    "paste_box",
    "read_split",
    "split_cases",
    "split_record",
]
