"""Random draws: scalars, jittered points and smooth random fields.

Each call consumes the generator, so the order of the calls fixes what a seed produces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw in [lo, hi)."""
    return float(rng.uniform(lo, hi))


def normal(rng: np.random.Generator, sd: float) -> float:
    """One zero-mean normal draw with standard deviation `sd`."""
    return float(rng.normal(0.0, sd))


def jitter(rng: np.random.Generator, points: Sequence[Sequence[float]], sd: float) -> np.ndarray:
    """`points` (K, 3) mm moved by independent normal offsets of `sd` mm per coordinate."""
    return np.asarray(points, float) + rng.normal(0.0, sd, (len(points), 3))


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], cell: float) -> np.ndarray:
    """Zero-mean, unit-variance float32 random field of `shape` with features about `cell` voxels wide.

    Normal values on a coarse lattice, upsampled with smoothstep weights. Plain element-wise arithmetic (no BLAS),
    so the field is bit-identical whatever the thread count.
    """
    cell = max(cell, 1.0)
    coarse = [max(2, int(np.ceil(n / cell)) + 1) for n in shape]
    field = rng.standard_normal(coarse, dtype=np.float32)
    for axis in (2, 1, 0):  # the last step copies whole planes: cheapest when it is along axis 0
        i0, w = _interpolation_weights(int(shape[axis]), coarse[axis])
        lo, hi = np.take(field, i0, axis=axis), np.take(field, i0 + 1, axis=axis)
        w = w.reshape([-1 if a == axis else 1 for a in range(3)])
        hi -= lo
        hi *= w
        hi += lo
        field = hi
    sample = field[::3, ::3, ::2]
    field -= np.float32(sample.mean())
    field *= np.float32(1.0 / (float(sample.std()) or 1.0))
    return field


def _interpolation_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Left node index and smoothstep weight of the right node, spreading `n_in` nodes over `n_out` samples."""
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    i0 = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    w = (pos - i0).astype(np.float32)
    return i0, w * w * (3 - 2 * w)
