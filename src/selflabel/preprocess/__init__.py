"""Preprocessing: intensity normalisation, resizing to the model's grid, and the on-disk cache."""

from selflabel.preprocess.cache import (
    CACHE_VERSION,
    CacheEntry,
    cache_case,
    cache_size,
    foreground_slices,
    is_cached,
    organ_slices,
    organs_present,
    preprocess_cases,
    preprocess_dataset,
)
from selflabel.preprocess.crop import CropBox
from selflabel.preprocess.intensity import foreground_intensity, normalize_intensity
from selflabel.preprocess.planning import PLANNED, plan
from selflabel.preprocess.resample import resize_labels, resize_slices
from selflabel.preprocess.volume import prepare_image, prepare_label

__all__ = [
    "CACHE_VERSION",
    "PLANNED",
    "CacheEntry",
    "CropBox",
    "cache_case",
    "cache_size",
    "foreground_slices",
    "is_cached",
    "organ_slices",
    "organs_present",
    "foreground_intensity",
    "normalize_intensity",
    "plan",
    "prepare_image",
    "prepare_label",
    "preprocess_cases",
    "preprocess_dataset",
    "resize_labels",
    "resize_slices",
]
