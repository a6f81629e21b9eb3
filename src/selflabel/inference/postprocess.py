"""Label clean-up after the arg-max: per-organ 3D connected components, the main axial slab."""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage


def largest_components(labels: np.ndarray, min_fraction: float = 1.0) -> np.ndarray:
    """Keep, for every organ label, its largest 26-connected component and those at least `min_fraction` of its
    size (1 = the largest alone); the rest becomes background (in place; returns `labels`)."""
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        if min_fraction >= 1:
            keep = cc3d.largest_k(mask, k=1, connectivity=26) > 0
        else:
            components = cc3d.connected_components(mask, connectivity=26)
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            keep = (sizes >= max(1, min_fraction * sizes.max()))[components]
        labels[box][mask & ~keep] = 0
    return labels


def main_axial_slab(labels: np.ndarray, slice_mm: float, gap_mm: float) -> slice:
    """The axial slab of canonical (Z, H, W) `labels` that holds most organ voxels, as a slice of Z.

    Slices with organs form runs; runs separated by at most `gap_mm` of empty slices (slice spacing `slice_mm`)
    are one slab. All slices when there are no organs.
    """
    counts = np.count_nonzero(labels.reshape(len(labels), -1), axis=1)
    occupied = np.flatnonzero(counts)
    if occupied.size == 0:
        return slice(0, len(labels))
    max_gap = int(np.floor(gap_mm / slice_mm + 1e-6)) if slice_mm > 0 else 0
    breaks = np.flatnonzero(np.diff(occupied) - 1 > max_gap)
    starts = np.concatenate([[occupied[0]], occupied[breaks + 1]])
    stops = np.concatenate([occupied[breaks], [occupied[-1]]]) + 1
    best = int(np.argmax([counts[a:b].sum() for a, b in zip(starts, stops, strict=True)]))
    return slice(int(starts[best]), int(stops[best]))


def clear_outside(labels: np.ndarray, keep: slice) -> np.ndarray:
    """Set the labels of every axial slice outside `keep` to background (in place; returns `labels`)."""
    labels[: keep.start] = 0
    labels[keep.stop :] = 0
    return labels
