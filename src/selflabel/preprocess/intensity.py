"""CT intensity normalisation: the paper's per-volume percentile clip + z-score, a fixed HU window, or nnU-Net's
dataset-wide clip + z-score of the labelled foreground (with `foreground_intensity` computing its statistics)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selflabel.config import PreprocessConfig
from selflabel.errors import ConfigError
from selflabel.io import Case, read_case


def normalize_intensity(image: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, dict[str, float]]:
    """Normalise a CT volume (HU, any shape) as the config says; return float32 voxels and the statistics used.

    ``percentile_zscore``: clip above the `clip_percentile`-th percentile, then ``(x - mean) / std`` with the
    mean and std of the clipped volume. ``hu_window``: clip to [low, high] HU, then scale to [0, 1].
    ``ct_foreground``: clip to the dataset's foreground [low, high], then ``(x - mean) / std`` with its statistics.
    """
    if cfg.normalization == "ct_foreground":
        if not cfg.foreground_intensity:
            raise ConfigError(
                "preprocess.normalization ct_foreground needs preprocess.foreground_intensity (the dataset's "
                "statistics); `selflabel run` and `selflabel train` compute them from the training cases"
            )
        low, high, mean, std = cfg.foreground_intensity
        out = np.clip(image, low, high, dtype=np.float32)
        out -= mean
        out /= std
        return out, {"low": low, "high": high, "mean": mean, "std": std}
    if cfg.normalization == "hu_window":
        low, high = cfg.hu_window
        out = (np.clip(image, low, high, dtype=np.float32) - low) / (high - low)
        return out.astype(np.float32, copy=False), {"low": float(low), "high": float(high)}
    clip = float(np.percentile(image, cfg.clip_percentile))
    clipped = np.minimum(image, clip, dtype=np.float32)
    mean = float(clipped.mean(dtype=np.float64))
    std = float(clipped.std(dtype=np.float64))
    clipped -= mean
    clipped /= max(std, 1e-6)
    return clipped, {"clip": clip, "mean": mean, "std": std}


def foreground_intensity(
    cases: Sequence[Case], samples_per_case: int = 10000, seed: int = 0, label_values: Sequence[int] | None = None
) -> tuple[float, float, float, float]:
    """(0.5th percentile, 99.5th percentile, mean, std) in HU of labelled foreground voxels, as nnU-Net's fingerprint.

    Up to `samples_per_case` foreground voxels are drawn from each case (every voxel of a smaller foreground), with a
    generator seeded from `seed`, so every case weighs about the same whatever its size.
    """
    rng = np.random.default_rng(seed)
    pools = []
    for case in cases:
        image, label = read_case(case, label_values)
        values = image.array[label.array > 0]
        if values.size > samples_per_case:
            values = rng.choice(values, samples_per_case, replace=False)
        pools.append(values.astype(np.float64))
    pool = np.concatenate(pools) if pools else np.zeros(0)
    if pool.size == 0:
        raise ConfigError("preprocess.normalization ct_foreground: the training cases have no labelled voxels")
    low, high = np.percentile(pool, (0.5, 99.5))
    return float(low), float(high), float(pool.mean()), float(max(pool.std(), 1e-6))
