"""benchmarks/cross_patient_cohort.py: a realct cohort with part of its unlabelled scans from a second patient."""

from __future__ import annotations

import numpy as np

from selflabel.io import load_dataset
from selflabel.labels import FLARE22_LABELS
from tests.conftest import load_benchmark

rc = load_benchmark("realct_cohort")
xp = load_benchmark("cross_patient_cohort")


def test_the_last_unlabelled_scans_become_the_second_patient_s_as_scanned(real_ct, tmp_path) -> None:
    """The upper-abdomen crop of the example CT with its TotalSegmentator v2 labels stands in for patient B."""
    source_dir = real_ct["image"].parents[1]
    base = tmp_path / "base"
    rc.write_cohort(base, 1, 3, 1, seed=5, source_dir=source_dir, workers=1)
    original = source_dir / "original"
    patient = xp.load_patient(original / "example_ct_sm.nii.gz", original / "example_ct_sm__seg_total_v2_HEAD.nii.gz")
    out = tmp_path / "cross"
    xp.write(out, base, patient, count=2, seed=5)
    dataset = load_dataset(out)
    assert [c.name for c in dataset.unlabeled] == ["Case_00001", "PatientB_00001", "PatientB_00002"]
    assert len(dataset.training) == 1 and len(dataset.test) == 1
    assert (out / "imagesTr").iterdir().__next__().resolve().parent == (base / "imagesTr").resolve()
    assert not (out / "labelsTr" / "PatientB_00001.nii.gz").exists()
    # one generator per scan; the phase as scanned: the liver keeps the source's HU (a realct phase would lift it)
    image, label, _ = xp.patient_case(patient, 5, 1)
    again, _, _ = xp.patient_case(patient, 5, 1)
    other, _, _ = xp.patient_case(patient, 5, 2)
    assert np.array_equal(image, again) and (image.shape != other.shape or not np.array_equal(image, other))
    drawn = rc.draw_params(rc.case_rng(5, "unlabeled", xp.B_INDEX + 1), patient)
    assert drawn.offsets["liver"] > 15.0  # what realct would have added to this scan's liver
    liver = FLARE22_LABELS["liver"]
    inner = label == liver
    assert abs(np.median(image[inner]) - np.median(patient.image[patient.label == liver])) < 10.0
