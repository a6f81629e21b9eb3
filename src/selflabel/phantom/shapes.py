"""Shapes in patient millimetres rasterised inside their bounding boxes, and the canvas they are painted on.

`Grid` maps voxels (x, y, z) to mm; `Blob` is a perturbed, bent ellipsoid (random spherical-harmonic radius terms);
`tube` sweeps a sphere of varying radius along a spline; `Canvas` holds the tissue and label volumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from selflabel.phantom.tissue import Tissue

#: Index box of a grid: one slice per axis (x, y, z).
Box = tuple[slice, slice, slice]


class Grid:
    """Voxel centres in the patient frame (mm): x right, y anterior, z superior; origin mid-vertebral body, L1/L2."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float], origin: Sequence[float]):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = np.asarray(origin, dtype=np.float64)
        self._origin = [float(v) for v in self.origin]
        self._spacing = [float(v) for v in self.spacing]
        self.axes = [(self.origin[a] + np.arange(self.shape[a]) * self.spacing[a]).astype(np.float32) for a in range(3)]

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> Box | None:
        """Index box of the voxels whose centres lie in [lo, hi] mm; None when empty."""
        out = []
        for a in range(3):
            o, s = self._origin[a], self._spacing[a]
            i0 = max(0, math.ceil((float(lo[a]) - o) / s))
            i1 = min(self.shape[a], math.floor((float(hi[a]) - o) / s) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable x (n,1,1), y (1,n,1), z (1,1,n) coordinates of a box, mm."""
        x, y, z = (self.axes[a][box[a]] for a in range(3))
        return x[:, None, None], y[None, :, None], z[None, None, :]


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Matrix whose columns are the local axes in the patient frame: Rz(yaw) @ Ry(pitch) @ Rx(roll), radians."""
    cz, sz, cy, sy, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def orthonormal_frame(w: Sequence[float], u_hint: Sequence[float]) -> np.ndarray:
    """Orthonormal local axes (columns u, v, w) with w along `w` and u as close as possible to `u_hint`."""
    w = np.asarray(w, float) / np.linalg.norm(w)
    u = np.asarray(u_hint, float) - np.dot(u_hint, w) * w
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(w, u), w], axis=1)


def _harmonic_terms(nu: np.ndarray, nv: np.ndarray, nw: np.ndarray) -> list[np.ndarray]:
    """Real spherical-harmonic-like polynomials of degree 1-3 in the direction cosines (15 terms)."""
    nu2, nv2, nw2 = nu * nu, nv * nv, nw * nw
    return [
        nu, nv, nw,
        nu * nv, nu * nw, nv * nw, nu2 - nv2, 3 * nw2 - 1,
        nu * (5 * nw2 - 1), nv * (5 * nw2 - 1), nw * (5 * nw2 - 3),
        nu * (nu2 - 3 * nv2), nv * (3 * nu2 - nv2), nu * nv * nw, nw * (nu2 - nv2),
    ]  # fmt: skip


_N_HARMONICS = 15


def shape_coefficients(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Random harmonic coefficients: degree-1 terms (egg shapes) smaller, degree 2-3 (lobes, dents) full."""
    scale = np.array([0.5] * 3 + [1.0] * 5 + [0.6] * 7)
    return rng.normal(0.0, amplitude, _N_HARMONICS) * scale


@dataclass
class Blob:
    """A perturbed, bent ellipsoid. rot: columns = local axes; axes: semi-axes mm; coef: harmonic radius terms."""

    center: np.ndarray
    axes: np.ndarray
    rot: np.ndarray
    coef: np.ndarray
    bend: tuple[float, float] = (0.0, 0.0)  # u += bend[0] * v^2 + bend[1] * w^2 (normalised units)

    def evaluate(self, grid: Grid) -> tuple[Box, np.ndarray, tuple[np.ndarray, ...]] | None:
        """Box, normalised radius field (< 1 inside) and local normalised coordinates (u, v, w) in the box."""
        grow = 1.0 + float(np.abs(self.coef).sum()) * 0.6 + abs(self.bend[0]) + abs(self.bend[1])
        half = np.sqrt(((self.rot * self.axes[None, :]) ** 2).sum(axis=1)) * min(grow, 1.8)
        box = grid.box(self.center - half, self.center + half)
        if box is None:
            return None
        x, y, z = grid.coords(box)
        dx, dy, dz = x - np.float32(self.center[0]), y - np.float32(self.center[1]), z - np.float32(self.center[2])
        r = self.rot.astype(np.float32)
        a = self.axes.astype(np.float32)
        u = (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz) / a[0]
        v = (r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz) / a[1]
        w = (r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz) / a[2]
        if self.bend[0] or self.bend[1]:
            u = u - np.float32(self.bend[0]) * v * v - np.float32(self.bend[1]) * w * w
        u, v, w = np.broadcast_arrays(u, v, w)
        rad = np.sqrt(u * u + v * v + w * w) + np.float32(1e-6)
        # the radius perturbation depends on direction only and varies slowly: evaluate it every other voxel
        step = 2 if rad.size > 20000 else 1
        cu, cv, cw, cr = (a[::step, ::step, ::step] for a in (u, v, w, rad))
        pert = np.full(cr.shape, 1.0, np.float32)
        for c, t in zip(self.coef.astype(np.float32), _harmonic_terms(cu / cr, cv / cr, cw / cr), strict=True):
            pert += c * t
        np.maximum(pert, np.float32(0.3), out=pert)
        if step > 1:
            for axis in range(3):
                pert = np.repeat(pert, step, axis=axis)
            pert = pert[: rad.shape[0], : rad.shape[1], : rad.shape[2]]
        return box, rad / pert, (u, v, w)


def _catmull_rom(points: np.ndarray, values: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth centre line through control `points` (K, 3) mm, sampled about every `step` mm; values interpolated."""
    pts = np.asarray(points, float)
    vals = np.asarray(values, float)
    if len(pts) == 1:
        return pts, vals
    ext = np.concatenate([pts[:1] * 2 - pts[1:2], pts, pts[-1:] * 2 - pts[-2:-1]])
    out_p, out_v = [], []
    for i in range(len(pts) - 1):
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        n = max(1, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = (np.arange(n) / n)[:, None]
        seg = 0.5 * (
            2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
        )
        out_p.append(seg)
        out_v.append(vals[i] + (vals[i + 1] - vals[i]) * t[:, 0:1] * np.ones((1,) + vals.shape[1:]))
    out_p.append(pts[-1:])
    out_v.append(vals[-1:])
    return np.concatenate(out_p), np.concatenate(out_v)


def tube(
    grid: Grid, points: np.ndarray, radii: np.ndarray, squash: Sequence[float] = (1.0, 1.0, 1.0), step: float = 0.0
) -> tuple[Box, np.ndarray] | None:
    """Signed distance (mm, < 0 inside) to a swept sphere of varying radius along a spline through `points`.

    points: (K, 3) control points in mm; radii: (K,) mm. squash scales the cross-section per patient axis
    (e.g. (1, 0.7, 1) flattens a vertical tube front-to-back). Evaluated only in each segment's box.
    """
    step = step or max(6.0, 0.9 * float(np.min(radii)))
    centre, rad = _catmull_rom(points, np.asarray(radii, float)[:, None], step)
    rad = rad[:, 0]
    sq = np.asarray(squash, float)
    lo = (centre - rad[:, None] * sq).min(axis=0) - 1.0
    hi = (centre + rad[:, None] * sq).max(axis=0) + 1.0
    box = grid.box(lo, hi)
    if box is None:
        return None
    sdf = np.full([s.stop - s.start for s in box], np.inf, dtype=np.float32)
    inv = (1.0 / sq).astype(np.float32)
    for i in range(len(centre) - 1):
        a, b = centre[i], centre[i + 1]
        ra, rb = rad[i], rad[i + 1]
        rmax = max(ra, rb)
        sub = grid.box(np.minimum(a, b) - rmax * sq - 0.5, np.maximum(a, b) + rmax * sq + 0.5)
        if sub is None:
            continue
        sub = tuple(slice(max(s.start, o.start), min(s.stop, o.stop)) for s, o in zip(sub, box, strict=True))
        if any(s.stop <= s.start for s in sub):
            continue
        x, y, z = grid.coords(sub)
        ab = ((b - a) * inv).astype(np.float32)
        px, py, pz = (x - np.float32(a[0])) * inv[0], (y - np.float32(a[1])) * inv[1], (z - np.float32(a[2])) * inv[2]
        length2 = float(ab @ ab)
        if length2 < 1e-9:
            t = np.zeros((1, 1, 1), np.float32)
        else:
            t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / np.float32(length2), 0.0, 1.0)
        ex, ey, ez = px - t * ab[0], py - t * ab[1], pz - t * ab[2]
        d = np.sqrt(ex * ex + ey * ey + ez * ez) - (np.float32(ra) + t * np.float32(rb - ra))
        view = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(sub, box, strict=True))
        np.minimum(sdf[view], d, out=sdf[view])
    return box, sdf


class Canvas:
    """Tissue (uint8 `Tissue`) and label (uint8 FLARE22 index) volumes (x, y, z), painted in order.

    A later structure overwrites an earlier one where it is allowed, so the painting order sets the label priority.
    """

    def __init__(self, shape: tuple[int, ...]):
        self.tissue = np.zeros(shape, np.uint8)
        self.label = np.zeros(shape, np.uint8)

    def paint(
        self,
        box: Box,
        mask: np.ndarray,
        tissue: Tissue,
        label: int | None = None,
        within: np.ndarray | None = None,
        only_label: int | None = None,
    ) -> np.ndarray:
        """Paint `mask` (in `box`); `within` is a full-grid mask restricting it; `only_label` keeps it to that organ.

        Returns the painted mask (in the box).
        """
        m = mask if within is None else mask & within[box]
        if only_label is not None:
            m = m & (self.label[box] == only_label)
        self.tissue[box][m] = int(tissue)
        if label is not None:
            self.label[box][m] = label
        return m
