"""benchmarks/real_patient.py: a TotalSegmentator v2 reference read with FLARE22's ids."""

from __future__ import annotations

import numpy as np

from selflabel.labels import BY_INDEX
from tests.conftest import load_benchmark

real_patient = load_benchmark("real_patient")


def test_totalsegmentator_classes_become_flare_organs_and_the_rest_background():
    # TotalSegmentator v2: 5 liver, 6 stomach, 52 aorta, 63 inferior vena cava, 8 right adrenal; 20 and 117 are
    # classes FLARE does not label (lung, vertebra)
    labels = np.array([[0, 5, 6, 52], [63, 8, 20, 117]], dtype=np.uint8)
    flare = real_patient.flare_from_totalsegmentator(labels)
    names = [[BY_INDEX[int(v)].name if v else "" for v in row] for row in flare]
    assert names == [["", "liver", "stomach", "aorta"], ["inferior_vena_cava", "right_adrenal_gland", "", ""]]
    assert flare.dtype == np.uint8
