"""CT intensity normalisation: the paper's per-volume percentile clip + z-score, or a fixed HU window."""

from __future__ import annotations

import numpy as np

from selflabel.config import PreprocessConfig


def normalize_intensity(image: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, dict[str, float]]:
    """Normalise a CT volume (HU, any shape) as the config says; return float32 voxels and the statistics used.

    ``percentile_zscore``: clip above the `clip_percentile`-th percentile, then ``(x - mean) / std`` with the
    mean and std of the clipped volume. ``hu_window``: clip to [low, high] HU, then scale to [0, 1].
    """
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
