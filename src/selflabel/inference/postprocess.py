"""Label clean-up after the arg-max: per-organ 3D connected components."""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage


def largest_components(labels: np.ndarray) -> np.ndarray:
    """Keep, for every organ label, only its largest 26-connected component (in place; returns `labels`)."""
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        keep = cc3d.largest_k(mask, k=1, connectivity=26) > 0
        labels[box][mask & ~keep] = 0
    return labels
