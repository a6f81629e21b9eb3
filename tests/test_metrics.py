"""FLARE22 DSC/NSD: hand-made masks with answers worked out on paper, agreement with DeepMind's surface-distance
package (the code FLARE's SurfaceDice.py copies), crop == whole volume, and a regression value on a real CT pair."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from selflabel.labels import FLARE22_ORGANS
from selflabel.metrics import (
    NSD_MIN_DICE,
    CaseScores,
    dice,
    score_case,
    score_organ,
    summarize,
    surface_dice,
)

sd = pytest.importorskip("surface_distance.metrics")

# surface-distance 0.1 imports scipy.ndimage.filters/morphology, deprecated namespaces.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FLARE13 = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_example" / "flare13"


# ---- an independent route: FLARE22's evaluation script, with the surface-distance package ----


def flare_reference(gt: np.ndarray, seg: np.ndarray, spacing, nsd_min_dice: float = NSD_MIN_DICE) -> dict:
    """Per organ (DSC, NSD) computed the way FLARE22_DSC_NSD_Eval.py does: full-volume masks, z-range slicing
    ``[:, :, z_lower:z_upper]``, surface-distance's compute_surface_distances. Plus the DSC threshold."""
    out = {}
    for organ in FLARE22_ORGANS:
        i = organ.index
        if not (gt == i).any() and not (seg == i).any():
            out[organ.short] = (1.0, 1.0)
            continue
        if not (gt == i).any() or not (seg == i).any():
            out[organ.short] = (0.0, 0.0)
            continue
        if organ.z_range:
            z = np.where(gt == i)[2]
            g, s = gt[:, :, z.min() : z.max()] == i, seg[:, :, z.min() : z.max()] == i
        else:
            g, s = gt == i, seg == i
        dsc = 2 * (g & s).sum() / (g.sum() + s.sum())
        if dsc < nsd_min_dice:
            nsd = 0.0
        else:
            nsd = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(g, s, spacing), organ.tolerance_mm)
        out[organ.short] = (float(dsc), float(nsd))
    return out


def package_nsd(pred: np.ndarray, gt: np.ndarray, spacing, tolerance_mm: float) -> float:
    distances = sd.compute_surface_distances(gt.astype(bool), pred.astype(bool), spacing)
    return float(sd.compute_surface_dice_at_tolerance(distances, tolerance_mm))


def blob(rng: np.random.Generator, shape, smooth: float = 1.5, level: float = 0.5) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), smooth) > level


def random_case(rng: np.random.Generator, shape=(40, 36, 24)) -> tuple[np.ndarray, np.ndarray]:
    """A multi-organ label map and a perturbed prediction: ellipsoids, some touching the volume's edges, one organ
    only predicted (false positive), one absent from both, a thin z-range organ."""
    grid = np.indices(shape, dtype=np.float64)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for organ in FLARE22_ORGANS:
        if organ.index == 8:  # LAG: absent from both
            continue
        center = rng.uniform(0, 1, 3) * np.array(shape)
        if organ.index in (1, 11):  # liver, stomach: against the volume's edge
            center[0] = 0
        radii = rng.uniform(2.5, 9, 3)
        if organ.z_range:
            radii[:2] = rng.uniform(1.5, 3, 2)
            radii[2] = 12
        pred_center = center + rng.normal(0, 1.0, 3)
        pred_radii = radii * rng.uniform(0.85, 1.15, 3)
        inside_gt = sum(((grid[k] - center[k]) / radii[k]) ** 2 for k in range(3)) <= 1
        inside_pred = sum(((grid[k] - pred_center[k]) / pred_radii[k]) ** 2 for k in range(3)) <= 1
        if organ.index != 9:  # gallbladder: predicted only
            gt[inside_gt] = organ.index
        pred[inside_pred] = organ.index
    return pred, gt


# ---- hand-made masks ----


def box_surfel_areas(n: tuple[int, int, int], s: tuple[float, float, float]) -> tuple[float, float]:
    """(total surface area, area of the corner layer of one x-face) of an axis-aligned box of n voxels, in mm^2.

    On paper, from the marching-cubes surfels on the voxel-corner grid: a corner inside an x-face carries a flat
    sy*sz square; a corner on an edge running along axis k carries two bevels, 0.5 * s_k * hypot(other two spacings);
    a box vertex carries one triangle-fan of area 0.125 * sqrt((sy sz)^2 + (sx sz)^2 + (sx sy)^2). A box of n voxels
    has n - 1 corners inside each edge along that axis.
    """
    (nx, ny, nz), (sx, sy, sz) = n, s
    face = (sy * sz, sx * sz, sx * sy)
    edge = (0.5 * sx * math.hypot(sy, sz), 0.5 * sy * math.hypot(sx, sz), 0.5 * sz * math.hypot(sx, sy))
    vertex = 0.125 * math.sqrt((sy * sz) ** 2 + (sx * sz) ** 2 + (sx * sy) ** 2)
    total = (
        2 * ((ny - 1) * (nz - 1) * face[0] + (nx - 1) * (nz - 1) * face[1] + (nx - 1) * (ny - 1) * face[2])
        + 4 * ((nx - 1) * edge[0] + (ny - 1) * edge[1] + (nz - 1) * edge[2])
        + 8 * vertex
    )
    x_face_layer = (ny - 1) * (nz - 1) * face[0] + 2 * (ny - 1) * edge[1] + 2 * (nz - 1) * edge[2] + 4 * vertex
    return total, x_face_layer


SPACING = (2.0, 1.0, 0.5)


def shifted_boxes() -> tuple[np.ndarray, np.ndarray]:
    """GT: a 4x5x6-voxel box; prediction: the same box one voxel (2 mm) further along axis 0."""
    gt = np.zeros((10, 10, 12), bool)
    pred = np.zeros_like(gt)
    gt[2:6, 2:7, 2:8] = True
    pred[3:7, 2:7, 2:8] = True
    return pred, gt


def test_box_against_shifted_box_at_anisotropic_spacing():
    pred, gt = shifted_boxes()
    # DSC: overlap 3x5x6 of two 4x5x6 boxes.
    assert dice(pred, gt) == pytest.approx(2 * 90 / 240)
    # Every surfel of either box is within 2 mm of the other surface: the only ones at exactly 2 mm are the GT's
    # lower x-face layer (the prediction's lower face is one 2-mm voxel up) and, symmetrically, the prediction's
    # upper x-face layer; inner corners of the other x-faces are <= 1.5 mm from the side walls (0.5-mm steps in z).
    total, layer = box_surfel_areas((4, 5, 6), SPACING)
    assert surface_dice(pred, gt, SPACING, 1.99) == pytest.approx(1 - layer / total, abs=1e-12)
    assert package_nsd(pred, gt, SPACING, 1.99) == pytest.approx(1 - layer / total, abs=1e-12)
    # Distance exactly equal to the tolerance counts.
    assert surface_dice(pred, gt, SPACING, 2.0) == 1.0
    # Along the anisotropic axes the same shift is a different distance: 1 voxel along axis 2 is 0.5 mm.
    pred_z = np.zeros_like(gt)
    pred_z[2:6, 2:7, 3:9] = True
    assert surface_dice(pred_z, gt, SPACING, 0.5) == 1.0
    assert surface_dice(pred_z, gt, SPACING, 0.49) < 1.0


def test_score_organ_box_and_tolerance_boundary():
    pred, gt = shifted_boxes()
    assert score_organ(pred, gt, SPACING, 2.0) == (pytest.approx(0.75), 1.0)
    dsc, nsd = score_organ(pred, gt, SPACING, 1.5)
    total, layer = box_surfel_areas((4, 5, 6), SPACING)
    assert (dsc, nsd) == (pytest.approx(0.75), pytest.approx(1 - layer / total, abs=1e-12))


def test_empty_masks():
    empty = np.zeros((6, 6, 6), bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    assert score_organ(empty, empty, (1, 1, 1), 2) == (1.0, 1.0)
    assert score_organ(full, empty, (1, 1, 1), 2) == (0.0, 0.0)
    assert score_organ(empty, full, (1, 1, 1), 2) == (0.0, 0.0)
    assert dice(empty, empty) == 1.0 and dice(full, empty) == 0.0
    assert surface_dice(empty, empty, (1, 1, 1), 2) == 1.0
    assert surface_dice(empty, full, (1, 1, 1), 2) == 0.0


def test_dsc_below_threshold_sets_nsd_to_zero():
    gt = np.zeros((20, 6, 6), bool)
    gt[0:10, 0:4, 0:4] = True  # 160 voxels
    far = np.zeros_like(gt)
    far[9:19, 0:4, 0:4] = True  # overlap 16 -> DSC 32/320 = 0.1
    dsc, nsd = score_organ(far, gt, (1, 1, 1), tolerance_mm=7)
    assert dsc == pytest.approx(0.1) and nsd == 0.0
    # The surfaces are close at 7 mm, so without the rule NSD would not be 0.
    assert surface_dice(far, gt, (1, 1, 1), 7) > 0.3
    assert score_organ(far, gt, (1, 1, 1), 7, nsd_min_dice=0)[1] == pytest.approx(surface_dice(far, gt, (1, 1, 1), 7))
    # The rule is strict: DSC exactly 0.2 keeps its NSD.
    edge = np.zeros_like(gt)
    edge[8:18, 0:4, 0:4] = True  # overlap 32 -> DSC 64/320 = 0.2
    dsc, nsd = score_organ(edge, gt, (1, 1, 1), tolerance_mm=7)
    assert dsc == 0.2 and nsd > 0


def column(shape, z: range, value: int) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[3:6, 3:6, z.start : z.stop] = value
    return out


def test_z_range_organs_scored_on_gt_slices_end_exclusive():
    shape = (10, 10, 14)
    gt = column(shape, range(2, 8), 5)  # aorta on slices 2..7; FLARE scores slices 2..6
    pred = column(shape, range(2, 7), 5)  # misses the top slice 7 ...
    pred[3:6, 3:6, 10:12] = 5  # ... and has extra voxels outside GT's range
    scores = score_case(pred, gt, (1.0, 1.0, 2.0))
    assert (scores.dsc["Aorta"], scores.nsd["Aorta"]) == (1.0, 1.0)
    # The same masks as liver (no z-range rule): 54 GT voxels, 63 predicted, 45 shared.
    as_liver = score_case((pred == 5).astype(np.uint8), (gt == 5).astype(np.uint8), (1.0, 1.0, 2.0))
    assert as_liver.dsc["Liver"] == pytest.approx(90 / 117)
    # The range excludes GT's highest slice but includes its lowest.
    missing_bottom = column(shape, range(3, 8), 5)
    assert score_case(missing_bottom, gt, (1.0, 1.0, 2.0)).dsc["Aorta"] == pytest.approx(2 * 36 / (45 + 36))
    # The axial axis is a parameter: the same case as (z, y, x) arrays.
    transposed = score_case(pred.transpose(2, 1, 0), gt.transpose(2, 1, 0), (2.0, 1.0, 1.0), axial_axis=0)
    assert (transposed.dsc["Aorta"], transposed.nsd["Aorta"]) == (1.0, 1.0)
    # Along axis 2 instead (the wrong axis for these arrays) the rule cuts elsewhere and the extra voxels count.
    assert score_case(pred, gt, (1.0, 1.0, 2.0), axial_axis=0).dsc["Aorta"] < 1.0


def test_single_slice_z_range_organ_scored_on_its_slice():
    shape = (10, 10, 8)
    gt = column(shape, range(4, 5), 6)  # IVC on slice 4 only: FLARE's [4:4] range would be empty (NaN)
    pred = column(shape, range(4, 6), 6)  # right on slice 4, extra on slice 5
    scores = score_case(pred, gt, (1.0, 1.0, 3.0))
    assert (scores.dsc["IVC"], scores.nsd["IVC"]) == (1.0, 1.0)
    elsewhere = column(shape, range(6, 7), 6)
    scores = score_case(elsewhere, gt, (1.0, 1.0, 3.0))
    assert (scores.dsc["IVC"], scores.nsd["IVC"]) == (0.0, 0.0)


# ---- agreement with surface-distance; crop == whole volume ----


def test_surface_dice_agrees_with_surface_distance_package():
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(6, 28, 3))
        spacing = tuple(float(s) for s in rng.choice([0.5, 0.7, 0.8, 1.0, 1.25, 2.5, 3.0], 3))
        gt, pred = blob(rng, shape), blob(rng, shape)
        if not gt.any() or not pred.any():
            continue
        tolerance = float(rng.choice([1.0, 2.0, 2.4, 3.0, 5.0, 7.0]))
        assert surface_dice(pred, gt, spacing, tolerance) == pytest.approx(
            package_nsd(pred, gt, spacing, tolerance), abs=1e-12
        )
        checked += 1
    assert checked >= 20


def test_crop_equals_whole_volume_and_flare_script_on_random_cases():
    rng = np.random.default_rng(3)
    spacing = (0.8, 0.8, 2.5)
    for _ in range(3):
        pred, gt = random_case(rng)
        fast = score_case(pred, gt, spacing)
        assert score_case(pred, gt, spacing, crop=False) == fast  # identical numbers
        reference = flare_reference(gt, pred, spacing)
        for name, (dsc, nsd) in reference.items():
            assert fast.dsc[name] == pytest.approx(dsc, abs=1e-12), name
            assert fast.nsd[name] == pytest.approx(nsd, abs=1e-12), name
        assert (fast.dsc["LAG"], fast.nsd["LAG"]) == (1.0, 1.0)
        assert (fast.dsc["Gallbladder"], fast.nsd["Gallbladder"]) == (0.0, 0.0)


# Computed once by the independent route above (flare_reference: FLARE22's script logic with surface-distance 0.1 on
# full-volume masks, spacing from the GT header, 3 mm isotropic), and confirmed equal to the fast path to 1e-15.
# Esophagus is absent from both files (1, 1).
REAL_PAIR = {
    "Liver": (0.9838123237535249, 0.998422403579946),
    "RK": (0.9659854120025998, 0.9882573704510423),
    "Spleen": (0.9822362628825936, 1.0),
    "Pancreas": (0.7512839325018342, 0.9115660412860558),
    "Aorta": (0.9485484334578902, 0.9327599868579617),
    "IVC": (0.9461924304605563, 0.9157632702621629),
    "RAG": (0.8797814207650273, 0.9554166195155782),
    "LAG": (0.9107551487414187, 0.9636493324456364),
    "Gallbladder": (0.9675696299122473, 0.9508445322184446),
    "Esophagus": (1.0, 1.0),
    "Stomach": (0.940279542566709, 0.98053462463171),
    "Duodenum": (0.9115247856097051, 0.9992023094557492),
    "LK": (0.9726573902889949, 0.999955011678493),
}


@pytest.mark.skipif(not FLARE13.is_dir(), reason=f"real CT labels not found at {FLARE13}")
def test_real_pair_regression():
    from selflabel.io import read_label

    gt = read_label(FLARE13 / "example_ct_label_flare13.nii.gz")
    pred = read_label(FLARE13 / "example_ct_label_flare13_fastmodel.nii.gz")
    scores = score_case(pred.array, gt.array, gt.spacing, axial_axis=gt.axial_axis)
    reference = flare_reference(gt.array, pred.array, gt.spacing)
    for name, (dsc, nsd) in REAL_PAIR.items():
        assert scores.dsc[name] == pytest.approx(dsc, abs=1e-6), name
        assert scores.nsd[name] == pytest.approx(nsd, abs=1e-6), name
        assert reference[name] == (pytest.approx(dsc, abs=1e-6), pytest.approx(nsd, abs=1e-6)), name
    assert scores.mean_dsc == pytest.approx(np.mean([v[0] for v in REAL_PAIR.values()]))


# ---- inputs, rounding and summaries ----


def test_score_case_rejects_bad_inputs():
    labels = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        score_case(labels, np.zeros((4, 4, 5), np.uint8), (1, 1, 1))
    with pytest.raises(ValueError, match="integer"):
        score_case(labels.astype(np.float32), labels, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        score_case(labels, labels, (1, 0, 1))
    with pytest.raises(ValueError, match="axial_axis"):
        score_case(labels, labels, (1, 1, 1), axial_axis=3)


def test_empty_case_scores_one_everywhere_and_row_order():
    labels = np.zeros((4, 4, 4), np.uint8)
    scores = score_case(labels, labels, (1, 1, 1))
    assert scores.mean_dsc == 1.0 and scores.mean_nsd == 1.0
    columns = list(scores.row())
    assert columns[0] == "Liver_DSC" and columns[12] == "LK_DSC" and columns[13] == "Liver_NSD" and len(columns) == 26


def test_rounded_like_flare():
    scores = CaseScores({"Liver": 0.98381232, "RK": 1}, {"Liver": 0.99995, "RK": 0.123449})
    assert scores.rounded() == CaseScores({"Liver": 0.9838, "RK": 1.0}, {"Liver": 1.0, "RK": 0.1234})


def test_cases_holding_each_organ_are_counted_when_every_case_is_known():
    """`score_case` records which organs the ground truth holds; rounding keeps it; the summary counts the cases
    (None where a case is unknown: FLARE's "both empty = 1" cannot be told from a perfect score)."""
    gt = np.zeros((12, 12, 6), np.uint8)
    gt[2:6, 2:6, 1:4] = 1
    scores = score_case(gt, gt, (1.0, 1.0, 2.0))
    assert scores.in_truth == {o.short: o.index == 1 for o in FLARE22_ORGANS}
    assert scores.rounded().in_truth == scores.in_truth
    other = score_case(np.zeros_like(gt), np.where(gt, 3, 0).astype(np.uint8), (1.0, 1.0, 2.0))
    counts = summarize([scores, other]).to_dict()["organs"]
    assert counts["Liver"]["cases_in_truth"] == 1 and counts["Spleen"]["cases_in_truth"] == 1
    assert counts["Esophagus"]["cases_in_truth"] == 0
    unknown = summarize([scores, CaseScores.zeros()])
    assert unknown.organs["Liver"].cases_in_truth is None
    assert "cases_in_truth" not in unknown.to_dict()["organs"]["Liver"]


def test_summarize_mean_and_std():
    a = CaseScores({"Liver": 0.9, "RK": 0.5}, {"Liver": 1.0, "RK": 0.4})
    b = CaseScores({"Liver": 0.7, "RK": 0.3}, {"Liver": 0.8, "RK": 0.0})
    summary = summarize([a, b])
    assert summary.num_cases == 2
    assert summary.organs["Liver"].dsc_mean == pytest.approx(0.8)
    assert summary.organs["Liver"].dsc_std == pytest.approx(0.1)  # population std
    assert summary.organs["RK"].nsd_mean == pytest.approx(0.2)
    assert summary.mean_dsc == pytest.approx((0.8 + 0.4) / 2)
    assert summary.mean_nsd == pytest.approx(np.mean([a.mean_nsd, b.mean_nsd]))
    assert math.isnan(summarize([]).mean_dsc)
