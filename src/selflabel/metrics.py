"""FLARE22 scoring: Dice (DSC) and normalised surface Dice (NSD) per organ, as the challenge computes them.

Pure functions of label arrays and voxel spacing (mm); no I/O. Arrays are in any axis order as long as `spacing`
follows it and `axial_axis` names the axis axial slices are taken along (2 for FLARE's files, which are (x, y, z);
`selflabel.io.Volume.axial_axis` gives it for any file).

NSD is the surface-element ("surfel") definition of Nikolov et al. 2021 (arXiv:1809.04430), as DeepMind's
`surface-distance` package and FLARE's copy of it (`SurfaceDice.py`) compute it: surfels live on the corner grid of
the voxels, each corner's 2x2x2 neighbourhood code gives its surfel area (marching-cubes normals scaled by the
anisotropic spacing), and each surfel's distance to the other surface is an exact Euclidean distance transform on that
grid (found here with a k-d tree, see `_near`). A surfel counts when its distance is <= the tolerance, and

    NSD = (GT area within tol of the prediction + predicted area within tol of GT) / (GT area + predicted area).

FLARE22 rules (JunMa11/FLARE, FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py), applied by `score_organ`/`score_case`:

* tolerance per organ in mm (`selflabel.labels.FLARE22_ORGANS`);
* both masks empty -> DSC = NSD = 1; exactly one empty -> DSC = NSD = 0;
* aorta, IVC and esophagus are scored only on the axial slices from the ground truth's lowest labelled slice up to,
  but not including, its highest (FLARE slices ``[z_lower:z_upper]``, end-exclusive). When the organ sits on a single
  slice that range is empty (FLARE's script then returns NaN); selflabel scores it on that one slice instead;
* NSD is set to 0 when DSC < `NSD_MIN_DICE` (0.2). This rule is in FLARE's later 13-organ script
  (FLARE24/T2andT3_FLARE24_DSC_NSD_Eval.py; FLARE23 uses 0.1); the FLARE22 script itself computes NSD for any DSC.
  Pass ``nsd_min_dice=0`` to reproduce that script exactly. It only matters for predictions with DSC < 0.2.

Speed: `score_case` finds every label's bounding box in one pass per volume (`scipy.ndimage.find_objects`) and
computes each organ inside the union box of prediction and ground truth plus one voxel. This gives exactly the numbers
of the full-volume computation without any tolerance margin: every surfel of either mask lies inside the union box,
so the distance from a surfel to the nearest surfel of the other mask never looks outside it (the one-voxel pad is
needed only so the 2x2x2 neighbourhood codes see the background around the box). `crop=False` computes the same
on the whole volume (tests and benchmarks compare the two).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from selflabel.labels import FLARE22_ORGANS, Organ

__all__ = [
    "NSD_MIN_DICE",
    "CaseScores",
    "OrganSummary",
    "ScoreSummary",
    "dice",
    "score_case",
    "score_organ",
    "summarize",
    "surface_dice",
]

NSD_MIN_DICE = 0.2


# ---- checks ----


def _check_pair(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float]:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if gt.ndim != 3:
        raise ValueError(f"expected 3D arrays, got shape {gt.shape}")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive sizes in mm, got {tuple(spacing)}")
    return tuple(float(s) for s in spacing)


# ---- surfels on the corner grid ----


@lru_cache(maxsize=64)
def _surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Surfel area (mm^2) of each of the 256 neighbourhood codes at this spacing (DeepMind's marching-cubes table)."""
    from surface_distance.lookup_tables import create_table_neighbour_code_to_surface_area

    table = create_table_neighbour_code_to_surface_area(spacing)
    table.setflags(write=False)
    return table


# Bit of each corner of the 2x2x2 neighbourhood, as in surface-distance's ENCODE_NEIGHBOURHOOD_3D_KERNEL:
# voxel offset (a, b, c) in {0, 1}^3 -> 2 ** (7 - (4a + 2b + c)).
_CORNER_BITS = tuple((a, b, c, 7 - (4 * a + 2 * b + c)) for a in (0, 1) for b in (0, 1) for c in (0, 1))


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit code of every voxel corner of a zero-padded mask.

    mask: (X, Y, Z) bool. Returns (X+1, Y+1, Z+1) uint8; corner (i, j, k) sits between voxels i-1..i, j-1..j, k-1..k.
    Equal to surface-distance's ``correlate(crop, kernel)`` on its padded crop; done with eight shifted views
    instead of a general correlation because it is several times faster on uint8.
    """
    padded = np.pad(mask.view(np.uint8), 1)
    nx, ny, nz = (s + 1 for s in mask.shape)
    codes = np.zeros((nx, ny, nz), np.uint8)
    for a, b, c, bit in _CORNER_BITS:
        view = padded[a : a + nx, b : b + ny, c : c + nz]
        codes |= view << np.uint8(bit)
    return codes


@dataclass
class _Surface:
    """Surfels of one mask: boolean map over the corner grid, and the area (mm^2) of each surfel in C order."""

    border: np.ndarray
    areas: np.ndarray


def _surface(mask: np.ndarray, spacing: tuple[float, float, float]) -> _Surface:
    codes = _neighbour_codes(mask)
    border = (codes != 0) & (codes != 255)
    return _Surface(border, _surfel_area_table(spacing)[codes[border]])


def _near(src: np.ndarray, dst: np.ndarray, spacing: np.ndarray, tolerance_mm: float) -> np.ndarray:
    """For each corner in `src` (N, 3 int), whether some corner of `dst` (M >= 1, 3 int) is within `tolerance_mm`.

    surface-distance answers this with a Euclidean distance transform over the whole (cropped) corner grid. Here a
    k-d tree over the other surface's corners finds each corner's nearest candidate within the tolerance (plus a
    1e-9 relative slack), and that candidate's distance is then recomputed with the distance transform's own float
    formula, ``sqrt(((di*s0)**2 + (dj*s1)**2) + (dk*s2)**2)``, before the ``<= tolerance`` test: the same decision
    as the transform, at a cost that grows with the surface instead of the box volume (several times less for the
    liver or stomach at FLARE's resolution).
    """
    if len(src) == 0:
        return np.zeros(0, bool)
    tree = cKDTree(dst * spacing, balanced_tree=False)
    dist, nearest = tree.query(src * spacing, k=1, distance_upper_bound=tolerance_mm * (1 + 1e-9) + 1e-12)
    found = np.flatnonzero(np.isfinite(dist))
    delta = (dst[nearest[found]] - src[found]).astype(np.float64) * spacing
    delta *= delta
    exact = np.sqrt(delta[:, 0] + delta[:, 1] + delta[:, 2])
    near = np.zeros(len(src), bool)
    near[found[exact <= tolerance_mm]] = True
    return near


def _nsd_nonempty(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float) -> float:
    """NSD of two non-empty bool masks on the same grid (no FLARE rules)."""
    surf_gt, surf_pred = _surface(gt, spacing), _surface(pred, spacing)
    shared = surf_gt.border & surf_pred.border  # corners on both surfaces: distance 0
    sampling = np.asarray(spacing, dtype=np.float64)
    dst_gt, dst_pred = np.argwhere(surf_gt.border), np.argwhere(surf_pred.border)

    def near(surf: _Surface, dst: np.ndarray) -> np.ndarray:  # over surf's surfels, in C order
        result = shared[surf.border]
        result[~result] = _near(np.argwhere(surf.border & ~shared), dst, sampling, tolerance_mm)
        return result

    near_gt, near_pred = near(surf_gt, dst_pred), near(surf_pred, dst_gt)
    overlap = np.sum(surf_gt.areas[near_gt]) + np.sum(surf_pred.areas[near_pred])
    return float(overlap / (np.sum(surf_gt.areas) + np.sum(surf_pred.areas)))


# ---- binary masks ----


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient 2|A∩B| / (|A| + |B|) of two masks of one shape (nonzero = inside).

    Both empty -> 1.0 (FLARE's convention; the formula is 0/0).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / total


def surface_dice(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface Dice of two 3D masks at a tolerance, as DeepMind's surface-distance computes it.

    Args:
        pred, gt: (X, Y, Z) masks, nonzero = inside.
        spacing: voxel size in mm along X, Y, Z.
        tolerance_mm: a surfel counts when its distance to the other surface is <= this.

    Returns:
        NSD in [0, 1]; both empty -> 1.0, exactly one empty -> 0.0 (FLARE's conventions). Computed inside the union
        bounding box (identical to the whole volume, see the module docstring). No DSC threshold, no z-range.
    """
    spacing = _check_pair(pred, gt, spacing)
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    box = _union_box(_bbox(pred), _bbox(gt))
    if box is None:
        return 1.0
    pred, gt = pred[box], gt[box]
    if not pred.any() or not gt.any():
        return 0.0
    return _nsd_nonempty(pred, gt, spacing, tolerance_mm)


# ---- FLARE rules ----


Box = tuple[slice, slice, slice]


def _bbox(mask: np.ndarray) -> Box | None:
    boxes = ndimage.find_objects(mask.view(np.uint8), max_label=1)
    return boxes[0]


def _union_box(a: Box | None, b: Box | None) -> Box | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def _flare_slab(gt_box: Box, axial_axis: int) -> slice:
    """Axial slices FLARE scores for the z-range organs: [lowest GT slice, highest GT slice), end-exclusive.

    A single-slice organ gives an empty range in FLARE's script (NaN scores); here it is scored on that slice.
    """
    lower, upper = gt_box[axial_axis].start, gt_box[axial_axis].stop - 1
    return slice(lower, max(upper, lower + 1))


def _score_in_box(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: tuple[float, float, float],
    tolerance_mm: float,
    nsd_min_dice: float,
) -> tuple[float, float]:
    """DSC and NSD of two bool masks already cut to the region FLARE scores (at least the ground truth is non-empty)."""
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if n_pred == 0 or n_gt == 0:
        return (1.0, 1.0) if n_pred == n_gt else (0.0, 0.0)
    dsc = 2.0 * int(np.count_nonzero(pred & gt)) / (n_pred + n_gt)
    if dsc < nsd_min_dice:
        return dsc, 0.0
    return dsc, _nsd_nonempty(pred, gt, spacing, tolerance_mm)


def _score_boxes(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    *,
    value: int | bool,
    pred_box: Box | None,
    gt_box: Box | None,
    spacing: tuple[float, float, float],
    tolerance_mm: float,
    z_range: bool,
    axial_axis: int,
    crop: bool,
    nsd_min_dice: float,
) -> tuple[float, float]:
    """FLARE's (DSC, NSD) of the voxels equal to `value`, given each mask's bounding box (None when empty)."""
    if gt_box is None and pred_box is None:
        return 1.0, 1.0
    if gt_box is None or pred_box is None:
        return 0.0, 0.0
    box = list(_union_box(pred_box, gt_box)) if crop else [slice(0, n) for n in gt_labels.shape]
    if z_range:
        slab = _flare_slab(gt_box, axial_axis)
        axial = box[axial_axis]
        box[axial_axis] = slice(max(axial.start, slab.start), min(axial.stop, slab.stop))
    box = tuple(box)
    pred, gt = pred_labels[box] == value, gt_labels[box] == value
    return _score_in_box(pred, gt, spacing, tolerance_mm, nsd_min_dice)


def score_organ(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float,
    z_range: bool = False,
    axial_axis: int = 2,
    nsd_min_dice: float = NSD_MIN_DICE,
) -> tuple[float, float]:
    """FLARE22 (DSC, NSD) of one organ given as two 3D masks (nonzero = organ), with FLARE's rules.

    Args:
        pred, gt: (X, Y, Z) masks of one shape.
        spacing: voxel size in mm along the array axes (from the ground truth's header).
        tolerance_mm: NSD tolerance of this organ.
        z_range: score only GT's axial range [lowest, highest) (FLARE: aorta, IVC, esophagus).
        axial_axis: array axis of the axial slices (2 for FLARE's (x, y, z) files).
        nsd_min_dice: NSD is 0 when DSC is below this (0.2; 0 reproduces FLARE22's script).

    Raises:
        ValueError: shapes differ, arrays not 3D, or spacing not 3 positive numbers.
    """
    spacing = _check_pair(pred, gt, spacing)
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    return _score_boxes(
        pred, gt, value=True, pred_box=_bbox(pred), gt_box=_bbox(gt), spacing=spacing, tolerance_mm=tolerance_mm,
        z_range=z_range, axial_axis=axial_axis, crop=True, nsd_min_dice=nsd_min_dice,
    )  # fmt: skip


@dataclass(frozen=True)
class CaseScores:
    """FLARE22 scores of one case: organ short name -> DSC and -> NSD, in FLARE's organ order; `in_truth`: whether
    the ground truth holds the organ (empty when unknown)."""

    dsc: dict[str, float]
    nsd: dict[str, float]
    in_truth: dict[str, bool] = field(default_factory=dict)

    @property
    def mean_dsc(self) -> float:
        return float(np.mean(list(self.dsc.values())))

    @property
    def mean_nsd(self) -> float:
        return float(np.mean(list(self.nsd.values())))

    def row(self) -> dict[str, float]:
        """FLARE's CSV columns: ``<Organ>_DSC`` for every organ, then ``<Organ>_NSD``."""
        return {**{f"{k}_DSC": v for k, v in self.dsc.items()}, **{f"{k}_NSD": v for k, v in self.nsd.items()}}

    def rounded(self, decimals: int = 4) -> CaseScores:
        """Values rounded as FLARE writes them (``round(numpy_float, 4)``, i.e. numpy's rounding)."""

        def r(v: float) -> float:
            return float(np.round(np.float64(v), decimals))

        dsc, nsd = {k: r(v) for k, v in self.dsc.items()}, {k: r(v) for k, v in self.nsd.items()}
        return CaseScores(dsc, nsd, self.in_truth)

    @classmethod
    def zeros(cls, organs: Sequence[Organ] = FLARE22_ORGANS, in_truth: dict[str, bool] | None = None) -> CaseScores:
        """Scores of a case with no prediction: 0 for every organ."""
        return cls({o.short: 0.0 for o in organs}, {o.short: 0.0 for o in organs}, in_truth or {})


def score_case(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    spacing: Sequence[float],
    axial_axis: int = 2,
    organs: Sequence[Organ] = FLARE22_ORGANS,
    nsd_min_dice: float = NSD_MIN_DICE,
    crop: bool = True,
) -> CaseScores:
    """FLARE22 DSC and NSD of every organ of one case.

    Args:
        pred_labels, gt_labels: (X, Y, Z) integer label maps of one shape (0 background, 1..13 FLARE22 organs;
            other values are ignored).
        spacing: voxel size in mm along the array axes, from the ground truth's header.
        axial_axis: array axis of the axial slices (2 for FLARE's (x, y, z) files; 0 for selflabel's canonical
            (z, y, x) arrays).
        organs: the organ table (FLARE22's by default).
        nsd_min_dice: NSD is 0 when DSC is below this (0.2; 0 reproduces FLARE22's script).
        crop: False computes every organ on the whole volume (slow; same numbers; for tests and benchmarks).

    Raises:
        ValueError: shapes differ, arrays not 3D or not integer, spacing not 3 positive numbers, or a bad axial_axis.

    Example:
        >>> scores = score_case(pred, gt, spacing=(0.8, 0.8, 2.5))
        >>> scores.dsc["Liver"], scores.nsd["Liver"], scores.mean_dsc
    """
    spacing = _check_pair(pred_labels, gt_labels, spacing)
    for name, arr in (("pred_labels", pred_labels), ("gt_labels", gt_labels)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    if axial_axis not in (0, 1, 2):
        raise ValueError(f"axial_axis must be 0, 1 or 2, got {axial_axis}")
    max_label = max(o.index for o in organs)
    # One pass per volume finds every label's bounding box (index i-1 -> label i; None when absent).
    pred_boxes = ndimage.find_objects(pred_labels, max_label=max_label)
    gt_boxes = ndimage.find_objects(gt_labels, max_label=max_label)
    dsc: dict[str, float] = {}
    nsd: dict[str, float] = {}
    for organ in organs:
        i = organ.index
        dsc[organ.short], nsd[organ.short] = _score_boxes(
            pred_labels, gt_labels, value=i, pred_box=pred_boxes[i - 1], gt_box=gt_boxes[i - 1], spacing=spacing,
            tolerance_mm=organ.tolerance_mm, z_range=organ.z_range, axial_axis=axial_axis, crop=crop,
            nsd_min_dice=nsd_min_dice,
        )  # fmt: skip
    return CaseScores(dsc, nsd, {organ.short: gt_boxes[organ.index - 1] is not None for organ in organs})


# ---- summaries ----


@dataclass(frozen=True)
class OrganSummary:
    """Mean and standard deviation (population, ddof=0) over cases of one organ's DSC and NSD; the number of cases
    whose ground truth holds it (None when some case's is unknown)."""

    dsc_mean: float
    dsc_std: float
    nsd_mean: float
    nsd_std: float
    cases_in_truth: int | None = None


@dataclass(frozen=True)
class ScoreSummary:
    """Per-organ mean ± std over cases, and the organ-averaged mean DSC and NSD (FLARE's headline numbers)."""

    num_cases: int
    organs: dict[str, OrganSummary] = field(default_factory=dict)
    mean_dsc: float = float("nan")
    mean_nsd: float = float("nan")

    def to_dict(self) -> dict:
        return {
            "num_cases": self.num_cases,
            "mean_DSC": self.mean_dsc,
            "mean_NSD": self.mean_nsd,
            "organs": {
                name: {"DSC_mean": s.dsc_mean, "DSC_std": s.dsc_std, "NSD_mean": s.nsd_mean, "NSD_std": s.nsd_std}
                | ({} if s.cases_in_truth is None else {"cases_in_truth": s.cases_in_truth})
                for name, s in self.organs.items()
            },
        }


def summarize(cases: Sequence[CaseScores]) -> ScoreSummary:
    """Mean ± std of each organ's DSC and NSD over cases; mean DSC/NSD = average of the organ means.

    With no cases every value is NaN. The organ-averaged mean equals the mean over cases of each case's mean.
    """
    if not cases:
        return ScoreSummary(0)
    names = list(cases[0].dsc)
    dsc = np.array([[c.dsc[n] for n in names] for c in cases], dtype=np.float64)
    nsd = np.array([[c.nsd[n] for n in names] for c in cases], dtype=np.float64)
    dsc_mean, dsc_std, nsd_mean, nsd_std = dsc.mean(axis=0), dsc.std(axis=0), nsd.mean(axis=0), nsd.std(axis=0)
    known = all(c.in_truth for c in cases)
    organs = {
        n: OrganSummary(float(dsc_mean[j]), float(dsc_std[j]), float(nsd_mean[j]), float(nsd_std[j]),
                        sum(c.in_truth[n] for c in cases) if known else None)
        for j, n in enumerate(names)
    }  # fmt: skip
    return ScoreSummary(len(cases), organs, float(dsc_mean.mean()), float(nsd_mean.mean()))
