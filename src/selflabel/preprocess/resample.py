"""In-plane resizing of slice batches, shared by the cache, the training loader and prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_slices(slices: torch.Tensor, size: int | tuple[int, int], label: bool = False) -> torch.Tensor:
    """Resize a batch of slices (N, C, H, W) in-plane: bilinear (antialiased when shrinking) or nearest for labels."""
    target = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(slices.shape[-2:]) == target:
        return slices
    if label:
        return F.interpolate(slices, size=target, mode="nearest-exact")
    shrinking = slices.shape[-2] > target[0] or slices.shape[-1] > target[1]
    return F.interpolate(slices, size=target, mode="bilinear", align_corners=False, antialias=shrinking)
