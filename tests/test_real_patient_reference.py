"""benchmarks/real_patient_reference.py: the approximate liver, spleen and aorta of the real DICOM patient."""

from __future__ import annotations

import numpy as np
import pytest

from selflabel.io.dicom import read_series
from tests.conftest import load_benchmark

ref = load_benchmark("real_patient_reference")


@pytest.fixture(scope="module")
def series():
    if not ref.SERIES.is_dir():
        pytest.skip(f"real DICOM series missing (expected {ref.SERIES})")
    return read_series(ref.SERIES)


def test_the_reference_holds_three_plausible_organs_where_they_belong(series):
    labels = ref.reference(series.array)
    ml = float(np.prod(series.spacing)) / 1000.0
    volumes = {i: (labels == i).sum() * ml for i in (ref.LIVER, ref.SPLEEN, ref.AORTA)}
    assert set(np.unique(labels)) == {0, ref.LIVER, ref.SPLEEN, ref.AORTA}
    # 40 mm of upper abdomen: most of a liver's 1.5 L would not fit, an aorta of 2-3 cm across holds 12-30 mL
    assert 300 < volumes[ref.LIVER] < 1200 and 80 < volumes[ref.SPLEEN] < 500 and 10 < volumes[ref.AORTA] < 30
    aorta_area = (labels == ref.AORTA).sum((0, 1)) * float(np.prod(series.spacing[:2]))
    assert (aorta_area > 250).all() and (aorta_area < 800).all()  # traced on every slice, never the vertebra
    hu = {i: float(np.median(series.array[labels == i])) for i in volumes}
    assert 70 < hu[ref.LIVER] < 130 and 60 < hu[ref.SPLEEN] < 130 and hu[ref.AORTA] > 130  # enhanced soft tissue
    columns = {i: np.argwhere(labels == i)[:, 0].mean() for i in volumes}
    # array columns run towards the patient's left here (an L A S series): liver, aorta, spleen from right to left
    assert columns[ref.LIVER] < columns[ref.AORTA] < columns[ref.SPLEEN]


def test_a_seed_outside_its_organ_is_refused(series, monkeypatch):
    monkeypatch.setitem(ref.SOLID, ref.LIVER, ((60.0, 140.0), 6, (5, 5, 10)))  # a corner of air
    with pytest.raises(SystemExit, match="not inside"):
        ref.reference(series.array)
