"""One volume to the model's grid: canonical orientation, normalisation, in-plane resize."""

from __future__ import annotations

import numpy as np
import torch

from selflabel.config import PreprocessConfig
from selflabel.io import Volume, to_canonical
from selflabel.preprocess.intensity import normalize_intensity
from selflabel.preprocess.resample import resize_slices


def prepare_image(volume: Volume, cfg: PreprocessConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Image volume -> canonical, normalised, resized float32 tensor (Z, S, S), plus intensity statistics."""
    canonical = np.ascontiguousarray(to_canonical(volume.array, volume.affine))
    normalised, stats = normalize_intensity(canonical, cfg)
    resized = resize_slices(torch.from_numpy(normalised)[:, None], cfg.image_size)[:, 0]
    return resized, stats


def prepare_label(volume: Volume, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Label volume -> (canonical labels at the original grid (Z, H, W), labels resized to (Z, S, S)), uint8."""
    canonical = np.ascontiguousarray(to_canonical(volume.array, volume.affine))
    resized = resize_slices(torch.from_numpy(canonical)[:, None].float(), size, label=True)[:, 0]
    return canonical, resized.to(torch.uint8).numpy()
