"""In-plane resizing of slice batches, shared by the cache, the training loader and prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Slices resized together by `resize_labels`: bounds the memory of one label's float mask on large scans.
_LABEL_CHUNK = 32


def resize_slices(slices: torch.Tensor, size: int | tuple[int, int], label: bool = False) -> torch.Tensor:
    """Resize a batch of slices (N, C, H, W) in-plane: bilinear (antialiased when shrinking) or nearest for labels."""
    target = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(slices.shape[-2:]) == target:
        return slices
    if label:
        return F.interpolate(slices, size=target, mode="nearest-exact")
    shrinking = slices.shape[-2] > target[0] or slices.shape[-1] > target[1]
    return F.interpolate(slices, size=target, mode="bilinear", align_corners=False, antialias=shrinking)


def resize_labels(labels: torch.Tensor, size: int, mode: str = "nearest") -> torch.Tensor:
    """Resize label slices (N, H, W) to (N, size, size) uint8.

    ``nearest``: each pixel takes the label at its centre. ``area``: the arg-max of every label's mask resized as
    `resize_slices` resizes images (so a pixel takes the label covering most of it), the same as resizing a one-hot
    map, one label at a time so that memory stays at one float mask of `_LABEL_CHUNK` slices. ``area_keep``: ``area``,
    except that a pixel it makes background keeps the organ at its centre (organs thinner than half a pixel are
    not lost).
    """
    if mode == "nearest" or tuple(labels.shape[-2:]) == (size, size):
        return _nearest_labels(labels, size)
    out = _area_labels(labels, size)
    if mode == "area_keep":
        lost = out == 0
        out[lost] = _nearest_labels(labels, size)[lost]
    return out


def _nearest_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    return resize_slices(labels[:, None].float(), size, label=True)[:, 0].to(torch.uint8)


def _area_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.empty((len(labels), size, size), dtype=torch.uint8)
    for start in range(0, len(labels), _LABEL_CHUNK):
        part = labels[start : start + _LABEL_CHUNK]
        best = torch.full((len(part), size, size), -1.0)
        for value in torch.unique(part).tolist():  # ascending: ties go to the lower label, as an arg-max does
            score = resize_slices((part == value)[:, None].float(), size)[:, 0]
            better = score > best
            best = torch.where(better, score, best)
            out[start : start + len(part)][better] = value
    return out
