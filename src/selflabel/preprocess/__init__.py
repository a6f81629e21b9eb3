"""Preprocessing: intensity normalisation, resizing to the model's grid, and the on-disk cache."""

from selflabel.preprocess.cache import (
    CACHE_VERSION,
    CacheEntry,
    cache_case,
    cache_size,
    is_cached,
    preprocess_cases,
    preprocess_dataset,
)
from selflabel.preprocess.intensity import normalize_intensity
from selflabel.preprocess.resample import resize_slices
from selflabel.preprocess.volume import prepare_image, prepare_label

__all__ = [
    "CACHE_VERSION",
    "CacheEntry",
    "cache_case",
    "cache_size",
    "is_cached",
    "normalize_intensity",
    "prepare_image",
    "prepare_label",
    "preprocess_cases",
    "preprocess_dataset",
    "resize_slices",
]
