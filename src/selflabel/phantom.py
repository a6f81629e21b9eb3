"""Procedural abdominal CT phantoms: a deterministic synthetic FLARE22-style cohort, no downloads.

Each case is a contrast-enhanced (or plain) abdominal CT built from simple shapes in millimetres and rasterised
organ by organ inside its bounding box:

* **Body**: a superellipse outline with random low-order wobble, skin (~40 HU), subcutaneous fat (-100 HU, thickness
  varying per patient and around the body), an abdominal muscle wall with a linea alba, paraspinal, quadratus and
  psoas muscles, lumbar/thoracic vertebrae (cortex ~800 HU, marrow ~230 HU, discs, canal, arches, spinous and
  transverse processes), sloping ribs with anterior costal cartilage, a diaphragm with lung bases and heart above
  it, and the CT table under the back. Air outside is -1000 HU.
* **FLARE22 organs** (labels 1-13) placed as in a supine adult: liver (right lobe under the right dome, left lobe
  across the midline, caudate by the IVC, hepatic and portal veins inside), right/left kidney (tilted, medial sinus,
  cortex/medulla), spleen (crescent on the left posterolateral wall), pancreas (head inside the duodenal C, neck,
  body across the aorta, tail to the splenic hilum in front of the left kidney), aorta (left-anterior of the spine),
  IVC (right of the aorta, intrahepatic above), adrenals (thin inverted-Y limbs above-medial of the upper poles,
  beside the diaphragmatic crura), gallbladder (pear under the liver), esophagus (top of the volume, in front of
  the aorta, to the gastro-oesophageal junction), stomach (J-shaped tube: fundus, body, antrum, pylorus) and
  duodenum (bulb, descending, horizontal and ascending parts around the pancreatic head).
* **Distractors** (label 0): colon with stool and gas, small-bowel loops, splenic/portal/superior mesenteric and renal
  veins, SMA and celiac arteries, crura, occasional liver cysts, gallstones, aortic calcifications, oral contrast.

Patients differ in body size and fat, organ sizes and positions, organ shapes (random low-order spherical-harmonic
radius perturbations and bends of every blob, jittered spline centre lines for tubes), contrast phase (non-contrast,
arterial, portal-venous, with a per-patient enhancement factor), image noise and blur, slice count, in-plane
spacing and slice thickness. Small organs are a few millimetres thick and close in HU to their neighbours
(pancreas vs duodenum/bowel, adrenals vs crura, esophagus vs muscle), so they stay hard with few labelled cases.

Arrays are in (x, y, z) voxel order with a RAS+ affine: x grows to the patient's right, y anteriorly, z superiorly
(slice 0 is the most inferior). Images are int16 HU, labels uint8 with FLARE22 indices (`config.FLARE22_LABELS`).
Every case is made from its own generator seeded from ``(seed, split, index)``, so a case does not depend on how
many others are made, and the same seed gives the same arrays.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from selflabel.config import FLARE22_LABELS
from selflabel.errors import InputError, SelflabelError

__all__ = [
    "PHANTOM_VERSION",
    "SPLITS",
    "CohortSummary",
    "PhantomCase",
    "Tissue",
    "case_files",
    "case_rng",
    "make_case",
    "write_cohort",
]

#: Bump when the generator changes what a seed produces (a cohort.json with another version is rewritten).
PHANTOM_VERSION = 1
#: Cohort splits, in the order used to seed cases.
SPLITS: tuple[str, str, str] = ("labeled", "unlabeled", "test")
PHASES: tuple[str, str, str] = ("non-contrast", "arterial", "portal-venous")

LIVER, KIDNEY_R, SPLEEN, PANCREAS, AORTA, IVC = 1, 2, 3, 4, 5, 6
ADRENAL_R, ADRENAL_L, GALLBLADDER, ESOPHAGUS, STOMACH, DUODENUM, KIDNEY_L = 7, 8, 9, 10, 11, 12, 13
assert FLARE22_LABELS["liver"] == LIVER and FLARE22_LABELS["left_kidney"] == KIDNEY_L  # invariant of this module

#: A labelled case must hold at least this many voxels of every organ (else it is drawn again).
MIN_ORGAN_VOXELS = 8
#: Smallest grid that still holds every organ (adrenals, esophagus) with a few voxels.
MIN_SIZE, MIN_SLICES = 80, 24


class Tissue(IntEnum):
    """Tissue classes of the phantom; each has a mean HU per contrast phase and a texture amplitude."""

    AIR = 0
    FAT = 1
    SKIN = 2
    MUSCLE = 3
    BONE_CORTEX = 4
    BONE_MARROW = 5
    DISC = 6
    CSF = 7
    RIB = 8
    CARTILAGE = 9
    LUNG = 10
    HEART = 11
    LIVER = 12
    HEPATIC_VEIN = 13
    PORTAL_VEIN = 14
    SPLEEN = 15
    KIDNEY_CORTEX = 16
    KIDNEY_MEDULLA = 17
    PANCREAS = 18
    ARTERY = 19
    IVC = 20
    ADRENAL = 21
    BILE = 22
    GB_WALL = 23
    BOWEL_WALL = 24
    FLUID = 25
    FOOD = 26
    STOOL = 27
    GAS = 28
    ORAL_CONTRAST = 29
    CALCIFICATION = 30
    TABLE = 31
    FOAM = 32
    ESOPHAGUS = 33
    CYST = 34


# Mean HU per tissue: (non-contrast, arterial, portal-venous); texture amplitude (HU, low-frequency).
_HU: dict[Tissue, tuple[float, float, float, float]] = {
    Tissue.AIR: (-1000, -1000, -1000, 0),
    Tissue.FAT: (-105, -105, -105, 12),
    Tissue.SKIN: (35, 40, 45, 5),
    Tissue.MUSCLE: (45, 55, 60, 7),
    Tissue.BONE_CORTEX: (800, 800, 800, 80),
    Tissue.BONE_MARROW: (230, 235, 240, 45),
    Tissue.DISC: (85, 90, 95, 8),
    Tissue.CSF: (12, 12, 12, 3),
    Tissue.RIB: (520, 520, 520, 80),
    Tissue.CARTILAGE: (130, 130, 130, 25),
    Tissue.LUNG: (-850, -850, -850, 40),
    Tissue.HEART: (42, 180, 140, 10),
    Tissue.LIVER: (58, 75, 112, 6),
    Tissue.HEPATIC_VEIN: (40, 60, 155, 4),
    Tissue.PORTAL_VEIN: (40, 140, 170, 4),
    Tissue.SPLEEN: (48, 120, 118, 6),
    Tissue.KIDNEY_CORTEX: (32, 185, 165, 6),
    Tissue.KIDNEY_MEDULLA: (30, 80, 150, 6),
    Tissue.PANCREAS: (42, 115, 95, 14),
    Tissue.ARTERY: (42, 300, 165, 4),
    Tissue.IVC: (42, 85, 150, 5),
    Tissue.ADRENAL: (25, 62, 56, 6),
    Tissue.BILE: (10, 10, 10, 3),
    Tissue.GB_WALL: (40, 70, 75, 4),
    Tissue.BOWEL_WALL: (42, 95, 88, 8),
    Tissue.FLUID: (12, 12, 12, 6),
    Tissue.FOOD: (40, 40, 40, 35),
    Tissue.STOOL: (25, 25, 25, 70),
    Tissue.GAS: (-1000, -1000, -1000, 0),
    Tissue.ORAL_CONTRAST: (320, 320, 320, 40),
    Tissue.CALCIFICATION: (750, 750, 750, 100),
    Tissue.TABLE: (250, 250, 250, 20),
    Tissue.FOAM: (-850, -850, -850, 20),
    Tissue.ESOPHAGUS: (45, 65, 75, 6),
    Tissue.CYST: (8, 8, 8, 3),
}
# Tissues whose HU rises with the contrast agent (scaled by the patient's enhancement factor).
_NO_ENHANCEMENT = {Tissue.AIR, Tissue.GAS, Tissue.FAT, Tissue.LUNG, Tissue.BONE_CORTEX, Tissue.RIB, Tissue.FOAM}


@dataclass
class PhantomCase:
    """One synthetic case.

    image: int16 HU, shape (x, y, z). label: uint8 FLARE22 indices, same shape. tissue: uint8 `Tissue` per voxel.
    affine: 4x4 voxel -> world mm (RAS+, diagonal: x right, y anterior, z superior).
    meta: JSON-ready facts (phase, noise, spacing, body size, organ voxel counts, attempts).
    """

    image: np.ndarray
    label: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along x, y, z."""
        return tuple(float(s) for s in np.diag(self.affine)[:3])


# ---- geometry: a voxel grid in patient millimetres, blobs and tubes inside bounding boxes ----

Box = tuple[slice, slice, slice]


class _Grid:
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


def _rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Matrix whose columns are the local axes in the patient frame: Rz(yaw) @ Ry(pitch) @ Rx(roll), radians."""
    cz, sz, cy, sy, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def _frame(w: Sequence[float], u_hint: Sequence[float]) -> np.ndarray:
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


N_HARMONICS = 15


def _shape_coefficients(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Random harmonic coefficients: degree-1 terms (egg shapes) smaller, degree 2-3 (lobes, dents) full."""
    scale = np.array([0.5] * 3 + [1.0] * 5 + [0.6] * 7)
    return rng.normal(0.0, amplitude, N_HARMONICS) * scale


@dataclass
class _Blob:
    """A perturbed, bent ellipsoid. rot: columns = local axes; axes: semi-axes mm; coef: harmonic radius terms."""

    center: np.ndarray
    axes: np.ndarray
    rot: np.ndarray
    coef: np.ndarray
    bend: tuple[float, float] = (0.0, 0.0)  # u += bend[0] * v^2 + bend[1] * w^2 (normalised units)

    def evaluate(self, grid: _Grid) -> tuple[Box, np.ndarray, tuple[np.ndarray, ...]] | None:
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


def _tube(
    grid: _Grid, points: np.ndarray, radii: np.ndarray, squash: Sequence[float] = (1.0, 1.0, 1.0), step: float = 0.0
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


# ---- painting ----


class _Canvas:
    """Tissue and label volumes painted in order: a later structure overwrites an earlier one where it is allowed."""

    def __init__(self, grid: _Grid):
        self.grid = grid
        self.tissue = np.zeros(grid.shape, np.uint8)
        self.label = np.zeros(grid.shape, np.uint8)
        self.allowed: np.ndarray | None = None  # where organs may go (abdominal cavity), set after the body

    def paint(
        self,
        box: Box,
        mask: np.ndarray,
        tissue: Tissue | None,
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
        if tissue is not None:
            self.tissue[box][m] = int(tissue)
        if label is not None:
            self.label[box][m] = label
        return m


# ---- the patient ----


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _n(rng: np.random.Generator, sd: float) -> float:
    return float(rng.normal(0.0, sd))


def _jitter(rng: np.random.Generator, points: Sequence[Sequence[float]], sd: float) -> np.ndarray:
    return np.asarray(points, float) + rng.normal(0.0, sd, (len(points), 3))


@dataclass
class _Anatomy:
    """Sampled body measures, in mm in the patient frame."""

    f: float  # skeletal frame scale
    A: float  # body half-width at z = 0 (skin)
    B: float  # body half-depth
    yc: float  # body centre y
    t_fat: float  # anterior subcutaneous fat
    t_mus: float  # abdominal wall muscle
    W: float  # cavity half-width
    y_front: float  # inner anterior wall (y) on the midline
    z_ge: float  # gastro-oesophageal junction
    z_dome_r: float
    z_dome_l: float
    z_py: float  # pylorus
    x_ao: float
    y_ao: float
    r_ao: float


def _body_layers(rng: np.random.Generator, grid: _Grid, an: _Anatomy, canvas: _Canvas) -> dict[str, np.ndarray]:
    """Skin, fat, wall muscles, lungs/heart/diaphragm, spine, ribs and table. Returns full-grid helper masks."""
    x, y, z = grid.axes
    X, Y = x[:, None], y[None, :]
    dx, dy = X, Y - np.float32(an.yc)
    rho = np.sqrt(dx * dx + dy * dy) + np.float32(1e-3)
    theta = np.arctan2(dy, dx)
    ct, st = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    p = np.where(dy > 0, np.float32(2.3), np.float32(2.9))
    r_out = ((ct / an.A) ** p + (st / an.B) ** p) ** (-1.0 / p)
    wobble = np.ones_like(theta)
    for k in (2, 3, 4):
        wobble += _n(rng, 0.025) * np.cos(k * theta) + _n(rng, 0.02) * np.sin(k * theta)
    r_out = (r_out * wobble).astype(np.float32)
    zn = z / np.float32(200.0)
    zscale = (1.0 + _n(rng, 0.05) * zn + _n(rng, 0.04) * zn * zn).astype(np.float32)
    q = (rho / r_out)[:, :, None] / zscale[None, None, :]  # < 1 inside the skin

    ant = np.clip(np.sin(theta), 0, 1)
    fat = an.t_fat * (0.55 + 0.45 * ant + 0.15 * np.cos(2 * theta) * _u(rng, -1, 1)) + _n(rng, 2)
    fat = np.maximum(fat, 3.0).astype(np.float32)
    alba = np.exp(-(((theta - np.pi / 2) / 0.07) ** 2))
    mus = an.t_mus * (1.0 + 0.35 * ct) * (1.0 - 0.75 * alba)
    q_skin, q_fat, q_cav = 1 - 2.5 / r_out, 1 - fat / r_out, 1 - (fat + mus) / r_out
    body = q < 1
    t = canvas.tissue
    t[body] = Tissue.FAT
    t[body & (q >= q_skin[:, :, None])] = Tissue.SKIN
    wall = (q < q_fat[:, :, None]) & (q >= q_cav[:, :, None])
    t[wall] = Tissue.MUSCLE
    inner = q < q_cav[:, :, None]

    # table under the back
    y_tab = an.yc - an.B * float(zscale.max()) - _u(rng, 2, 15)
    tab_top = y_tab + (X**2) / 4000.0
    tab = (Y <= tab_top) & (Y > tab_top - 22) & (np.abs(X) < an.A + 60)
    shell = tab & ((Y > tab_top - 3) | (Y <= tab_top - 19))
    t[np.broadcast_to((tab & ~shell)[:, :, None], t.shape) & ~body] = Tissue.FOAM
    t[np.broadcast_to(shell[:, :, None], t.shape) & ~body] = Tissue.TABLE

    # diaphragm: below it the abdomen, above it lungs and heart
    xr = X / np.float32(an.W)
    y_mid = 0.5 * (an.y_front - 50.0)
    yr = (Y - np.float32(y_mid)) / np.float32(0.5 * (an.y_front + 50.0))
    dome = an.z_dome_l + (an.z_dome_r - an.z_dome_l) / (1 + np.exp(-X / 30.0))
    zd = dome - 45 * np.abs(xr) ** 3 - 55 * np.clip(-yr, 0, None) ** 2 - 12 * np.clip(yr, 0, None) ** 2
    zd = (zd - 15 * np.exp(-((X / 40.0) ** 2))).astype(np.float32)
    thick = _u(rng, 4, 7)
    below = z[None, None, :] < zd[:, :, None]
    thorax = inner & (z[None, None, :] >= zd[:, :, None] + thick)
    t[inner & ~below & ~thorax] = Tissue.MUSCLE
    t[thorax] = Tissue.LUNG
    f = an.f
    heart = _Blob(
        np.array([-20 * f, 0.6 * an.y_front, 0.5 * (an.z_dome_r + an.z_dome_l) + 60 * f]),
        np.array([55 * f, 0.33 * an.y_front + 5, 50 * f]),
        _rotation(yaw=_n(rng, 0.2)),
        _shape_coefficients(rng, 0.05),
    ).evaluate(grid)
    if heart is not None:
        canvas.paint(heart[0], heart[1] < 1, Tissue.HEART, within=thorax)

    # posterior muscles: paraspinal, quadratus lumborum (2D, all slices), psoas (cone tubes)
    para = np.zeros(X.shape[:1] + Y.shape[1:], bool)
    for side in (-1, 1):
        para |= ((X - side * 30 * f) / (26 * f)) ** 2 + ((Y + 44 * f) / (22 * f)) ** 2 < 1
    quad = np.zeros_like(para)
    for side in (-1, 1):
        quad |= ((X - side * 58 * f) / (19 * f)) ** 2 + ((Y + 26 * f) / (10 * f)) ** 2 < 1
    inside_fat = q < q_fat[:, :, None]
    t[inside_fat & para[:, :, None]] = Tissue.MUSCLE
    t[inside_fat & quad[:, :, None] & (z[None, None, :] < 40 * f)] = Tissue.MUSCLE
    for side in (-1, 1):
        ps = _tube(
            grid,
            np.array([[side * 22, 6, 45], [side * 32, 10, -20], [side * 40, 18, -140]]) * f,
            np.array([4, 15, 25]) * f * _u(rng, 0.8, 1.2),
        )
        if ps is not None:
            canvas.paint(ps[0], ps[1] < 0, Tissue.MUSCLE, within=inner)
    # diaphragmatic crura beside the aorta, meeting in front of it at the hiatus
    for side, top in ((1, an.z_ge - 5), (-1, an.z_ge - 15)):
        off = side * (an.r_ao + 6)
        crus = _tube(
            grid,
            np.array(
                [
                    [an.x_ao + off * 0.7, an.y_ao - 4, -45 * f - (10 if side > 0 else 0)],
                    [an.x_ao + off, an.y_ao + 2, 20 * f],
                    [an.x_ao + off * 0.6, an.y_ao + an.r_ao + 4, top],
                ]
            ),
            np.array([3.0, 5.5, 5.0]) * f,
            squash=(0.8, 1.4, 1.0),
        )
        if crus is not None:
            canvas.paint(crus[0], crus[1] < 0, Tissue.MUSCLE, within=inner)

    # spine: vertebral bodies, discs, canal, arches, spinous and transverse processes
    h_v = 32.0 * f
    z_disc0 = _n(rng, 6)
    phase = ((z - z_disc0) / h_v) % 1.0
    disc = phase < 0.24
    box = grid.box((-60 * f, -95 * f, -1e4), (60 * f, 25 * f, 1e4))
    bone = np.zeros(grid.shape, bool)
    if box is not None:
        bx, by, _ = grid.coords(box)
        bx, by = bx[:, :, 0], by[:, :, 0]
        a_v, b_v = 22 * f * _u(rng, 0.9, 1.1), 17 * f
        ell = (bx / a_v) ** 2 + (by / b_v) ** 2
        vb = ell < 1
        vb_cortex = vb & (((bx / (a_v - 2.5)) ** 2 + (by / (b_v - 2.5)) ** 2) >= 1)
        cy = -b_v - 11 * f
        rc = np.sqrt(bx**2 + (by - cy) ** 2)
        canal = rc < 9 * f
        arch = (rc >= 9 * f) & (rc < 14 * f) & (by < cy + 6 * f)
        spinous = (np.abs(bx) < 3.5 * f) & (by < cy - 12 * f) & (by > cy - 44 * f)
        transverse = (np.abs(by - cy - 5 * f) < 3 * f) & (np.abs(bx) > 12 * f) & (np.abs(bx) < 38 * f)
        zb = z[box[2]]
        ph = phase[box[2]]
        body3 = vb[:, :, None] & ~disc[box[2]][None, None, :]
        tb = t[box]
        tb[vb[:, :, None] & disc[box[2]][None, None, :]] = Tissue.DISC
        tb[body3] = Tissue.BONE_MARROW
        endplate = (ph < 0.29) | (ph > 0.95)
        tb[body3 & (vb_cortex[:, :, None] | endplate[None, None, :])] = Tissue.BONE_CORTEX
        post = ((ph > 0.3) & (ph < 0.95))[None, None, :]
        sp = ((ph > 0.35) & (ph < 0.9))[None, None, :]
        tr = ((ph > 0.45) & (ph < 0.75) & (zb < 45 * f))[None, None, :]
        elements = (arch[:, :, None] & post) | (spinous[:, :, None] & sp) | (transverse[:, :, None] & tr)
        elements &= inside_fat[box]
        tb[elements] = Tissue.RIB  # thin posterior elements: cortex and marrow averaged
        tb[np.broadcast_to(canal[:, :, None], tb.shape)] = Tissue.CSF
        bone[box] = body3 | elements

    # ribs 5-12 in the chest wall, sloping down towards the front; costal cartilage in front
    ring = (q > (q_cav + 0.5 / r_out)[:, :, None]) & (q < (q_cav + 7.5 / r_out)[:, :, None])
    ring &= z[None, None, :] > -10 * f
    ii, jj, kk = np.nonzero(ring)
    phi = np.arccos(np.clip(-(y[jj] - an.yc) / rho[ii, jj], -1, 1))  # 0 at the back, pi in front
    zr = z[kk]
    rib = np.zeros(ii.shape, bool)
    cart = np.zeros(ii.shape, bool)
    drop = _u(rng, 110, 150) * f
    z_t12 = z_disc0 + 1.5 * h_v
    half_h = 4.0 * f
    for k in range(5, 13):
        z_head = z_t12 + (12 - k) * h_v + _n(rng, 3)
        phi_max = {11: 1.9, 12: 1.3}.get(k, 2.9 - 0.08 * (k - 5))
        frac = np.clip((phi - 0.45) / (np.pi - 0.45), 0, 1)
        zc = z_head - drop * frac**1.2
        hit = (np.abs(zr - zc) < half_h) & (phi > 0.45) & (phi < phi_max)
        rib |= hit & (phi < phi_max - 0.55)
        cart |= hit & (phi >= phi_max - 0.55) & (k <= 10)
    t[ii[cart], jj[cart], kk[cart]] = Tissue.CARTILAGE
    t[ii[rib], jj[rib], kk[rib]] = Tissue.RIB
    bone[ii[rib | cart], jj[rib | cart], kk[rib | cart]] = True

    cavity = inner & below & (t == Tissue.FAT)
    return {"inner": inner & ~bone, "cavity": cavity, "thorax": thorax}


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    f = _u(rng, 0.9, 1.1)
    A = _u(rng, 135, 185)
    B = A * _u(rng, 0.66, 0.84)
    t_fat = _u(rng, 5, 40)
    d_back = 55 * f + 0.6 * t_fat + _u(rng, 0, 12)
    yc = -d_back + B
    t_mus = _u(rng, 7, 13)
    W = A - (0.55 + 0.15) * t_fat - t_mus * 1.3
    y_front = yc + B - t_fat - t_mus
    if y_front < 105:  # a packed, thin patient: keep room for the anterior organs
        B += 105 - y_front
        yc = -d_back + B
        y_front = 105.0
    z_ge = (95 + _n(rng, 7)) * f
    z_dome_r = z_ge + _u(rng, 22, 42) * f
    return _Anatomy(
        f=f,
        A=A,
        B=B,
        yc=yc,
        t_fat=t_fat,
        t_mus=t_mus,
        W=W,
        y_front=y_front,
        z_ge=z_ge,
        z_dome_r=z_dome_r,
        z_dome_l=z_dome_r - _u(rng, 0, 18) * f,
        z_py=z_ge - _u(rng, 75, 95) * f,
        x_ao=(-14 + _n(rng, 3)) * f,
        y_ao=(30 + _n(rng, 3)) * f,
        r_ao=(11 + _n(rng, 1.2)) * f,
    )


def _sample_grid(rng: np.random.Generator, an: _Anatomy, size: int, slices: int, slice_jitter: float) -> _Grid:
    """Field of view around the body (square in-plane), z range from above the GE junction to below the kidneys."""
    fov = 2 * an.A * 1.06 * _u(rng, 1.04, 1.25)
    s_xy = fov / size
    cx, cy = _n(rng, 0.03 * fov), an.yc + _n(rng, 0.03 * fov)
    z_hi = an.z_ge + _u(rng, 20, 55) * an.f
    z_lo = min(an.z_py - 80 * an.f, -70 * an.f) - _u(rng, 10, 45) * an.f
    n_z = max(16, int(round(slices * (1 + rng.uniform(-slice_jitter, slice_jitter)))))
    s_z = (z_hi - z_lo) / n_z
    origin = (cx - s_xy * (size - 1) / 2, cy - s_xy * (size - 1) / 2, z_lo + s_z / 2)
    return _Grid((size, size, n_z), (s_xy, s_xy, s_z), origin)


def _organs(rng: np.random.Generator, grid: _Grid, an: _Anatomy, canvas: _Canvas, masks: dict[str, np.ndarray]) -> dict:
    """Paint bowel, vessels and the 13 FLARE22 organs. Order sets the label priority (later wins)."""
    f, W, yf = an.f, an.W, an.y_front
    cav, inner = masks["cavity"], masks["inner"]
    s_min = float(min(grid.spacing[:2]))
    facts: dict[str, Any] = {}

    def blob(center, axes, rot, amp, bend=(0.0, 0.0)):
        return _Blob(np.asarray(center, float), np.asarray(axes, float), rot, _shape_coefficients(rng, amp), bend)

    def hollow(sdf_box, label, wall, content, within, gas_p, gas_depth=(0.25, 0.6)):
        """A hollow organ: wall, content, gas on the anterior (non-dependent) side, all labelled."""
        box, sdf = sdf_box
        m = canvas.paint(box, sdf < 0, Tissue.BOWEL_WALL, label, within=within)
        lumen = m & (sdf < -wall)
        canvas.tissue[box][lumen] = content
        if rng.random() < gas_p and lumen.any():
            _, yy, _ = grid.coords(box)
            ys = np.broadcast_to(yy, lumen.shape)[lumen]
            y_level = ys.max() - _u(rng, *gas_depth) * (ys.max() - ys.min())
            canvas.tissue[box][lumen & (yy > y_level)] = Tissue.GAS
        return m

    oral = rng.random() < 0.15
    bowel_content = Tissue.ORAL_CONTRAST if oral else Tissue.FLUID
    facts["oral_contrast"] = bool(oral)

    # -- colon: ascending (right), transverse (front, sagging), descending (left)
    zb = grid.axes[2][0] - 20
    colon_pts = _jitter(
        rng,
        [
            [0.72 * W, 0.25 * yf, zb],
            [0.74 * W, 0.3 * yf, -40 * f],
            [0.6 * W, 0.45 * yf, -15 * f],
            [0.25 * W, 0.8 * yf, -45 * f],
            [-0.15 * W, 0.82 * yf, -60 * f],
            [-0.55 * W, 0.6 * yf, -10 * f],
            [-0.72 * W, 0.2 * yf, 25 * f],
            [-0.78 * W, 0.1 * yf, -30 * f],
            [-0.75 * W, 0.15 * yf, zb],
        ],
        6,
    )
    colon = _tube(grid, colon_pts, np.full(len(colon_pts), 22 * f) * rng.uniform(0.75, 1.2, len(colon_pts)))
    if colon is not None:
        box, sdf = colon
        m = canvas.paint(box, sdf < 0, Tissue.BOWEL_WALL, within=cav)
        lumen = m & (sdf < -2.5)
        canvas.tissue[box][lumen] = Tissue.STOOL
        tex = _smooth_noise(rng, lumen.shape, 3.0 / float(grid.spacing[0]))
        canvas.tissue[box][lumen & (tex > _u(rng, 0.6, 1.4))] = Tissue.GAS
    # -- small bowel: meandering loops (level set of a smooth random field) in the lower, anterior abdomen
    sb_box = grid.box((-0.75 * W, 0.2 * yf, -1e4), (0.75 * W, yf, _u(rng, -15, 10) * f))
    if sb_box is not None:
        shape = [s.stop - s.start for s in sb_box]
        field = _smooth_noise(rng, shape, 24.0 / float(grid.spacing[0]))
        level = _u(rng, 0.0, 0.6)
        loops = (field > level) & cav[sb_box] & (canvas.tissue[sb_box] == Tissue.FAT)
        canvas.tissue[sb_box][loops] = Tissue.BOWEL_WALL
        lumen = loops & (field > level + _u(rng, 0.25, 0.4))
        canvas.tissue[sb_box][lumen] = bowel_content
        canvas.tissue[sb_box][lumen & (field > level + _u(rng, 1.3, 2.2))] = Tissue.GAS

    # -- liver: right lobe, left lobe, caudate; clipped by the cavity (so by the diaphragm and the wall)
    g_liv = _u(rng, 0.85, 1.15)
    h_liv = _u(rng, 140, 185) * f * g_liv
    y_post = -30 * f
    right = blob(
        [0.47 * W, 0.5 * (y_post + yf), an.z_dome_r + 20 - h_liv / 2],
        [0.46 * W * g_liv, 0.47 * (yf - y_post), h_liv / 2 + 10],
        _rotation(yaw=_n(rng, 0.1), roll=_n(rng, 0.1)),
        0.09,
        (_n(rng, 0.1), _n(rng, 0.15)),
    )
    left = blob(
        [-0.06 * W + _n(rng, 8), yf - 0.3 * (yf - 20), an.z_dome_l - _u(rng, 30, 50) * f],
        [0.42 * W * _u(rng, 0.7, 1.15), 0.16 * yf + 6, _u(rng, 35, 55) * f],
        _rotation(yaw=_n(rng, 0.15), pitch=_n(rng, 0.2)),
        0.12,
    )
    liver_low = an.z_dome_r + 10 - h_liv  # lowest point of the right lobe, before perturbation
    caud = blob([16 * f, 45 * f, an.z_ge - 15 * f], [20 * f, 17 * f, 35 * f], _rotation(), 0.1)
    liver_parts = [b.evaluate(grid) for b in (right, left, caud)]
    for part in liver_parts:
        if part is not None:
            canvas.paint(part[0], part[1] < 1, Tissue.LIVER, LIVER, within=cav)
    # hepatic veins towards the IVC, portal branches from the hilum; cysts sometimes
    x_ivc = an.x_ao + (34 + _n(rng, 3)) * f
    hilum = np.array([35 * f, 62 * f, an.z_py + 30 * f]) + rng.normal(0, 4, 3)
    top_ivc = np.array([x_ivc + 3, 50 * f, an.z_dome_r - 25 * f])
    for end in (
        [0.8 * W, 40 * f, an.z_dome_r - 60 * f],
        [25 * f, yf - 30, an.z_dome_r - 55 * f],
        [-0.4 * W, yf - 40, an.z_dome_l - 40 * f],
    ):
        hv = _tube(grid, np.stack([top_ivc, _jitter(rng, [end], 8)[0]]), np.array([6.0, 2.5]) * f)
        if hv is not None:
            canvas.paint(hv[0], hv[1] < 0, Tissue.HEPATIC_VEIN, only_label=LIVER)
    for end in (
        [0.75 * W, 35 * f, an.z_py + 55 * f],
        [-0.25 * W, yf - 35, an.z_py + 60 * f],
        [0.55 * W, yf - 40, an.z_py + 5],
    ):
        pv = _tube(grid, np.stack([hilum, _jitter(rng, [end], 8)[0]]), np.array([6.5, 2.5]) * f)
        if pv is not None:
            canvas.paint(pv[0], pv[1] < 0, Tissue.PORTAL_VEIN, only_label=LIVER)
    if rng.random() < 0.2:
        for _ in range(int(rng.integers(1, 3))):
            c = [_u(rng, 0.2, 0.8) * W, _u(rng, 0, 0.8) * yf, an.z_py + _u(rng, 10, 70)]
            cyst = blob(c, [_u(rng, 4, 14)] * 3, _rotation(), 0.05).evaluate(grid)
            if cyst is not None:
                canvas.paint(cyst[0], cyst[1] < 1, Tissue.CYST, only_label=LIVER)

    # -- unlabelled vessels: portal/splenic/SMV, SMA and celiac, renal veins (label 0 outside the liver)
    def vessel(points, radii, tissue, squash=(1.0, 1.0, 1.0)):
        tb = _tube(grid, np.asarray(points, float), np.asarray(radii, float), squash)
        if tb is not None:
            m = canvas.paint(tb[0], tb[1] < 0, tissue, within=inner)
            canvas.label[tb[0]][m & (canvas.label[tb[0]] != LIVER)] = 0

    x_head = 30 * f + _n(rng, 4)
    z_py = an.z_py
    confluence = np.array([10 * f, 50 * f, z_py - 12 * f]) + rng.normal(0, 3, 3)
    vessel([confluence, (confluence + hilum) / 2 + [0, 4, 0], hilum], [7, 7, 6.5], Tissue.PORTAL_VEIN)
    vessel([confluence + [0, 5, -60 * f], confluence + [2, 3, -30 * f], confluence], [5.5, 6, 7], Tissue.PORTAL_VEIN)
    celiac = [an.x_ao, an.y_ao + an.r_ao + 6, z_py + 8 * f]
    vessel(
        [[an.x_ao, an.y_ao, z_py + 8 * f], celiac, [x_head + 5, 55 * f, z_py + 12 * f]], [3.5, 3.5, 3], Tissue.ARTERY
    )
    z_rv = _n(rng, 6) * f + 5
    vessel(
        [
            [an.x_ao + 1, an.y_ao, z_py - 12 * f],
            [an.x_ao + 3, an.y_ao + an.r_ao + 10, z_py - 22 * f],
            [an.x_ao + 5, 58 * f, z_py - 90 * f],
        ],
        [4, 4, 3.5],
        Tissue.ARTERY,
    )

    # -- spleen: crescent on the left posterolateral wall, under the left dome
    g_sp = _u(rng, 0.75, 1.4)
    ang = np.deg2rad(_u(rng, 195, 225))  # direction of the spleen from the body centre (left, posterior)
    radial = np.array([np.cos(ang), np.sin(ang), 0.0])
    c_sp = np.array([0.0, an.yc, 0.0]) + radial * (W * 0.92 - 20 * f) + [0, 0, an.z_dome_l - 50 * f * g_sp]
    c_sp[1] = min(c_sp[1], 15 * f)
    w_ax = np.array([0, _u(rng, 0.25, 0.6), 1.0])
    spleen = blob(c_sp, np.array([22, 50, 56]) * f * g_sp**0.5, _frame(w_ax, radial), 0.09, (-_u(rng, 0.2, 0.45), 0))
    sp = spleen.evaluate(grid)
    if sp is not None:
        canvas.paint(sp[0], sp[1] < 1, Tissue.SPLEEN, SPLEEN, within=cav)
    # splenic vein along the back of the pancreas, to the confluence
    tail_end = np.array([-0.62 * W, 28 * f, z_py + 25 * f]) + rng.normal(0, 4, 3)
    body_pt = np.array([-25 * f, 62 * f, z_py - 3 * f]) + rng.normal(0, 4, 3)
    vessel([tail_end + [0, -6, 0], body_pt + [0, -12, 2], confluence], [4.5, 5, 6], Tissue.PORTAL_VEIN)

    # -- stomach: fundus under the left dome, body, antrum in front, pylorus right of the midline
    g_st = float(np.exp(_n(rng, 0.2)))
    x_py = (22 + _n(rng, 5)) * f
    y_py = 0.62 * yf + _n(rng, 5)
    ge = np.array([(-32 + _n(rng, 4)) * f, (45 + _n(rng, 4)) * f, an.z_ge])
    st_pts = np.array(
        [
            ge + [-22 * f, -12 * f, 12 * f],
            [-0.45 * W, ge[1] + 18 * f, an.z_ge - 35 * f],
            [-0.42 * W, 0.55 * yf, z_py - 10 * f],
            [-0.1 * W, 0.72 * yf, z_py - 22 * f],
            [x_py, y_py, z_py],
        ]
    ) + rng.normal(0, 5, (5, 3))
    st_r = np.array([26, 29, 26, 19, 10]) * f * np.array([g_st, g_st, g_st, g_st**0.5, 1.0])
    stomach = _tube(grid, st_pts, st_r)
    if stomach is not None:
        content = bowel_content if rng.random() < 0.7 else Tissue.FOOD
        hollow(stomach, STOMACH, 4.0, content, cav, 0.65, (0.1, 0.5))

    # -- kidneys: tilted, sinus on the medial side, cortex and medulla
    z_kl = _n(rng, 8) * f
    facts["kidney_z"] = {}
    for label, side, zc in ((KIDNEY_L, -1, z_kl), (KIDNEY_R, 1, z_kl - _u(rng, 5, 25) * f)):
        g_k = _u(rng, 0.9, 1.15)
        c = np.array([side * (68 + _n(rng, 5)) * f, (-2 + _n(rng, 4)) * f, zc])
        axes = np.array([29, 23, 57]) * f * g_k * rng.uniform(0.93, 1.07, 3)
        tilt, back = np.deg2rad(_u(rng, 8, 22)), np.deg2rad(_u(rng, 5, 18))
        w_ax = np.array([-side * np.sin(tilt), -np.sin(back), np.cos(tilt)])
        ang = np.deg2rad(_u(rng, 20, 45))
        frame = _frame(w_ax, [-side * np.cos(ang), np.sin(ang), 0.0])  # u points to the hilum (medial, anterior)
        ev = _Blob(c, axes, frame, _shape_coefficients(rng, 0.06)).evaluate(grid)
        if ev is None:
            continue
        box, rr, (u, v, w) = ev
        sinus = ((u - 0.8) / 0.62) ** 2 + (v / 0.36) ** 2 + (w / 0.55) ** 2 < 1
        kid = canvas.paint(box, (rr < 1) & ~sinus, Tissue.KIDNEY_CORTEX, label, within=cav)
        ang2 = np.arctan2(v, u)
        medulla = kid & (rr < 0.74) & (rr > 0.3) & (np.sin(9 * w + 4 * ang2) > -0.35)
        medulla &= ((u - 0.8) / 0.85) ** 2 + (v / 0.55) ** 2 + (w / 0.75) ** 2 > 1
        canvas.tissue[box][medulla] = Tissue.KIDNEY_MEDULLA
        sin_m = sinus & (rr < 1) & cav[box]
        canvas.tissue[box][sin_m] = Tissue.FAT
        canvas.label[box][sin_m] = 0
        facts["kidney_z"][label] = float(c[2] + axes[2])
        hil = c + frame[:, 0] * axes[0] * 0.9
        ivc_pt = [x_ivc, (30 + 4) * f, z_rv]
        if side < 0:
            vessel(
                [hil, [an.x_ao, an.y_ao + an.r_ao + 5, z_rv + 2], ivc_pt], [5, 4, 6], Tissue.PORTAL_VEIN, (1, 0.8, 1)
            )
        else:
            vessel([hil, ivc_pt], [5, 6], Tissue.PORTAL_VEIN)

    # -- duodenum: bulb, descending, horizontal (in front of IVC and aorta), ascending to the DJ flexure
    g_d = _u(rng, 0.8, 1.2)
    d_pts = np.array(
        [
            [x_py, y_py, z_py],
            [x_py + 18 * f, y_py - 14 * f, z_py + 4 * f],
            [x_head + 22 * f, 45 * f, z_py - 8 * f],
            [x_head + 24 * f, 46 * f, z_py - 40 * f],
            [x_head + 14 * f, 52 * f, z_py - 66 * f],
            [0.0, 60 * f, z_py - 72 * f],
            [-26 * f, 56 * f, z_py - 62 * f],
            [-34 * f, 60 * f, z_py - 38 * f],
        ]
    ) + rng.normal(0, 3.5, (8, 3))
    duo = _tube(grid, d_pts, np.array([11, 13, 11, 11, 10, 10, 10, 10]) * f * g_d)
    if duo is not None:
        hollow(duo, DUODENUM, 3.0, bowel_content, cav, 0.35)

    # -- pancreas: uncinate, head in the C-loop, neck, body across the aorta, tail to the splenic hilum
    g_p = _u(rng, 0.75, 1.25)
    p_pts = np.array(
        [
            [x_head - 8 * f, 44 * f, z_py - 50 * f],
            [x_head, 57 * f, z_py - 30 * f],
            [8 * f, 70 * f, z_py - 12 * f],
            body_pt + [0, 2, 0],
            [-0.42 * W, 42 * f, z_py + 12 * f],
            tail_end,
        ]
    ) + rng.normal(0, 3, (6, 3))
    pan = _tube(grid, p_pts, np.array([11, 17, 12, 12, 10.5, 8]) * f * g_p)
    if pan is not None:
        box, sdf = pan
        m = canvas.paint(box, sdf < 0, Tissue.PANCREAS, PANCREAS, within=cav)
        lob = _smooth_noise(rng, m.shape, 2.0 / float(grid.spacing[0]))
        canvas.tissue[box][m & (lob > _u(rng, 1.2, 2.5))] = Tissue.FAT  # fatty lobulation, still pancreas

    # -- gallbladder: pear from the neck (near the hilum) to the fundus (anterior, inferior)
    g_gb = float(np.clip(np.exp(_n(rng, 0.2)), 0.65, 1.4))
    neck = np.array([(38 + _n(rng, 6)) * f, hilum[1] + 4, hilum[2] - 5 * f])
    fundus_z = max(neck[2] - _u(rng, 25, 45) * f * g_gb, liver_low + 5)
    fundus = np.array([(50 + _n(rng, 8)) * f, yf - _u(rng, 15, 30), fundus_z])
    gb = _tube(grid, np.stack([neck, 0.45 * neck + 0.55 * fundus, fundus]), np.array([5.0, 11, 13]) * f * g_gb)
    if gb is not None:
        box, sdf = gb
        m = canvas.paint(box, sdf < 0, Tissue.GB_WALL, GALLBLADDER, within=cav)
        canvas.tissue[box][m & (sdf < -2)] = Tissue.BILE
        if rng.random() < 0.1:
            stone = blob(fundus + [0, -6, 4], [_u(rng, 3, 7)] * 3, _rotation(), 0.05).evaluate(grid)
            if stone is not None:
                canvas.paint(stone[0], stone[1] < 1, Tissue.CALCIFICATION, only_label=GALLBLADDER)

    # -- IVC: right of the aorta, flattened; intrahepatic and more anterior above the renal veins
    ivc_top = grid.axes[2][-1] + 15
    ivc_pts = np.array(
        [
            [x_ivc - 4 * f, 30 * f, grid.axes[2][0] - 15],
            [x_ivc, 32 * f, z_rv],
            [x_ivc + 2 * f, 42 * f, an.z_ge - 25 * f],
            [x_ivc + 3 * f, 50 * f, ivc_top],
        ]
    ) + rng.normal(0, 2.5, (4, 3))
    r_ivc = (12 + _n(rng, 1.5)) * f
    ivc = _tube(grid, ivc_pts, np.array([r_ivc, r_ivc, r_ivc * 1.05, r_ivc]), squash=(1.0, _u(rng, 0.55, 0.85), 1.0))
    if ivc is not None:
        canvas.paint(ivc[0], ivc[1] < 0, Tissue.IVC, IVC, within=inner)

    # -- aorta: left-anterior of the spine, more posterior in the chest; calcified plaques sometimes
    ao_pts = np.array(
        [
            [an.x_ao + 4, an.y_ao + 2, grid.axes[2][0] - 15],
            [an.x_ao, an.y_ao, 0.0],
            [an.x_ao - 3 * f, an.y_ao - 6 * f, an.z_ge],
            [an.x_ao - 6 * f, an.y_ao - 12 * f, grid.axes[2][-1] + 15],
        ]
    ) + rng.normal(0, 1.5, (4, 3))
    aorta = _tube(grid, ao_pts, np.array([0.9, 1.0, 1.05, 1.08]) * an.r_ao)
    if aorta is not None:
        box, sdf = aorta
        m = canvas.paint(box, sdf < 0, Tissue.ARTERY, AORTA, within=inner)
        if rng.random() < 0.35:
            plaque = m & (sdf > -2.0) & (_smooth_noise(rng, m.shape, 2.0 / float(grid.spacing[0])) > 1.6)
            canvas.tissue[box][plaque] = Tissue.CALCIFICATION

    # -- esophagus: in front of the aorta at the top, curving left-anterior to the GE junction
    top = np.array(
        [an.x_ao - 6 * f + _u(rng, 8, 16) * f, an.y_ao - 12 * f + an.r_ao + _u(rng, 9, 15) * f, grid.axes[2][-1] + 15]
    )
    mid = np.array([0.6 * top[0] + 0.4 * ge[0], top[1] + 3, an.z_ge + 18 * f])
    r_eso = max(_u(rng, 7, 10) * f, 0.7 * s_min)
    eso = _tube(
        grid, np.stack([top, mid, ge + [4, 0, 0]]), np.array([r_eso, r_eso, r_eso * 1.2]), squash=(1.0, 0.7, 1.0)
    )
    if eso is not None:
        box, sdf = eso
        m = canvas.paint(box, sdf < 0, Tissue.ESOPHAGUS, ESOPHAGUS, within=inner)
        if rng.random() < 0.5:
            canvas.tissue[box][m & (sdf < -0.6 * r_eso)] = Tissue.GAS

    # -- adrenals: thin inverted-Y limbs, above-medial of the upper poles, beside the crura
    r_adr = max(_u(rng, 3.4, 4.8) * f, 0.55 * s_min)
    for label, side, kidney in ((ADRENAL_R, 1, KIDNEY_R), (ADRENAL_L, -1, KIDNEY_L)):
        z_pole = facts["kidney_z"].get(kidney, 50 * f)
        if label == ADRENAL_R:
            apex = np.array([x_ivc + 8 * f, 24 * f, z_pole + _u(rng, 8, 22) * f])
        else:
            apex = np.array([an.x_ao - an.r_ao - _u(rng, 14, 20) * f, 28 * f, z_pole + _u(rng, -5, 10) * f])
        length = _u(rng, 25, 40) * f
        limbs = [
            apex + [side * -4 * f, -length * 0.7, -length * 0.75],  # medial limb
            apex + [side * 12 * f, -length * 0.6, -length * 0.6],  # lateral limb
            apex + [side * 2 * f, length * 0.3, length * 0.25],  # body, forwards and up
        ]
        for end in limbs:
            lt = _tube(grid, np.stack([apex, end + rng.normal(0, 2, 3)]), np.array([r_adr, r_adr * 0.75]))
            if lt is not None:
                canvas.paint(lt[0], lt[1] < 0, Tissue.ADRENAL, label, within=inner)

    return facts


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], cell: float) -> np.ndarray:
    """Zero-mean, unit-variance random field with features about `cell` voxels wide (smoothstep upsampling).

    Plain element-wise arithmetic (no BLAS), so the field is bit-identical whatever the thread count.
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


def _hu_table(rng: np.random.Generator, phase: int, enhancement: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-tissue mean HU and texture amplitude for this patient."""
    n = max(t.value for t in Tissue) + 1
    mean = np.zeros(n, np.float32)
    amp = np.zeros(n, np.float32)
    for tissue, (plain, arterial, portal, texture) in _HU.items():
        value = (plain, arterial, portal)[phase]
        if tissue not in _NO_ENHANCEMENT:
            value = plain + enhancement * (value - plain)
        if tissue not in (Tissue.AIR, Tissue.GAS):
            value += _n(rng, 4.0)
        mean[tissue] = value
        amp[tissue] = texture
    if phase == 1:
        amp[Tissue.SPLEEN] = 30.0  # arterial-phase moire
    mean[Tissue.BONE_MARROW] += _n(rng, 30)  # age
    mean[Tissue.ORAL_CONTRAST] += _n(rng, 60)
    return mean, amp


def _gaussian_weights(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else (x == 0).astype(float)
    return w / w.sum()


def make_case(
    rng: np.random.Generator | int | np.random.SeedSequence,
    size: int = 192,
    slices: int = 64,
    slice_jitter: float = 0.15,
    phase: str | None = None,
    max_attempts: int = 5,
) -> PhantomCase:
    """Make one synthetic abdominal CT with its 13-organ FLARE22 label map.

    Args:
        rng: a numpy Generator (consumed), or a seed / SeedSequence for a fresh one.
        size: in-plane grid (size x size voxels); the field of view follows the body, so spacing varies (mm).
        slices: nominal number of axial slices; each case draws within +-`slice_jitter` of it.
        slice_jitter: relative spread of the slice count (0 gives exactly `slices`).
        phase: force a contrast phase (one of PHASES); None draws it (25% plain, 25% arterial, 50% portal-venous).
            The anatomy of a seed is the same whatever the phase.
        max_attempts: a case whose organs are not all visible (>= MIN_ORGAN_VOXELS each) is drawn again.

    Returns:
        PhantomCase with image int16 HU (x, y, z), label uint8 (x, y, z), tissue map, RAS affine and meta.

    Raises:
        SelflabelError: for a grid too small for the small organs (size < 80 or slices < 24), or an unknown phase.
    """
    if phase is not None and phase not in PHASES:
        raise SelflabelError(f"unknown contrast phase {phase!r}; expected one of {PHASES}")
    if size < MIN_SIZE or size > 1024:
        raise SelflabelError(f"phantom size {size} is outside {MIN_SIZE}..1024 voxels (small organs need the room)")
    if slices < MIN_SLICES or slices > 1024:
        raise SelflabelError(f"phantom slices {slices} is outside {MIN_SLICES}..1024 (small organs need the room)")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    attempts = 0
    while True:
        attempts += 1
        case = _draw_case(rng, size, slices, slice_jitter, phase)
        if min(case.meta["organ_voxels"].values()) >= MIN_ORGAN_VOXELS or attempts >= max_attempts:
            break
    case.meta["attempts"] = attempts
    return case


def _draw_case(
    rng: np.random.Generator, size: int, slices: int, slice_jitter: float, phase_name: str | None
) -> PhantomCase:
    an = _sample_anatomy(rng)
    grid = _sample_grid(rng, an, size, slices, slice_jitter)
    canvas = _Canvas(grid)
    masks = _body_layers(rng, grid, an, canvas)
    _organs(rng, grid, an, canvas, masks)

    phase = int(rng.choice(3, p=[0.25, 0.25, 0.5]))  # drawn even when forced: the rest stays the same
    if phase_name is not None:
        phase = PHASES.index(phase_name)
    enhancement = _u(rng, 0.75, 1.25)
    mean, amp = _hu_table(rng, phase, enhancement)
    tex = _smooth_noise(rng, grid.shape, 6.0 / float(grid.spacing[0]))
    hu = np.take(amp, canvas.tissue)
    hu *= tex
    hu += np.take(mean, canvas.tissue)
    if phase == 1:  # arterial: unopacified blood from the legs in the infrarenal IVC
        ivc_low = (canvas.tissue == Tissue.IVC) & (grid.axes[2][None, None, :] < 0)
        hu[ivc_low] -= 25
    # partial volume and correlated noise: blur (image + white noise) once, noise scaled to the target level
    noise_hu = _u(rng, 6, 22) * (an.A / 160.0)
    s_xy = _u(rng, 0.5, 0.9)
    sigma = (s_xy, s_xy, _u(rng, 0.3, 0.6))
    truncate = 2.5
    gain = float(np.prod([np.sqrt((_gaussian_weights(s, truncate) ** 2).sum()) for s in sigma]))
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    noise *= np.float32(noise_hu / gain)
    hu += noise
    ndi.gaussian_filter(hu, sigma, truncate=truncate, mode="nearest", output=noise)
    np.rint(noise, out=noise)
    image = np.clip(noise, -1024, 3071).astype(np.int16)

    offset = np.array([_n(rng, 20), _n(rng, 20), _u(rng, -400, 100)])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(grid.spacing)
    affine[:3, 3] = grid.origin + offset
    counts = np.bincount(canvas.label.ravel(), minlength=14)
    meta = {
        "phase": PHASES[phase],
        "enhancement": round(enhancement, 3),
        "noise_hu": round(noise_hu, 2),
        "blur_voxels": [round(s, 3) for s in sigma],
        "shape": list(grid.shape),
        "spacing_mm": [round(float(s), 4) for s in grid.spacing],
        "body_width_mm": round(2 * an.A, 1),
        "subcutaneous_fat_mm": round(an.t_fat, 1),
        "organ_voxels": {name: int(counts[i]) for name, i in FLARE22_LABELS.items() if i > 0},
    }
    return PhantomCase(image, canvas.label, canvas.tissue, affine, meta)


# ---- cohorts on disk (nnU-Net v2 raw layout) ----


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of case `index` (1-based) of `split`: independent of every other case."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split), int(index)]))


def case_files(out_dir: Path, split: str, index: int) -> tuple[str, Path, Path | None]:
    """Case name, image path and (for labelled and test cases) label path of case `index` (1-based)."""
    if split == "labeled":
        name = f"FLARE22_Tr_{index:04d}"
        return name, out_dir / "imagesTr" / f"{name}_0000.nii.gz", out_dir / "labelsTr" / f"{name}.nii.gz"
    if split == "unlabeled":
        name = f"Case_{index:05d}"
        return name, out_dir / "unlabeledTr" / f"{name}_0000.nii.gz", None
    if split == "test":
        name = f"FLARETs_{index:04d}"
        return name, out_dir / "imagesTs" / f"{name}_0000.nii.gz", out_dir / "labelsTs" / f"{name}.nii.gz"
    raise SelflabelError(f"unknown split {split!r}; expected one of {SPLITS}")


_SUBFOLDERS = ("imagesTr", "labelsTr", "unlabeledTr", "imagesTs", "labelsTs")
COHORT_FILE = "cohort.json"


@dataclass
class CohortSummary:
    """What `write_cohort` made: counts per split, shapes, time, and whether an existing cohort was reused."""

    out_dir: Path
    counts: dict[str, int]
    shapes: list[tuple[int, int, int]]
    spacings: list[tuple[float, float, float]]
    phases: dict[str, int]
    seconds: float
    reused: bool = False
    removed: int = 0

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """One line for the command line."""
        n = sum(self.counts.values())
        zs = sorted(s[2] for s in self.shapes)
        shape = f"{self.shapes[0][0]}x{self.shapes[0][1]}x{zs[0]}..{zs[-1]}" if self.shapes else "-"
        verb = "reused" if self.reused else "wrote"
        phases = ", ".join(f"{k} {v}" for k, v in self.phases.items())
        return (
            f"{verb} {n} cases ({self.counts['labeled']} labelled, {self.counts['unlabeled']} unlabelled, "
            f"{self.counts['test']} test; {shape} voxels; {phases}) in {self.out_dir} in {self.seconds:.1f} s"
        )


def _make_and_write(job: tuple[str, int, int, int, int, str]) -> dict[str, Any]:
    """Worker: make case `index` of `split` and write it atomically. Returns its cohort.json entry."""
    from selflabel.io import write_nifti

    split, index, seed, size, slices, out = job
    case = make_case(case_rng(seed, split, index), size=size, slices=slices)
    name, image_path, label_path = case_files(Path(out), split, index)
    write_nifti(image_path, case.image, affine=case.affine)
    if label_path is not None:
        write_nifti(label_path, case.label, affine=case.affine)
    meta = {"name": name, "split": split, "index": index, **case.meta}
    return meta


def _cohort_params(labeled: int, unlabeled: int, test: int, seed: int, size: int, slices: int) -> dict[str, int]:
    return {
        "version": PHANTOM_VERSION,
        "labeled": labeled,
        "unlabeled": unlabeled,
        "test": test,
        "seed": seed,
        "size": size,
        "slices": slices,
    }


def _expected_files(out_dir: Path, params: dict[str, int]) -> list[Path]:
    files = [out_dir / "dataset.json"]
    for split in SPLITS:
        for i in range(1, params[split] + 1):
            _, image, label = case_files(out_dir, split, i)
            files += [image] + ([label] if label is not None else [])
    return files


def _summary(out_dir: Path, cases: list[dict[str, Any]], seconds: float, reused: bool, removed: int) -> CohortSummary:
    counts = {split: sum(c["split"] == split for c in cases) for split in SPLITS}
    phases: dict[str, int] = {}
    for c in cases:
        phases[c["phase"]] = phases.get(c["phase"], 0) + 1
    return CohortSummary(
        out_dir,
        counts,
        [tuple(c["shape"]) for c in cases],
        [tuple(c["spacing_mm"]) for c in cases],
        dict(sorted(phases.items())),
        seconds,
        reused,
        removed,
    )


def write_cohort(
    out_dir: str | Path,
    labeled: int,
    unlabeled: int,
    test: int,
    seed: int = 0,
    size: int = 192,
    slices: int = 64,
    workers: int | None = None,
) -> CohortSummary:
    """Write a synthetic FLARE22-style cohort in the nnU-Net v2 raw layout.

    Layout: dataset.json (FLARE22 labels, one CT channel, .nii.gz), imagesTr/FLARE22_Tr_0001_0000.nii.gz and
    labelsTr/FLARE22_Tr_0001.nii.gz (labelled), unlabeledTr/Case_00001_0000.nii.gz (no labels), imagesTs/
    FLARETs_0001_0000.nii.gz and labelsTs/FLARETs_0001.nii.gz (test), and cohort.json (parameters, per-case facts).

    A folder that already holds a complete cohort with the same parameters is reused as it is. A folder holding a
    cohort with other parameters (or an unfinished one) has its case files replaced. A non-empty folder without
    cohort.json is refused, so that a real dataset is never overwritten.

    Raises:
        SelflabelError: bad counts or sizes. InputError: `out_dir` is a file or holds data not made here.
    """
    from selflabel.atomic import atomic_write_json
    from selflabel.io import write_dataset_json

    out = Path(out_dir)
    for name, value in (("labeled", labeled), ("unlabeled", unlabeled), ("test", test)):
        if value < 0:
            raise SelflabelError(f"--{name} must be >= 0, got {value}")
    if labeled + unlabeled + test == 0:
        raise SelflabelError("nothing to make: --labeled, --unlabeled and --test are all 0")
    if size < MIN_SIZE or slices < MIN_SLICES:
        raise SelflabelError(f"--size must be >= {MIN_SIZE} and --slices >= {MIN_SLICES} (got {size}, {slices})")
    params = _cohort_params(labeled, unlabeled, test, seed, size, slices)
    start = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    record = out / COHORT_FILE
    removed = 0
    if out.is_dir() and any(out.iterdir()):
        if not record.is_file():
            raise InputError(out, f"is not empty and has no {COHORT_FILE} from demo-data; choose a new or empty folder")
        try:
            old = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(record, f"unreadable ({exc}); delete the folder to regenerate") from None
        if (
            old.get("params") == params
            and old.get("complete")
            and all(p.is_file() for p in _expected_files(out, params))
        ):
            return _summary(out, old["cases"], time.perf_counter() - start, reused=True, removed=0)
        for sub in _SUBFOLDERS:
            if (out / sub).is_dir():
                removed += sum(1 for p in (out / sub).iterdir() if p.is_file())
                shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, {"generator": "selflabel.phantom", "params": params, "complete": False, "cases": []})
    write_dataset_json(out, dict(FLARE22_LABELS), labeled, name="selflabel synthetic abdomen (selflabel.phantom)")
    jobs = [(split, i, seed, size, slices, str(out)) for split in SPLITS for i in range(1, params[split] + 1)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            cases = list(pool.map(_make_and_write, jobs))
    else:
        cases = [_make_and_write(job) for job in jobs]
    atomic_write_json(record, {"generator": "selflabel.phantom", "params": params, "complete": True, "cases": cases})
    return _summary(out, cases, time.perf_counter() - start, reused=False, removed=removed)
