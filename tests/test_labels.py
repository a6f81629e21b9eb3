"""The organ table: FLARE22's indices, names, FLARE's CSV short names, the paper's columns and NSD tolerances."""

from __future__ import annotations

from selflabel.labels import BY_INDEX, FLARE22_LABELS, FLARE22_ORGANS


def test_organ_table_is_flare22():
    assert [o.index for o in FLARE22_ORGANS] == list(range(1, 14))
    assert [o.short for o in FLARE22_ORGANS] == [
        "Liver", "RK", "Spleen", "Pancreas", "Aorta", "IVC", "RAG", "LAG",
        "Gallbladder", "Esophagus", "Stomach", "Duodenum", "LK",
    ]  # fmt: skip
    assert [o.tolerance_mm for o in FLARE22_ORGANS] == [5, 3, 3, 5, 2, 2, 2, 2, 2, 3, 5, 7, 3]
    assert {o.short for o in FLARE22_ORGANS if o.z_range} == {"Aorta", "IVC", "Esophagus"}


def test_label_map_and_paper_columns_follow_the_table():
    assert FLARE22_LABELS["background"] == 0
    assert FLARE22_LABELS["right_kidney"] == 2 and FLARE22_LABELS["left_kidney"] == 13
    assert FLARE22_LABELS["inferior_vena_cava"] == 6 and len(FLARE22_LABELS) == 14
    assert BY_INDEX[2].paper == "RKidney" and BY_INDEX[13].paper == "LKidney" and BY_INDEX[1].paper == "Liver"
