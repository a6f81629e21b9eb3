"""Tests of selflabel.phantom: determinism, organs present, variety, anatomy, HU, nnU-Net layout, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from selflabel.errors import InputError, SelflabelError
from selflabel.io import load_dataset, read_case
from selflabel.labels import FLARE22_LABELS
from selflabel.phantom import (
    MIN_ORGAN_VOXELS,
    PHASES,
    Tissue,
    case_rng,
    make_case,
    write_cohort,
)

ORGANS = {name: index for name, index in FLARE22_LABELS.items() if index > 0}
SMALL = {"size": 96, "slices": 32}  # the CPU demo's grid
REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_example"


@pytest.fixture(scope="module")
def small_cases():
    return [make_case(seed, **SMALL) for seed in range(6)]


@pytest.fixture(scope="module")
def default_case():
    return make_case(11)


def world_centroid(case, mask: np.ndarray) -> np.ndarray:
    """Centre of mass of a mask in world mm (RAS+) through the case's affine."""
    ijk = np.array(ndi.center_of_mass(mask))
    return case.affine[:3, :3] @ ijk + case.affine[:3, 3]


# ---- determinism ----


def test_same_seed_same_arrays_and_different_seed_different():
    a, b = make_case(7, **SMALL), make_case(7, **SMALL)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    np.testing.assert_array_equal(a.affine, b.affine)
    c = make_case(8, **SMALL)
    assert a.image.shape != c.image.shape or a.image.tobytes() != c.image.tobytes()
    assert a.label.shape != c.label.shape or a.label.tobytes() != c.label.tobytes()


def test_case_seed_depends_only_on_seed_split_index():
    first = make_case(case_rng(3, "labeled", 2), **SMALL)
    again = make_case(case_rng(3, "labeled", 2), **SMALL)
    other_split = make_case(case_rng(3, "test", 2), **SMALL)
    assert first.image.tobytes() == again.image.tobytes()
    assert first.image.shape != other_split.image.shape or first.image.tobytes() != other_split.image.tobytes()


def test_forced_phase_keeps_the_anatomy():
    plain = make_case(5, phase="non-contrast", **SMALL)
    arterial = make_case(5, phase="arterial", **SMALL)
    np.testing.assert_array_equal(plain.label, arterial.label)
    aorta = plain.label == ORGANS["aorta"]
    assert np.median(arterial.image[aorta]) > np.median(plain.image[aorta]) + 100


# ---- organs ----


def test_every_organ_present_at_default_size(default_case):
    assert default_case.image.shape[:2] == (192, 192)
    counts = np.bincount(default_case.label.ravel(), minlength=14)
    for name, index in ORGANS.items():
        assert counts[index] >= 50, f"{name} has only {counts[index]} voxels at 192x192"
    assert set(np.unique(default_case.label)) == set(range(14))


def test_every_organ_present_at_small_size(small_cases):
    for case in small_cases:
        counts = np.bincount(case.label.ravel(), minlength=14)
        for name, index in ORGANS.items():
            assert counts[index] >= MIN_ORGAN_VOXELS, f"{name}: {counts[index]} voxels at 96x96"
        # small organs span several slices, so a 2D model sees them more than once
        for name in ("right_adrenal_gland", "left_adrenal_gland", "esophagus", "gallbladder"):
            slices = np.flatnonzero((case.label == ORGANS[name]).any(axis=(0, 1)))
            assert len(slices) >= 2, f"{name} on {len(slices)} slice(s)"


def test_dtypes_geometry_and_meta(small_cases):
    for case in small_cases:
        assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
        assert case.image.shape == case.label.shape == tuple(case.meta["shape"])
        assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
        np.testing.assert_allclose(np.diag(case.affine)[:3], case.meta["spacing_mm"], rtol=1e-4)
        assert case.meta["phase"] in PHASES
        assert 0.5 < case.spacing[0] < 5.0 and 1.0 < case.spacing[2] < 10.0


def test_cases_vary(small_cases):
    volumes = np.array(
        [[np.count_nonzero(c.label == i) * np.prod(c.spacing) for i in ORGANS.values()] for c in small_cases]
    )
    spread = volumes.std(axis=0) / volumes.mean(axis=0)
    assert np.all(spread > 0.05), dict(zip(ORGANS, spread.round(3), strict=True))
    liver_x = [
        world_centroid(c, c.label == ORGANS["liver"])[0] - world_centroid(c, c.label == 5)[0] for c in small_cases
    ]
    assert np.ptp(liver_x) > 5.0  # liver position relative to the aorta differs by more than 5 mm
    assert len({c.image.shape[2] for c in small_cases}) > 1
    assert len({round(c.spacing[0], 3) for c in small_cases}) == len(small_cases)
    assert len({c.meta["phase"] for c in small_cases}) > 1
    assert np.ptp([c.meta["noise_hu"] for c in small_cases]) > 2.0


# ---- anatomy ----


def test_anatomy_in_world_coordinates(small_cases):
    for case in small_cases:
        c = {name: world_centroid(case, case.label == index) for name, index in ORGANS.items()}
        spine = world_centroid(case, case.tissue == Tissue.BONE_MARROW)  # vertebral bodies
        x, y, z = 0, 1, 2  # RAS+: x to the patient's right, y anterior, z superior
        assert c["liver"][x] > spine[x] + 30 > c["spleen"][x] + 60, "liver right, spleen left"
        assert c["right_kidney"][x] > spine[x] > c["left_kidney"][x]
        assert c["stomach"][x] < c["liver"][x] and c["gallbladder"][x] > spine[x]
        assert c["aorta"][y] > spine[y] + 15, "aorta anterior to the spine"
        assert c["aorta"][x] < spine[x], "aorta left of the midline"
        assert c["inferior_vena_cava"][x] > c["aorta"][x] + 15, "IVC right of the aorta"
        assert c["esophagus"][z] > max(c["right_kidney"][z], c["left_kidney"][z]) + 50, "esophagus at the top"
        assert c["right_adrenal_gland"][z] > c["right_kidney"][z] + 20
        assert c["left_adrenal_gland"][z] > c["left_kidney"][z] + 20
        assert abs(c["right_adrenal_gland"][x] - spine[x]) < abs(c["right_kidney"][x] - spine[x])
        assert abs(c["left_adrenal_gland"][x] - spine[x]) < abs(c["left_kidney"][x] - spine[x])
        assert c["gallbladder"][z] < c["liver"][z], "gallbladder under the liver"
        assert c["pancreas"][y] > c["left_kidney"][y] + 20, "pancreas in front of the left kidney"
        assert c["duodenum"][x] > c["pancreas"][x], "duodenal C on the right of the pancreas"


def test_small_organs_have_low_contrast_to_a_neighbour(default_case):
    """Pancreas vs duodenum wall / bowel, adrenals vs crura: within ~60 HU, so they are not trivially separable."""
    case = default_case
    t, img = case.tissue, case.image.astype(float)
    pancreas = np.median(img[(case.label == ORGANS["pancreas"]) & (t == Tissue.PANCREAS)])
    bowel_wall = np.median(img[t == Tissue.BOWEL_WALL])
    adrenal = np.median(img[case.label == ORGANS["left_adrenal_gland"]])
    muscle = np.median(img[t == Tissue.MUSCLE])
    assert abs(pancreas - bowel_wall) < 60 and abs(adrenal - muscle) < 60
    liver = np.median(img[case.label == ORGANS["liver"]])
    fat = np.median(img[t == Tissue.FAT])
    assert liver - fat > 120  # large organs stand out from fat


# ---- HU ----


@pytest.mark.parametrize("phase", PHASES)
def test_tissue_hu_ranges(phase):
    case = make_case(21, size=128, slices=40, phase=phase)
    img, t, lab = case.image.astype(float), case.tissue, case.label

    def med(mask):
        return float(np.median(img[mask]))

    def organ(name):  # inner voxels, away from partial volume at the edges
        return med(ndi.binary_erosion(lab == ORGANS[name]))

    assert med(ndi.binary_erosion(t == Tissue.AIR, iterations=2)) < -950
    assert -130 < med(t == Tissue.FAT) < -70
    assert 20 < med(t == Tissue.MUSCLE) < 90
    assert 300 < med(t == Tissue.BONE_CORTEX) < 1100
    assert 120 < med(t == Tissue.BONE_MARROW) < 400
    assert -950 < med(t == Tissue.LUNG) < -700
    assert -20 < med(t == Tissue.BILE) < 40
    liver, aorta = organ("liver"), organ("aorta")
    cortex, medulla = med(t == Tissue.KIDNEY_CORTEX), med(t == Tissue.KIDNEY_MEDULLA)
    if phase == "non-contrast":
        assert 40 < liver < 80 and 20 < aorta < 65 and abs(cortex - medulla) < 20
    elif phase == "arterial":
        assert aorta > 200 and cortex > medulla + 30 and 55 < liver < 110
    else:
        assert 110 < aorta < 260 and liver > 85 and cortex > 100


def test_plain_hu_close_to_the_real_ct():
    """Non-contrast phantom organs within 25 HU of the real (non-contrast) TotalSegmentator example."""
    ct = REAL_CT / "original" / "example_ct.nii.gz"
    seg = REAL_CT / "flare13" / "example_ct_label_flare13.nii.gz"
    if not ct.exists() or not seg.exists():
        pytest.skip(f"real CT example missing ({REAL_CT}); see ../shared/data")
    real = np.asarray(nib.load(ct).dataobj, dtype=np.float32)
    real_lab = np.asarray(nib.load(seg).dataobj).astype(np.uint8)
    case = make_case(4, phase="non-contrast", **SMALL)
    for name in ("liver", "spleen", "aorta", "gallbladder"):
        index = ORGANS[name]
        inner_real = ndi.binary_erosion(real_lab == index)  # away from partial-volume edges
        inner_fake = ndi.binary_erosion(case.label == index) if name != "gallbladder" else case.label == index
        diff = np.median(case.image[inner_fake]) - np.median(real[inner_real])
        assert abs(diff) < 25, f"{name}: phantom - real = {diff:.0f} HU"


# ---- cohort on disk ----


def test_write_cohort_layout_loads_and_matches_make_case(tmp_path):
    out = tmp_path / "Dataset900_Phantom"
    summary = write_cohort(out, labeled=2, unlabeled=1, test=1, seed=5, size=80, slices=24, workers=1)
    assert summary.counts == {"labeled": 2, "unlabeled": 1, "test": 1} and not summary.reused
    ds = load_dataset(out)
    assert [c.name for c in ds.training] == ["FLARE22_Tr_0001", "FLARE22_Tr_0002"]
    assert [c.name for c in ds.unlabeled] == ["Case_00001"] and ds.unlabeled[0].label is None
    assert [c.name for c in ds.test] == ["FLARETs_0001"] and ds.test[0].label is not None
    assert ds.labels == FLARE22_LABELS and ds.num_classes == 14
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 2
    assert not (out / "labelsTr" / "Case_00001.nii.gz").exists()

    image, label = read_case(ds.training[1], allowed=ds.label_values)
    expected = make_case(case_rng(5, "labeled", 2), size=80, slices=24)
    np.testing.assert_array_equal(image.array, expected.image)
    np.testing.assert_array_equal(label.array, expected.label)
    np.testing.assert_allclose(image.affine, expected.affine, atol=1e-4)
    assert nib.load(ds.training[1].image).get_data_dtype() == np.int16
    assert nib.load(ds.training[1].label).get_data_dtype() == np.uint8
    record = json.loads((out / "cohort.json").read_text())
    assert record["complete"] and len(record["cases"]) == 4
    # a case's file does not depend on how many other cases are made: same bytes in a smaller cohort
    other = write_cohort(tmp_path / "other", labeled=1, unlabeled=0, test=0, seed=5, size=80, slices=24, workers=1)
    assert other.counts["labeled"] == 1
    name = "imagesTr/FLARE22_Tr_0001_0000.nii.gz"
    assert (tmp_path / "other" / name).read_bytes() == (out / name).read_bytes()


def test_write_cohort_reuses_replaces_and_refuses(tmp_path):
    out = tmp_path / "cohort"
    write_cohort(out, labeled=1, unlabeled=0, test=1, seed=1, size=80, slices=24, workers=1)
    before = (out / "imagesTr" / "FLARE22_Tr_0001_0000.nii.gz").stat().st_mtime_ns
    again = write_cohort(out, labeled=1, unlabeled=0, test=1, seed=1, size=80, slices=24, workers=1)
    assert again.reused and (out / "imagesTr" / "FLARE22_Tr_0001_0000.nii.gz").stat().st_mtime_ns == before
    changed = write_cohort(out, labeled=1, unlabeled=1, test=0, seed=1, size=80, slices=24, workers=1)
    assert not changed.reused and changed.removed == 4
    assert not (out / "imagesTs").exists() and (out / "unlabeledTr" / "Case_00001_0000.nii.gz").exists()
    foreign = tmp_path / "real_data"
    foreign.mkdir()
    (foreign / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="cohort.json"):
        write_cohort(foreign, labeled=1, unlabeled=0, test=0, size=80, slices=24)


def test_bad_arguments():
    with pytest.raises(SelflabelError):
        make_case(0, size=64)
    with pytest.raises(SelflabelError):
        make_case(0, phase="delayed")
    with pytest.raises(SelflabelError):
        write_cohort("unused", labeled=-1, unlabeled=0, test=0)
    with pytest.raises(SelflabelError):
        write_cohort("unused", labeled=0, unlabeled=0, test=0)


def test_package_exports_its_api_and_paints_the_label_table():
    import selflabel.phantom as phantom
    from selflabel.labels import FLARE22_ORGANS
    from selflabel.phantom.organs import scene

    assert {name for name in phantom.__all__ if not hasattr(phantom, name)} == set()
    painted = {name: value for name, value in vars(scene).items() if name.isupper() and isinstance(value, int)}
    assert sorted(painted.values()) == [organ.index for organ in FLARE22_ORGANS]
    assert painted["LIVER"] == 1 and painted["LEFT_KIDNEY"] == 13 and painted["RIGHT_ADRENAL"] == 7


def test_cli_demo_data(tmp_path):
    from typer.testing import CliRunner

    from selflabel.cli import app

    out = tmp_path / "demo"
    args = ["demo-data", str(out), "--labeled", "1", "--unlabeled", "1", "--test", "0", "--size", "80"]
    result = CliRunner().invoke(app, [*args, "--slices", "24", "--seed", "2", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "1 labelled, 1 unlabelled, 0 test" in result.output and str(out) in result.output
    assert len(load_dataset(out).training) == 1
